"""The six regressions issue 13 found the suite blind to, one test (or more) for each.

Each test goes red when the code is broken the way the issue describes:

1. the Ray backend names the node that really raised, in the default set-up;
2. resume rebuilds a stateful object that was handed to a plain function (local, ray);
3. node plugins run on the local backend when storage is set;
4. ``storage.always_read = True`` hands downstream nodes the stored copy;
5. with no plugin on the per-node hooks, no pluggy call happens per node;
6. a save that fails while writing leaves no temporary file and the previous result intact.

One local Ray cluster serves the module (started on first use, so the
local-only tests do not wait for it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from ray_fixtures import start_local_cluster, stop_local_cluster

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.backends.builtin.rayback import RayWorkflow
from functionfuse.backends.plugins import InitializerPlugin
from functionfuse.errors import NodeExecutionError
from functionfuse.manager import clear_cache, get_plugins
from functionfuse.markers import hookimpl
from functionfuse.storage import storage_factory

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def ray_cluster():
    ray, temp_dir = start_local_cluster(__name__)
    yield ray
    stop_local_cluster(ray, temp_dir)


def file_storage_at(path):
    return storage_factory({"kind": "file", "options": {"path": str(path)}})


# ---------------------------------------------------------------------------
# the workflows' functions
# ---------------------------------------------------------------------------


@workflow
def constant(x):
    return x


@workflow
def bad(x):
    raise ValueError(f"bad got {x}")


@workflow
def after(x):
    return x + 1


@workflow
class Counter:
    def __init__(self, start):
        self.count = start

    def add(self, n):
        self.count += n
        return self.count


@workflow
def count_of(counter, extra):
    return counter.count + extra


# ---------------------------------------------------------------------------
# 1. the Ray backend names the node that raised, not the one that reported it
# ---------------------------------------------------------------------------


def test_ray_names_the_node_that_raised_in_the_default_setup(ray_cluster):
    # no storage, no node plugin, no hook recorder: only `after`'s result is watched
    failing = bad(constant(1).set_name("start")).set_name("bad")
    leaf = after(failing).set_name("after")
    wf = RayWorkflow(leaf, workflow_name="names")
    assert wf.new_run().plain  # the default set-up, the path the issue found untested
    with pytest.raises(NodeExecutionError) as info:
        wf.run()
    assert info.value.node_name == "bad"
    assert isinstance(info.value.__cause__, ValueError) and "bad got 1" in str(info.value.__cause__)


def test_ray_names_the_node_that_raised_two_levels_up(ray_cluster):
    failing = bad(constant(2).set_name("start")).set_name("bad")
    leaf = after(after(failing).set_name("middle")).set_name("after")
    with pytest.raises(NodeExecutionError) as info:
        RayWorkflow(leaf, workflow_name="names2").run()
    assert info.value.node_name == "bad"


# ---------------------------------------------------------------------------
# 2. resuming a stateful object that was handed to a plain function
# ---------------------------------------------------------------------------

COUNTED: list = []


@workflow
def counted_count_of(counter, extra):
    COUNTED.append("count_of")
    return counter.count + extra


def stateful_graph(func=count_of):
    counter = Counter(constant(10).set_name("start")).set_name("counter")
    c1 = counter.add(1).set_name("c1")
    c2 = counter.add(2).set_name("c2")
    seen = func(counter, 100).set_name("seen")  # the object itself, after both calls
    return c1, c2, seen


@pytest.mark.parametrize(
    "deleted", [["seen"], ["seen", "c1"], ["c2"], ["c1", "c2", "seen", "start"]]
)
def test_local_resume_rebuilds_an_object_handed_to_a_function(tmp_path, deleted):
    storage = file_storage_at(tmp_path / "st")
    first = LocalWorkflow(*stateful_graph(), workflow_name="obj").set_storage(storage).run()
    assert first == [11, 13, 113]
    removed = []
    for name in deleted:
        removed += storage.remove_task("obj", name)
    assert sorted(removed) == sorted(deleted)
    again = LocalWorkflow(*stateful_graph(), workflow_name="obj").set_storage(storage).run()
    assert again == [11, 13, 113]
    assert sorted(storage.list_tasks("obj")) == ["c1", "c2", "seen", "start"]


def test_local_resume_recomputes_only_the_function_and_replays_the_chain(tmp_path):
    storage = file_storage_at(tmp_path / "st")
    COUNTED.clear()
    LocalWorkflow(*stateful_graph(counted_count_of), workflow_name="obj").set_storage(storage).run()
    storage.remove_task("obj", "seen")
    COUNTED.clear()
    again = LocalWorkflow(*stateful_graph(counted_count_of), workflow_name="obj").set_storage(storage).run()
    assert again == [11, 13, 113] and COUNTED == ["count_of"]


@pytest.mark.parametrize("deleted", [["seen"], ["seen", "c1"]])
def test_ray_resume_rebuilds_an_object_handed_to_a_function(ray_cluster, tmp_path, deleted):
    storage = file_storage_at(tmp_path / "st")
    assert RayWorkflow(*stateful_graph(), workflow_name="obj").set_storage(storage).run() == [11, 13, 113]
    for name in deleted:
        storage.remove_task("obj", name)
    assert RayWorkflow(*stateful_graph(), workflow_name="obj").set_storage(storage).run() == [11, 13, 113]


# ---------------------------------------------------------------------------
# 3. node plugins on the local backend's storage path
# ---------------------------------------------------------------------------

SETTINGS: dict = {}


def set_dtype():
    SETTINGS["dtype"] = "float32"


@workflow
def read_dtype(x):
    return SETTINGS.get("dtype"), x


@pytest.mark.parametrize("with_storage", [True, False])
def test_local_node_plugin_runs_before_the_function(tmp_path, with_storage):
    SETTINGS.clear()
    leaf = read_dtype(constant(3).set_name("three")).set_name("dtype")
    wf = LocalWorkflow(leaf, workflow_name="np")
    if with_storage:
        wf.set_storage(file_storage_at(tmp_path / "st"))
    wf.query("^dtype$").set_plugins(InitializerPlugin(set_dtype))
    assert wf.run() == ("float32", 3)
    if with_storage:
        assert wf.storage.read_task("np", "dtype") == ("float32", 3)


# ---------------------------------------------------------------------------
# 4. always_read: downstream nodes receive the stored copy
# ---------------------------------------------------------------------------

MADE: list = []


class Loaded:
    """A value that knows whether it came back from storage (its unpickling marks it)."""

    def __init__(self, value):
        self.value = value
        self.loaded = False

    def __getstate__(self):
        return {"value": self.value}

    def __setstate__(self, state):
        self.value = state["value"]
        self.loaded = True


@workflow
def make_loaded():
    made = Loaded([1, 2])
    MADE.append(made)
    return made


@workflow
def inspect(x, y):
    return x.loaded, y.loaded, x is y, any(x is m for m in MADE), x.value


@pytest.mark.parametrize("always_read", [True, False])
def test_always_read_hands_on_the_stored_copy_locally(tmp_path, always_read):
    MADE.clear()
    made = make_loaded().set_name("made")
    storage = file_storage_at(tmp_path / "st")
    storage.always_read = always_read
    wf = LocalWorkflow(inspect(made, made).set_name("inspect"), workflow_name="ar").set_storage(storage)
    x_loaded, y_loaded, same, is_original, value = wf.run()
    assert value == [1, 2] and same  # one value, read once, passed twice
    assert (x_loaded, y_loaded, is_original) == ((True, True, False) if always_read else (False, False, True))


def test_always_read_hands_on_the_stored_copy_on_ray(ray_cluster, tmp_path):
    made = make_loaded().set_name("made")
    storage = file_storage_at(tmp_path / "st")
    storage.always_read = True
    wf = RayWorkflow(inspect(made, made).set_name("inspect"), workflow_name="ar").set_storage(storage)
    x_loaded, y_loaded, _, _, value = wf.run()
    assert value == [1, 2] and x_loaded and y_loaded


# ---------------------------------------------------------------------------
# 5. unused hooks cost nothing: no pluggy call per node
# ---------------------------------------------------------------------------


class ExecuteCounter:
    """A non-built-in ff_execute_node: the per-node hook must then go through pluggy."""

    name = "blindspots-execute-counter"

    def __init__(self):
        self.calls = []

    @hookimpl(wrapper=True)
    def ff_execute_node(self, node):
        self.calls.append(node.name)
        return (yield)


def chain(length):
    node = constant(0).set_name("n0")
    for index in range(1, length):
        node = after(node).set_name(f"n{index}")
    return node


def hook_calls(host, run):
    """The names of the pluggy hook calls made by ``run()`` through ``host``'s manager."""
    calls = []
    undo = host.pm.add_hookcall_monitoring(lambda name, impls, kwargs: calls.append(name), lambda *a: None)
    try:
        value = run()
    finally:
        undo()
    return value, calls


