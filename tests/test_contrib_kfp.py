"""The kfp addon (contrib/kfp): compiled to KFP IR YAML, run with Kubeflow's local SubprocessRunner.

Each local pipeline run starts one Python subprocess per node (about a
quarter of a second each), so the graphs here are small.
"""

import base64
import importlib.metadata
import os
import shutil
import socket

import cloudpickle
import pytest
import yaml

import functionfuse
from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.backends.plugins import InitializerPlugin, PluginCollection, RandomStatePlugin
from functionfuse.errors import FunctionFuseError, InvalidOptionError, NodeExecutionError
from functionfuse.markers import hookimpl
from functionfuse.nodecall import CALL, NodeCall


@workflow
def add(a, b):
    return a + b


@workflow
def multiply(a, b):
    return a * b


@workflow
def split(x):
    return x, x * 10


@workflow
def fail(x):
    raise ValueError(f"cannot use {x}")


@workflow
def exit_process(x):
    os._exit(3)  # no exception, no report: the component's process just ends


@workflow
class IncrementalSum:
    def __init__(self, start):
        self.start = start

    def add(self, n):
        self.start += n
        return self.start


def seed_graph():
    """The quick-start graph of the seed documentation."""
    a_plus_b = add(1, 1).set_name("node1")
    a_plus_two_b = add(a_plus_b, 1).set_name("node2")
    return multiply(a_plus_b, a_plus_two_b).set_name("node3")


def indexed_graph():
    """A node returning a tuple, used through ``pair[0]`` and ``pair[1]``, also inside containers."""
    pair = split(add(2, 3).set_name("five")).set_name("pair")
    total = add(pair[0], pair[1]).set_name("total")
    nested = add([pair[1]], [{"k": pair}["k"][0]]).set_name("nested")
    return total, nested


def kfp_workflow(*leaves, name="ops", **options):
    from functionfuse.backends.addons.kfpback import KFPWorkflow

    return KFPWorkflow(*leaves, workflow_name=name, **options)


def compiled(wf, tmp_path):
    path = wf.compile(tmp_path / f"{wf.workflow_name}.yaml")
    with open(path) as handle:
        return yaml.safe_load(handle)


def task_inputs(spec, task):
    """``{input name: producer task}`` of one task of the compiled pipeline."""
    artifacts = spec["root"]["dag"]["tasks"][task].get("inputs", {}).get("artifacts", {})
    return {name: a["taskOutputArtifact"]["producerTask"] for name, a in artifacts.items()}


def payload_of(spec, task):
    """The node call a task's component runs (its position in the pipeline travels with it)."""
    constant = spec["root"]["dag"]["tasks"][task]["inputs"]["parameters"]["payload"]["runtimeValue"]["constant"]
    _index, call = cloudpickle.loads(base64.b64decode(constant))
    assert isinstance(call, NodeCall)
    return call


# -- installation and lookup ---------------------------------------------------------------------------


def test_installed_addon_is_found_through_its_entry_point(capsys):
    from functionfuse.backends.addons.kfpback import KFPWorkflow
    from functionfuse.cli import main

    points = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="functionfuse")}
    assert points["kfp"] == "functionfuse_kfp.plugin"
    assert functionfuse.backend_class("kfp") is KFPWorkflow
    assert KFPWorkflow.backend_name == "kfp"
    assert main(["plugins"]) == 0
    listed = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["kfp", "functionfuse-kfp", "0.1.0", "ff_backends"] in listed


# -- compiling: KFP IR YAML ---------------------------------------------------------------------------------


