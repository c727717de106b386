"""Per-node overhead of functionfuse's local backend, against direct calls and dask.delayed.

    python benchmarks/overhead.py                 # every shape and size (several minutes)
    python benchmarks/overhead.py --quick         # 1,000 and 10,000 nodes only
    python benchmarks/overhead.py --processes 7   # fresh processes per figure (default 5)
    python benchmarks/overhead.py --gc-off        # the same with CPython's cyclic collector disabled

Shapes of trivial integer functions:
  chain    n_i = add(n_{i-1}, 1)
  fanout   one root, N children, one reducer taking all N
  diamond  layers of width 10; each node adds two nodes of the layer before

For each shape and size it prints the build and run times, time and peak
memory per node, and the ratio of functionfuse (build + run) to
  direct  building plain call descriptions and calling the functions in the same order
  dask    dask.delayed with the synchronous scheduler (1,000 and 10,000 nodes only)
all measured in the same process. Every figure is the median over
``--processes`` fresh Python processes (each takes the best of a few rounds of
each side, interleaved), timed in process CPU time (``time.process_time``) so
that other load on a shared machine counts less. Then the resume check: a fully stored
10,000-node workflow whose nodes sleep 1 ms, computed, then resumed.

Targets (not tests): ratio to direct <= 3; time per node at 100,000 and
1,000,000 nodes within 1.5x of 10,000; <= 1 KB per node; resume >= 20x faster.

``--gc-off`` runs every process with ``gc.disable()``: what is left of the
growth per node from 10,000 to 1,000,000 nodes once CPython's full collections,
which revisit every live object (ours and the direct calls' alike), are out of
the picture. The library never turns the collector off itself.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import shutil
import tempfile
import time
import tracemalloc

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow


def add(a, b):
    # integer add in 32 bits: the diamond's values double every layer, and unbounded ints
    # would make the benchmark measure big-number arithmetic and memory instead of overhead
    return (a + b) & 0xFFFFFFFF


def total(*xs):
    return sum(xs)


ff_add = workflow(add)
ff_total = workflow(total)
WIDTH = 10


# -- functionfuse -----------------------------------------------------------
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


def ff_build_and_run(shape: str, n: int):
    t0 = time.process_time()
    leaf = ff_build(shape, n)
    wf = LocalWorkflow(leaf, workflow_name="bench")
    t1 = time.process_time()
    value = wf.run()
    t2 = time.process_time()
    return value, t1 - t0, t2 - t1


# -- plain call descriptions, called directly --------------------------------------
class Call:
    """A plain call description: the function and its arguments (which may be other Calls)."""

    __slots__ = ("func", "args")

    def __init__(self, func, args):
        self.func = func
        self.args = args


def direct_build(shape: str, n: int) -> list:
    calls = []
    if shape == "chain":
        node = Call(add, (0, 1))
        calls.append(node)
        for _ in range(n - 1):
            node = Call(add, (node, 1))
            calls.append(node)
        return calls
    if shape == "fanout":
        root = Call(add, (0, 1))
        calls.append(root)
        children = [Call(add, (root, i)) for i in range(n - 2)]
        calls.extend(children)
        calls.append(Call(total, tuple(children)))
        return calls
    layer = [Call(add, (i, 0)) for i in range(WIDTH)]
    calls.extend(layer)
    for _ in range(n // WIDTH - 1):
        layer = [Call(add, (layer[i], layer[(i + 1) % WIDTH])) for i in range(WIDTH)]
        calls.extend(layer)
    calls.append(Call(total, tuple(layer)))
    return calls


def direct_build_and_run(shape: str, n: int):
    t0 = time.process_time()
    calls = direct_build(shape, n)
    results: dict = {}
    for call in calls:
        results[call] = call.func(*[results[a] if a.__class__ is Call else a for a in call.args])
    return results[calls[-1]], time.process_time() - t0


# -- dask.delayed ---------------------------------------------------------------
def dask_build_and_run(shape: str, n: int):
    import dask

    d_add = dask.delayed(add, pure=False)
    d_total = dask.delayed(total, pure=False)
    t0 = time.process_time()
    if shape == "chain":
        node = d_add(0, 1)
        for _ in range(n - 1):
            node = d_add(node, 1)
    elif shape == "fanout":
        root = d_add(0, 1)
        node = d_total(*[d_add(root, i) for i in range(n - 2)])
    else:
        layer = [d_add(i, 0) for i in range(WIDTH)]
        for _ in range(n // WIDTH - 1):
            layer = [d_add(layer[i], layer[(i + 1) % WIDTH]) for i in range(WIDTH)]
        node = d_total(*layer)
    value = node.compute(scheduler="sync")
    return value, time.process_time() - t0


def peak_bytes_per_node(shape: str, n: int) -> float:
    gc.collect()
    tracemalloc.start()
    leaf = ff_build(shape, n)
    LocalWorkflow(leaf, workflow_name="mem").run()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del leaf
    gc.collect()
    return peak / n


def best(fn, repeat: int):
    runs = [fn() for _ in range(repeat)]
    return min(runs, key=lambda r: r[-1] if len(r) == 2 else r[1] + r[2])


def measure_one(shape: str, n: int, with_dask: bool = True) -> dict:
    """One fresh process's figures for one shape and size (seconds for the whole graph)."""
    repeat = 3  # the same best-of-3 at every size, so that per-node costs compare
    ff_runs, direct_runs = [], []
    for _ in range(repeat):  # interleaved, so a burst of load hits both sides
        gc.collect()
        ff_runs.append(ff_build_and_run(shape, n))
        gc.collect()
        direct_runs.append(direct_build_and_run(shape, n))
    value, build, run = min(ff_runs, key=lambda r: r[1] + r[2])
    d_value, direct = min(direct_runs, key=lambda r: r[1])
    assert value == d_value, (shape, n, value, d_value)
    out = {"build": build, "run": run, "direct": direct, "dask": None, "mem": None}
    if with_dask and n <= 10_000:
        k_value, out["dask"] = dask_build_and_run(shape, n)
        assert k_value == value
    if n <= 100_000:
        out["mem"] = peak_bytes_per_node(shape, n)
    return out


