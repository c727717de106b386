"""Every hook specification has a test of its own here (named test_hook_<spec>)."""

import pickle

from pathlib import Path

import pytest

import functionfuse
from functionfuse import hookimpl, workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import InvalidOptionError, NodeExecutionError
from functionfuse.serializers import Serializer
from functionfuse.storage import storage_factory


@workflow
def add(a, b):
    return a + b


@workflow
def fail(x):
    raise RuntimeError("nope")


def small_graph():
    n1 = add(1, 1).set_name("node1")
    n2 = add(n1, 1).set_name("node2")
    return add(n1, n2).set_name("node3")


class Recorder:
    """A plugin that records the node hooks it sees."""

    def __init__(self):
        self.events = []

    @hookimpl
    def ff_before_run(self, context):
        self.events.append(("before_run", context.workflow_name, len(context.order)))

    @hookimpl
    def ff_after_run(self, context, error):
        self.events.append(("after_run", type(error).__name__ if error else None))

    @hookimpl
    def ff_before_node(self, node):
        self.events.append(("before", node.name))

    @hookimpl
    def ff_after_node(self, node, result, info):
        self.events.append(("after", node.name, result, sorted(info)))

    @hookimpl
    def ff_node_error(self, node, error):
        self.events.append(("error", node.name, str(error)))

    @hookimpl
    def ff_node_restored(self, node):
        self.events.append(("restored", node.name))


def test_hook_ff_before_run():
    rec = Recorder()
    LocalWorkflow(small_graph(), workflow_name="hooks", plugins=[rec]).run()
    assert rec.events[0] == ("before_run", "hooks", 3)


def test_hook_ff_after_run():
    rec = Recorder()
    LocalWorkflow(small_graph(), workflow_name="hooks", plugins=[rec]).run()
    assert rec.events[-1] == ("after_run", None)
    rec2 = Recorder()
    with pytest.raises(NodeExecutionError):
        LocalWorkflow(fail(1), workflow_name="hooks", plugins=[rec2]).run()
    assert rec2.events[-1] == ("after_run", "NodeExecutionError")


def test_hook_ff_before_node():
    rec = Recorder()
    LocalWorkflow(small_graph(), workflow_name="hooks", plugins=[rec]).run()
    assert [e[1] for e in rec.events if e[0] == "before"] == ["node1", "node2", "node3"]


def test_hook_ff_after_node():
    rec = Recorder()
    LocalWorkflow(small_graph(), workflow_name="hooks", plugins=[rec]).run()
    after = [e for e in rec.events if e[0] == "after"]
    assert [(e[1], e[2]) for e in after] == [("node1", 2), ("node2", 3), ("node3", 5)]
    assert after[0][3] == ["duration", "host", "start", "worker"]


def test_hook_ff_node_error():
    rec = Recorder()
    with pytest.raises(NodeExecutionError, match="boom_node"):
        LocalWorkflow(fail(add(1, 1)).set_name("boom_node"), workflow_name="hooks", plugins=[rec]).run()
    assert ("error", "boom_node", "nope") in rec.events


def test_hook_ff_node_restored(file_storage):
    rec = Recorder()
    wf = LocalWorkflow(small_graph(), workflow_name="restore", plugins=[rec])
    wf.set_storage(file_storage)
    wf.run()
    rec.events.clear()
    wf.run()
    assert [e for e in rec.events if e[0] not in ("before_run", "after_run")] == [
        ("restored", "node1"), ("restored", "node2"), ("restored", "node3"),
    ]


def test_hook_ff_execute_node():
    attempts = []

    class Retry:
        """A wrapper that retries a failing node once: the retry lives outside the scientist's code."""

        @hookimpl(wrapper=True)
        def ff_execute_node(self, node, args, kwargs):
            try:
                return (yield)
            except ZeroDivisionError:
                attempts.append(node.name)
                return node.func(*args, **kwargs)

    state = {"first": True}

    @workflow
    def flaky(x):
        if state.pop("first", False):
            raise ZeroDivisionError
        return x * 10

    assert LocalWorkflow(flaky(2).set_name("flaky"), workflow_name="retry", plugins=[Retry()]).run() == 20
    assert attempts == ["flaky"]


def test_hook_ff_prepare_node():
    order = []

    class Prepare:
        @hookimpl
        def ff_prepare_node(self, node):
            order.append(("local", node.name))
            return lambda: order.append(("remote", node.name))

    @workflow
    def mark(x):
        order.append(("call", x))
        return x

    LocalWorkflow(mark(1).set_name("m"), workflow_name="prep", plugins=[Prepare()]).run()
    assert order == [("local", "m"), ("remote", "m"), ("call", 1)]