def test_seed_graph_compiles_to_one_component_per_node(tmp_path):
    wf = kfp_workflow(seed_graph(), name="operations", packages_to_install=["numpy>=1.20"])
    spec = compiled(wf, tmp_path)
    assert spec["pipelineInfo"]["name"] == "operations"
    assert set(spec["components"]) == {"comp-node1", "comp-node2", "comp-node3"}
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"node1", "node2", "node3"}
    assert {tasks[t]["componentRef"]["name"] for t in tasks} == {"comp-node1", "comp-node2", "comp-node3"}
    # edges are artifacts: each parent's "value" output feeds one input
    assert task_inputs(spec, "node1") == {}
    assert task_inputs(spec, "node2") == {"parent_0": "node1"}
    assert task_inputs(spec, "node3") == {"parent_0": "node1", "parent_1": "node2"}
    assert sorted(tasks["node3"]["dependentTasks"]) == ["node1", "node2"]
    assert spec["root"]["dag"]["outputs"]["artifacts"]["node_0"]["artifactSelectors"] == [
        {"outputArtifactKey": "value", "producerSubtask": "node3"}
    ]
    # what a cluster runs: the base image, pip installs (the user's, cloudpickle pinned, kfp), our runtime
    container = spec["deploymentSpec"]["executors"]["exec-node3"]["container"]
    assert container["image"] == "python:3.11"
    command = " ".join(container["command"])
    assert "'numpy>=1.20'" in command and f"'cloudpickle=={cloudpickle.__version__}'" in command
    assert "kfp==" in command and "def ff_run_node(" in command
    # the node travels as its node call: the function, and the parents' values are its arguments, in order
    call = payload_of(spec, "node3")
    assert (call.name, call.workflow_name, call.mode) == ("node3", "operations", CALL)
    assert call.func(6, 7) == 42
    assert call.template is None


def test_indexed_outputs_compile_to_one_edge_per_parent(tmp_path):
    spec = compiled(kfp_workflow(*indexed_graph(), name="indexed"), tmp_path)
    assert task_inputs(spec, "pair") == {"parent_0": "five"}
    # pair[0] and pair[1] are one dependency: the whole tuple arrives, the keys are applied in the component
    assert task_inputs(spec, "total") == {"parent_0": "pair"}
    assert task_inputs(spec, "nested") == {"parent_0": "pair"}
    call = payload_of(spec, "total")
    assert [(ref.node, ref.keys) for ref in call.template.args] == [(0, (0,)), (0, (1,))]
    assert set(spec["root"]["dag"]["outputs"]["artifacts"]) == {"node_0", "node_1"}


def test_names_are_made_kubernetes_names_and_kept_as_display_names(tmp_path):
    leaf = add(add(1, 2).set_name("First_Node"), 1).set_name("second node")
    spec = compiled(kfp_workflow(leaf, name="My_Workflow"), tmp_path)
    assert spec["pipelineInfo"]["name"] == "my-workflow"
    assert spec["pipelineInfo"]["displayName"] == "My_Workflow"
    tasks = spec["root"]["dag"]["tasks"]
    assert {t: tasks[t]["taskInfo"]["name"] for t in tasks} == {"first-node": "First_Node", "second-node": "second node"}


# -- running with the local runner ---------------------------------------------------------------------


def test_seed_graph_runs_through_functionfuse_run():
    assert functionfuse.run(seed_graph(), backend="kfp", workflow_name="operations") == 6


def test_indexed_outputs_stateful_chain_and_closures_run():
    offset = 100

    @workflow
    def shifted(x):  # a closure: travels by value, with its cell
        return x + offset

    total, nested = indexed_graph()
    one = add(4, -3).set_name("four_minus_three")
    incremental = IncrementalSum(start=one).set_name("IncrementalSum")
    two = add(3, -1).set_name("three_minus_one")
    incremental.add(two).set_name("one_plus_two")
    incremental.add(two).set_name("three_plus_two")
    six = incremental.add(one).set_name("five_plus_one")
    chained = shifted(add(six, -2).set_name("six_minus_two")).set_name("shifted")
    leaves = (total, nested, chained)
    assert kfp_workflow(*leaves, name="mixed").run() == LocalWorkflow(*leaves).run() == [55, [50, 5], 104]


