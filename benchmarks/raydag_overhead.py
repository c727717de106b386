"""raydag: the cost of durability, against plain ``ray.remote`` tasks on the same graph.

Prints ratios, measured in one process on one local cluster:

* a layered graph of trivial nodes run by raydag (each node computed, saved, info collected)
  against the same graph as plain ``ray.remote`` tasks passing ObjectRefs (no storage);
* a second raydag run of the same workflow (everything stored: only the leaf is read) against the first;
* a fan-out of sleeping nodes on raydag against the same nodes on the serial local backend (parallelism).

    python benchmarks/raydag_overhead.py [--nodes 400]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray

import functionfuse
from functionfuse import workflow


@workflow
def inc(x):
    return x + 1


@workflow
def combine(*xs):
    return sum(xs)


@workflow
def nap(x):
    time.sleep(0.05)
    return x


def layered(width: int, depth: int):
    layer = [inc(i) for i in range(width)]
    for _ in range(depth - 1):
        layer = [inc(combine(layer[i], layer[(i + 1) % width])) for i in range(width)]
    return combine(*layer)


@ray.remote
def r_inc(x):
    return x + 1


@ray.remote
def r_combine(*xs):
    return sum(xs)


def layered_ray(width: int, depth: int):
    layer = [r_inc.remote(i) for i in range(width)]
    for _ in range(depth - 1):
        layer = [r_inc.remote(r_combine.remote(layer[i], layer[(i + 1) % width])) for i in range(width)]
    return ray.get(r_combine.remote(*layer))


def timed(call):
    start = time.perf_counter()
    value = call()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=400, help="about how many nodes in the layered graph")
    options = parser.parse_args()
    width = 10
    depth = max(1, options.nodes // (2 * width))
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="ffrb", dir="/tmp"))
    folder = tempfile.mkdtemp(prefix="raydag-bench-")
    try:
        layered_ray(width, 2)  # warm the workers up
        expected, t_ray = timed(lambda: layered_ray(width, depth))
        leaf = layered(width, depth)
        count = len(functionfuse.backend_class("local")(leaf).nodes)

        def run():
            return functionfuse.run(leaf, backend="raydag", workflow_name="bench", storage=folder)

        value, t_first = timed(run)
        assert value == expected
        _, t_again = timed(run)
        print(f"layered graph, {count} nodes:")
        print(f"  plain ray.remote        {t_ray:7.3f} s  ({1e3 * t_ray / count:.2f} ms/node)")
        print(f"  raydag, first run       {t_first:7.3f} s  ratio {t_first / t_ray:.2f}x plain Ray (target <= 3x)")
        print(f"  raydag, all stored      {t_again:7.3f} s  {t_first / t_again:.1f}x faster than the first run")

        fan = combine(*[nap(i) for i in range(100)])
        _, t_local = timed(lambda: functionfuse.run(fan, backend="local"))
        _, t_dag = timed(lambda: functionfuse.run(fan, backend="raydag", workflow_name="fan", storage=folder))
        print(f"fan-out of 100 x 50 ms: local {t_local:.2f} s, raydag {t_dag:.2f} s, speed-up {t_local / t_dag:.2f}x")
    finally:
        ray.shutdown()
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