def measure(shape: str, n: int, processes: int, gc_off: bool = False) -> dict:
    """The median of each figure over ``processes`` fresh processes."""
    runs = []
    for index in range(processes):
        # dask.delayed is 100-1000 times slower: one process measures it
        command = [sys.executable, __file__, "--one", shape, str(n), "dask" if index == 0 else "-"]
        done = subprocess.run(command + (["--gc-off"] if gc_off else []), check=True, capture_output=True, text=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    median = {key: statistics.median(r[key] for r in runs) for key in ("build", "run", "direct")}
    median["ratio"] = statistics.median((r["build"] + r["run"]) / r["direct"] for r in runs)
    dask = [r["dask"] for r in runs if r["dask"] is not None]
    median["dask_ratio"] = statistics.median((r["build"] + r["run"]) / r["dask"] for r in runs if r["dask"]) if dask else None
    median["dask"] = statistics.median(dask) if dask else None
    mems = [r["mem"] for r in runs if r["mem"] is not None]
    median["mem"] = statistics.median(mems) if mems else float("nan")
    return median


def bench_shapes(quick: bool, processes: int, gc_off: bool = False) -> None:
    sizes = {
        "chain": [1_000, 10_000] if quick else [1_000, 10_000, 100_000, 1_000_000],
        "fanout": [1_000, 10_000] if quick else [1_000, 10_000, 100_000, 1_000_000],
        "diamond": [1_000, 10_000] if quick else [1_000, 10_000, 100_000, 1_000_000],
    }
    print(f"medians over {processes} fresh processes; process CPU time"
          + ("; cyclic collector OFF in every process" if gc_off else ""))
    header = (
        f"{'shape':8} {'nodes':>9} {'build s':>9} {'run s':>9} {'us/node':>8} {'B/node':>7} "
        f"{'direct us/n':>11} {'x direct':>8} {'dask us/n':>10} {'x dask':>7}"
    )
    print(header)
    print("-" * len(header))
    per_node_10k: dict[str, tuple[float, float]] = {}
    for shape, ns in sizes.items():
        for n in ns:
            m = measure(shape, n, processes, gc_off)
            us = (m["build"] + m["run"]) / n * 1e6
            direct_us = m["direct"] / n * 1e6
            if n == 10_000:
                per_node_10k[shape] = us, direct_us
            dask_cell = f"{m['dask'] / n * 1e6:10.2f} {m['dask_ratio']:7.3f}" if m["dask"] else ""
            flat = ""
            if n > 10_000 and shape in per_node_10k:
                # the direct calls' own growth beside ours: Python's full garbage collections, which
                # revisit every live object, cost more per node the more nodes are alive
                ours_10k, direct_10k = per_node_10k[shape]
                flat = (f"   ({us / ours_10k:.2f}x the 10k cost per node; direct calls "
                        f"{direct_us / direct_10k:.2f}x)")
            print(
                f"{shape:8} {n:9,d} {m['build']:9.3f} {m['run']:9.3f} {us:8.2f} {m['mem']:7.0f} "
                f"{m['direct'] / n * 1e6:11.2f} {m['ratio']:8.2f} {dask_cell}{flat}", flush=True
            )


def bench_resume(n: int = 10_000, sleep: float = 0.001) -> None:
    @workflow
    def slow(i):
        time.sleep(sleep)
        return i

    @workflow
    def gather(*xs):
        return sum(xs)

    def build():
        return gather(*[slow(i) for i in range(n)]).set_name("gathered")

    root = tempfile.mkdtemp(prefix="ff-resume-")
    try:
        wf = LocalWorkflow(build(), workflow_name="resume")
        wf.set_storage(root)
        t0 = time.perf_counter()
        first = wf.run()
        compute = time.perf_counter() - t0
        # as a new process would: rebuild the nodes (same default names), new storage object
        import functionfuse.frontend as frontend

        frontend._name_counters.pop(slow.__qualname__, None)
        frontend._name_counters.pop(gather.__qualname__, None)
        t0 = time.perf_counter()
        wf2 = LocalWorkflow(build(), workflow_name="resume")
        wf2.set_storage(root)
        second = wf2.run()
        resume = time.perf_counter() - t0
        assert first == second
        print(
            f"\nresume: {n:,} nodes sleeping {sleep * 1000:.0f} ms: compute {compute:.2f} s, "
            f"resume (build + run) {resume:.3f} s -> {compute / resume:.0f}x faster"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 and 10,000 nodes only")
    parser.add_argument("--no-resume", action="store_true", help="skip the resume check")
    parser.add_argument("--processes", type=int, default=5, help="fresh processes per figure (median)")
    parser.add_argument("--gc-off", action="store_true",
                        help="disable CPython's cyclic collector in every measuring process")
    parser.add_argument("--one", nargs=3, metavar=("SHAPE", "N", "DASK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gc_off:
        gc.disable()  # measure_one's gc.collect() calls still run: each round starts from the same heap
    if args.one:
        print(json.dumps(measure_one(args.one[0], int(args.one[1]), args.one[2] == "dask")))
        return
    bench_shapes(args.quick, args.processes, args.gc_off)
    if not args.no_resume and not args.gc_off:
        bench_resume()


if __name__ == "__main__":
    main()