def test_hook_ff_storage_save(file_storage):
    saved = []

    class SaveWatch:
        @hookimpl(wrapper=True)
        def ff_storage_save(self, task_name, obj):
            saved.append((task_name, obj))
            return (yield)

    wf = LocalWorkflow(small_graph(), workflow_name="sw", plugins=[SaveWatch()])
    wf.set_storage(file_storage)
    wf.run()
    assert saved == [("node1", 2), ("node2", 3), ("node3", 5)]
    assert file_storage.list_tasks("sw") == ["node1", "node2", "node3"]


def test_hook_ff_storage_read(file_storage):
    reads = []

    class ReadWatch:
        @hookimpl(wrapper=True)
        def ff_storage_read(self, task_name):
            value = yield
            reads.append((task_name, value))
            return value

    wf = LocalWorkflow(small_graph(), workflow_name="rw", plugins=[ReadWatch()])
    wf.set_storage(file_storage)
    wf.run()
    assert wf.run() == 5
    assert reads == [("node3", 5)]


class Box:
    def __init__(self, value):
        self.value = value


class BoxSerializer(Serializer):
    """Writes Box objects to a text file of their own."""

    name = "box"

    def match(self, obj):
        return isinstance(obj, Box)

    def write(self, obj, fs, path):
        fs.pipe_file(path + ".txt", str(obj.value).encode())
        return "txt"

    def read(self, token, fs, path):
        return Box(int(fs.cat_file(path + "." + token)))


class BoxPlugin:
    @hookimpl
    def ff_serializers(self, register):
        register("box", BoxSerializer, active=True)


@workflow
def make_boxes():
    return {"a": Box(1), "b": [Box(2), 3]}


def test_hook_ff_serializers(file_storage, tmp_path):
    wf = LocalWorkflow(make_boxes().set_name("boxes"), workflow_name="ser", plugins=[BoxPlugin()])
    wf.set_storage(file_storage)
    wf.run()
    data_dir = tmp_path / "storage" / "ser" / "boxes.ffd"
    committed = file_storage.data_path("ser", "boxes")  # this save's own folder inside boxes.ffd
    assert sorted(p.name for p in Path(committed).iterdir()) == ["0.txt", "1.txt"]
    value = file_storage.read_task("ser", "boxes")
    assert value["a"].value == 1 and value["b"][0].value == 2 and value["b"][1] == 3
    file_storage.remove_task("ser", task_name="boxes")
    assert not data_dir.exists()


def test_hook_ff_select_serializer(file_storage, tmp_path):
    chosen = []

    class OnlyFirstBox:
        @hookimpl
        def ff_select_serializer(self, obj):
            if isinstance(obj, Box) and obj.value == 1:
                chosen.append(obj.value)
                return BoxSerializer()
            return None

    wf = LocalWorkflow(make_boxes().set_name("boxes"), workflow_name="sel", plugins=[OnlyFirstBox()])
    wf.set_storage(file_storage)
    wf.run()
    assert chosen == [1]
    assert [p.name for p in Path(file_storage.data_path("sel", "boxes")).iterdir()] == ["0.txt"]
    value = file_storage.read_task("sel", "boxes")
    assert value["a"].value == 1 and value["b"][0].value == 2


def test_hook_ff_query_assign():
    class Priority:
        @hookimpl
        def ff_query_assign(self, key, value, backend):
            if key != "priority":
                return None
            if not isinstance(value, int):
                raise InvalidOptionError(f"priority must be an int, got {value!r}")
            return True

    leaf = small_graph()
    wf = LocalWorkflow(leaf, workflow_name="q", plugins=[Priority()])
    wf.query("^node[12]$").set_priority(5)
    assert {n.name: wf.attrs(n).get("priority") for n in wf.nodes} == {"node1": 5, "node2": 5, "node3": None}
    with pytest.raises(InvalidOptionError, match="priority must be an int"):
        wf.query("^node3$").set("priority", "high")


class SleepyWorkflow(LocalWorkflow):
    backend_name = "sleepy"


class SleepyBackend:
    @hookimpl
    def ff_backends(self, register):
        register("sleepy", SleepyWorkflow)
        register("needs_extra", "functionfuse_no_such_module:Thing", extra="nosuch")


def test_hook_ff_backends():
    assert functionfuse.run(small_graph(), backend="sleepy", plugins=[SleepyBackend()]) == 5
    with pytest.raises(functionfuse.errors.UnknownBackendError, match="'nosuch'.*local"):
        functionfuse.run(small_graph(), backend="nosuch")
    with pytest.raises(functionfuse.errors.MissingExtraError, match=r'pip install "functionfuse\[nosuch\]"'):
        functionfuse.run(small_graph(), backend="needs_extra", plugins=[SleepyBackend()])


