"""Documented behaviour that had no test of its own (issue 13, part 2).

CLI (real subprocesses and signals), storage strings and kinds (a real moto
S3 server, a real Ray cluster), plugin registration failures, frontend
containers and the decorator, hooks that replace the built-ins, custom
serializers on Ray, and Ray's resource check on a real two-node cluster.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from interruptible import interruptible
from ray_fixtures import start_local_cluster, stop_local_cluster
from s3_fixtures import running_moto

import functionfuse
from functionfuse import hookimpl, workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.backends.builtin.rayback import RayWorkflow
from functionfuse.errors import NotANodeError, PluginError
from functionfuse.serializers import Serializer
from functionfuse.storage import storage_factory

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def ray_cluster():
    ray, temp_dir = start_local_cluster(__name__)
    yield ray
    stop_local_cluster(ray, temp_dir)


@pytest.fixture(scope="module")
def moto_s3():
    with running_moto() as server:
        yield server


# ---------------------------------------------------------------------------
# functions of the workflows
# ---------------------------------------------------------------------------


@workflow
def add(a, b):
    return a + b


@workflow
def total(pair):
    return pair.left + pair.right


@workflow
def dict_total(values):
    return type(values).__name__, sum(values.values()), values["missing"]


SCRIPT = textwrap.dedent(
    """
    from functionfuse import workflow

    @workflow
    def add(a, b):
        return a + b

    first = add(1, 2).set_name("first")
    result = add(first, 10).set_name("result")
    """
)

# a plugin module: appends every node it sees to the file named by $DOC_PLUGIN_LOG
PLUGIN = textwrap.dedent(
    """
    import os
    from functionfuse import hookimpl

    @hookimpl
    def ff_after_node(node):
        with open(os.environ["DOC_PLUGIN_LOG"], "a") as log:
            log.write(node.name + "\\n")
    """
)


def cli(*args, cwd=None, env=None, check=True, timeout=120):
    out = subprocess.run([sys.executable, "-m", "functionfuse", *args], capture_output=True, text=True, cwd=cwd,
                         env=env, timeout=timeout, check=False)
    if check:
        assert out.returncode == 0, (args, out.stderr)
    return out


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "wf.py"
    path.write_text(SCRIPT)
    return path


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def test_cli_storage_as_json(tmp_path, script):
    root = tmp_path / "json-store"
    spec = json.dumps({"kind": "file", "options": {"path": str(root)}})
    out = cli("run", f"{script}:result", "--storage", spec, "--workflow-name", "js")
    assert out.stdout.strip() == "result: 13"
    storage = storage_factory({"kind": "file", "options": {"path": str(root)}})
    assert storage.list_tasks("js") == ["first", "result"] and storage.read_task("js", "first") == 3
    bad = cli("run", f"{script}:result", "--storage", "{not json", check=False)
    assert bad.returncode == 2 and "--storage looks like JSON" in bad.stderr


def test_cli_plugin_loads_and_disable_blocks_it(tmp_path, script):
    (tmp_path / "doc_plugin.py").write_text(PLUGIN)
    log = tmp_path / "seen.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
               DOC_PLUGIN_LOG=str(log))
    out = cli("run", f"{script}:result", "--plugin", "doc_plugin", env=env)
    assert out.stdout.strip() == "result: 13"
    assert log.read_text().split() == ["first", "result"]
    log.unlink()
    out = cli("run", f"{script}:result", "--plugin", "doc_plugin", "--disable", "doc_plugin", env=env)
    assert out.stdout.strip() == "result: 13" and not log.exists()
    missing = cli("run", f"{script}:result", "--plugin", "no_such_plugin_module", env=env, check=False)
    assert missing.returncode == 2 and "'no_such_plugin_module'" in missing.stderr


def test_cli_disable_blocks_a_built_in(script):
    # the local backend is a built-in plugin: blocked, the run cannot find it
    out = cli("run", f"{script}:result", "--disable", "plugins_builtin.localback", check=False)
    assert out.returncode == 2 and "'local'" in out.stderr


def test_cli_plugins_shows_blocked_plugins():
    out = cli("plugins", "--disable", "plugins_builtin.graphcli", "--disable", "plugins_builtin.rayback")
    rows = {line.split()[0]: line for line in out.stdout.splitlines() if line.strip()}
    assert rows["plugins_builtin.graphcli"].rstrip().endswith("(blocked)")
    assert rows["plugins_builtin.rayback"].rstrip().endswith("(blocked)")
    assert "(blocked)" not in rows["plugins_builtin.localback"] and "ff_backends" in rows["plugins_builtin.localback"]
    plain = cli("plugins")
    assert "(blocked)" not in plain.stdout and "plugins_builtin.graphcli" in plain.stdout


SLOW_SCRIPT = textwrap.dedent(
    """
    import os, time
    from functionfuse import workflow

    @workflow
    def quick():
        return 1

    @workflow
    def slow(x, marker):
        open(marker, "w").close()  # the driver test waits for this, then sends SIGINT
        time.sleep(120)
        return x

    first = quick().set_name("quick")
    leaf = slow(first, os.environ["SLOW_MARKER"]).set_name("slow")
    """
)


def test_cli_ctrl_c_exits_130_and_keeps_finished_results(tmp_path):
    script = tmp_path / "slow.py"
    script.write_text(SLOW_SCRIPT)
    marker = tmp_path / "started"
    store = tmp_path / "store"
    env = dict(os.environ, SLOW_MARKER=str(marker))
    process = subprocess.Popen(
        interruptible([sys.executable, "-m", "functionfuse", "run", f"{script}:leaf", "--storage", str(store),
                       "--workflow-name", "slow"]),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the slow node never started"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr and stdout == ""
    storage = storage_factory({"kind": "file", "options": {"path": str(store)}})
    assert storage.list_tasks("slow") == ["quick"]  # finished before the interrupt: saved; the slow one not


def test_cli_a_broken_entry_point_is_a_plugin_error(tmp_path, script):
    # a distribution (only its metadata, on PYTHONPATH of the subprocess) whose entry point cannot import
    dist = tmp_path / "site" / "ff_broken_doc-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ff-broken-doc\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[functionfuse]\nbroken = ff_broken_doc_missing_module\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]))
    out = cli("run", f"{script}:result", env=env, check=False)
    assert out.returncode != 0 and "PluginError" in out.stderr or "functionfuse: error:" in out.stderr
    assert "entry points of group 'functionfuse'" in out.stderr and "ff_broken_doc_missing_module" in out.stderr
    # switched off, the broken entry point is never loaded
    env["FUNCTIONFUSE_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    assert cli("run", f"{script}:result", env=env).stdout.strip() == "result: 13"


def test_cli_a_broken_entry_point_is_one_error_line_and_exit_2(tmp_path, script):
    dist = tmp_path / "site" / "ff_broken_doc-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ff-broken-doc\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[functionfuse]\nbroken = ff_broken_doc_missing_module\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]))
    out = cli("run", f"{script}:result", env=env, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("functionfuse: error:")


# ---------------------------------------------------------------------------
# storage: strings, duck-typed objects, the ray kind, dask arrays on memory://
# ---------------------------------------------------------------------------


def test_storage_as_an_s3_url_string(moto_s3, tmp_path, script):
    bucket = moto_s3.new_bucket("docs")
    # s3://bucket/prefix takes its endpoint and credentials from the environment, as boto does
    env = dict(os.environ, AWS_ENDPOINT_URL=moto_s3.endpoint, AWS_ACCESS_KEY_ID=moto_s3.key,
               AWS_SECRET_ACCESS_KEY=moto_s3.secret, AWS_DEFAULT_REGION="us-east-1")
    out = cli("run", f"{script}:result", "--storage", f"s3://{bucket}/exp", "--workflow-name", "s3url", env=env)
    assert out.stdout.strip() == "result: 13"
    keys = [o["Key"] for o in moto_s3.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert "exp/s3url/first.ffr" in keys and "exp/s3url/result.ffr" in keys
    storage = storage_factory(moto_s3.storage_options(f"{bucket}/exp"))
    assert storage.read_task("s3url", "result") == 13
    again = cli("run", f"{script}:result", "--storage", f"s3://{bucket}/exp", "--workflow-name", "s3url", env=env)
    assert again.stdout.strip() == "result: 13"
    from plugins_builtin.runrecord import read_run_record

    assert read_run_record(storage, "s3url")["counts"]["stored"] == 2


class DictStorage:
    """A third-party storage: no base class, only the three methods the docs name (and a listing)."""

    def __init__(self):
        self.results: dict = {}
        self.saved: list = []
        self.read: list = []

    def save(self, workflow_name, task_name, obj):
        self.saved.append(task_name)
        self.results[(workflow_name, task_name)] = obj

    def read_task(self, workflow_name, task_name):
        self.read.append(task_name)
        return self.results[(workflow_name, task_name)]

    def list_tasks(self, workflow_name, pattern="*"):
        import fnmatch

        return sorted(t for w, t in self.results if w == workflow_name and fnmatch.fnmatchcase(t, pattern))

    def new_workflow(self, workflow_name):
        pass


def test_a_duck_typed_storage_saves_and_resumes():
    storage = DictStorage()
    calls = []

    @workflow
    def counted(x):
        calls.append(x)
        return x * 2

    def build():
        return counted(counted(1).set_name("a")).set_name("b")

    # it keeps no fingerprints, so resume by name (the original's rule)
    assert functionfuse.run(build(), workflow_name="duck", storage=storage, resume="name") == 4
    assert storage.saved == ["a", "b"] and storage.results == {("duck", "a"): 2, ("duck", "b"): 4}
    storage.results.pop(("duck", "b"))
    calls.clear()
    assert functionfuse.run(build(), workflow_name="duck", storage=storage, resume="name") == 4
    assert calls == [2] and storage.read == ["a"]  # a read back, only b computed
    assert storage.results[("duck", "b")] == 4


def test_ray_storage_kind_saves_on_the_disk_node_and_keeps_run_records(ray_cluster, tmp_path):
    from plugins_builtin.runrecord import list_run_records, read_run_record

    storage = storage_factory({"kind": "ray", "options": {"path": str(tmp_path / "raystore"),
                                                           "remoteArgs": {"resources": {"_disk": 0.001}}}})
    leaf = add(add(1, 2).set_name("first"), 10).set_name("result")
    wf = RayWorkflow(leaf, workflow_name="rk").set_storage(storage)
    assert wf.run() == 13
    assert storage.list_tasks("rk") == ["first", "result"] and storage.read_task("rk", "first") == 3
    assert (tmp_path / "raystore" / "rk" / "result.ffr").exists()
    first = read_run_record(storage, "rk")
    assert first["backend"] == "ray" and first["counts"]["computed"] == 2
    assert RayWorkflow(add(add(1, 2).set_name("first"), 10).set_name("result"), workflow_name="rk").set_storage(
        storage).run() == 13
    second = read_run_record(storage, "rk")
    assert second["counts"]["stored"] == 2 and second["run_id"] != first["run_id"]
    assert [r["run_id"] for r in list_run_records(storage, "rk")] == [first["run_id"], second["run_id"]]


def test_dask_arrays_on_a_memory_url():
    import dask.array as da
    from functionfuse.serializers.daskarray import DaskArraySerializer

    url = f"memory://ffdocs-{uuid.uuid4().hex[:8]}"
    storage = storage_factory({"kind": "file", "options": {"path": url}})
    storage.register_persistent_serializers(DaskArraySerializer)

    @workflow
    def array():
        return da.arange(1000, chunks=100)

    @workflow
    def squared(x):
        return x**2

    def build():
        return squared(array().set_name("array")).set_name("squared")

    out = LocalWorkflow(build(), workflow_name="mem").set_storage(storage).run()
    assert int(out.sum().compute()) == sum(i * i for i in range(1000))
    back = storage.read_task("mem", "squared")
    assert back.chunks == ((100,) * 10,) and int(back[999].compute()) == 999**2
    assert storage.data_path("mem", "squared") is not None and storage.fs.find(storage.data_path("mem", "squared"))
    again = LocalWorkflow(build(), workflow_name="mem").set_storage(storage)
    assert int(again.run().sum().compute()) == sum(i * i for i in range(1000))
    assert again.run_record["counts"]["stored"] == 2


# ---------------------------------------------------------------------------
# plugins: a failed registration is a PluginError naming the plugin
# ---------------------------------------------------------------------------


class BrokenBackends:
    name = "doc-broken-backends"

    @hookimpl
    def ff_backends(self, register):
        raise RuntimeError("cannot register")


class TypoHook:
    name = "doc-typo-hook"

    @hookimpl
    def ff_exectue_node(self, node):  # a typo: no such hook
        return None


def test_a_plugin_failing_in_ff_backends_is_a_plugin_error():
    with pytest.raises(PluginError, match=r"plugin 'doc-broken-backends' failed in hook ff_backends.*cannot register"):
        functionfuse.run(add(1, 2), plugins=[BrokenBackends()])


def test_a_plugin_with_an_unknown_hook_is_a_plugin_error():
    with pytest.raises(PluginError, match="ff_exectue_node"):
        LocalWorkflow(add(1, 2), workflow_name="typo", plugins=[TypoHook()]).run()


def test_a_plugin_module_that_does_not_import_is_a_plugin_error():
    with pytest.raises(PluginError, match="'no_such_module_for_docs' could not be imported"):
        LocalWorkflow(add(1, 2), workflow_name="nomod", plugins=["no_such_module_for_docs"]).run()


# ---------------------------------------------------------------------------
# frontend: nodes inside a namedtuple or a defaultdict; the decorator
# ---------------------------------------------------------------------------

Pair = collections.namedtuple("Pair", "left right")


def test_a_namedtuple_holding_nodes():
    leaf = total(Pair(add(1, 2), right=add(3, 4))).set_name("total")
    wf = LocalWorkflow(leaf, workflow_name="nt")
    assert len(wf.nodes) == 3  # both nodes inside the namedtuple are dependencies
    assert wf.run() == 10


@workflow
def dict_sum(values):
    return sum(values.values())


def test_a_defaultdict_holding_nodes():
    values = collections.defaultdict(int, a=add(1, 2), b=add(3, 4))
    wf = LocalWorkflow(dict_sum(values).set_name("dt"), workflow_name="dd")
    assert len(wf.nodes) == 3 and wf.run() == 10


def test_a_defaultdict_holding_nodes_arrives_as_a_defaultdict():
    values = collections.defaultdict(int, a=add(1, 2), b=add(3, 4))
    assert LocalWorkflow(dict_total(values).set_name("dt"), workflow_name="dd").run() == ("defaultdict", 10, 0)


def test_workflow_on_a_non_callable_is_refused():
    with pytest.raises(NotANodeError, match="not int"):
        workflow(3)
    with pytest.raises(NotANodeError, match="not str"):
        workflow("add")


def test_workflow_applied_twice_is_the_same_decorated_function():
    def triple(x):
        return 3 * x

    once = workflow(triple)
    twice = workflow(once)
    assert twice is once
    node = twice(2)
    assert type(node).__name__ == "Node" and LocalWorkflow(node, workflow_name="tw").run() == 6

    class Box:
        def __init__(self, v):
            self.v = v

    boxed = workflow(Box)
    assert workflow(boxed) is boxed


# ---------------------------------------------------------------------------
# hooks: a non-wrapper plugin (tryfirst) that replaces the built-in execute / save / read
# ---------------------------------------------------------------------------


class Replacer:
    """Replaces the built-ins: every result times ten, kept in its own dict instead of the storage."""

    name = "doc-replacer"

    def __init__(self):
        self.kept: dict = {}
        self.reads: list = []

    @hookimpl(tryfirst=True)
    def ff_execute_node(self, node, args, kwargs):
        return node.func(*args, **kwargs) * 10

    @hookimpl(tryfirst=True)
    def ff_storage_save(self, workflow_name, task_name, obj):
        self.kept[(workflow_name, task_name)] = obj
        return True

    @hookimpl(tryfirst=True)
    def ff_storage_read(self, workflow_name, task_name):
        self.reads.append(task_name)
        return self.kept[(workflow_name, task_name)]


def test_a_plugin_replaces_execute_save_and_read(file_storage):
    replacer = Replacer()

    def build():
        return add(add(1, 2).set_name("first"), 1).set_name("second")

    wf = LocalWorkflow(build(), workflow_name="rep", plugins=[replacer], resume="name").set_storage(file_storage)
    assert wf.run() == 310  # (1 + 2) * 10 = 30; (30 + 1) * 10
    assert replacer.kept == {("rep", "first"): 30, ("rep", "second"): 310}
    assert file_storage.list_tasks("rep") == []  # the built-in save never ran
    # resume: the storage lists what is stored; "first" is listed, so it is read through the plugin
    file_storage.save("rep", "first", "not this")
    again = LocalWorkflow(build(), workflow_name="rep", plugins=[replacer], resume="name").set_storage(file_storage)
    assert again.run() == 310 and replacer.reads == ["first"]


class TimesTen:
    name = "doc-times-ten"

    @hookimpl(tryfirst=True)
    def ff_execute_node(self, node, args, kwargs):
        return (node.func(*args, **kwargs), os.getpid())


def test_a_plugin_replaces_execute_in_ray_workers(ray_cluster):
    leaf = add(1, 2).set_name("only")
    value, pid = RayWorkflow(leaf, workflow_name="rep", plugins=[TimesTen()]).run()
    assert value == 3 and pid != os.getpid()


# ---------------------------------------------------------------------------
# custom serializers on Ray
# ---------------------------------------------------------------------------


class Celsius:
    def __init__(self, degrees):
        self.degrees = degrees


class CelsiusSerializer(Serializer):
    name = "doc-celsius"

    def match(self, obj):
        return isinstance(obj, Celsius)

    def write(self, obj, fs, path):
        fs.pipe_file(path, f"{obj.degrees} pid {os.getpid()}".encode())
        return "text"

    def read(self, token, fs, path):
        return Celsius(float(fs.cat_file(path).split()[0]))


class CelsiusPlugin:
    name = "doc-celsius-plugin"

    @hookimpl
    def ff_serializers(self, register):
        register("doc-celsius", CelsiusSerializer, active=True)


@workflow
def reading():
    return {"t": Celsius(21.5)}


def test_a_custom_serializer_writes_in_ray_workers(ray_cluster, tmp_path):
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "st")}})
    wf = RayWorkflow(reading().set_name("reading"), workflow_name="cs", plugins=[CelsiusPlugin()]).set_storage(storage)
    assert wf.run()["t"].degrees == 21.5
    folder = storage.data_path("cs", "reading")
    assert folder is not None, "the serializer wrote nothing: the result was pickled whole"
    degrees, _, pid = open(os.path.join(folder, "0")).read().split()
    assert degrees == "21.5" and int(pid) != os.getpid()  # written by the worker that computed the node
    assert storage.read_task("cs", "reading")["t"].degrees == 21.5


def test_a_persistent_serializer_writes_in_ray_workers(ray_cluster, tmp_path):
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "st")}})
    storage.register_persistent_serializers(CelsiusSerializer)
    wf = RayWorkflow(reading().set_name("reading"), workflow_name="ps").set_storage(storage)
    assert wf.run()["t"].degrees == 21.5
    assert open(os.path.join(storage.data_path("ps", "reading"), "0")).read().startswith("21.5 pid ")


# ---------------------------------------------------------------------------
# Ray: a request that no single node satisfies, on a real two-node cluster
# ---------------------------------------------------------------------------

TWO_NODES = textwrap.dedent(
    """
    import os, sys, tempfile
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from ray.cluster_utils import Cluster
    import ray
    from functionfuse import workflow
    from functionfuse.backends.builtin.rayback import RayWorkflow
    from functionfuse.errors import InvalidOptionError

    @workflow
    def add(a, b):
        return a + b

    # Cluster writes <tempdir>/ray/ray_current_cluster whatever temp_dir says, and fails if no
    # earlier ray.init made that folder (a fresh machine)
    os.makedirs(os.path.join(tempfile.gettempdir(), "ray"), exist_ok=True)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"gpu_like": 1}, "include_dashboard": False,
        "temp_dir": tempfile.mkdtemp(prefix="ff2n", dir="/tmp")})
    cluster.add_node(num_cpus=1, resources={"disk_like": 1})
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        wf = RayWorkflow(add(1, 2).set_name("both"), workflow_name="two")
        wf.query("^both$").set_remote_args({"resources": {"gpu_like": 1, "disk_like": 1}})
        try:
            wf.run()
            print("RAN")
        except InvalidOptionError as exc:
            print("REFUSED", exc)
        one = RayWorkflow(add(1, 2).set_name("one"), workflow_name="two")
        one.query("^one$").set_remote_args({"resources": {"disk_like": 1}})
        print("ONE", one.run())
    finally:
        ray.shutdown()
        cluster.shutdown()
    """
)


def test_ray_refuses_resources_no_single_node_has_together():
    # its own process: this module's driver is connected to the one-node cluster already
    out = subprocess.run([sys.executable, "-c", TWO_NODES], capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    refused = next(line for line in lines if line.startswith(("REFUSED", "RAN")))
    assert refused.startswith("REFUSED") and "node 'both'" in refused and "no single node" in refused
    assert "ONE 3" in lines  # each resource alone is fine
