"""The raydag addon (contrib/raydag): durable Ray workflows, installed as a third-party plugin.

Needs ``pip install -e contrib/raydag``. One local Ray cluster serves the whole module;
the kill-and-resume test connects a second driver (a subprocess) to it and kills it.
"""

from __future__ import annotations

import importlib.metadata
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest
from interruptible import interruptible

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import functionfuse_raydag as raydag

import functionfuse
from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import InvalidOptionError, NodeExecutionError, SerializationError
from functionfuse.storage import as_storage, storage_factory
from plugins_builtin.runrecord import list_run_records

pytestmark = pytest.mark.timeout(180)

HOOKCOUNTER_ENV = "FF_HOOKCOUNTER_FILE"
HOOKCOUNTER_LOG: dict = {}


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster for the module (ray.init takes seconds); yields its GCS address."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="ffrd", dir="/tmp")  # Ray's socket paths must stay short
    # The workers inherit the environment ray.init starts them with: the hook counter (tests/plugins)
    # logs there whenever a driver's run ships it; in the driver it is switched on by one test only.
    os.environ[HOOKCOUNTER_ENV] = HOOKCOUNTER_LOG["path"] = os.path.join(temp_dir, "hookcounter.log")
    try:
        context = ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir)
    finally:
        del os.environ[HOOKCOUNTER_ENV]
    yield context.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture
def store(tmp_path):
    return storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}})


# ---------------------------------------------------------------------------
# workflow functions (module level: Ray pickles them by value from the test module)
# ---------------------------------------------------------------------------


@workflow
def add(a, b):
    return a + b


@workflow
def split(x):
    return x, x * 10, {"half": x / 2}


@workflow
def total(values, extra=0):
    return sum(values) + extra


@workflow
def fail(x):
    raise ValueError(f"bad input {x}")


@workflow
def flaky(x, flag):
    if not os.path.exists(flag):
        raise RuntimeError("no flag yet")
    return x * 2


@workflow
def record(label, folder, value):
    with open(os.path.join(folder, label), "a") as handle:
        handle.write("ran\n")
    return value


@workflow
class Counter:
    def __init__(self, start):
        self.value = start

    def add(self, n):
        self.value += n
        return self.value


@workflow
def peek(counter, plus):
    return counter.value + plus


def _graph():
    n1 = add(1, 1).set_name("node1")
    n2 = add(n1, 1).set_name("node2")
    parts = split(n2).set_name("parts")
    n3 = add(parts[0], parts[2]["half"]).set_name("node3")
    n4 = total([parts[1], n3, {"k": n1}["k"]], extra=n2).set_name("node4")
    return n4


def _counts(folder) -> dict:
    return {name: open(os.path.join(folder, name)).read().count("ran") for name in os.listdir(folder)}


# ---------------------------------------------------------------------------
# found as a third-party plugin
# ---------------------------------------------------------------------------


def test_registered_through_entry_point_and_import_paths():
    points = [ep for ep in importlib.metadata.entry_points(group="functionfuse") if ep.name == "raydag"]
    assert [ep.value for ep in points] == ["functionfuse_raydag.plugin"]
    assert "raydag" in functionfuse.api.backend_names()
    from functionfuse.backends.addons.rayworkflowback import RayWorkflow

    assert RayWorkflow is functionfuse.backend_class("raydag") is raydag.RayWorkflow
    assert RayWorkflow.backend_name == "raydag"
    from functionfuse.base import Workflow

    assert issubclass(RayWorkflow, Workflow)


# ---------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------


def test_run_indexed_outputs_storage_object(ray_cluster, store):
    from functionfuse.backends.addons.rayworkflowback import RayWorkflow

    expected = LocalWorkflow(_graph(), workflow_name="local").run()
    wf = RayWorkflow(_graph(), workflow_name="ops")
    wf.set_storage(store)
    assert wf.run() == expected == 30 + 4.5 + 2 + 3
    assert store.list_tasks("ops") == ["node1", "node2", "node3", "node4", "parts"]
    assert store.read_task("ops", "parts") == (3, 30, {"half": 1.5})
    assert raydag.get_status("ops", store) == "SUCCESSFUL"


def test_functionfuse_run_with_url_storage(ray_cluster, tmp_path):
    folder = tmp_path / "by-url"
    url = f"file:{folder}"
    assert functionfuse.run(_graph(), backend="raydag", workflow_name="u1", storage=url) == 39.5
    assert (folder / "u1" / "node4.ffr").exists()
    triple = f"file://{tmp_path / 'by-url3'}"
    assert functionfuse.run(_graph(), backend="raydag", workflow_name="u3", storage=triple) == 39.5
    assert raydag.get_output("u3", triple) == 39.5
    assert (tmp_path / "by-url3" / "u3" / "node4.ffr").exists()