def test_addon_backend_not_installed_names_its_install_command():
    # the prefect addon's entry point is blocked, as if it were not installed
    with pytest.raises(functionfuse.errors.UnknownBackendError, match=r"'prefect'.*pip install \./contrib/prefect"):
        functionfuse.run(small_graph(), backend="prefect", disable=["prefect"])


class MemoryKind:
    @hookimpl
    def ff_storage_kinds(self, register):
        register("scratch", lambda options: storage_factory(
            {"kind": "file", "options": {"path": f"memory://scratch/{options['name']}"}}
        ))


def test_hook_ff_storage_kinds():
    storage = storage_factory({"kind": "scratch", "options": {"name": "one"}}, plugins=[MemoryKind()])
    storage.save("wf", "t", {"v": 1})
    assert storage_factory({"kind": "file", "options": {"path": "memory://scratch/one"}}).read_task("wf", "t") == {
        "v": 1
    }


def test_hooks_fire_cheaply_when_unused():
    """With no plugin on per-node hooks, the local run inlines the built-ins (no pluggy call per node)."""
    calls = []

    class Count:
        @hookimpl
        def ff_execute_node(self, node):
            calls.append(node.name)

    node = add(0, 1)
    for _ in range(100):
        node = add(node, 1)
    LocalWorkflow(node, workflow_name="plain").run()
    LocalWorkflow(node, workflow_name="counted", plugins=[Count()]).run()
    assert len(calls) == 101
    plain = LocalWorkflow(node, workflow_name="plain")
    seen = []  # every pluggy hook call of the plain run (speed lives in benchmarks/)
    undo = plain.plugins.pm.add_hookcall_monitoring(lambda name, impls, kwargs: seen.append(name), lambda *a: None)
    try:
        assert plain.run() == 101
    finally:
        undo()
    assert "ff_before_run" in seen and "ff_execute_node" not in seen and "ff_prepare_node" not in seen


def test_storage_is_picklable_without_its_run_binding(file_storage):
    wf = LocalWorkflow(small_graph(), workflow_name="pk", plugins=[BoxPlugin()])
    wf.set_storage(file_storage)
    wf.run()
    clone = pickle.loads(pickle.dumps(file_storage))
    assert clone.read_task("pk", "node3") == 5


def test_hook_ff_cli_commands(capsys):
    from functionfuse import cli

    class Hello:
        @hookimpl
        def ff_cli_commands(self, subparsers):
            parser = subparsers.add_parser("hello", help="say hello")
            parser.add_argument("who")
            parser.set_defaults(handler=lambda args: print(f"hello {args.who}") or 3)

    import sys
    import types

    manager = functionfuse.manager
    module = types.ModuleType("ff_hello_cli")  # the core keeps no list of subcommands: a plugin adds one
    module.ff_cli_commands = Hello().ff_cli_commands
    sys.modules["ff_hello_cli"] = module
    original = manager.DEFAULT_PLUGINS
    manager.DEFAULT_PLUGINS = original + ("ff_hello_cli",)
    manager.clear_cache()
    try:
        assert cli.main(["hello", "world"]) == 3
        assert capsys.readouterr().out == "hello world\n"
    finally:
        manager.DEFAULT_PLUGINS = original
        manager.clear_cache()
        sys.modules.pop("ff_hello_cli")
    with pytest.raises(SystemExit):  # gone with the plugin
        cli.main(["hello", "world"])


def test_hook_ff_display():
    class Display:
        @hookimpl(tryfirst=True)
        def ff_display(self, workflow):
            return f"<svg>{workflow.workflow_name}</svg>"

    wf = LocalWorkflow(small_graph(), workflow_name="shown", plugins=[Display()])
    assert wf._repr_svg_() == "<svg>shown</svg>"
    assert wf._repr_mimebundle_()["image/svg+xml"] == "<svg>shown</svg>"


def test_a_raising_hook_is_a_plugin_error_naming_plugin_hook_and_node():
    class Broken:
        name = "broken-plugin"

        @hookimpl
        def ff_before_node(self, node):
            if node.name == "node2":
                raise ZeroDivisionError("oops")

    wf = LocalWorkflow(small_graph(), workflow_name="broken", plugins=[Broken()])
    with pytest.raises(functionfuse.errors.PluginError, match="'broken-plugin'.*ff_before_node.*'node2'") as info:
        wf.run()
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_the_node_error_wins_over_a_later_after_run_failure():
    class FailsAfter:
        @hookimpl
        def ff_after_run(self, context, error):
            raise OSError("disk full while saving the record")

    leaf = fail(add(1, 2).set_name("ok")).set_name("bad")
    wf = LocalWorkflow(leaf, workflow_name="precedence", plugins=[FailsAfter()])
    with pytest.raises(NodeExecutionError, match="'bad'") as info:
        wf.run()
    assert isinstance(info.value.__cause__, RuntimeError)
    assert any("disk full" in note for note in getattr(info.value, "__notes__", []))
