"""Tests written against the survivors of tools/mutation.sh (functionfuse/graph.py, frontend.py).

Each pins a behaviour the rest of the suite left open: exhaustive resume of a
small stateful program (every subset of stored results deleted, objects as
leaves, reads counted), a reference as a leaf, the closure of many branches,
the messages that name what is wrong.
"""

from __future__ import annotations

import collections
import itertools
import tempfile

import pytest

from functionfuse import hookimpl, workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import InvalidOptionError, NotANodeError
from functionfuse.graph import as_leaves, closure, consumers_count, find_nodes
from functionfuse.storage import storage_factory

CALLS: list = []


@workflow
def inc(x, tag="inc"):
    CALLS.append(tag)
    return x + 1


@workflow
def add(a, b):
    return a + b


@workflow
def split(x):
    return (x, x * 10)


@workflow
class Acc:
    def __init__(self, start, tag):
        CALLS.append(tag)
        self.total = start
        self.history: list = []

    def push(self, n, tag):
        CALLS.append(tag)
        self.total += n
        self.history.append(n)
        return self.total


@workflow
def peek(acc, tag):
    CALLS.append(tag)
    return (acc.total, len(acc.history))


class Reads:
    """Counts ff_storage_read calls by task name."""

    name = "mutation-kills-reads"

    def __init__(self):
        self.names: list = []

    @hookimpl(wrapper=True)
    def ff_storage_read(self, task_name):
        self.names.append(task_name)
        return (yield)


# ---------------------------------------------------------------------------
# resume of a small stateful program, every subset deleted
# ---------------------------------------------------------------------------


def program():
    """Two objects with interleaved calls and functions that take them; the names in creation order."""
    a = Acc(0, tag="a").set_name("a")
    p0 = peek(a, tag="p0").set_name("p0")  # before any call
    a1 = a.push(1, tag="a1").set_name("a1")
    b = Acc(100, tag="b").set_name("b")
    b1 = b.push(5, tag="b1").set_name("b1")
    p1 = peek(a, tag="p1").set_name("p1")  # after a1
    a2 = a.push(a1, tag="a2").set_name("a2")  # a call whose argument is an earlier call
    q1 = peek(b, tag="q1").set_name("q1")
    f = inc(a2, tag="f").set_name("f")
    return {"a": a, "p0": p0, "a1": a1, "b": b, "b1": b1, "p1": p1, "a2": a2, "q1": q1, "f": f}


EXPECTED = {"p0": (0, 0), "a1": 1, "b1": 105, "p1": (1, 1), "a2": 2, "q1": (105, 1), "f": 3}
CHAINS = {"a": ["a1", "a2"], "b": ["b1"]}
TAKERS = {"p0": ("a", 0), "p1": ("a", 1), "q1": ("b", 1)}  # function -> (object, calls made before it)
FUNCTIONS = ["p0", "a1", "b1", "p1", "a2", "q1", "f"]


def computed_after(deleted: set) -> set:
    computed = set(deleted)
    for obj, calls in CHAINS.items():
        upto = max((i for i, c in enumerate(calls) if c in deleted), default=-1)
        needed = upto >= 0
        for taker, (taken, before) in TAKERS.items():
            if taken == obj and taker in deleted:
                needed, upto = True, max(upto, before - 1)
        if needed:
            computed.add(obj)
            computed.update(calls[: upto + 1])
    return computed


@pytest.mark.parametrize("leaves", [FUNCTIONS, ["f", "q1"]], ids=["all-leaves", "two-leaves"])
def test_resume_every_subset_of_a_stateful_program(leaves):
    with tempfile.TemporaryDirectory(prefix="ffkill") as root:
        storage = storage_factory({"kind": "file", "options": {"path": root}})
        nodes = program()
        first = LocalWorkflow(*[nodes[n] for n in leaves], workflow_name="kill").set_storage(storage).run()
        assert first == [EXPECTED[n] for n in leaves]
        saved = {name: storage.read_task("kill", name) for name in FUNCTIONS}
        assert saved == EXPECTED  # every function node ran and was saved, leaf or not
        for size in range(len(FUNCTIONS) + 1):
            for deleted in itertools.combinations(FUNCTIONS, size):
                for name in FUNCTIONS:
                    if name in deleted:
                        storage.remove_task("kill", name)
                    elif not storage.file_exists("kill", name):
                        storage.save("kill", name, saved[name])
                nodes = program()
                reads = Reads()
                CALLS.clear()
                wf = LocalWorkflow(*[nodes[n] for n in leaves], workflow_name="kill", plugins=[reads],
                                   resume="name").set_storage(storage)
                assert wf.run() == [EXPECTED[n] for n in leaves], deleted
                computed = computed_after(set(deleted))
                assert sorted(CALLS) == sorted(computed), deleted
                # read: the leaves and the parents of what was computed, when not computed themselves
                wanted = set(leaves)
                for name in computed:
                    wanted.update(p.name for p in nodes[name].parents)
                assert sorted(reads.names) == sorted(wanted - computed - set(CHAINS)), deleted


