"""The frontend: decorator, names, references, nested arguments, stateful nodes."""

import pytest

import functionfuse
from functionfuse import task, workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import InvalidNameError, NodeExecutionError, NotANodeError
from functionfuse.frontend import Node, Ref


@workflow
def add(a, b):
    return a + b


@workflow
def split(x):
    return x, x * 2


@workflow
def multiply(a, b):
    return a * b


def test_design_section_1_local_examples(tmp_path):
    n1 = add(1, 1).set_name("node1")
    n2 = add(n1, 1).set_name("node2")
    pair = split(n2)
    n3 = add(pair[0], pair[1])
    assert isinstance(n1, Node) and isinstance(pair[0], Ref)
    from functionfuse.storage import storage_factory

    wf = LocalWorkflow(n3, workflow_name="ops")
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}}))
    assert wf.run() == 9
    storage = wf.storage
    assert storage.list_tasks(workflow_name="ops", pattern="*") == sorted(["node1", "node2", pair.name, n3.name])
    assert storage.read_task(workflow_name="ops", task_name="node2") == 3
    storage.remove_task(workflow_name="ops", pattern="node*")
    assert storage.list_tasks(workflow_name="ops", pattern="*") == sorted([pair.name, n3.name])
    storage.remove_workflow("ops")
    assert storage.list_tasks(workflow_name="ops") == []


def test_task_alias_and_two_leaves():
    assert task is workflow
    a = add(1, 2)
    b = multiply(a, 10)
    assert LocalWorkflow(a, b, workflow_name="two").run() == [3, 30]


def test_default_names_count_per_function():
    first = add(1, 1)
    second = add(first, 1)
    other = multiply(1, 1)
    n_first = int(first.name.rsplit("_", 1)[1])
    assert first.name.startswith("add_") and len(first.name.rsplit("_", 1)[1]) == 4
    assert second.name == f"add_{n_first + 1:04d}"
    assert other.name.startswith("multiply_")
    assert first.has_default_name and not first.set_name("x").has_default_name


def test_references_with_any_key_and_nesting():
    @workflow
    def make():
        return {"a": [10, 20], "b": {"c": 3}}

    made = make()
    total = add(made["a"][1], made["b"]["c"])
    assert total.parents == (made,)
    assert LocalWorkflow(total, workflow_name="refs").run() == 23


def test_keyword_and_nested_arguments_are_dependencies():
    one = add(0, 1)
    two = add(one, 1)

    @workflow
    def gather(items, mapping=None, bag=None, pair=()):
        return items, mapping, sorted(bag), pair

    out = gather([one, 5, (two, one)], mapping={"x": two, "n": [one]}, bag={one, two}, pair=(two,))
    assert set(out.parents) == {one, two}
    items, mapping, bag, pair = LocalWorkflow(out, workflow_name="nested").run()
    assert items == [1, 5, (2, 1)]
    assert mapping == {"x": 2, "n": [1]}
    assert bag == [1, 2] and pair == (2,)


def test_deeply_nested_arguments_need_no_recursion():
    value = add(0, 1)
    nested: list = [value]
    for _ in range(5000):
        nested = [nested]

    @workflow
    def depth(x):
        d = 0
        while isinstance(x, list):
            x, d = x[0], d + 1
        return d, x

    assert LocalWorkflow(depth(nested), workflow_name="deep").run() == (5001, 1)


def test_seed_stateful_example_runs_all_seven_nodes():
    calls = []

    @workflow
    class IncrementalSum:
        def __init__(self, start):
            self.start = start

        def add(self, n):
            calls.append(n)
            self.start += n
            return self.start

    @workflow
    def minus(a, b):
        return a - b

    one = minus(4, 3).set_name("four_minus_three")
    incremental_sum = IncrementalSum(start=one).set_name("IncrementalSum")
    two = minus(3, one).set_name("three_minus_one")
    incremental_sum.add(two).set_name("one_plus_two")
    incremental_sum.add(two).set_name("three_plus_two")
    six = incremental_sum.add(one).set_name("five_plus_one")
    result = minus(six, 2).set_name("six_minus_two")
    wf = LocalWorkflow(result, workflow_name="stateful")
    assert [n.name for n in wf.nodes] == [
        "four_minus_three", "IncrementalSum", "three_minus_one", "one_plus_two",
        "three_plus_two", "five_plus_one", "six_minus_two",
    ]
    assert wf.run() == 4
    assert calls == [2, 2, 1]


def test_design_counter_example():
    @workflow
    class Counter:
        def __init__(self, start):
            self.value = start

        def add(self, n):
            self.value += n
            return self.value

    n1 = add(1, 1).set_name("node1")
    c = Counter(start=n1).set_name("counter")
    c.add(2).set_name("c1")
    c2 = c.add(3).set_name("c2")
    assert LocalWorkflow(c2, workflow_name="counter").run() == 7


def test_set_name_refuses_non_strings_and_unsafe_names():
    node = add(1, 1)
    with pytest.raises(InvalidNameError, match="must be a string"):
        node.set_name(5)
    for bad in ["", ".", "..", "a/b", "../x", "/abs", "a\\b", "nul\x00", "x" * 300]:
        with pytest.raises(InvalidNameError):
            node.set_name(bad)
    with pytest.raises(InvalidNameError, match="workflow"):
        LocalWorkflow(node, workflow_name="../escape")


def test_leaf_that_is_not_a_node():
    with pytest.raises(NotANodeError, match="leaf #1 is int"):
        LocalWorkflow(add(1, 1), 5, workflow_name="bad")
    with pytest.raises(NotANodeError):
        functionfuse.run("not a node")


def test_nodes_cannot_be_unpacked():
    with pytest.raises(TypeError, match="index it instead"):
        a, b = split(3)


def test_unknown_method_of_stateful_node():
    @workflow
    class Thing:
        def go(self):
            return 1

    thing = Thing()
    with pytest.raises(AttributeError, match="has no method 'stop'"):
        thing.stop()


def test_node_failure_names_node_chains_cause_and_keeps_saved(file_storage):
    @workflow
    def boom(x):
        raise ValueError(f"bad {x}")

    ok = add(1, 1).set_name("ok")
    failing = boom(ok).set_name("failing")
    after = add(failing, 1).set_name("after")
    wf = LocalWorkflow(after, workflow_name="fails")
    wf.set_storage(file_storage)
    with pytest.raises(NodeExecutionError, match="'failing'.*'fails'.*ValueError: bad 2") as info:
        wf.run()
    assert isinstance(info.value.__cause__, ValueError)
    assert info.value.node_name == "failing"
    assert file_storage.list_tasks("fails") == ["ok"]
    assert file_storage.read_task("fails", "ok") == 2


def test_same_nodes_run_twice_and_by_two_backends_in_one_process():
    n1 = add(2, 3)
    n2 = multiply(n1, n1)
    first = LocalWorkflow(n2, workflow_name="a")
    second = LocalWorkflow(n2, workflow_name="b")
    assert first.run() == 25 and second.run() == 25 and first.run() == 25
    assert functionfuse.run(n2, backend="local") == 25
