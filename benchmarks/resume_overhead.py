"""What fingerprinted resume costs per node on the local backend, storage on tmpfs (/dev/shm).

    python benchmarks/resume_overhead.py            # 1,000 nodes, best of 7
    python benchmarks/resume_overhead.py --nodes 10000 --repeat 3

The graph: layers of width 10, each node adding two nodes of the layer
before, one reducer at the end (trivial integer functions, so only overhead
is measured). Storage lives on /dev/shm so the shared disk's noise does not
count. Every figure is the best of ``--repeat`` runs, interleaved, in this process, in process
CPU time (user + system: the system calls count, other load on the machine counts less).

(a) a fully stored re-run: ``LocalWorkflow(...).set_storage(S).run()`` when
    every result is stored, with the fingerprint checks (``resume="fingerprint"``,
    the default) against trusting the names (``resume="name"``, no fingerprints).
    Target: at most 12 µs per node with the checks.
(b) a first run with storage (a fresh folder each time; every result saved with
    its fingerprint, atomic writes and checksums) against a model of the original
    implementation's whole first run (``original_first_run``: its graph walk, its
    per-node steps and its storage's steps, as it took them). Target: ratio at most 1.
    Two stricter references are printed too: the original's storage steps alone,
    inlined (``original_steps_first_run``), and a bare ``pickle.dump`` per node.
(c) runs without storage pay nothing for fingerprints: the default against
    ``resume="never"`` and against a run where computing a fingerprint would
    raise (the fingerprint engine is not called at all). Target: ratio about 1.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import shutil
import tempfile
import time

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.frontend import Node

WIDTH = 10


def add(a, b):
    return (a + b) & 0xFFFFFFFF


def total(*xs):
    return sum(xs)


ff_add = workflow(add)
ff_total = workflow(total)


def build(n: int):
    layer = [ff_add(i, 0) for i in range(WIDTH)]
    for _ in range(n // WIDTH - 1):
        layer = [ff_add(layer[i], layer[(i + 1) % WIDTH]) for i in range(WIDTH)]
    return ff_total(*layer)


def count_nodes(leaf) -> int:
    return len(LocalWorkflow(leaf).nodes)


def timed(func) -> float:
    start = time.process_time()
    func()
    return time.process_time() - start


def stored_rerun(leaf, path: str, resume: str) -> float:
    return timed(lambda: LocalWorkflow(leaf, workflow_name="bench", resume=resume).set_storage(path).run())


def first_run(leaf, root: str) -> float:
    path = tempfile.mkdtemp(dir=root)
    try:
        return timed(lambda: LocalWorkflow(leaf, workflow_name="bench").set_storage(path).run())
    finally:
        shutil.rmtree(path)


class _OriginalNode:
    """What the original kept per node: its name (``<qualname>_<NNNN>``, given at creation), the
    function, the arguments, the children, the parents and where they go in the arguments."""

    def __init__(self, name: str, func, args: tuple):
        self.name, self.func = name, func
        self.args, self.kargs = args, {}
        self.children: list = []
        self.parents: list | None = None
        self.seen = False
        self.arg_index: list | None = []
        self.karg_keys: list | None = []
        self._backend_info: dict = {}
        self.n_ready_parents = 0
        self.result = None

    @property
    def backend_info(self) -> dict:
        return self._backend_info

    def get_name(self) -> str:
        return self.name

    def parents_ready(self) -> bool:
        self.n_ready_parents += 1
        return self.n_ready_parents == len(self.parents)

    def reset_ready_parents(self) -> None:
        self.n_ready_parents = 0

    def exec(self, args: list, kargs: dict):
        return self.func(*args, **kargs)

    def free_memory(self) -> None:
        self.parents = self.arg_index = self.karg_keys = None


class _OriginalFileStorage:
    """The original ``FileStorage``'s steps: paths joined per call, a SHA-1 checksum behind the pickle, ``open``."""

    always_read = False

    def __init__(self, path: str):
        self.path = path
        self.serializers: list = []

    def new_workflow(self, workflow_name: str) -> None:
        folder = os.path.join(self.path, workflow_name)
        if not os.path.exists(folder):
            os.makedirs(folder)

    def read_task(self, workflow_name: str, task_name: str):
        path = os.path.join(self.path, workflow_name, task_name)
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        with open(path, "rb") as handle:
            data = handle.read()
        if hashlib.sha1(data[:-20]).digest() != data[-20:]:
            raise ValueError(path)
        return pickle.loads(data[:-20])

    def save(self, workflow_name: str, task_name: str, obj) -> None:
        folder = os.path.join(self.path, workflow_name)
        if not os.path.exists(folder):
            raise FileNotFoundError(folder)
        serializers = None
        if self.serializers:
            raise NotImplementedError  # not in this benchmark
        path = os.path.join(self.path, workflow_name, task_name)
        with open(path, "wb") as handle:
            handle.write(_original_safepickle(obj, serializers))