def test_storage_second_run_computes_nothing_and_hooks_fire_in_the_driver(tmp_path):
    calls = tmp_path / "calls.txt"

    @workflow
    def logged_add(a, b):  # the components are subprocesses: they leave a trace in a file
        with open(calls, "a") as handle:
            handle.write(f"{a}+{b}\n")
        return a + b

    seen: dict = {"before": [], "after": [], "restored": []}

    class Recorder:
        name = "recorder"

        @hookimpl
        def ff_before_node(self, node):
            seen["before"].append(node.name)

        @hookimpl
        def ff_after_node(self, node, result, info):
            seen["after"].append((node.name, result, info.get("duration", -1) >= 0))

        @hookimpl
        def ff_node_restored(self, node):
            seen["restored"].append(node.name)

    leaf = logged_add(logged_add(1, 2).set_name("s1"), 3).set_name("s2")
    storage = {"kind": "file", "options": {"path": str(tmp_path / "storage")}}
    wf = kfp_workflow(leaf, name="stored", plugins=[Recorder()]).set_storage(storage)
    assert wf.run() == 6
    assert calls.read_text().split() == ["1+2", "3+3"]
    assert wf.storage.list_tasks("stored") == ["s1", "s2"]
    assert wf.storage.read_task("stored", "s1") == 3
    assert seen == {"before": ["s1", "s2"], "after": [("s1", 3, True), ("s2", 6, True)], "restored": []}

    seen.update(before=[], after=[], restored=[])
    assert wf.run() == 6  # the leaf is read back from storage by its component; s1 is not needed
    assert calls.read_text().split() == ["1+2", "3+3"]
    assert seen == {"before": [], "after": [], "restored": ["s1", "s2"]}


def test_node_plugins_run_inside_the_component_before_the_function():
    def init():
        os.environ["FF_KFP_INIT"] = "yes"

    def set_seed(seed):
        os.environ["FF_KFP_SEED"] = str(seed)

    @workflow
    def observe(x):
        return x, os.environ.get("FF_KFP_INIT"), os.environ.get("FF_KFP_SEED")

    n1 = observe(0).set_name("node1")
    n2 = observe(n1[0]).set_name("node2")
    wf = kfp_workflow(n1, n2, name="plugins")
    wf.query("^node1$").set_plugins(InitializerPlugin(init))
    wf.query("^node2$").set_plugins(
        PluginCollection([InitializerPlugin(init), RandomStatePlugin(min=0, max=100, seed=7, seed_func=set_seed)])
    )
    # each component is its own process: node1 never sees node2's seed; the original protocol
    # advances the seed in the driver before the node, so the first node gets seed + 1
    assert wf.run() == [(0, "yes", None), (0, "yes", "8")]
    assert "FF_KFP_INIT" not in os.environ


# -- bad input ------------------------------------------------------------------------------------------------


def test_node_error_names_the_node_and_chains_the_cause(tmp_path):
    errors: list = []

    class OnError:
        name = "on-error"

        @hookimpl
        def ff_node_error(self, node, error):
            errors.append((node.name, type(error).__name__))

    leaf = fail(add(1, 2).set_name("fine")).set_name("broken")
    wf = kfp_workflow(leaf, name="failing", plugins=[OnError()]).set_storage(str(tmp_path / "storage"))
    with pytest.raises(NodeExecutionError, match="node 'broken' of workflow 'failing' failed: ValueError: cannot use 3") as info:
        wf.run()
    assert isinstance(info.value.__cause__, ValueError)
    assert errors == [("broken", "ValueError")]
    assert wf.storage.list_tasks("failing") == ["fine"]  # what finished before the failure stays saved


def test_component_whose_process_dies_is_named_without_colour_codes():
    errors: list = []

    class OnError:
        name = "on-error"

        @hookimpl
        def ff_node_error(self, node, error):
            errors.append((node.name, str(error)))

    # the task is "dies-here": KFP prints it in quotes and colours; the error names the node
    leaf = add(exit_process(add(1, 2).set_name("fine")).set_name("Dies_Here"), 1).set_name("after")
    with pytest.raises(NodeExecutionError, match="node 'Dies_Here' of workflow 'dying' failed: ") as info:
        kfp_workflow(leaf, name="dying", plugins=[OnError()]).run()
    assert info.value.node_name == "Dies_Here"
    assert "component ended without reporting a result" in str(info.value)
    assert "\x1b" not in str(info.value) and "\x1b" not in str(info.value.__cause__)
    assert [name for name, _ in errors] == ["Dies_Here"] and "\x1b" not in errors[0][1]


