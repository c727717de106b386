"""The prefect addon (contrib/prefect): installed from its folder, run against Prefect's own ephemeral API.

Prefect reads its settings when it is imported, so they are set here, before
anything imports it: a private PREFECT_HOME (database, persisted results), no
analytics, and no PREFECT_API_URL, so Prefect starts its ephemeral API server
once for this test process. Each flow run costs about a second after that.
"""

import atexit
import os
import shutil
import sys
import tempfile

_PREFECT_HOME = tempfile.mkdtemp(prefix="ff-prefect-home-")
atexit.register(shutil.rmtree, _PREFECT_HOME, True)
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.pop("PREFECT_API_URL", None)
assert "prefect" not in sys.modules, "prefect was imported before its test settings were set"

import importlib.metadata
import io
import pathlib
import re
import subprocess
import threading

import pytest
from rich.console import Console

import functionfuse
from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.backends.plugins import InitializerPlugin, PluginCollection, RandomStatePlugin
from functionfuse.errors import InvalidOptionError, NodeExecutionError, UnknownQueryAttributeError
from functionfuse.markers import hookimpl
from plugins_builtin.progress import ProgressPlugin
from plugins_builtin.runrecord import list_run_records, read_run_record


@pytest.fixture(scope="module", autouse=True)
def ephemeral_api_server():
    """Stop the ephemeral API server Prefect starts on first use when this module ends, not at exit."""
    yield
    from prefect.logging.handlers import APILogHandler
    from prefect.server.api.server import SubprocessASGIServer

    APILogHandler().flush()  # send the pending run logs while the server is still up
    SubprocessASGIServer().stop()


CALLS: list = []  # names of the nodes whose function ran (tasks run in threads of this process)


@workflow
def add(a, b):
    CALLS.append("add")
    return a + b


@workflow
def multiply(a, b):
    CALLS.append("multiply")
    return a * b


@workflow
def split(x):
    return x, x * 10


@workflow
def task_name(x):
    from prefect.runtime import task_run

    return task_run.get_task_name() if hasattr(task_run, "get_task_name") else task_run.task_name


@workflow
def fail(x):
    raise ValueError(f"cannot use {x}")


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


def prefect_workflow(*leaves, name="ops"):
    from functionfuse.backends.addons.prefectback import PrefectWorkflow

    return PrefectWorkflow(*leaves, workflow_name=name)


# -- installation and lookup (no flow runs) ---------------------------------------------------------


def test_installed_addon_is_found_through_its_entry_point():
    from functionfuse.backends.addons.prefectback import PrefectWorkflow

    points = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="functionfuse")}
    assert points["prefect"] == "functionfuse_prefect.plugin"
    assert functionfuse.backend_class("prefect") is PrefectWorkflow
    assert PrefectWorkflow.backend_name == "prefect"
    assert PrefectWorkflow.query_keys == frozenset({"plugins", "task_args"})


def test_generate_flow_gives_a_prefect_flow_named_after_the_workflow():
    from prefect import Flow
    from prefect.task_runners import ThreadPoolTaskRunner

    wf = prefect_workflow(seed_graph(), name="operations")
    wf.set_prefect_flow_options({"task_runner": ThreadPoolTaskRunner(max_workers=2), "retries": 0})
    flow = wf.generate_flow()
    assert isinstance(flow, Flow)
    assert flow.name == "operations"
    assert isinstance(flow.task_runner, ThreadPoolTaskRunner)


def test_bad_options_are_refused_naming_them():
    wf = prefect_workflow(seed_graph())
    with pytest.raises(InvalidOptionError, match="'retires' is not a prefect.task option"):
        wf.query("^node1$").set_task_args({"retires": 2})
    with pytest.raises(InvalidOptionError, match="task_args .*must be a dict"):
        wf.query("^node1$").set_task_args(["retries", 2])
    with pytest.raises(InvalidOptionError, match="'task_runer' is not a prefect.flow option"):
        wf.set_prefect_flow_options({"task_runer": None})
    with pytest.raises(InvalidOptionError, match="must be a dict"):
        wf.set_prefect_flow_options("fast")
    # task_args belong to the prefect backend only
    with pytest.raises(UnknownQueryAttributeError, match="'task_args'"):
        LocalWorkflow(seed_graph()).query("^node1$").set_task_args({"retries": 1})
    assert wf.node_attrs == {}


