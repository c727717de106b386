"""What the run record and the progress bar cost per node on the local backend.

    python benchmarks/record_overhead.py [--nodes 20000]

A chain of trivial integer nodes, run four ways in the same process (best of 5):
  plain      no storage, no record: the fast loop (the record plugin is not registered)
  empty      a plugin with one empty ff_after_node: the backend's hook path, the floor of any per-node plugin
  record     record=True without storage: the per-node hooks of plugins_builtin.runrecord
  progress   progress on a forced in-memory terminal (rich), no storage
  storage    file storage (results saved) with the record, against storage with record=False

Prints seconds per node and the ratios. Targets (not tests): plain unchanged by this
feature (the record is absent); record adds a few microseconds per node; with storage,
the record adds < 5% to a run.
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time

from rich.console import Console

from functionfuse import hookimpl, workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from plugins_builtin.progress import ProgressPlugin


class EmptyPlugin:
    @hookimpl
    def ff_after_node(self, node):
        pass


@workflow
def add(a, b):
    return a + b


def chain(n: int):
    node = add(0, 1)
    for _ in range(n - 1):
        node = add(node, 1)
    return node


def best(make, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        wf = make()
        start = time.perf_counter()
        wf.run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=20000)
    n = parser.parse_args().nodes
    leaf = chain(n)
    plain = best(lambda: LocalWorkflow(leaf, workflow_name="plain"))
    # the local backend's hook path with one empty per-node hook: what any per-node plugin pays
    empty = best(lambda: LocalWorkflow(leaf, workflow_name="empty", plugins=[EmptyPlugin()]))
    record = best(lambda: LocalWorkflow(leaf, workflow_name="rec", record=True))
    console = Console(file=io.StringIO(), force_terminal=True)
    progress = best(lambda: LocalWorkflow(leaf, workflow_name="prog", progress=ProgressPlugin(console=console)))
    print(f"{n} nodes, local backend, seconds per node (best of 5)")
    print(f"  plain     {plain / n * 1e6:8.2f} us")
    print(f"  one empty after_node hook {empty / n * 1e6:8.2f} us   ratio {empty / plain:.2f}x plain")
    print(f"  record    {record / n * 1e6:8.2f} us   ratio {record / plain:.2f}x plain, {record / empty:.2f}x empty hook")
    print(f"  progress  {progress / n * 1e6:8.2f} us   ratio {progress / plain:.2f}x plain")

    small = chain(min(n, 2000))
    folder = tempfile.mkdtemp()
    try:
        def stored(record_on: bool, index: list = [0]):  # noqa: B006 - a counter: each run a fresh workflow name
            index[0] += 1
            return LocalWorkflow(small, workflow_name=f"w{index[0]}", record=record_on).set_storage(folder)

        off_times, on_times = [], []
        for _ in range(5):  # interleaved, so a busy neighbour slows both alike
            off_times.append(best(lambda: stored(False), 1))
            on_times.append(best(lambda: stored(True), 1))
        off, on = min(off_times), min(on_times)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    m = min(n, 2000)
    print(f"{m} nodes with file storage (every result saved)")
    print(f"  record=False {off / m * 1e6:8.2f} us")
    print(f"  record=True  {on / m * 1e6:8.2f} us   ratio {on / off:.3f}x")


if __name__ == "__main__":
    main()