def test_an_object_as_a_leaf_is_rebuilt_with_all_its_calls():
    with tempfile.TemporaryDirectory(prefix="ffkill") as root:
        storage = storage_factory({"kind": "file", "options": {"path": root}})
        for deleted in ([], ["a1"], ["a2"], ["a1", "a2"], ["p1"]):
            nodes = program()
            for name in deleted:
                storage.remove_task("kill", name)
            CALLS.clear()
            obj, f = LocalWorkflow(nodes["a"], nodes["f"], workflow_name="kill").set_storage(storage).run()
            assert (obj.total, obj.history, f) == (2, [1, 1], 3), deleted
            assert {"a", "a1", "a2"} <= set(CALLS)  # the leaf object is always rebuilt, every call replayed


# ---------------------------------------------------------------------------
# graph: leaves, closure, find, consumers
# ---------------------------------------------------------------------------


def test_a_reference_as_a_leaf_counts_as_its_node():
    pair = split(4).set_name("pair")
    assert as_leaves([pair[1]]) == (pair,)
    assert LocalWorkflow(pair[0], workflow_name="ref").run() == (4, 40)


def test_leaves_that_are_not_nodes_are_refused_by_name():
    with pytest.raises(NotANodeError, match=r"^workflow: leaf #1 is int 5, not a workflow node; pass the value "
                                            r"returned by calling a @workflow function$"):
        as_leaves([inc(1), 5])
    with pytest.raises(NotANodeError, match=r"^mine: give at least one leaf node$"):
        as_leaves([], where="mine")
    with pytest.raises(NotANodeError, match=r"^LocalWorkflow\('w'\): leaf #0 is str"):
        LocalWorkflow("x", workflow_name="w")


def test_closure_of_many_branches_misses_none():
    root = inc(0).set_name("root")
    leaf = inc(root).set_name("leaf")
    for i in range(40):
        branch = add(root, inc(100 + i).set_name(f"other{i}")).set_name(f"branch{i}")
        inc(branch).set_name(f"tip{i}")
    names = [n.name for n in closure([leaf])]
    assert len(names) == 2 + 40 * 3 and len(set(names)) == len(names)
    assert names[:2] == ["root", "leaf"] and names[-1] == "tip39"


def test_find_nodes_names_a_bad_pattern_as_a_query():
    nodes = closure([inc(inc(0).set_name("a")).set_name("b")])
    assert [n.name for n in find_nodes(nodes, None)] == ["a", "b"]
    assert [n.name for n in find_nodes(nodes, "a|b")] == ["a", "b"]
    with pytest.raises(InvalidOptionError, match=r"^query: '\[' is not a valid regular expression"):
        find_nodes(nodes, "[")
    with pytest.raises(InvalidOptionError, match=r"^query: the pattern must be a regular expression string"):
        find_nodes(nodes, 3)


def test_consumers_count_counts_each_consumer_once():
    a = inc(0).set_name("a")
    b = add(a, a).set_name("b")
    c = add(a, b).set_name("c")
    counts = consumers_count(closure([c]))
    assert {n.name: k for n, k in counts.items()} == {"a": 2, "b": 1, "c": 0}  # b takes a twice: one consumer


# ---------------------------------------------------------------------------
# frontend: containers holding nodes arrive whole; a lazy node refuses operators by name
# ---------------------------------------------------------------------------


@workflow
def echo(value):
    return value


class Tags(list):
    """A list subclass: rebuilt with its own type."""


