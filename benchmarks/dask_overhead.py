"""The dask backend: its cost per node against plain ``client.submit``, and its speed-up against the local backend.

    python benchmarks/dask_overhead.py              # 2,000-node graphs, best of 5
    python benchmarks/dask_overhead.py --quick      # 500-node graphs, best of 3

Measured in one process on one ``LocalCluster`` of 2 worker processes with 1 thread each
(started here, closed at the end), joined by one client:

* overhead: graphs of trivial integer functions run by ``DaskWorkflow(client=...)`` (no
  storage, no plugins) against the same graph written by hand as plain ``client.submit``
  futures (``pure=False``). Both are timed from the first submission to the leaf's value
  in the driver; ``DaskWorkflow`` also builds its run plan and its node calls, and waits
  for every node without a child. Shapes:
    chain    n_i = add(n_{i-1}, 1)
    fanout   one root, N children, one reducer taking all N
    diamond  layers of width 10; each node adds two nodes of the layer before
  The two are interleaved and each keeps its best of N, so both see the same machine.
* speed-up: a fan-out of 200 nodes that each sleep 50 ms (one root, one reducer) on
  ``LocalWorkflow`` (serial) against ``DaskWorkflow`` on the 2 workers; the same fan-out as
  plain ``client.submit`` shows how much of the ideal 2x Dask itself reaches here.

Targets (not tests): ``DaskWorkflow`` at most 1.2x plain ``client.submit``;
speed-up at least 1.8x on 2 workers.
"""

from __future__ import annotations

import argparse
import time

from distributed import Client, LocalCluster

from functionfuse import workflow
from functionfuse.backends.builtin.daskback import DaskWorkflow
from functionfuse.backends.builtin.localback import LocalWorkflow

WIDTH = 10


def add(a, b):
    return (a + b) & 0xFFFFFFFF  # 32-bit: the diamond measures overhead, not big-number growth


def total(*xs):
    return sum(xs)


def nap(x, i):
    time.sleep(0.05)
    return x + i


ff_add, ff_total, ff_nap = workflow(add), workflow(total), workflow(nap)


# -- the same graph, twice ------------------------------------------------------
def ff_build(shape: str, n: int):
    if shape == "chain":
        node = ff_add(0, 1)
        for _ in range(n - 1):
            node = ff_add(node, 1)
        return node
    if shape == "fanout":
        root = ff_add(0, 1)
        return ff_total(*[ff_add(root, i) for i in range(n - 2)])
    layer = [ff_add(i, 0) for i in range(WIDTH)]
    for _ in range(n // WIDTH - 1):
        layer = [ff_add(layer[i], layer[(i + 1) % WIDTH]) for i in range(WIDTH)]
    return ff_total(*layer)


def dask_run(client: Client, shape: str, n: int):
    """The graph of :func:`ff_build` as plain ``client.submit`` futures, submitted and gathered."""
    submit = client.submit
    if shape == "chain":
        future = submit(add, 0, 1, pure=False)
        for _ in range(n - 1):
            future = submit(add, future, 1, pure=False)
        return future.result()
    if shape == "fanout":
        root = submit(add, 0, 1, pure=False)
        return submit(total, *[submit(add, root, i, pure=False) for i in range(n - 2)], pure=False).result()
    layer = [submit(add, i, 0, pure=False) for i in range(WIDTH)]
    for _ in range(n // WIDTH - 1):
        layer = [submit(add, layer[i], layer[(i + 1) % WIDTH], pure=False) for i in range(WIDTH)]
    return submit(total, *layer, pure=False).result()


def dask_fan(client: Client):
    """The 200-sleep fan-out as plain ``client.submit`` futures."""
    root = client.submit(add, 0, 1, pure=False)
    naps = [client.submit(nap, root, i, pure=False) for i in range(200)]
    return client.submit(total, *naps, pure=False).result()


def timed(call):
    start = time.perf_counter()
    value = call()
    return value, time.perf_counter() - start


def overhead(client: Client, shape: str, n: int, repeats: int) -> float:
    leaf = ff_build(shape, n)
    wf = DaskWorkflow(leaf, workflow_name=f"bench-{shape}", client=client)
    count = len(wf.nodes)
    best_dask = best_ff = float("inf")
    for _ in range(repeats):
        expected, t_dask = timed(lambda: dask_run(client, shape, n))
        value, t_ff = timed(wf.run)
        assert value == expected, (shape, value, expected)
        best_dask, best_ff = min(best_dask, t_dask), min(best_ff, t_ff)
    ratio = best_ff / best_dask
    print(
        f"  {shape:8s} {count:6d} nodes   client.submit {best_dask:6.3f} s ({1e6 * best_dask / count:5.0f} us/node)"
        f"   DaskWorkflow {best_ff:6.3f} s ({1e6 * best_ff / count:5.0f} us/node)   ratio {ratio:.2f}x"
    )
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="500-node graphs, best of 3")
    parser.add_argument("--nodes", type=int, help="nodes per overhead graph (default 2000)")
    parser.add_argument("--repeats", type=int, help="best of this many runs (default 5)")
    options = parser.parse_args()
    n = options.nodes or (500 if options.quick else 2000)
    repeats = options.repeats or (3 if options.quick else 5)

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        dask_run(client, "diamond", 200)  # warm the workers
        DaskWorkflow(ff_build("diamond", 200), workflow_name="warm", client=client).run()
        print(f"overhead against plain client.submit (best of {repeats}, interleaved; target <= 1.2x):")
        ratios = [overhead(client, shape, n, repeats) for shape in ("chain", "fanout", "diamond")]
        print(f"  worst ratio {max(ratios):.2f}x")

        root = ff_add(0, 1)
        fan = ff_total(*[ff_nap(root, i) for i in range(200)])
        expected = LocalWorkflow(ff_total(*[ff_add(root, i) for i in range(200)])).run()
        value, t_local = timed(LocalWorkflow(fan, workflow_name="fan").run)
        assert value == expected
        best_ff = best_dask = float("inf")
        for _ in range(3):
            value, t_ff = timed(DaskWorkflow(fan, workflow_name="fan", client=client).run)
            assert value == expected
            value, t_dask = timed(lambda: dask_fan(client))
            assert value == expected
            best_ff, best_dask = min(best_ff, t_ff), min(best_dask, t_dask)
        print("fan-out of 200 x 50 ms sleeps on 2 workers (ideal: 5.0 s, 2.0x; best of 3):")
        print(f"  LocalWorkflow       {t_local:6.2f} s")
        print(f"  plain client.submit {best_dask:6.2f} s  speed-up {t_local / best_dask:.2f}x (what Dask gives here)")
        print(f"  DaskWorkflow        {best_ff:6.2f} s  speed-up {t_local / best_ff:.2f}x (target >= 1.8x)")


if __name__ == "__main__":
    main()