def test_status_output_list_all_delete(ray_cluster, store):
    from functionfuse.backends.addons.rayworkflowback import RayWorkflow

    first, second = add(2, 3).set_name("a"), add(4, 5).set_name("b")
    wf = RayWorkflow(first, second, workflow_name="two-leaves")
    wf.set_storage(store)
    assert wf.run() == [5, 9]
    LocalWorkflow(add(0, 0), workflow_name="not-raydag").set_storage(store).run()
    with pytest.raises(NodeExecutionError):
        wf2 = RayWorkflow(fail(1).set_name("broken"), workflow_name="bad")
        wf2.set_storage(store)
        wf2.run()

    assert raydag.get_status("two-leaves", store) == "SUCCESSFUL"
    assert raydag.get_output("two-leaves", store) == [5, 9]
    assert RayWorkflow.get_output("two-leaves", store) == [5, 9]  # also as static methods
    assert RayWorkflow.get_status("bad", store) == "FAILED"
    assert raydag.list_all(store) == [("bad", "FAILED"), ("two-leaves", "SUCCESSFUL")]  # not the local one
    assert raydag.list_all(store, status_filter="FAILED") == [("bad", "FAILED")]
    meta = raydag.get_metadata("bad", store)
    assert meta["status"] == "FAILED" and "bad input 1" in meta["error"] and meta["pid"] == os.getpid()
    assert raydag.resume("two-leaves", store) == [5, 9]  # finished: its output, nothing run
    raydag.delete("bad", store)
    assert raydag.list_all(store) == [("two-leaves", "SUCCESSFUL")]


