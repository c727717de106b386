"""Retries and time limits per node (``query(...).set_retries`` / ``set_timeout``), the same on every backend.

Each backend runs the same three nodes: one that fails twice and then
succeeds (its attempts are counted in a file, so every process sees them),
one that always fails, and one that sleeps far past its limit. The clusters
are real: a local Ray cluster, a Dask ``LocalCluster`` of worker processes.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import InvalidOptionError, NodeExecutionError, NodeTimeoutError
from functionfuse.nodecall import NodeCall, RetryPolicy, run_node_call
from functionfuse.storage import storage_factory

pytestmark = pytest.mark.timeout(120)

BACKENDS = ["local", "ray", "dask"]


# ---------------------------------------------------------------------------
# the nodes: attempts are lines in a file, so they count across processes
# ---------------------------------------------------------------------------


def _attempt(path: str) -> int:
    with open(path, "a") as log:
        log.write(f"{os.getpid()}\n")
    with open(path) as log:
        return len(log.readlines())


def attempts_in(path) -> int:
    return len(open(path).readlines()) if os.path.exists(path) else 0


@workflow
def flaky(path, failures):
    attempt = _attempt(path)
    if attempt <= failures:
        raise ConnectionError(f"attempt {attempt} of a flaky call")
    return attempt


@workflow
def always_fails(path):
    raise ValueError(f"bad input, attempt {_attempt(path)}")


@workflow
def sleepy(path, seconds_first, seconds_later):
    # the first attempt hangs, later ones return at once
    attempt = _attempt(path)
    time.sleep(seconds_first if attempt == 1 else seconds_later)
    return attempt


@workflow
def plus_one(x):
    return x + 1


# ---------------------------------------------------------------------------
# one workflow object per backend, on real clusters started once per module
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    from ray_fixtures import start_local_cluster, stop_local_cluster

    ray, temp_dir = start_local_cluster(__name__)
    yield ray
    stop_local_cluster(ray, temp_dir)


@pytest.fixture(scope="module")
def dask_client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(params=BACKENDS)
def make_workflow(request):
    """``make_workflow(*leaves, **kwargs)`` on the backend of the parameter."""
    name = request.param
    if name == "local":
        return lambda *leaves, **kw: LocalWorkflow(*leaves, **kw)
    if name == "ray":
        request.getfixturevalue("ray_cluster")
        from functionfuse.backends.builtin.rayback import RayWorkflow

        return lambda *leaves, **kw: RayWorkflow(*leaves, **kw)
    client = request.getfixturevalue("dask_client")
    from functionfuse.backends.builtin.daskback import DaskWorkflow

    return lambda *leaves, **kw: DaskWorkflow(*leaves, client=client, **kw)


def backend_of(make_workflow) -> str:
    return make_workflow(plus_one(1)).backend_name


# ---------------------------------------------------------------------------
# the three nodes, on every backend
# ---------------------------------------------------------------------------


def test_node_that_fails_twice_then_succeeds_is_computed_once_with_its_attempts(make_workflow, tmp_path):
    count = str(tmp_path / "flaky.log")
    node = flaky(count, 2).set_name("fetch")
    after = plus_one(node).set_name("after")
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}})
    wf = make_workflow(after, workflow_name="retries")
    wf.set_storage(storage)
    wf.query("^fetch$").set_retries(3, on=(ConnectionError,))
    assert wf.run() == 4
    assert attempts_in(count) == 3
    entry = wf.run_record["nodes"]["fetch"]
    assert entry["outcome"] == "computed"
    assert entry["attempts"] == 3
    assert storage.read_task("retries", "fetch") == 3
    # resumed: nothing is attempted again
    assert wf.run() == 4
    assert attempts_in(count) == 3


def test_node_that_always_fails_gives_its_last_error_and_the_attempt_count(make_workflow, tmp_path):
    count = str(tmp_path / "bad.log")
    wf = make_workflow(always_fails(count).set_name("parse"), workflow_name="retries")
    wf.query("^parse$").set_retries(2, delay=0.05, backoff=2.0)
    with pytest.raises(NodeExecutionError) as info:
        wf.run()
    message = str(info.value)
    assert "'parse'" in message and "after 3 attempts" in message
    assert "bad input, attempt 3" in message  # the last error, not the first
    assert isinstance(info.value.__cause__, ValueError)
    assert attempts_in(count) == 3


def test_exception_not_listed_is_not_retried(make_workflow, tmp_path):
    count = str(tmp_path / "bad.log")
    wf = make_workflow(always_fails(count).set_name("parse"), workflow_name="retries")
    wf.query("^parse$").set_retries(5, on=(ConnectionError,))
    with pytest.raises(NodeExecutionError, match="after 1 attempt"):
        wf.run()
    assert attempts_in(count) == 1


def test_node_past_its_time_limit_fails_naming_it_without_waiting_for_it(make_workflow, tmp_path):
    count = str(tmp_path / "sleepy.log")
    wf = make_workflow(sleepy(count, 60, 60).set_name("hangs"), workflow_name="timeouts")
    wf.query("^hangs$").set_timeout(1)
    began = time.monotonic()
    with pytest.raises(NodeTimeoutError) as info:
        wf.run()
    waited = time.monotonic() - began
    assert info.value.node_name == "hangs" and info.value.workflow_name == "timeouts"
    assert "time limit of 1 s" in str(info.value)
    assert isinstance(info.value, NodeExecutionError) and isinstance(info.value, TimeoutError)
    # the run did not wait for the 60 s call (a generous bound: this asserts "not waited", not speed)
    assert waited < 40


def test_timed_out_attempt_is_retried(make_workflow, tmp_path):
    count = str(tmp_path / "sleepy.log")
    wf = make_workflow(sleepy(count, 60, 0).set_name("slow_once"), workflow_name="timeouts", record=True)
    wf.query("^slow_once$").set_timeout(1).set_retries(1)
    assert wf.run() == 2
    assert attempts_in(count) == 2
    if backend_of(make_workflow) != "ray":
        assert wf.run_record["nodes"]["slow_once"]["attempts"] == 2


@workflow
def stuck(pid_file, seconds):
    with open(pid_file, "w") as out:
        out.write(str(os.getpid()))
    time.sleep(seconds)  # a thread could not stop this; killing its process does
    return seconds


@workflow
def noisy(path, failures):
    print("stdout of the node does not disturb the result")
    attempt = _attempt(path)
    if attempt <= failures:
        raise ConnectionError(f"attempt {attempt} of a flaky call")
    return attempt


def test_timeout_with_kill_stops_the_process_running_the_call(make_workflow, tmp_path):
    pid_file = tmp_path / "pid"
    wf = make_workflow(stuck(str(pid_file), 120).set_name("solver"), workflow_name="killed")
    wf.query("^solver$").set_timeout(10, kill=True)
    began = time.monotonic()
    with pytest.raises(NodeTimeoutError, match="its process was killed") as info:
        wf.run()
    assert time.monotonic() - began < 90  # not the 120 s call
    assert info.value.killed and info.value.node_name == "solver"
    pid = int(pid_file.read_text())
    assert pid != os.getpid()
    with pytest.raises(ProcessLookupError):  # killed and reaped by the process that waited for it
        os.kill(pid, 0)


def test_timeout_with_kill_returns_values_and_retries_errors(make_workflow, tmp_path):
    count = str(tmp_path / "noisy.log")
    wf = make_workflow(plus_one(noisy(count, 1).set_name("fetch")), workflow_name="child", record=True)
    wf.query("^fetch$").set_timeout(60, kill=True).set_retries(2)
    assert wf.run() == 3
    assert attempts_in(count) == 2
    pids = {int(line) for line in open(count)}
    assert os.getpid() not in pids and len(pids) == 2  # a fresh process per attempt


# ---------------------------------------------------------------------------
# in-process details: the limit on the local backend, validation, the fast path
# ---------------------------------------------------------------------------


def test_local_time_limit_is_kept_within_a_second(tmp_path):
    wf = LocalWorkflow(sleepy(str(tmp_path / "s.log"), 60, 60).set_name("hangs"), workflow_name="timeouts")
    wf.query("^hangs$").set_timeout(0.5)
    began = time.monotonic()
    with pytest.raises(NodeTimeoutError, match="'hangs'"):
        wf.run()
    assert time.monotonic() - began < 0.5 + 1


def test_timed_out_node_with_retries_says_how_many_attempts(tmp_path):
    count = str(tmp_path / "s.log")
    wf = LocalWorkflow(sleepy(count, 60, 60).set_name("hangs"), workflow_name="timeouts")
    wf.query("^hangs$").set_timeout(0.2).set_retries(1)
    with pytest.raises(NodeTimeoutError, match="after 2 attempts") as info:
        wf.run()
    assert info.value.attempt == 2
    assert attempts_in(count) == 2


def test_delays_grow_by_the_backoff():
    assert RetryPolicy(3, delay=1.0, backoff=2.0).pauses() == [1.0, 2.0, 4.0]
    assert RetryPolicy(2, delay=0.5).pauses() == [0.5, 0.5]
    assert RetryPolicy(2).on == (Exception,)
    assert RetryPolicy(1, on=OSError).on == (OSError,)


@pytest.mark.parametrize(
    "setter, match",
    [
        (lambda q: q.set_retries(-1), "retries must be an int >= 0"),
        (lambda q: q.set_retries(2.5), "retries must be an int"),
        (lambda q: q.set_retries(2, delay=-1), "delay must be"),
        (lambda q: q.set_retries(2, backoff=float("inf")), "backoff must be"),
        (lambda q: q.set_retries(2, on=("ValueError",)), "on must be an exception class"),
        (lambda q: q.set_retries(2, on=()), "on must be an exception class"),
        (lambda q: q.set_timeout(0), "seconds must be a finite number > 0"),
        (lambda q: q.set_timeout("10"), "seconds must be"),
        (lambda q: q.set("retries", "3"), "retries must be an int"),
        (lambda q: q.set("timeout", -2), "seconds must be"),
    ],
)
def test_bad_policies_are_refused_when_set(setter, match):
    wf = LocalWorkflow(plus_one(1).set_name("n"), workflow_name="w")
    with pytest.raises(InvalidOptionError, match=match):
        setter(wf.query("^n$"))


def test_every_backend_accepts_the_keys():
    from functionfuse.backends.builtin.graphback import GraphWorkflow

    wf = GraphWorkflow(plus_one(1).set_name("n"), workflow_name="w")
    wf.query("^n$").set_retries(2).set_timeout(5).set("retries", 1)
    assert wf.attrs(wf.find_nodes("^n$")[0]) == {"retries": 1, "timeout": 5.0, "timeout_kill": False}
    with pytest.raises(InvalidOptionError, match="kill must be True or False"):
        wf.query("^n$").set_timeout(5, kill="yes")


def test_retried_call_reruns_node_plugins_before_each_attempt(tmp_path):
    from functionfuse.backends.plugins import InitializerPlugin

    seen = []
    count = str(tmp_path / "f.log")
    wf = LocalWorkflow(flaky(count, 2).set_name("fetch"), workflow_name="w")
    wf.query("^fetch$").set_plugins(InitializerPlugin(lambda: seen.append(1))).set_retries(2)
    assert wf.run() == 3
    assert len(seen) == 3


def test_without_a_policy_the_call_takes_the_fast_path():
    call = NodeCall("n", "w", "call", lambda a: a + 1, None)
    threads = threading.active_count()
    assert run_node_call(call, (1,))[0] == 2
    assert call.attempts is None  # the policy path was not entered
    assert threading.active_count() == threads
    call.timeout = 5.0
    assert run_node_call(call, (1,))[0] == 2
    assert call.attempts == 1