def test_functionfuse_plugins_lists_the_addon(capsys):
    from functionfuse.cli import main

    assert main(["plugins"]) == 0
    rows = {line.split()[0]: line.split(None, 3)[1:] for line in capsys.readouterr().out.splitlines()}
    version = importlib.metadata.version("functionfuse-prefect")
    assert rows["prefect"] == ["functionfuse-prefect", version, "ff_backends, ff_query_assign"]


def test_without_the_addon_the_import_path_names_the_package_to_install():
    # Entry points off: what a user without contrib/prefect installed sees.
    code = (
        "try:\n"
        "    from functionfuse.backends.addons.prefectback import PrefectWorkflow\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    env = {**os.environ, "FUNCTIONFUSE_DISABLE_PLUGIN_AUTOLOAD": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env,
                          check=True)
    assert done.stdout.strip() == (
        "no installed plugin provides the backend 'prefect' (PrefectWorkflow): install it with pip install ./contrib/prefect"
    )
    assert "prefect" not in done.stderr


def test_addon_pins_fastapi_below_0_151():
    requires = importlib.metadata.requires("functionfuse-prefect")
    assert any(r.replace(" ", "").startswith("fastapi<0.151") for r in requires), requires
    assert any(r.replace(" ", "").startswith("prefect") for r in requires)


# -- flow runs ----------------------------------------------------------------------------------------


def test_seed_graph_runs_through_functionfuse_run_with_a_task_per_node():
    result = functionfuse.run(seed_graph(), backend="prefect", workflow_name="operations")
    assert result == LocalWorkflow(seed_graph()).run() == 6

    # Every node is a Prefect task named after the node: the function asks Prefect which task it runs in.
    first = task_name(1).set_name("first_node")
    second = task_name(first).set_name("second_node")
    assert prefect_workflow(first, second).run() == ["first_node", "second_node"]


def test_indexed_outputs_and_nested_arguments():
    pair = split(add(2, 3).set_name("five")).set_name("pair")
    total = add(pair[0], pair[1]).set_name("total")
    nested = add([pair[1]], [{"k": pair}["k"][0]]).set_name("nested")
    assert prefect_workflow(total, nested).run() == [55, [50, 5]]


def test_stateful_chain():
    one = add(4, -3).set_name("four_minus_three")
    incremental = IncrementalSum(start=one).set_name("IncrementalSum")
    two = add(3, -1).set_name("three_minus_one")
    incremental.add(two).set_name("one_plus_two")
    incremental.add(two).set_name("three_plus_two")
    six = incremental.add(one).set_name("five_plus_one")
    result = add(six, -2).set_name("six_minus_two")
    assert prefect_workflow(result).run() == 4


def test_storage_second_run_computes_nothing(tmp_path):
    storage = {"kind": "file", "options": {"path": str(tmp_path / "storage")}}
    leaf = seed_graph()
    CALLS.clear()
    assert functionfuse.run(leaf, backend="prefect", workflow_name="stored", storage=storage) == 6
    assert sorted(CALLS) == ["add", "add", "multiply"]

    CALLS.clear()
    from functionfuse.backends.addons.prefectback import PrefectWorkflow

    buffer = io.StringIO()
    bar = ProgressPlugin(console=Console(file=buffer, force_terminal=True, width=160))
    wf = PrefectWorkflow(leaf, workflow_name="stored", progress=bar).set_storage(storage)
    assert wf.run() == 6
    assert CALLS == []  # every result was read back
    assert sorted(wf.storage.list_tasks("stored")) == ["node1", "node2", "node3"]
    # The progress bar and the run record work on this backend as on the others.
    assert "3/3 nodes  3 read back  0 failed" in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buffer.getvalue())
    first, second = list_run_records(wf.storage, "stored")
    assert first["backend"] == second["backend"] == "prefect"
    assert first["counts"]["computed"] == 3 and second["counts"]["stored"] == 3
    assert 0 <= first["nodes"]["node3"]["duration"] <= first["duration"]  # within the run
    assert first["nodes"]["node3"]["worker"].startswith("pid ")


