"""Property-based tests (Hypothesis): random workflows give the values of the plain functions.

A random *program* is a list of steps, each making one node from earlier
ones: chains, fan-in, nested containers of nodes, ``node[i]`` references,
keyword arguments, stateful objects with several method calls and plain
functions that take the object itself. The same program is evaluated twice:
by calling the undecorated functions directly, in creation order (the
reference), and as a workflow. The properties:

* the local backend gives the reference values;
* so does the Ray backend (fewer examples, one cluster for the module);
* with storage, after deleting any subset of the stored results, a second
  run gives the same values and computes exactly the nodes it must: the
  deleted calls, and for a stateful object the replay of its calls up to the
  last one that is deleted or that a recomputed function that takes the
  object has seen.
"""

from __future__ import annotations

import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.storage import storage_factory

pytestmark = pytest.mark.timeout(300)

#: tags of the node calls that ran in this process, in order (functions log their ``tag``)
CALLS: list = []


# ---------------------------------------------------------------------------
# the functions; each takes a ``tag`` (its node's name) and logs it
# ---------------------------------------------------------------------------


def add(a, b, tag):
    CALLS.append(tag)
    return (a + b) % 1000


def scale(a, *, k=2, offset=0, tag):
    CALLS.append(tag)
    return (a * k + offset) % 1000


def pair(a, tag):
    CALLS.append(tag)
    return (a, (a + 1) % 1000)


def flat_sum(values, tag):
    CALLS.append(tag)
    total = 0
    stack = [values]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        else:
            total += item
    return total % 1000


class Acc:
    def __init__(self, start, tag):
        CALLS.append(tag)
        self.total = start
        self.history = []

    def push(self, n, tag):
        CALLS.append(tag)
        self.total = (self.total + n) % 1000
        self.history.append(n)
        return self.total


def peek(acc, tag):
    CALLS.append(tag)
    return acc.total * 1000 + len(acc.history)


W_ADD, W_SCALE, W_PAIR, W_FLAT, W_ACC, W_PEEK = (workflow(f) for f in (add, scale, pair, flat_sum, Acc, peek))


# ---------------------------------------------------------------------------
# random programs, built node by node next to their reference values
# ---------------------------------------------------------------------------


class Program:
    """Nodes of a random workflow and the values the plain functions give, built side by side."""

    def __init__(self):
        self.nodes: list = []  # (name, node or ref usable as an argument)
        self.values: list = []  # the reference value of each
        self.leaves: list = []  # every function / method node: the workflow's leaves
        self.leaf_values: list = []  # their reference values
        self.objects: list = []  # (object node, instance, name, [call names])
        self.parents: dict = {}  # node name -> names of the objects it takes as a value
        self.created: list = []  # every node name in creation order (objects included)

    def name(self) -> str:
        return f"n{len(self.created)}"

    def value_arg(self, data) -> tuple:
        """An argument: a literal, a node, or a reference ``node[i]`` into a pair."""
        if not self.nodes or data.draw(st.integers(0, 4)) == 0:
            literal = data.draw(st.integers(0, 99))
            return literal, literal
        index = data.draw(st.integers(0, len(self.nodes) - 1))
        return self.nodes[index], self.values[index]

    def container(self, data, depth: int = 0) -> tuple:
        """A nested list / tuple / dict of arguments, with its reference twin."""
        kind = data.draw(st.sampled_from(["list", "tuple", "dict"] + (["leaf"] * depth)))
        if kind == "leaf":
            return self.value_arg(data)
        size = data.draw(st.integers(0, 3))
        items = [self.container(data, depth + 1) if depth < 2 and data.draw(st.booleans()) else self.value_arg(data)
                 for _ in range(size)]
        if kind == "list":
            return [i[0] for i in items], [i[1] for i in items]
        if kind == "tuple":
            return tuple(i[0] for i in items), tuple(i[1] for i in items)
        return {f"k{j}": i[0] for j, i in enumerate(items)}, {f"k{j}": i[1] for j, i in enumerate(items)}

    def add_node(self, name, node, value, leaf=True) -> None:
        self.created.append(name)
        self.nodes.append(node)
        self.values.append(value)
        if leaf:
            self.leaves.append(node)
            self.leaf_values.append(value)

    def step(self, data) -> None:
        # stateful steps weigh more: their resume rules are the intricate ones
        choice = data.draw(st.sampled_from(["add", "scale", "pair", "flat", "acc", "acc", "push", "push", "push",
                                            "peek", "peek"]))
        name = self.name()
        if choice == "add":
            (a, va), (b, vb) = self.value_arg(data), self.value_arg(data)
            self.add_node(name, W_ADD(a, b, tag=name).set_name(name), add(va, vb, tag=name))
        elif choice == "scale":
            a, va = self.value_arg(data)
            k = data.draw(st.integers(0, 5))
            kwargs = {"k": k}
            if data.draw(st.booleans()):
                kwargs["offset"], voff = self.value_arg(data)
            else:
                voff = 0
            self.add_node(name, W_SCALE(a, tag=name, **kwargs).set_name(name),
                          scale(va, k=k, offset=voff, tag=name))
        elif choice == "pair":
            a, va = self.value_arg(data)
            node = W_PAIR(a, tag=name).set_name(name)
            value = pair(va, tag=name)
            self.created.append(name)
            self.leaves.append(node)
            self.leaf_values.append(value)
            for i in (0, 1):  # only its parts are arguments of later nodes
                self.nodes.append(node[i])
                self.values.append(value[i])
        elif choice == "flat":
            arg, varg = self.container(data)
            self.add_node(name, W_FLAT(arg, tag=name).set_name(name), flat_sum(varg, tag=name))
        elif choice == "acc":
            start, vstart = self.value_arg(data)
            node = W_ACC(start, tag=name).set_name(name)
            self.created.append(name)
            self.objects.append((node, Acc(vstart, tag=name), name, []))
        elif choice == "push" and self.objects:
            obj, instance, _, calls = self.objects[data.draw(st.integers(0, len(self.objects) - 1))]
            n, vn = self.value_arg(data)
            calls.append(name)
            self.add_node(name, obj.push(n, tag=name).set_name(name), instance.push(vn, tag=name))
        elif choice == "peek" and self.objects:
            obj, instance, obj_name, _ = self.objects[data.draw(st.integers(0, len(self.objects) - 1))]
            self.parents[name] = obj_name
            self.add_node(name, W_PEEK(obj, tag=name).set_name(name), peek(instance, tag=name))