def _original_safepickle(obj, serializers) -> bytes:
    data = pickle.dumps(obj)
    return data + hashlib.sha1(data).digest()


class _OriginalLocalWorkflow:
    """The original local backend's run: roots found when it is made, nodes visited level by level."""

    def __init__(self, leaves: list, workflow_name: str, storage: _OriginalFileStorage):
        self.workflow_name, self.leaves, self.object_storage = workflow_name, leaves, storage
        roots = set()  # a walk up from the leaves
        for leaf_node in leaves:
            stack = [leaf_node]
            while stack:
                v = stack.pop()
                if v.parents:
                    for p in v.parents:
                        if not p.seen:
                            p.seen = True
                            stack.append(p)
                else:
                    roots.add(v)
        self.roots = roots

    def graph_traversal(self):
        roots = self.roots
        while roots:
            following = []
            for node in roots:
                yield node.get_name(), node
                for child in node.children:
                    if child.parents_ready():
                        following.append(child)
                        child.reset_ready_parents()
            roots = following

    def run(self):
        storage, workflow_name = self.object_storage, self.workflow_name
        storage.new_workflow(workflow_name)
        for name, node in self.graph_traversal():
            func_node = isinstance(node, _OriginalNode)
            if func_node and "print" not in node.backend_info:
                try:
                    node.result = storage.read_task(workflow_name, name)
                    node.free_memory()
                    continue
                except FileNotFoundError:
                    pass
            args = list(node.args)
            kargs = node.kargs.copy()
            for index, (parent, val_index) in node.arg_index:
                args[index] = parent.result if val_index is None else parent.result[val_index]
            for key, (parent, val_index) in node.karg_keys:
                kargs[key] = parent.result if val_index is None else parent.result[val_index]
            node.result = node.exec(args, kargs)
            node.free_memory()
            if func_node and "print" not in node.backend_info:
                storage.save(workflow_name, name, node.result)
                if storage.always_read:
                    node.result = storage.read_task(workflow_name, name)
        return self.leaves[0].result


def _original_graph(leaf) -> list:
    """The workflow as the original's nodes (built outside the timing, as each side's nodes are)."""
    ours = LocalWorkflow(leaf).nodes
    mirror: dict = {}
    for node in ours:
        args = tuple(mirror[a] if isinstance(a, Node) else a for a in node.args)
        twin = _OriginalNode(node.name, node.func, args)
        parents = []
        for index, a in enumerate(args):
            if isinstance(a, _OriginalNode):
                if a not in parents:
                    parents.append(a)
                if twin not in a.children:
                    a.children.append(twin)
                twin.arg_index.append((index, (a, None)))
        twin.parents = parents
        mirror[node] = twin
    return [mirror[node] for node in ours]


def original_first_run(leaf, root: str) -> float:
    """A model of the original functionfuse's first run (local backend, ``FileStorage``), step by step.

    Its steps, written here as it took them (the original is not installed): making the
    workflow finds the roots (a walk up from the leaves); the run creates the workflow's
    folder, then visits the nodes level by level from the roots (a generator; a child joins
    the next level when its last parent has run). Per node: try to read the stored result
    (``read_task``: join the path, ``os.path.exists``, raise ``FileNotFoundError``, caught),
    copy the arguments and put the parents' results in, call through ``exec``, free the
    node's bookkeeping, then ``save``: join the folder, ``os.path.exists`` of it, join the
    path, ``pickle.dumps`` the value and append its SHA-1 digest, ``open(path, "wb").write``.
    """
    twins = _original_graph(leaf)
    path = tempfile.mkdtemp(dir=root)
    try:
        storage = _OriginalFileStorage(path)
        return timed(lambda: _OriginalLocalWorkflow([twins[-1]], "bench", storage).run())  # once per graph
    finally:
        shutil.rmtree(path)


def original_steps_first_run(leaf, root: str) -> float:
    """The original's per-node storage steps alone, inlined: a lower bound of its first run.

    Per node, as the original did it: try to read the stored result first (``os.path.exists``
    of its file, raising and catching ``FileNotFoundError`` when it is absent), build the
    arguments, call the function, then save: check that the workflow folder exists,
    ``pickle.dumps`` the value, append its SHA-1 digest as a checksum and write the bytes
    to ``<root>/<workflow>/<node name>`` with ``open(path, "wb")``. Once per run:
    ``os.makedirs`` of the workflow folder. Its graph bookkeeping, its method calls and
    its path joins are left out, so this is stricter than the original.
    """
    nodes = LocalWorkflow(leaf).nodes  # the run order, outside the timing (as the other side builds its own)
    calls = [(node.func, node.args, node.name) for node in nodes]
    path = tempfile.mkdtemp(dir=root)
    try:
        def run():
            folder = os.path.join(path, "bench")
            os.makedirs(folder, exist_ok=True)
            results: dict = {}
            for node, (func, args, name) in zip(nodes, calls):
                file = os.path.join(folder, name)
                try:  # read the stored result first: absent on a first run
                    if not os.path.exists(file):
                        raise FileNotFoundError(file)
                    with open(file, "rb") as handle:
                        value = pickle.loads(handle.read()[:-20])
                except FileNotFoundError:
                    value = func(*[results[a] if a in results else a for a in args])
                    if not os.path.exists(folder):
                        os.makedirs(folder)
                    data = pickle.dumps(value)
                    data += hashlib.sha1(data).digest()
                    with open(file, "wb") as handle:
                        handle.write(data)
                results[node] = value
            return results[nodes[-1]]

        return timed(run)
    finally:
        shutil.rmtree(path)