def test_persisted_results_and_concurrent_task_runner():
    from prefect.task_runners import ThreadPoolTaskRunner

    # Two sleeping-free nodes that can only finish if they run at the same time.
    barrier = threading.Barrier(2, timeout=30)

    @workflow
    def meet(x):
        barrier.wait()
        return threading.current_thread().name, x

    left = meet(1).set_name("left")
    right = meet(2).set_name("right")
    wf = prefect_workflow(left, right, name="concurrent")
    wf.set_prefect_flow_options({"task_runner": ThreadPoolTaskRunner(max_workers=2), "persist_result": True})
    # where this process's Prefect writes results (PREFECT_HOME as Prefect read it, whoever imported it first)
    from prefect.settings import get_current_settings

    results_dir = pathlib.Path(get_current_settings().results.local_storage_path)
    before = set(results_dir.iterdir()) if results_dir.exists() else set()
    (thread_a, one), (thread_b, two) = wf.run()
    assert (one, two) == (1, 2) and thread_a != thread_b
    # persist_result=True on the flow: each task's result was written to Prefect's result storage
    written = set(results_dir.iterdir()) - before
    assert len(written) >= 2


def test_cached_tasks_with_task_input_hash():
    from prefect.tasks import task_input_hash

    def build(b):
        return add(add(10, b).set_name("cached_first"), 1).set_name("cached_second")

    for b, expected_calls in ((1, 2), (1, 0), (2, 2)):
        CALLS.clear()
        wf = prefect_workflow(build(b), name="cached")
        wf.query("^cached_.*$").set_task_args({"cache_key_fn": task_input_hash, "persist_result": True})
        assert wf.run() == 11 + b
        # the second run finds both tasks in Prefect's cache; a changed argument misses it
        assert len(CALLS) == expected_calls, (b, CALLS)


def test_task_args_retries_and_hooks_fire_in_the_driver():
    attempts: list = []

    @workflow
    def flaky(x):
        attempts.append(x)
        if len(attempts) < 2:
            raise RuntimeError("first attempt fails")
        return x * 2

    seen: dict = {"before": [], "after": [], "prepared": []}

    class Recorder:
        name = "recorder"

        @hookimpl
        def ff_before_node(self, node):
            seen["before"].append(node.name)

        @hookimpl
        def ff_after_node(self, node, result, info):
            seen["after"].append((node.name, result, "duration" in info))

    leaf = add(flaky(4).set_name("flaky"), 1).set_name("after_flaky")
    from functionfuse.backends.addons.prefectback import PrefectWorkflow

    wf = PrefectWorkflow(leaf, workflow_name="retried", plugins=[Recorder()])
    wf.query("^flaky$").set_task_args({"retries": 1, "retry_delay_seconds": 0})
    assert wf.run() == 9
    assert attempts == [4, 4]
    assert seen["before"] == ["flaky", "after_flaky"]
    assert seen["after"] == [("flaky", 8, True), ("after_flaky", 9, True)]


