"""The local backend's in-process loops: outcomes the core keeps, Ctrl-C, and the node graph's compact links.

A run with storage and only built-in plugins takes the core's loop without NodeCalls
(``run_stored_in_process``); one with a per-node hook takes the NodeCall loop; one without
storage or record the plain loop. All three must keep the same promises.
"""

import pytest

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import InvalidNameError, NodeExecutionError
from functionfuse.frontend import validate_name
from functionfuse.markers import hookimpl
from functionfuse.storage import storage_factory


@workflow
def inc(x):
    return x + 1


@workflow
def boom(x):
    raise ValueError(f"boom at {x}")


@workflow
def interrupt(x):
    raise KeyboardInterrupt


@workflow
def pair(a, b):
    return a + b


class AfterNode:
    """A third-party per-node hook: the run takes the NodeCall loop."""

    def __init__(self):
        self.seen = []

    @hookimpl
    def ff_after_node(self, node, context, info):
        self.seen.append((node.name, isinstance(info["duration"], float)))


def _store(tmp_path):
    return storage_factory({"kind": "file", "options": {"path": str(tmp_path / "store")}})


LOOPS = ["stored", "hooked", "recorded"]


def _workflow(leaf, tmp_path, loop, name="w"):
    if loop == "stored":
        return LocalWorkflow(leaf, workflow_name=name).set_storage(_store(tmp_path))
    if loop == "hooked":
        return LocalWorkflow(leaf, workflow_name=name, plugins=[AfterNode()]).set_storage(_store(tmp_path))
    return LocalWorkflow(leaf, workflow_name=name, record=True)  # no storage: the record alone


@pytest.mark.parametrize("loop", LOOPS)
def test_the_record_says_what_happened_to_every_node(tmp_path, loop):
    a = inc(1).set_name("a")
    b = boom(a).set_name("b")
    c = inc(b).set_name("c")
    wf = _workflow(c, tmp_path, loop)
    with pytest.raises(NodeExecutionError, match="node 'b'"):
        wf.run()
    record = wf.run_record
    assert record["counts"] == {"computed": 1, "stored": 0, "failed": 1, "not reached": 1}
    nodes = record["nodes"]
    assert list(nodes) == ["a", "b", "c"] and len(nodes) == 3 and "b" in nodes and "x" not in nodes
    assert nodes["a"]["outcome"] == "computed" and nodes["a"]["worker"].startswith("pid ")
    assert isinstance(nodes["a"]["duration"], float) and isinstance(nodes["a"]["start"], float)
    assert nodes["a"]["kind"] == "call" and nodes["a"]["qualname"] == "inc"
    assert nodes["b"]["outcome"] == "failed" and nodes["b"]["error"] == "ValueError: boom at 2"
    assert nodes["c"] == {"outcome": "not reached", "kind": "call", "qualname": "inc", "start": None,
                          "duration": None, "worker": None, "host": None, "error": None, "attempts": None}
    with pytest.raises(KeyError):
        nodes["x"]


def test_a_rerun_records_stored_nodes_and_the_read_back_equals_the_run(tmp_path):
    from plugins_builtin.runrecord import read_run_record

    leaf = inc(inc(1).set_name("one")).set_name("two")
    wf = LocalWorkflow(leaf, workflow_name="w").set_storage(_store(tmp_path))
    assert wf.run() == 3
    again = LocalWorkflow(leaf, workflow_name="w").set_storage(_store(tmp_path))
    assert again.run() == 3
    assert again.run_record["counts"] == {"computed": 0, "stored": 2, "failed": 0, "not reached": 0}
    assert again.run_record["nodes"]["one"]["outcome"] == "stored"
    assert read_run_record(again.storage, "w") == again.run_record


def test_a_third_party_after_node_hook_still_fires_for_every_node(tmp_path):
    hook = AfterNode()
    leaf = inc(inc(1).set_name("one")).set_name("two")
    wf = LocalWorkflow(leaf, workflow_name="w", plugins=[hook]).set_storage(_store(tmp_path))
    assert wf.run() == 3
    assert hook.seen == [("one", True), ("two", True)]
    assert wf.run_record["nodes"]["two"]["outcome"] == "computed"


