"""Retries and time limits on the addon backends: prefect, kfp (its local runner) and raydag.

The same three nodes as tests/test_retries.py (local, ray, dask): one that
fails twice and then succeeds (attempts counted in a file), one that always
fails, and one that sleeps far past its limit. Each backend runs them for
real: Prefect against its own ephemeral API, KFP with one process per
component, raydag on a local Ray cluster.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

# Prefect reads its settings when it is imported: a private home and its ephemeral API server.
if "prefect" not in sys.modules:
    os.environ["PREFECT_HOME"] = _PREFECT_HOME = tempfile.mkdtemp(prefix="ff-prefect-home-")
    import atexit

    atexit.register(shutil.rmtree, _PREFECT_HOME, True)
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.pop("PREFECT_API_URL", None)

import pytest  # noqa: E402

from functionfuse import workflow  # noqa: E402
from functionfuse.errors import NodeExecutionError, NodeTimeoutError  # noqa: E402
from functionfuse.storage import storage_factory  # noqa: E402

pytestmark = pytest.mark.timeout(180)

ADDONS = ["prefect", "kfp", "raydag"]


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
def sleepy(path, seconds):
    _attempt(path)
    time.sleep(seconds)
    return seconds


@workflow
def plus_one(x):
    return x + 1


@pytest.fixture(scope="module")
def ray_cluster():
    from ray_fixtures import start_local_cluster, stop_local_cluster

    ray, temp_dir = start_local_cluster(__name__)
    yield ray
    stop_local_cluster(ray, temp_dir)


@pytest.fixture(scope="module")
def prefect_server():
    yield
    if "prefect" in sys.modules:  # stop the ephemeral API server this module started, not at exit
        from prefect.logging.handlers import APILogHandler
        from prefect.server.api.server import SubprocessASGIServer

        APILogHandler().flush()
        SubprocessASGIServer().stop()


@pytest.fixture(params=ADDONS)
def make_workflow(request, tmp_path):
    """``make_workflow(*leaves, workflow_name=...)`` on the addon backend of the parameter, with file storage."""
    name = request.param
    if name == "prefect":
        request.getfixturevalue("prefect_server")
        from functionfuse.backends.addons.prefectback import PrefectWorkflow as cls
    elif name == "kfp":
        from functionfuse.backends.addons.kfpback import KFPWorkflow as cls
    else:
        request.getfixturevalue("ray_cluster")
        from functionfuse.backends.addons.rayworkflowback import RayWorkflow as cls
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}})
    return lambda *leaves, **kw: cls(*leaves, **kw).set_storage(storage)


def test_node_that_fails_twice_then_succeeds_is_computed_once(make_workflow, tmp_path):
    count = str(tmp_path / "flaky.log")
    fetch = flaky(count, 2).set_name("fetch")
    wf = make_workflow(plus_one(fetch).set_name("after"), workflow_name="retries")
    wf.query("^fetch$").set_retries(3, delay=0.1, on=(ConnectionError,))
    assert wf.run() == 4
    assert attempts_in(count) == 3
    assert wf.storage.read_task("retries", "fetch") == 3
    if wf.run_record is not None:
        assert wf.run_record["nodes"]["fetch"]["outcome"] == "computed"
        if wf.backend_name == "prefect":  # tasks run in this process: the run reads the call's own count
            assert wf.run_record["nodes"]["fetch"]["attempts"] == 3


def test_node_that_always_fails_gives_its_last_error_and_the_attempt_count(make_workflow, tmp_path):
    count = str(tmp_path / "bad.log")
    wf = make_workflow(always_fails(count).set_name("parse"), workflow_name="retries")
    wf.query("^parse$").set_retries(2)
    with pytest.raises(NodeExecutionError) as info:
        wf.run()
    message = str(info.value)
    assert "'parse'" in message and "after 3 attempts" in message and "bad input, attempt 3" in message
    assert attempts_in(count) == 3


def test_node_past_its_time_limit_fails_naming_it_without_waiting_for_it(make_workflow, tmp_path):
    count = str(tmp_path / "sleepy.log")
    wf = make_workflow(sleepy(count, 60).set_name("hangs"), workflow_name="timeouts")
    wf.query("^hangs$").set_timeout(1)
    began = time.monotonic()
    with pytest.raises(NodeTimeoutError) as info:
        wf.run()
    assert info.value.node_name == "hangs" and "time limit of 1 s" in str(info.value)
    assert attempts_in(count) == 1
    assert time.monotonic() - began < 45  # not the 60 s call: "did not wait", not a speed bound