def test_node_plugins_run_inside_the_task_before_the_function():
    state = threading.local()

    def init():
        state.initialized = True

    def set_seed(seed):
        state.seed = seed

    @workflow
    def observe(x):
        return x, getattr(state, "initialized", False), getattr(state, "seed", None)

    def build():
        n1 = observe(0).set_name("node1")
        return observe(n1[0]).set_name("node2")

    def configure(wf):
        wf.query("^node1$").set_plugins(InitializerPlugin(init))
        wf.query("^node2$").set_plugins(
            PluginCollection([InitializerPlugin(init), RandomStatePlugin(min=0, max=100, seed=7, seed_func=set_seed)])
        )
        return wf

    expected = configure(LocalWorkflow(build())).run()
    # the node functions run in worker threads: the plugin callables ran there, right before them;
    # the original's RandomStatePlugin sequence: local_initialize advances first, so node2 gets seed + 1
    assert configure(prefect_workflow(build(), name="plugins")).run() == expected == (0, True, 8)


def test_node_error_names_the_node_and_chains_the_cause(tmp_path):
    errors: list = []

    class OnError:
        name = "on-error"

        @hookimpl
        def ff_node_error(self, node, error):
            errors.append((node.name, type(error).__name__))

    from functionfuse.backends.addons.prefectback import PrefectWorkflow

    ok = add(1, 2).set_name("fine")
    leaf = fail(ok).set_name("broken")
    wf = PrefectWorkflow(leaf, workflow_name="failing", plugins=[OnError()])
    wf.set_storage(str(tmp_path / "storage"))
    with pytest.raises(NodeExecutionError, match="node 'broken' of workflow 'failing' failed: ValueError: cannot use 3") as info:
        wf.run()
    assert isinstance(info.value.__cause__, ValueError)
    assert errors == [("broken", "ValueError")]
    assert wf.storage.list_tasks("failing") == ["fine"]  # what finished before the failure stays saved
    record = read_run_record(wf.storage, "failing")
    assert record["status"] == "failed"
    assert {n: e["outcome"] for n, e in record["nodes"].items()} == {"fine": "computed", "broken": "failed"}
    assert record["nodes"]["broken"]["error"] == "ValueError: cannot use 3"



def test_prefect_hooks_fire_for_every_node_from_an_entry_point_plugin(tmp_path, monkeypatch):
    """A plugin installed through the ``functionfuse`` entry point sees every execute, save and read."""
    import importlib

    import ff_hookcounter
    from functionfuse.manager import clear_cache

    log = str(tmp_path / "hooks.log")
    in_task: list = []

    class WhereSaved:
        name = "where-saved"

        @hookimpl(wrapper=True)
        def ff_storage_save(self, task_name):
            from prefect.runtime import task_run

            in_task.append((task_name, task_run.get_task_name()))
            return (yield)

    monkeypatch.setenv(ff_hookcounter.ENV, log)
    importlib.reload(ff_hookcounter)  # the entry point's object is chosen when the module is imported
    clear_cache()  # so the next plugin manager loads it
    try:
        storage = {"kind": "file", "options": {"path": str(tmp_path / "storage")}}
        leaf = seed_graph()
        assert functionfuse.run(leaf, backend="prefect", workflow_name="counted", storage=storage,
                                plugins=[WhereSaved()]) == 6
        computed = ("node1", "node2", "node3")
        assert ff_hookcounter.counts(log)["calls"] == {
            (hook, name): 1 for hook in ("ff_execute_node", "ff_storage_save") for name in computed
        }
        # the save hooks ran inside each node's Prefect task
        assert sorted(in_task) == [(name, name) for name in computed]

        # Second run, one new node: its stored parents are read back (in the flow), nothing else runs again.
        open(log, "w").close()
        node2, node3 = leaf.parents[1], leaf
        assert functionfuse.run(add(node2, node3).set_name("node4"), backend="prefect", workflow_name="counted",
                                storage=storage) == 9
        assert ff_hookcounter.counts(log)["calls"] == {
            ("ff_storage_read", "node2"): 1,
            ("ff_storage_read", "node3"): 1,
            ("ff_execute_node", "node4"): 1,
            ("ff_storage_save", "node4"): 1,
        }
    finally:
        monkeypatch.delenv(ff_hookcounter.ENV)
        importlib.reload(ff_hookcounter)
        clear_cache()