@pytest.mark.parametrize("stored", [False, True])
def test_ctrl_c_in_a_node_is_raised_as_it_is_and_keeps_what_finished(tmp_path, stored):
    first = inc(1).set_name("first")
    leaf = interrupt(first).set_name("stop")
    wf = LocalWorkflow(leaf, workflow_name="w")
    if stored:
        wf.set_storage(_store(tmp_path))
    with pytest.raises(KeyboardInterrupt) as caught:  # not wrapped as the node's failure
        wf.run()
    assert getattr(caught.value, "_ff_node", None) == "stop"
    if stored:
        assert wf.storage.list_tasks("w") == ["first"]


def test_parents_and_children_links_of_any_count():
    root = inc(0).set_name("root")
    assert root.parents == () and root.children == [] and root.last_child is None
    one = inc(root)
    assert one.parents == (root,) and isinstance(one.parents, tuple)
    assert root.children == [one] and root.last_child is one
    two = pair(root, one)
    assert two.parents == (root, one) and root.children == [one, two] and root.last_child is two
    assert two.parents is two.args  # two whole, distinct node arguments: the same tuple
    three = pair(root, 5)
    assert three.parents == (root,) and root.children == [one, two, three] and root.last_child is three
    four = pair(root, root)  # one parent taken twice: counted once
    assert four.parents == (root,) and root.children == [one, two, three, four] and root.last_child is four
    assert one.children == [two] and one.last_child is two
    assert pair(one, 5).parents == (one,) and pair(5, one).parents == (one,)


def test_the_workflow_takes_every_descendant_of_its_roots_and_their_parents():
    root = inc(0).set_name("root")
    side = inc(root).set_name("side")  # not an ancestor of the leaf: a descendant of its root
    other = inc(100).set_name("other")  # a parent of a descendant, from outside
    joined = pair(side, other).set_name("joined")
    again = inc(joined).set_name("again")
    leaf = inc(root).set_name("leaf")
    unrelated = inc(7).set_name("unrelated")
    wf = LocalWorkflow(leaf, workflow_name="w")
    assert [n.name for n in wf.nodes] == ["root", "side", "other", "joined", "again", "leaf"]
    assert unrelated not in wf.nodes
    assert wf.run() == 2


def test_the_plain_loop_releases_a_value_after_its_last_child_only():
    root = inc(0).set_name("root")
    kids = [pair(root, i).set_name(f"k{i}") for i in range(4)]
    leaf = pair(kids[0], kids[3]).set_name("leaf")
    assert LocalWorkflow(leaf, workflow_name="w").run() == 1 + 4


def test_names_checked_once_are_still_checked_for_what_they_are(monkeypatch):
    import functionfuse.frontend as frontend

    assert validate_name("fine") == "fine" and validate_name("fine") == "fine"
    for bad in ("", "a/b", ".hidden", "x" * 201, "\ud800"):
        with pytest.raises(InvalidNameError):
            validate_name(bad)

    class Sneaky(str):
        pass

    assert validate_name(Sneaky("sneaky")) == "sneaky"
    assert "sneaky" not in frontend._valid_names  # a subclass is never remembered as a checked str
    monkeypatch.setattr(frontend, "_VALID_NAMES_KEPT", 2)
    frontend._valid_names.clear()
    validate_name("n1")
    validate_name("n2")
    validate_name("n3")  # the bound is reached: the remembered names start over
    assert frontend._valid_names == {"n3"}


@workflow
def total(*xs):
    return sum(xs)


def test_dependencies_at_any_argument_position_get_their_values():
    one = inc(0).set_name("one")  # 1
    two = inc(one).set_name("two")  # 2
    args = list(range(100))
    for position in (0, 3, 63, 64, 65, 99):
        args[position] = two if position % 2 else one
    leaf = total(*args).set_name("sum")
    assert leaf.slots == (0, 3, 63, 64, 65, 99) and leaf.parents == (one, two)
    expected = sum(range(100)) - sum((0, 3, 63, 64, 65, 99)) + 1 + 2 + 2 + 1 + 2 + 2
    assert LocalWorkflow(leaf, workflow_name="w").run() == expected
    wide = total(*([0] * 70), one).set_name("wide")  # only past 64
    assert wide.slots == (70,) and LocalWorkflow(wide, workflow_name="w2").run() == 1
    same = [pair(one, 5), pair(two, 6)]  # one tuple per pattern, shared between nodes
    assert same[0].slots == (0,) and same[0].slots is same[1].slots
