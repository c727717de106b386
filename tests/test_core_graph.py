"""Graph: the closure rule, deterministic order, no recursion, find_nodes and query."""

import pytest

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.backends.plugins import InitializerPlugin
from functionfuse.errors import InvalidOptionError, UnknownQueryAttributeError
from functionfuse.graph import closure


@workflow
def inc(x):
    return x + 1


@workflow
def add(a, b):
    return a + b


def test_closure_includes_descendants_of_roots_and_their_parents():
    root = inc(0).set_name("root")
    leaf = inc(root).set_name("leaf")
    other_root = inc(10).set_name("other_root")
    add(root, other_root).set_name("sibling")  # not passed in: found as a descendant of root
    names = [n.name for n in closure([leaf])]
    # sibling descends from root; other_root is its parent
    assert names == ["root", "leaf", "other_root", "sibling"]
    assert LocalWorkflow(leaf, workflow_name="c").run() == 2


def test_order_is_creation_order_and_topological():
    a = inc(0).set_name("a")
    c = inc(5).set_name("c")
    b = add(a, c).set_name("b")
    d = add(b, a).set_name("d")
    order = [n.name for n in closure([d])]
    assert order == ["a", "c", "b", "d"]
    assert order == [n.name for n in closure([d])]


def test_chain_of_a_million_nodes_runs():
    node = inc(0)
    for _ in range(999_999):
        node = inc(node)
    assert LocalWorkflow(node, workflow_name="million").run() == 1_000_000


def test_find_nodes_fullmatch_and_none():
    n1 = inc(0).set_name("node1")
    n2 = inc(n1).set_name("node2")
    n3 = inc(n2).set_name("xnode3")
    wf = LocalWorkflow(n3, workflow_name="find")
    assert [n.name for n in wf.find_nodes("^node.*$")] == ["node1", "node2"]
    assert [n.name for n in wf.find_nodes("node")] == []  # full match, not search
    assert len(wf.find_nodes(None)) == 3 and len(wf.find_nodes()) == 3


def test_query_chains_and_set_plugin():
    seen = []
    n1 = inc(0).set_name("node1")
    n2 = inc(n1).set_name("node2")
    wf = LocalWorkflow(n2, workflow_name="q")
    query = wf.query("^node1$")
    assert query.set_plugins(InitializerPlugin(lambda: seen.append("a"))) is query
    wf.set_plugin("^node2$", InitializerPlugin(lambda: seen.append("b")))
    assert wf.run() == 2
    assert seen == ["a", "b"]


def test_query_refuses_unknown_attribute_and_bad_plugin():
    wf = LocalWorkflow(inc(0).set_name("n"), workflow_name="q")
    with pytest.raises(UnknownQueryAttributeError, match="'local'.*'remote_args'"):
        wf.query("^n$").set_remote_args({"num_cpus": 1})
    with pytest.raises(InvalidOptionError, match="not a node plugin"):
        wf.query("^n$").set_plugins(42)