def test_plain_run_inlines_the_built_in_hooks():
    leaf = chain(20)
    wf = LocalWorkflow(leaf, workflow_name="plain", record=False)
    host = wf.plugins
    for hook in ("ff_execute_node", "ff_storage_save", "ff_storage_read", "ff_before_node", "ff_after_node"):
        assert host.live(hook) is None, hook
    run = wf.new_run()
    assert run.worker_hooks is None and run.plain
    value, calls = hook_calls(host, wf.run)
    assert value == 19
    per_node = [name for name in calls if name in ("ff_execute_node", "ff_prepare_node", "ff_before_node",
                                                    "ff_after_node", "ff_storage_save", "ff_storage_read")]
    assert per_node == [] and "ff_before_run" in calls  # the monitor saw the run's own hooks


def test_plain_run_on_storage_calls_no_storage_hook(tmp_path):
    wf = LocalWorkflow(chain(10), workflow_name="plainst", record=False).set_storage(file_storage_at(tmp_path))
    value, calls = hook_calls(wf.plugins, wf.run)
    assert value == 9 and "ff_before_run" in calls
    assert not {"ff_execute_node", "ff_storage_save", "ff_storage_read"} & set(calls)
    value, calls = hook_calls(wf.plugins, wf.run)  # every node read back
    assert value == 9 and "ff_storage_read" not in calls