def test_default_storage_from_environment(ray_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("FUNCTIONFUSE_RAYDAG_STORAGE", str(tmp_path / "default"))
    assert functionfuse.run(add(40, 2).set_name("answer"), backend="raydag", workflow_name="env") == 42
    assert (tmp_path / "default" / "env" / "answer.ffr").exists()
    assert raydag.get_status("env") == "SUCCESSFUL" and raydag.get_output("env") == 42


def test_node_failure_names_node_and_is_recorded(ray_cluster, store):
    from functionfuse.backends.addons.rayworkflowback import RayWorkflow

    good = add(1, 2).set_name("good")
    broken = fail(good).set_name("broken")
    downstream = add(broken, 1).set_name("downstream")
    wf = RayWorkflow(downstream, workflow_name="failing")
    wf.set_storage(store)
    with pytest.raises(NodeExecutionError) as info:
        wf.run()
    error = info.value
    assert error.node_name == "broken" and error.workflow_name == "failing"  # not the downstream node
    assert "'broken'" in str(error) and "bad input 3" in str(error)
    assert isinstance(error.__cause__, ValueError) and str(error.__cause__) == "bad input 3"
    assert raydag.get_status("failing", store) == "FAILED"
    assert store.list_tasks("failing") == ["good"]  # finished before the failure: kept
    with pytest.raises(raydag.WorkflowNotFinishedError, match="'failing' is FAILED.*bad input 3"):
        raydag.get_output("failing", store)


def test_rerun_same_name_recomputes_only_missing(ray_cluster, store, tmp_path):
    from functionfuse.backends.addons.rayworkflowback import RayWorkflow

    folder = tmp_path / "records"
    folder.mkdir()

    def build():
        a = record("a", str(folder), 1).set_name("a")
        b = record("b", str(folder), a).set_name("b")
        return record("c", str(folder), b).set_name("c")

    wf = RayWorkflow(build(), workflow_name="again")
    wf.set_storage(store)
    assert wf.run() == 1
    store.remove_task("again", "b")
    wf = RayWorkflow(build(), workflow_name="again")
    wf.set_storage(store)
    assert wf.run() == 1
    assert _counts(folder) == {"a": 1, "b": 2, "c": 1}


def test_stateful_nodes(ray_cluster, store):
    from functionfuse.backends.addons.rayworkflowback import RayWorkflow

    def build():
        start = add(1, 1).set_name("start")
        counter = Counter(start).set_name("counter")
        c1 = counter.add(2).set_name("c1")
        seen = peek(counter, 100).set_name("seen")  # the object itself, after c1
        c2 = counter.add(c1).set_name("c2")  # the previous call's value as an argument
        c3 = counter.add(seen).set_name("c3")
        return c2, c3, seen

    expected = LocalWorkflow(*build(), workflow_name="local").run()
    wf = RayWorkflow(*build(), workflow_name="stateful")
    wf.set_storage(store)
    assert wf.run() == expected == [8, 112, 104]
    store.remove_task("stateful", "c2")  # the chain is replayed up to c2; c3 is read back
    wf = RayWorkflow(*build(), workflow_name="stateful")
    wf.set_storage(store)
    assert wf.run() == expected


def test_plugins_remote_args_and_hooks(ray_cluster, store):
    from functionfuse.backends.addons.rayworkflowback import RayWorkflow
    from functionfuse.backends.plugins import InitializerPlugin

    @workflow
    def read_env(name):
        return os.environ.get(name)

    class Recorder:
        name = "raydag-test-recorder"

        def __init__(self):
            self.events = []

        @functionfuse.hookimpl
        def ff_before_node(self, node):
            self.events.append(("before", node.name))

        @functionfuse.hookimpl
        def ff_after_node(self, node, info):
            self.events.append(("after", node.name, info["host"] is not None))

        @functionfuse.hookimpl
        def ff_node_restored(self, node):
            self.events.append(("restored", node.name))

    recorder = Recorder()
    leaf = read_env("FF_RAYDAG_INIT").set_name("env")
    wf = RayWorkflow(leaf, workflow_name="plugged", plugins=[recorder])
    wf.set_plugin("^env$", InitializerPlugin(lambda: os.environ.__setitem__("FF_RAYDAG_INIT", "set-in-worker")))
    wf.query("^env$").set_remote_args({"num_cpus": 1})
    wf.set_storage(store)
    assert wf.run() == "set-in-worker"
    assert recorder.events == [("before", "env"), ("after", "env", True)]
    wf.run()
    assert recorder.events[-1] == ("restored", "env")


def test_independent_nodes_run_in_parallel(ray_cluster, tmp_path):
    @workflow
    def meet(me, other, folder):
        # Each waits for the other to arrive: only a parallel run can finish.
        open(os.path.join(folder, me), "w").close()
        deadline = time.time() + 60
        while not os.path.exists(os.path.join(folder, other)):
            if time.time() > deadline:
                raise TimeoutError(f"{me} never met {other}: the nodes did not run in parallel")
            time.sleep(0.02)
        return me

    folder = str(tmp_path)
    left, right = meet("left", "right", folder), meet("right", "left", folder)
    leaf = add(left, right)
    assert functionfuse.run(leaf, backend="raydag", workflow_name="meet", storage=tmp_path / "st") == "leftright"


def test_s3_storage_status_and_resume(ray_cluster):
    """Results, plan and status on S3 (moto's server on 127.0.0.1, reached over HTTP by s3fs in the workers)."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        credentials = {"key": "testing", "secret": "testing"}
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket="ffbucket")
        s3 = storage_factory(
            {"kind": "S3", "options": {"path": "ffbucket/raydag", "s3fs": {"endpoint_url": endpoint, **credentials}}}
        )
        assert functionfuse.run(_graph(), backend="raydag", workflow_name="on-s3", storage=s3) == 39.5
        assert "node4" in s3.list_tasks("on-s3")
        assert raydag.list_all(s3) == [("on-s3", "SUCCESSFUL")]
        s3.remove_task("on-s3", "node4")
        from functionfuse_raydag import records

        record = records.read_record(s3, "on-s3")
        records.write_record(s3, "on-s3", dict(record, status="failed"))  # as if the last run had failed
        assert raydag.resume_all(s3) == []  # FAILED ones only on request
        assert raydag.resume_all(s3, include_failed=True) == [("on-s3", 39.5)]
        assert raydag.get_status("on-s3", s3) == "SUCCESSFUL" and "node4" in s3.list_tasks("on-s3")
    finally:
        server.stop()


def test_plan_of_a_deep_chain_pickles_flat():
    """The stored plan refers to nodes by index: no recursion, whatever the depth; its calls run anywhere."""
    import cloudpickle
    from functionfuse_raydag.plan import build_plan

    from functionfuse.backends.addons.rayworkflowback import RayWorkflow
    from functionfuse.nodecall import run_node_call

    node = add(0, 1)
    for _ in range(5_000):
        node = add(node, 1)
    plan = build_plan(RayWorkflow(node, workflow_name="deep"), {})
    loaded = cloudpickle.loads(cloudpickle.dumps(plan))
    last = loaded.leaves[0]
    assert len(loaded.nodes) == 5_001 and last.parents == (loaded.nodes[-2],) and last.deps == last.parents
    assert run_node_call(last.call, (41,))[0] == 42


def test_raydag_hooks_fire_for_every_node_from_an_entry_point_plugin(ray_cluster, store, monkeypatch):
    """ff_execute_node, ff_storage_save and ff_storage_read of a third-party plugin fire in the Ray workers."""
    import importlib

    import ff_hookcounter

    from functionfuse import manager

    path = HOOKCOUNTER_LOG["path"]  # the workers' log file
    if os.path.exists(path):
        os.remove(path)  # what other tests' workers logged
    monkeypatch.setenv(HOOKCOUNTER_ENV, path)
    importlib.reload(ff_hookcounter)  # its entry point is an object made at import: the active one now
    manager.clear_cache()

    def build():
        a = add(1, 2).set_name("h_a")
        counter = Counter(add(a, 10).set_name("h_b")).set_name("h_counter")
        return total([a, counter.add(5).set_name("h_c")]).set_name("h_total")

    computed = ["h_a", "h_b", "h_counter", "h_c", "h_total"]
    saved = ["h_a", "h_b", "h_c", "h_total"]  # a stateful object is not stored
    try:
        for _ in range(2):
            assert functionfuse.run(build(), backend="raydag", workflow_name="hooks", storage=store) == 21
        counts = ff_hookcounter.counts(path)
        expected = {("ff_execute_node", n): 1 for n in computed}
        expected.update({("ff_storage_save", n): 1 for n in saved})
        expected[("ff_storage_read", "h_total")] = 1  # the second run reads the leaf back
        assert counts["calls"] == expected
        assert counts["pids"] and os.getpid() not in counts["pids"]  # in the workers, not the driver
        # resume (no script) rebuilds the run's plugins from the entry points: the same hooks fire
        store.remove_task("hooks", "h_total")
        from functionfuse_raydag import records

        records.write_record(store, "hooks", dict(records.read_record(store, "hooks"), status="failed"))
        assert raydag.resume("hooks", store) == 21
        calls = ff_hookcounter.counts(path)["calls"]
        assert {key: calls[key] - expected.get(key, 0) for key in calls if calls[key] != expected.get(key)} == {
            ("ff_execute_node", "h_total"): 1,
            ("ff_storage_save", "h_total"): 1,
            ("ff_storage_read", "h_a"): 1,  # the parents of the recomputed leaf, read back
            ("ff_storage_read", "h_c"): 1,
        }
    finally:
        monkeypatch.delenv(HOOKCOUNTER_ENV)
        importlib.reload(ff_hookcounter)
        manager.clear_cache()


def test_cli_status_resume_and_history_read_one_record(ray_cluster, tmp_path, capsys):
    from functionfuse.cli import main

    storage, flag = str(tmp_path / "st"), tmp_path / "flag"
    leaf = flaky(add(1, 2).set_name("first"), str(flag)).set_name("leaf")
    with pytest.raises(NodeExecutionError, match="no flag yet"):
        functionfuse.run(leaf, backend="raydag", workflow_name="cli", storage=storage)
    capsys.readouterr()
    assert main(["status", "cli", "--storage", storage]) == 0
    assert capsys.readouterr().out.startswith("FAILED  NodeExecutionError")
    flag.touch()
    assert main(["resume", "cli", "--storage", storage]) == 0  # from the stored plan: no script
    assert capsys.readouterr().out == "cli: 6\n"
    assert main(["status", "--storage", storage]) == 0
    assert capsys.readouterr().out == "cli  SUCCESSFUL\n"
    assert main(["status", "nope", "--storage", storage]) == 2
    assert "no workflow 'nope'" in capsys.readouterr().err

    assert main(["history", storage, "cli"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    runs = list_run_records(as_storage(storage), "cli")
    assert [(r["status"], r["counts"]["computed"], r["counts"]["stored"]) for r in runs] == [
        ("failed", 1, 0),
        ("ok", 1, 1),  # the resume computed the leaf only and read "first" back
    ]
    assert [row.split()[0] for row in rows] == [r["run_id"] for r in runs]
    assert raydag.get_metadata("cli", storage)["run_id"] == runs[-1]["run_id"]


# ---------------------------------------------------------------------------
# a driver killed mid-run, then resumed
# ---------------------------------------------------------------------------

DRIVER_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import functionfuse
    from functionfuse import workflow

    storage_path, record_dir, address = sys.argv[1:4]

    @workflow
    def step(x, label):
        # One line per execution, written first: a node killed before its save still shows it ran.
        with open(os.path.join(record_dir, label), "a") as handle:
            handle.write("ran\\n")
        time.sleep(0.6)
        return x + 1

    @workflow
    def join(a, b):
        with open(os.path.join(record_dir, "join"), "a") as handle:
            handle.write("ran\\n")
        return a * 100 + b

    chain = step(0, "s0").set_name("s0")
    for i in range(1, 6):
        chain = step(chain, f"s{i}").set_name(f"s{i}")
    side = step(10, "side").set_name("side")
    leaf = join(chain, side).set_name("join")
    functionfuse.run(leaf, backend="raydag", workflow_name="killed", storage=storage_path,
                     ray_init_args={"address": address})
    """
)