def build(data, max_steps: int) -> tuple[Program, list]:
    """A random program of 1 to ``max_steps`` steps, and its leaves' reference values."""
    program = Program()
    for _ in range(data.draw(st.integers(1, max_steps))):
        program.step(data)
    for obj, instance, obj_name, calls in program.objects:
        if not calls and obj_name not in program.parents.values():
            # an object nothing uses is no part of the workflow: make something use it
            name = program.name()
            program.parents[name] = obj_name
            program.add_node(name, W_PEEK(obj, tag=name).set_name(name), peek(instance, tag=name))
    if not program.leaves:  # only objects: give the workflow a leaf
        name = program.name()
        program.add_node(name, W_ADD(1, 2, tag=name).set_name(name), add(1, 2, tag=name))
    return program, program.leaf_values


# ---------------------------------------------------------------------------
# the properties
# ---------------------------------------------------------------------------

# no example database: the tests must not write into the shared working tree.
# FF_PROPERTY_SCALE scales every example count (tools/mutation.sh runs them once per mutant: fewer there).
SCALE = float(os.environ.get("FF_PROPERTY_SCALE", "1"))
SETTINGS = settings(max_examples=max(1, int(100 * SCALE)), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.data())
def test_local_backend_gives_the_plain_functions_values(data):
    CALLS.clear()
    program, expected = build(data, max_steps=14)
    reference_calls = list(CALLS)
    CALLS.clear()
    result = LocalWorkflow(*program.leaves, workflow_name="prop").run()
    assert (result if len(program.leaves) > 1 else [result]) == expected
    assert CALLS == reference_calls  # each node ran once, in creation order


def must_compute(program: Program, deleted: set) -> set:
    """The names a resumed run computes after ``deleted`` were removed from storage."""
    computed = set(deleted)
    order = {name: i for i, name in enumerate(program.created)}
    for _, _, obj_name, calls in program.objects:
        upto = max((i for i, call in enumerate(calls) if call in deleted), default=-1)
        needed = upto >= 0
        for peeker, taken in program.parents.items():
            if taken == obj_name and peeker in deleted:
                # a recomputed function that takes the object sees every call made before it
                needed = True
                upto = max([upto] + [i for i, call in enumerate(calls) if order[call] < order[peeker]])
        if needed:
            computed.add(obj_name)
            computed.update(calls[: upto + 1])
    return computed


# many examples: cheap (local, a temporary folder), and where the intricate rules are
@settings(SETTINGS, max_examples=max(1, int(200 * SCALE)))
@given(st.data())
def test_resume_after_deleting_any_stored_results(data):
    CALLS.clear()
    program, expected = build(data, max_steps=12)
    with tempfile.TemporaryDirectory(prefix="ffprop") as root:
        storage = storage_factory({"kind": "file", "options": {"path": root}})
        CALLS.clear()
        first = LocalWorkflow(*program.leaves, workflow_name="prop").set_storage(storage).run()
        assert (first if len(program.leaves) > 1 else [first]) == expected
        stored = storage.list_tasks("prop")
        objects = {name for _, _, name, _ in program.objects}
        assert sorted(stored) == sorted(n for n in program.created if n not in objects)
        # any subset; a single name half of the time (one lost result is the common case, and the
        # one that isolates the replay rules)
        subsets = st.one_of(st.sets(st.sampled_from(stored)), st.sampled_from(stored).map(lambda name: {name}))
        deleted = set(data.draw(subsets if stored else st.just(set())))
        for name in deleted:
            storage.remove_task("prop", name)
        CALLS.clear()
        again = LocalWorkflow(*program.leaves, workflow_name="prop").set_storage(storage).run()
        assert (again if len(program.leaves) > 1 else [again]) == expected
        assert sorted(CALLS) == sorted(must_compute(program, deleted))
        assert sorted(storage.list_tasks("prop")) == sorted(stored)


# ---------------------------------------------------------------------------
# Ray: a smaller run on one cluster for the module
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    from ray_fixtures import start_local_cluster, stop_local_cluster

    ray, temp_dir = start_local_cluster(__name__)
    yield ray
    stop_local_cluster(ray, temp_dir)


@settings(SETTINGS, max_examples=max(1, int(12 * SCALE)),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.data())
def test_ray_backend_gives_the_plain_functions_values(ray_cluster, data):
    from functionfuse.backends.builtin.rayback import RayWorkflow

    program, expected = build(data, max_steps=10)
    result = RayWorkflow(*program.leaves, workflow_name="prop").run()
    assert (result if len(program.leaves) > 1 else [result]) == expected