def test_containers_holding_nodes_arrive_with_their_keys_order_and_types():
    one, two, three = inc(0).set_name("one"), inc(1).set_name("two"), inc(2).set_name("three")
    argument = {
        "plain": {"k1": one, "k2": [two, {"k3": three}]},
        "ordered": collections.OrderedDict([("z", one), ("a", two)]),
        "tuple": (one, (two, three)),
        "set": {one, 7},
        "frozen": frozenset([two]),
        "tags": Tags([three, one]),
        "pair": split(one)[1],
    }
    got = LocalWorkflow(echo(argument).set_name("echo"), workflow_name="containers").run()
    assert got == {
        "plain": {"k1": 1, "k2": [2, {"k3": 3}]},
        "ordered": collections.OrderedDict([("z", 1), ("a", 2)]),
        "tuple": (1, (2, 3)),
        "set": {1, 7},
        "frozen": frozenset([2]),
        "tags": [3, 1],
        "pair": 10,
    }
    assert list(got["plain"]) == ["k1", "k2"] and list(got["ordered"]) == ["z", "a"]
    assert type(got["ordered"]) is collections.OrderedDict and type(got["tags"]) is Tags
    assert type(got["frozen"]) is frozenset and type(got["set"]) is set


BINARY = [("+", lambda n: n + 1, lambda n: 1 + n), ("-", lambda n: n - 1, lambda n: 1 - n),
          ("*", lambda n: n * 1, lambda n: 1 * n), ("/", lambda n: n / 1, lambda n: 1 / n),
          ("//", lambda n: n // 1, lambda n: 1 // n), ("%", lambda n: n % 1, lambda n: 1 % n),
          ("**", lambda n: n ** 1, lambda n: 1 ** n), ("&", lambda n: n & 1, lambda n: 1 & n),
          ("|", lambda n: n | 1, lambda n: 1 | n), ("^", lambda n: n ^ 1, lambda n: 1 ^ n),
          ("<<", lambda n: n << 1, lambda n: 1 << n), (">>", lambda n: n >> 1, lambda n: 1 >> n)]
UNARY = [("'-node'", lambda n: -n), ("'+node'", lambda n: +n), ("'abs(node)'", abs), ("'~node'", lambda n: ~n),
         ("'int(node)'", int), ("'float(node)'", float), ("an index from it", lambda n: [1, 2][n])]


@pytest.mark.parametrize("symbol,forward,reverse", BINARY, ids=[b[0] for b in BINARY])
def test_a_lazy_node_refuses_each_binary_operator_by_name(symbol, forward, reverse):
    node = inc(0).set_name("lazy")
    head = "node 'lazy' has no value until it runs, so "
    with pytest.raises(TypeError) as info:
        forward(node)
    assert str(info.value) == (f"{head}'node {symbol} int' cannot be computed now; do it inside a @workflow "
                               "function that takes the node as an argument")
    with pytest.raises(TypeError) as info:
        reverse(node)
    assert str(info.value).startswith(f"{head}'int {symbol} node' cannot be computed now")
    with pytest.raises(TypeError) as info:
        forward(split(node).set_name("halves")[0])
    message = str(info.value)  # a reference names its node and key (quoted twice today: node "'halves'[0]")
    assert "'halves'[0]" in message and f"has no value until it runs, so 'node {symbol} int'" in message


@pytest.mark.parametrize("shown,expression", UNARY, ids=[u[0] for u in UNARY])
def test_a_lazy_node_refuses_each_unary_operator_by_name(shown, expression):
    with pytest.raises(TypeError) as info:
        expression(inc(0).set_name("lazy"))
    assert str(info.value).startswith(f"node 'lazy' has no value until it runs, so {shown} cannot be computed now")


def test_a_lazy_node_has_no_truth_in_user_code_but_is_an_object_inside_functionfuse():
    node = inc(0).set_name("lazy")
    with pytest.raises(TypeError, match=r"^node 'lazy' has no value until it runs, so its truth value"):
        bool(node)
    # functionfuse's own modules (and plugins on it) may write `node or default`
    assert eval("bool(node)", {"__name__": "functionfuse.somewhere", "node": node}) is True
    assert eval("bool(node)", {"__name__": "plugins_builtin.somewhere", "node": node}) is True
    with pytest.raises(TypeError):
        eval("bool(node)", {"__name__": "my_module", "node": node})