@pytest.fixture
def hook_counter(tmp_path, monkeypatch):
    """The log file of the ``ff_hookcounter`` entry-point plugin, active for this test only."""
    import ff_hookcounter

    from functionfuse.manager import clear_cache

    path = str(tmp_path / "hooks.log")
    monkeypatch.setenv(ff_hookcounter.ENV, path)  # inherited by every component process
    # the entry point's object was made when the module was first imported, maybe without the variable
    monkeypatch.setattr(ff_hookcounter, "plugin", ff_hookcounter.HookCounter())
    clear_cache()
    yield path
    monkeypatch.undo()
    clear_cache()


def test_kfp_hooks_fire_for_every_node_from_an_entry_point_plugin(hook_counter, tmp_path):
    import ff_hookcounter

    counter = IncrementalSum(add(1, 2).set_name("h1")).set_name("counter")
    leaf = add(counter.add(4).set_name("h2"), 3).set_name("h3")
    wf = kfp_workflow(leaf, name="counted").set_storage(str(tmp_path / "storage"))
    assert wf.run() == 10
    first = ff_hookcounter.counts(hook_counter)
    computed = ["h1", "counter", "h2", "h3"]
    saved = ["h1", "h2", "h3"]  # a stateful object is not stored, its method calls are
    assert first["calls"] == {
        **{("ff_execute_node", name): 1 for name in computed},
        **{("ff_storage_save", name): 1 for name in saved},
    }
    assert os.getpid() not in first["pids"] and len(first["pids"]) == len(computed)  # one component each

    os.remove(hook_counter)
    assert wf.run() == 10  # the leaf is read back by its component, nothing is computed
    second = ff_hookcounter.counts(hook_counter)
    assert second["calls"] == {("ff_storage_read", "h3"): 1}
    assert os.getpid() not in second["pids"]


def test_unreachable_host_error_names_the_host(tmp_path):
    from functionfuse_kfp.errors import KFPConnectionError

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    host = f"http://127.0.0.1:{port}"
    wf = kfp_workflow(seed_graph(), name="remote", kfp_host=host)
    with pytest.raises(KFPConnectionError, match=f"kfp_host='{host}'") as info:
        wf.run()
    assert isinstance(info.value, FunctionFuseError)


def test_bad_options_and_unpicklable_nodes_are_refused_naming_them(tmp_path):
    import threading

    from functionfuse_kfp.errors import KFPCompileError

    with pytest.raises(InvalidOptionError, match="base_image"):
        kfp_workflow(seed_graph(), base_image="")
    with pytest.raises(InvalidOptionError, match="packages_to_install"):
        kfp_workflow(seed_graph(), packages_to_install="numpy")
    with pytest.raises(InvalidOptionError, match="kfp_host"):
        kfp_workflow(seed_graph(), kfp_host=8080)
    locked = add(threading.Lock(), 1).set_name("holds_a_lock")
    with pytest.raises(KFPCompileError, match="node 'holds_a_lock' of workflow 'ops'"):
        kfp_workflow(locked).compile(tmp_path / "never.yaml")
    assert not (tmp_path / "never.yaml").exists()


def test_readme_example_runs():
    from doc_examples import run_blocks

    namespace = {"__name__": "readme_example"}
    run_blocks("contrib/kfp/README.md", namespace)  # every block, in order
    with open(namespace["path"]) as handle:
        assert set(yaml.safe_load(handle)["root"]["dag"]["tasks"]) == {"node1", "node2", "node3"}
    shutil.rmtree(os.path.dirname(namespace["path"]))