def bare_dump_first_run(leaf, root: str) -> float:
    """A stricter reference than the original: call the functions in order, ``pickle.dump`` each result to its own file."""
    nodes = LocalWorkflow(leaf).nodes
    calls = [(node.func, node.args, node.name) for node in nodes]
    path = tempfile.mkdtemp(dir=root)
    try:
        def run():
            folder = os.path.join(path, "bench")
            os.makedirs(folder, exist_ok=True)
            results: dict = {}
            for node, (func, args, name) in zip(nodes, calls):
                value = func(*[results[a] if a in results else a for a in args])
                results[node] = value
                with open(os.path.join(folder, name), "wb") as handle:
                    pickle.dump(value, handle)
            return results[nodes[-1]]

        return timed(run)
    finally:
        shutil.rmtree(path)


def no_storage(leaf, resume: str) -> float:
    return timed(lambda: LocalWorkflow(leaf, workflow_name="bench", resume=resume).run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    root = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    leaf = build(args.nodes)
    n = count_nodes(leaf)
    us = 1e6 / n
    print(f"{n} nodes, storage under {root}, best of {args.repeat}")

    # (a) a fully stored re-run
    stored = tempfile.mkdtemp(dir=root)
    try:
        expected = LocalWorkflow(leaf, workflow_name="bench").set_storage(stored).run()
        assert LocalWorkflow(leaf, workflow_name="bench").run() == expected
        fp_times, name_times = [], []
        for _ in range(args.repeat):
            fp_times.append(stored_rerun(leaf, stored, "fingerprint"))
            name_times.append(stored_rerun(leaf, stored, "name"))
        wf = LocalWorkflow(leaf, workflow_name="bench").set_storage(stored)
        wf.run()
        assert wf.run_record["counts"]["computed"] == 0
        fp, name = min(fp_times), min(name_times)
        print(f"(a) stored re-run   fingerprint checks {fp * us:6.2f} µs/node   trust the name {name * us:6.2f} µs/node"
              f"   ratio {fp / name:4.2f}   (target <= 12 µs/node)")
    finally:
        shutil.rmtree(stored)

    # (b) a first run with storage against a model of the original's first run, and a bare pickle.dump per node
    ours, original, steps, bare = [], [], [], []
    for side in (first_run, original_first_run, original_steps_first_run, bare_dump_first_run):
        side(leaf, root)  # warm-up
    for _ in range(args.repeat):
        ours.append(first_run(leaf, root))
        original.append(original_first_run(leaf, root))
        steps.append(original_steps_first_run(leaf, root))
        bare.append(bare_dump_first_run(leaf, root))
    a, b, s, c = min(ours), min(original), min(steps), min(bare)
    print(f"(b) first run       functionfuse {a * us:6.2f} µs/node   the original {b * us:6.2f} µs/node"
          f"   ratio {a / b:4.2f}   (target <= 1)")
    print(f"                    (stricter: its storage steps alone {s * us:6.2f} µs/node, ratio {a / s:4.2f};"
          f" pickle.dump per node {c * us:6.2f} µs/node, ratio {a / c:4.2f})")

    # (c) no storage: nothing is fingerprinted
    import functionfuse.fingerprint as fingerprint

    real = fingerprint.fingerprint_nodes
    calls = []

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    fingerprint.fingerprint_nodes = counting
    try:
        default, never = [], []
        no_storage(leaf, "fingerprint")  # warm-up
        for _ in range(3 * args.repeat):  # about a millisecond each: more rounds, less noise
            default.append(no_storage(leaf, "fingerprint"))
            never.append(no_storage(leaf, "never"))
    finally:
        fingerprint.fingerprint_nodes = real
    d, v = min(default), min(never)
    print(f"(c) no storage      default {d * us:6.2f} µs/node   resume=\"never\" {v * us:6.2f} µs/node"
          f"   ratio {d / v:4.2f}   fingerprint_nodes called {len(calls)} times   (target: ratio ~1, 0 calls)")


if __name__ == "__main__":
    main()