def test_a_plugin_on_the_hook_turns_the_shortcut_off():
    counter = ExecuteCounter()
    wf = LocalWorkflow(chain(20), workflow_name="counted", plugins=[counter], record=False)
    assert wf.plugins.live("ff_execute_node") is not None
    assert wf.new_run().worker_hooks is not None and wf.new_run().worker_hooks.execute
    value, calls = hook_calls(wf.plugins, wf.run)
    assert value == 19 and calls.count("ff_execute_node") == 20 and len(counter.calls) == 20


def test_tracing_turns_the_shortcut_off(capsys):
    # a traced host keeps the stderr it was built with: build one on this test's captured stderr
    clear_cache()
    try:
        wf = LocalWorkflow(chain(3), workflow_name="traced", trace="json", record=False)
        assert wf.plugins.live("ff_execute_node") is not None and wf.new_run().worker_hooks is not None
        assert wf.run() == 2
    finally:
        clear_cache()
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert [e["node"] for e in events if e["hook"] == "ff_execute_node"] == ["n0", "n1", "n2"]


def test_the_default_host_has_no_live_per_node_hook():
    host = get_plugins()
    assert [h for h in ("ff_execute_node", "ff_storage_save", "ff_storage_read") if host.live(h) is not None] == []


# ---------------------------------------------------------------------------
# 6. a save that fails while writing: no temporary left, the previous result intact
# ---------------------------------------------------------------------------

# A child process with a file-size limit (RLIMIT_FSIZE): writing past it fails with EFBIG for real,
# as a full disk would, after the temporary file was opened and partly written.
FULL_DISK = textwrap.dedent(
    """
    import json, os, resource, signal, sys
    from functionfuse.storage import storage_factory
    from functionfuse.errors import StorageError

    root = sys.argv[1]
    storage = storage_factory({"kind": "file", "options": {"path": root}})
    storage.save("wf", "result", "small")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        storage.save("wf", "result", "x" * 100_000)
        outcome = "saved"
    except StorageError as exc:
        outcome = "StorageError: " + str(exc)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    print(json.dumps({"outcome": outcome, "files": sorted(os.listdir(os.path.join(root, "wf"))),
                      "value": storage.read_task("wf", "result")}))
    """
)


def test_a_save_failing_midway_leaves_no_temporary_and_keeps_the_previous_result(tmp_path):
    root = tmp_path / "storage"
    out = subprocess.run([sys.executable, "-c", FULL_DISK, str(root)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["outcome"].startswith("StorageError") and "'result'" in report["outcome"]
    assert "File too large" in report["outcome"] or "27" in report["outcome"]  # EFBIG: the write itself failed
    assert report["files"] == ["result.ffr"]  # no .ff-tmp-* left behind
    assert report["value"] == "small"