FLOW_SCRIPT = """
from functionfuse import workflow
from functionfuse.backends.addons.prefectback import PrefectWorkflow


@workflow
def add(a, b):
    return a + b


n1 = add(1, 1).set_name("node1")
n2 = add(n1, 1).set_name("node2")
my_flow = PrefectWorkflow(add(n1, n2).set_name("node3"), workflow_name="deployable").generate_flow()
"""


def test_generated_flow_loads_from_an_entrypoint_and_travels_by_cloudpickle(tmp_path):
    """How Prefect gets the flow to run elsewhere: a worker loads ``script.py:var``; a runner pickles it."""
    import cloudpickle
    from prefect import Flow
    from prefect.flows import load_flow_from_entrypoint

    script = tmp_path / "pipeline.py"
    script.write_text(FLOW_SCRIPT)
    flow = load_flow_from_entrypoint(f"{script}:my_flow", use_placeholder_flow=False)
    assert isinstance(flow, Flow) and flow.name == "deployable"
    copy = cloudpickle.loads(cloudpickle.dumps(flow))
    assert copy() == 5


def test_readme_example_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example's storage folder goes here
    from doc_examples import run_blocks

    run_blocks("contrib/prefect/README.md", {"__name__": "readme_example"})  # every block, in order
    stored = functionfuse.storage.as_storage(str(tmp_path / "storage"))
    assert stored.list_tasks("operations") == ["node1", "node2", "node3"]


# ---------------------------------------------------------------------------
# a node blocked in C code (issue 14 item 8)
# ---------------------------------------------------------------------------


@workflow
def blocked_in_c(seconds):
    import ctypes

    ctypes.CDLL(None).sleep(seconds)  # libc sleep(3): the thread is inside C, no Python bytecode runs
    return "woke"


def _warm_up_prefect():
    # The ephemeral API server starts on the first flow of the module: keep that out of the timings.
    assert functionfuse.run(add(1, 1), backend="prefect", workflow_name="warm") == 2


@pytest.mark.timeout(120)
def test_set_timeout_stops_a_node_blocked_in_c_code(tmp_path):
    """query(...).set_timeout holds on prefect: run_node_call waits for the node's thread with the limit."""
    import time

    from functionfuse.backends.addons.prefectback import PrefectWorkflow
    from functionfuse.errors import NodeTimeoutError

    _warm_up_prefect()
    wf = PrefectWorkflow(add(blocked_in_c(60).set_name("stuck"), "!").set_name("after"), workflow_name="c-code")
    wf.query("^stuck$").set_timeout(2)
    wf.set_storage(str(tmp_path / "storage"))
    began = time.monotonic()
    with pytest.raises(NodeTimeoutError, match="node 'stuck' of workflow 'c-code'.*time limit of 2 s") as caught:
        wf.run()
    took = time.monotonic() - began
    assert took < 30, took  # about 3 s: the limit and a flow run; without it, 60 s
    assert caught.value.__class__ is NodeTimeoutError
    record = read_run_record(wf.storage, "c-code")
    assert record["nodes"]["stuck"]["outcome"] == "failed" and "NodeTimeoutError" in record["nodes"]["stuck"]["error"]
    assert record["nodes"]["after"]["outcome"] == "not reached"


@pytest.mark.timeout(120)
def test_prefect_timeout_seconds_does_not_stop_a_node_blocked_in_c_code():
    """What the README says: Prefect's own timeout_seconds fires only when the C call returns."""
    import time

    from functionfuse.backends.addons.prefectback import PrefectWorkflow

    _warm_up_prefect()
    wf = PrefectWorkflow(blocked_in_c(6).set_name("stuck"), workflow_name="c-code-prefect")
    wf.query("^stuck$").set_task_args({"timeout_seconds": 1})
    began = time.monotonic()
    with pytest.raises(NodeExecutionError, match="node 'stuck'.*TimeoutError"):
        wf.run()
    assert time.monotonic() - began >= 5.5  # the whole 6 s block, not the 1 s limit