def test_killed_driver_resumes_computing_only_unsaved_nodes(ray_cluster, tmp_path):
    storage_path = tmp_path / "storage"
    records_dir = tmp_path / "records"
    records_dir.mkdir()
    script = tmp_path / "driver.py"
    script.write_text(DRIVER_SCRIPT)
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    driver = subprocess.Popen(
        interruptible([sys.executable, str(script), str(storage_path), str(records_dir), ray_cluster]),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    results = storage_path / "killed"
    deadline = time.time() + 90
    try:
        while not (results / "s1.ffr").exists():  # s0, s1 saved; s2 on its way
            assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "the driver never saved s1"
            time.sleep(0.02)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        driver.stderr.close()

    assert raydag.get_status("killed", storage_path) == "RESUMABLE"  # recorded RUNNING, driver dead
    assert ("killed", "RESUMABLE") in raydag.list_all(storage_path)
    time.sleep(1.0)  # Ray stops the dead driver's tasks; let it, so the snapshot below is final
    saved_before = set(as_storage(str(storage_path)).list_tasks("killed"))
    runs_before = _counts(records_dir)
    assert {"s0", "s1"} <= saved_before and "join" not in saved_before

    assert raydag.resume("killed", str(storage_path)) == 6 * 100 + 11  # no script: the stored plan
    runs_after = _counts(records_dir)
    every = {"s0", "s1", "s2", "s3", "s4", "s5", "side", "join"}
    assert set(runs_after) == every
    for name in every:
        again = runs_after[name] - runs_before.get(name, 0)
        assert again == (0 if name in saved_before else 1), (name, saved_before, runs_before, runs_after)
    assert raydag.get_status("killed", storage_path) == "SUCCESSFUL"
    assert raydag.get_metadata("killed", storage_path)["runs"] == 2
    # One record system: the history holds the killed run (saved when it started) and the resume.
    runs = list_run_records(as_storage(str(storage_path)), "killed")
    assert [(r["status"], r["backend"], r["runs"]) for r in runs] == [("running", "raydag", 1), ("ok", "raydag", 2)]
    assert runs[1]["counts"]["computed"] == len(every - saved_before)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


def test_bad_ray_init_args():
    from functionfuse.backends.addons.rayworkflowback import RayWorkflow

    with pytest.raises(InvalidOptionError, match="workflow 'w'.*ray_init_args must be a dict"):
        RayWorkflow(add(1, 2), workflow_name="w", ray_init_args="auto")


def test_bad_remote_args(ray_cluster, store):
    from functionfuse.backends.addons.rayworkflowback import RayWorkflow

    wf = RayWorkflow(add(1, 2).set_name("n"), workflow_name="opts")
    with pytest.raises(InvalidOptionError, match="remote_args for nodes 'n' must be a dict"):
        wf.query("^n$").set_remote_args(["num_cpus", 1])
    wf.query("^n$").set_remote_args({"num_cpu": 1})
    wf.set_storage(store)
    with pytest.raises(InvalidOptionError, match="remote_args of node 'n': 'num_cpu' is not a ray.remote task option"):
        wf.run()
    assert raydag.get_status("opts", store) == "FAILED"
    wf.query("^n$").set_remote_args({"num_returns": 3})
    with pytest.raises(InvalidOptionError, match="node 'n': 'num_returns' is set by the ray backend"):
        wf.run()


def test_unpicklable_argument_names_workflow(store):
    from functionfuse.backends.addons.rayworkflowback import RayWorkflow

    from functionfuse.errors import UnfingerprintableError

    wf = RayWorkflow(add(threading.Lock(), 1), workflow_name="locked")
    wf.set_storage(store)
    with pytest.raises(UnfingerprintableError, match="argument 'a' of node 'add_"):  # before anything runs
        wf.run()
    # trusting names, nothing fingerprints the lock: the durable plan names the workflow it cannot pickle
    wf = RayWorkflow(add(threading.Lock(), 1), workflow_name="locked", resume="name")
    wf.set_storage(store)
    with pytest.raises(SerializationError, match="raydag workflow 'locked'.*cannot be pickled"):
        wf.run()


def test_unknown_workflow_and_bad_filter(store):
    with pytest.raises(raydag.WorkflowNotFoundError, match="no workflow 'nope'"):
        raydag.get_status("nope", store)
    with pytest.raises(raydag.WorkflowNotFoundError, match="no workflow 'nope'"):
        raydag.resume("nope", store)
    with pytest.raises(raydag.WorkflowNotFoundError, match="no workflow 'nope'"):
        raydag.get_output("nope", store)
    with pytest.raises(InvalidOptionError, match=r"status_filter.*\['DONE'\]"):
        raydag.list_all(store, status_filter="DONE")


def test_refuses_workflow_run_by_live_driver(store):
    from functionfuse_raydag import records

    from functionfuse.backends.addons.rayworkflowback import RayWorkflow

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = dict(records.driver_identity(), status="running", backend="raydag", leaves=["n"], pid=other.pid)
        record.update(proc_start=records._process_start(other.pid), start=time.time(), run_id="other", nodes={})
        store.new_workflow("busy")
        records.write_record(store, "busy", record)
        assert raydag.get_status("busy", store) == "RUNNING"
        wf = RayWorkflow(add(1, 2).set_name("n"), workflow_name="busy")
        wf.set_storage(store)
        with pytest.raises(
            raydag.WorkflowRunningError, match=f"'busy' is being run by another driver \\(pid {other.pid}"
        ):
            wf.run()
        with pytest.raises(raydag.WorkflowRunningError, match="'busy'"):
            raydag.resume("busy", store)
    finally:
        other.kill()
        other.wait()
    assert raydag.get_status("busy", store) == "RESUMABLE"


# ---------------------------------------------------------------------------
# the documentation's examples run
# ---------------------------------------------------------------------------


def test_readme_example_runs(ray_cluster, tmp_path):
    from doc_examples import run_blocks

    import functionfuse_raydag.plugin

    namespace = {"__name__": "readme_example"}
    run_blocks("contrib/raydag/README.md", namespace, {"/tmp/functionfuse-raydag-demo": str(tmp_path / "demo")})
    assert (tmp_path / "demo" / "sums" / "node2.ffr").exists()
    shown, registered = [], []  # the README's excerpt is the plugin's registration
    namespace["ff_backends"](lambda *args, **kwargs: shown.append((args, kwargs)))
    functionfuse_raydag.plugin.ff_backends(lambda *args, **kwargs: registered.append((args, kwargs)))
    assert shown == registered


# ---------------------------------------------------------------------------
# the run lock: one driver per workflow name (issue 14 item 2)
# ---------------------------------------------------------------------------

RACE_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import functionfuse
    from functionfuse import workflow
    from functionfuse.markers import hookimpl

    storage_path, record_dir, address, me = sys.argv[1:5]

    @workflow
    def step(x, label):
        with open(os.path.join(record_dir, label), "a") as handle:
            handle.write(me + "\\n")
        time.sleep(1.0)
        return x + 1

    def barrier(stage, wait):
        open(os.path.join(record_dir, stage + "-" + me), "w").close()
        deadline = time.time() + wait
        while len([f for f in os.listdir(record_dir) if f.startswith(stage + "-")]) < 2 and time.time() < deadline:
            time.sleep(0.005)

    class StartBarrier:
        # A run that starts slowly (a big graph to fingerprint): a driver past its start-up checks
        # waits here for the other one, at most 10 s, before it writes its plan and record.
        @hookimpl
        def ff_before_run(self, context):
            barrier("started", 10)

    leaf = step(step(0, "a").set_name("a"), "b").set_name("b")
    barrier("ready", 60)  # both drivers are built and imported before either starts its run
    print(functionfuse.run(leaf, backend="raydag", workflow_name="race", storage=storage_path,
                           plugins=[StartBarrier()], ray_init_args={"address": address}))
    """
)


@pytest.mark.timeout(150)
def test_two_drivers_started_together_only_one_runs(ray_cluster, tmp_path):
    storage_path = tmp_path / "storage"
    records_dir = tmp_path / "records"
    records_dir.mkdir()
    script = tmp_path / "race.py"
    script.write_text(RACE_SCRIPT)
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    drivers = [
        subprocess.Popen([sys.executable, str(script), str(storage_path), str(records_dir), ray_cluster, me],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for me in ("one", "two")
    ]
    outcomes = []
    try:
        for driver in drivers:
            out, err = driver.communicate(timeout=120)
            outcomes.append((driver.returncode, out.decode(), err.decode()))
    finally:
        for driver in drivers:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
    winners = [i for i, (code, _, _) in enumerate(outcomes) if code == 0]
    assert len(winners) == 1, [(code, err[-1500:]) for code, _, err in outcomes]
    winner, loser = drivers[winners[0]], drivers[1 - winners[0]]
    assert outcomes[winners[0]][1].strip().splitlines()[-1] == "2"
    loser_err = outcomes[1 - winners[0]][2]
    # The loser names the workflow and the driver that runs it, and computed nothing.
    assert "WorkflowRunningError" in loser_err, loser_err[-2000:]
    assert f"'race' is being run by another driver (pid {winner.pid} on" in loser_err, loser_err[-2000:]
    name = ("one", "two")[winners[0]]
    for label in ("a", "b"):
        assert (records_dir / label).read_text().split() == [name], label  # computed once, by the winner
    # One record, the winner's: the loser wrote none, so the status is not overwritten.
    runs = list_run_records(as_storage(str(storage_path)), "race")
    assert [(r["status"], r["pid"]) for r in runs] == [("ok", winner.pid)]
    assert raydag.get_status("race", storage_path) == "SUCCESSFUL"
    assert loser.returncode != 0


def _start_killed_driver(tmp_path, ray_cluster):
    """DRIVER_SCRIPT in a subprocess, once it has saved s0: ``(process, storage path, records folder)``."""
    storage_path = tmp_path / "storage"
    records_dir = tmp_path / "records"
    records_dir.mkdir()
    script = tmp_path / "driver.py"
    script.write_text(DRIVER_SCRIPT)
    driver = subprocess.Popen(
        interruptible([sys.executable, str(script), str(storage_path), str(records_dir), ray_cluster]),
        env=dict(os.environ, RAY_AUTH_MODE="disabled"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.time() + 90
    while not (storage_path / "killed" / "s0.ffr").exists():
        if driver.poll() is not None or time.time() > deadline:
            driver.kill()
            driver.wait()
            pytest.fail(f"the driver never saved s0: {driver.stderr.read().decode()[-2000:]}")
        time.sleep(0.02)
    return driver, storage_path, records_dir


@pytest.mark.timeout(150)
def test_lock_of_a_sigkilled_driver_does_not_block_the_next_run(ray_cluster, tmp_path):
    from functionfuse_raydag import records

    driver, storage_path, _ = _start_killed_driver(tmp_path, ray_cluster)
    storage = as_storage(str(storage_path))
    assert records.read_lock(storage, "killed")["pid"] == driver.pid  # held while it runs
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    driver.stderr.close()
    assert records.read_lock(storage, "killed")["pid"] == driver.pid  # a SIGKILLed driver cannot release it
    assert raydag.get_status("killed", storage_path) == "RESUMABLE"
    assert raydag.resume("killed", str(storage_path)) == 6 * 100 + 11  # the stale lock is broken
    assert records.read_lock(storage, "killed") is None  # and the resumed run released its own
    assert raydag.get_status("killed", storage_path) == "SUCCESSFUL"
    assert not [key for key in storage.list_meta("killed") if key.startswith(records.LOCK_KEY)]  # no breaker left


@pytest.mark.timeout(150)
def test_ctrl_c_releases_the_lock(ray_cluster, tmp_path):
    from functionfuse_raydag import records

    driver, storage_path, _ = _start_killed_driver(tmp_path, ray_cluster)
    driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=60)
    assert driver.returncode != 0 and b"KeyboardInterrupt" in err, err.decode()[-2000:]
    assert records.read_lock(as_storage(str(storage_path)), "killed") is None
    assert raydag.get_status("killed", storage_path) == "RESUMABLE"
    assert raydag.resume("killed", str(storage_path)) == 6 * 100 + 11


def test_lock_refuses_a_live_driver_and_breaks_a_dead_ones(store):
    """Without Ray: the lock's three cases, with real processes (one alive, one SIGKILLed) as holders."""
    import json

    from functionfuse_raydag import records

    from functionfuse.backends.addons.rayworkflowback import RayWorkflow

    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    try:
        for holder, name in ((alive, "live"), (dead, "stale")):
            lock = dict(records.driver_identity(), pid=holder.pid, proc_start=records._process_start(holder.pid),
                        since=time.time(), token=name)
            assert store.create_meta(name, records.LOCK_KEY, json.dumps(lock).encode())
        wf = RayWorkflow(add(1, 2).set_name("n"), workflow_name="live")
        wf.set_storage(store)
        with pytest.raises(raydag.WorkflowRunningError, match=f"'live' is being run by another driver "
                                                              f"\\(pid {alive.pid} on .*wait for it"):
            wf.run()
        assert store.list_tasks("live") == [] and records.read_record(store, "live") is None  # nothing written
        taken = records.take_lock(store, "stale")  # the dead holder's lock is broken
        assert records.read_lock(store, "stale")["token"] == taken.holder["token"]
        with pytest.raises(raydag.WorkflowRunningError, match=f"pid {os.getpid()} "):
            records.take_lock(store, "stale")  # held by this process now
        taken.release()
        assert records.read_lock(store, "stale") is None
        # A lock from another host cannot be checked: refused, saying how to remove it.
        other_host = dict(pid=1, host="elsewhere.example", since=time.time(), token="far")
        assert store.create_meta("far", records.LOCK_KEY, json.dumps(other_host).encode())
        with pytest.raises(raydag.WorkflowRunningError, match="pid 1 on elsewhere.example.*remove_meta"):
            records.take_lock(store, "far")
    finally:
        alive.kill()
        alive.wait()


def test_create_meta_is_create_exclusive_locally_and_on_memory(tmp_path):
    for storage in (as_storage(str(tmp_path / "st")), as_storage(f"memory://ff-lock-{os.getpid()}")):
        assert storage.create_meta("w", "k", b"first") is True
        assert storage.create_meta("w", "k", b"second") is False
        assert storage.read_meta("w", "k") == b"first"
        storage.remove_meta("w", "k")
        assert storage.create_meta("w", "k", b"third") is True
        assert storage.list_meta("w") == ["k"]  # no temporary left behind


@pytest.mark.timeout(120)
def test_create_meta_on_s3_is_a_conditional_put_and_one_of_many_drivers_wins(tmp_path):
    """moto's server over HTTP: If-None-Match: * refuses the second put; 8 threads race for one lock."""
    from concurrent.futures import ThreadPoolExecutor

    from functionfuse_raydag import records
    from s3_fixtures import running_moto

    with running_moto() as server:
        bucket = server.new_bucket("fflock")
        s3 = storage_factory(server.storage_options(f"{bucket}/ff"))
        assert s3.create_meta("w", "k", b"first") is True
        assert s3.create_meta("w", "k", b"second") is False
        assert s3.read_meta("w", "k") == b"first"
        assert s3.create_meta("w", "k", b"first") is True  # its own bytes: a retried put that had landed

        barrier = threading.Barrier(8)

        def take(_):
            barrier.wait()
            try:
                return records.take_lock(s3, "raced")
            except raydag.WorkflowRunningError:
                return None

        with ThreadPoolExecutor(8) as pool:
            taken = [lock for lock in pool.map(take, range(8)) if lock is not None]
        assert len(taken) == 1
        assert records.read_lock(s3, "raced")["token"] == taken[0].holder["token"]
        taken[0].release()
        assert records.read_lock(s3, "raced") is None


@workflow
class DiesOnce:
    def __init__(self, start, flag):
        self.total = start
        self.flag = flag

    def add(self, n):
        if n == 2 and not os.path.exists(self.flag):
            open(self.flag, "w").close()
            os._exit(1)  # the actor's process dies once, during this call
        self.total += n
        return self.total


@pytest.mark.timeout(150)
def test_a_restarted_actor_refuses_its_calls_naming_the_object(ray_cluster, store, tmp_path):
    """Issue 14 item 1 on raydag: Ray rebuilds the actor without its state; never a wrong value."""
    from functionfuse.backends.addons.rayworkflowback import RayWorkflow
    from functionfuse.errors import WorkerLostError

    c = DiesOnce(0, str(tmp_path / "died")).set_name("counter")
    a1, a2, a3 = c.add(1).set_name("a1"), c.add(2).set_name("a2"), c.add(3).set_name("a3")
    wf = RayWorkflow(a1, a2, a3, workflow_name="restarted")
    wf.query("^counter$").set_remote_args({"max_restarts": 1, "max_task_retries": 1})
    wf.set_storage(store)
    with pytest.raises(NodeExecutionError, match="stateful node 'counter'.*restarted") as info:
        wf.run()
    assert info.value.node_name in ("a2", "a3"), info.value
    assert isinstance(info.value.__cause__, WorkerLostError), repr(info.value.__cause__)
    assert os.path.exists(tmp_path / "died")  # the fault really happened
    assert "a3" not in store.list_tasks("restarted")  # nothing wrong was saved
    # rerun with storage: the object is rebuilt and its calls replayed in order
    again = RayWorkflow(a1, a2, a3, workflow_name="restarted")
    again.set_storage(store)
    assert again.run() == [1, 3, 6]
