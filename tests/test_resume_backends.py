"""Trustworthy resume (issue 10) on every distributed backend: ray, raydag, prefect, kfp, dask.

Each backend gets its plan from the core (``Run.steps()``) and runs nodes
through the core's node call, so the rules proven on the local backend
(tests/test_resume_fingerprint.py) must hold here too. One scenario per
backend, on real parts (a Ray cluster, Prefect's ephemeral API, KFP's local
SubprocessRunner, a Dask LocalCluster with worker processes):

1. a first run computes every node; the same run again computes nothing;
2. changed code (the function object redefined in this process) recomputes
   that node and what uses it, with a reason naming the code;
3. a changed argument recomputes the node, its child and the leaf;
4. an inserted node shifts every later default name, yet only itself and
   the leaf are computed.

Nodes run in other processes, so each appends its label to a file in the
test's folder when it runs: what ran is read back from there.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

# Prefect reads its settings on import (see tests/test_contrib_prefect.py); it is imported lazily below.
if "prefect" not in sys.modules:
    _PREFECT_HOME = tempfile.mkdtemp(prefix="ff-prefect-home-")
    atexit.register(shutil.rmtree, _PREFECT_HOME, True)
    os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import cloudpickle
import pytest
from ray_fixtures import start_local_cluster, stop_local_cluster

import functionfuse
from functionfuse import workflow
from functionfuse.storage import as_storage
from plugins_builtin.runrecord import read_run_record

pytestmark = pytest.mark.timeout(300)

# workers of every backend unpickle this module's functions by value: they cannot import test modules
cloudpickle.register_pickle_by_value(sys.modules[__name__])


# ---------------------------------------------------------------------------
# the workflow: functions at module level, and one redefined in-process
# ---------------------------------------------------------------------------


def _note(folder: str, label: str) -> None:
    # one short O_APPEND write per node: atomic, whichever process runs it
    with open(os.path.join(folder, "calls.txt"), "a") as handle:
        handle.write(label + "\n")


@workflow
def step(folder, label, x):
    _note(folder, label)
    return x


@workflow
def collect(folder, *parts):
    _note(folder, "total")
    return list(parts)


SCALE_SOURCE = '''
def scale(folder, x):
    _note(folder, "scale")
    return x * {factor}
'''


def define_scale(factor: int):
    """``scale`` as a user gets it by editing its body and running the cell again: same name, new code."""
    namespace = {"_note": _note, "__name__": __name__}
    exec(compile(SCALE_SOURCE.format(factor=factor), __file__, "exec"), namespace)
    return workflow(namespace["scale"])


def build(folder: str, factor: int = 2, base: int = 1, insert: bool = False, named: bool = True):
    """``total([extra,] scale(a), c)``, its nodes named ``a``, ``b``, ``c``, ``total`` or left with default names.

    Default names count per function in a process: every rebuild here shifts them, as a notebook
    cell run again does, and an inserted ``extra`` takes the name the first ``step`` had.
    """
    scale = define_scale(factor)
    extra = step(folder, "extra", 100) if insert else None
    a = step(folder, "a", base)
    b = scale(folder, a)
    c = step(folder, "c", 5)
    total = collect(folder, *([extra] if insert else []), b, c)
    if named:
        a.set_name("a"), b.set_name("b"), c.set_name("c"), total.set_name("total")
    return total


def ran(folder) -> list:
    path = os.path.join(folder, "calls.txt")
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        calls = sorted(handle.read().split())
    os.unlink(path)
    return calls


def check_scenario(tmp_path, backend: str, **options) -> None:
    """The four steps of the module docstring on ``backend``."""
    folder = str(tmp_path / "calls")
    os.makedirs(folder)
    storage = str(tmp_path / "storage")

    def run(**graph):
        value = functionfuse.run(build(folder, **graph), backend=backend, workflow_name="w", storage=storage,
                                 **options)
        record = read_run_record(as_storage(storage), "w")
        assert record["backend"] == backend
        return value, ran(folder), record

    value, calls, record = run()
    assert value == [2, 5]
    assert calls == ["a", "c", "scale", "total"]
    assert record["counts"]["computed"] == 4

    value, calls, record = run()
    assert (value, calls) == ([2, 5], [])
    assert record["counts"]["computed"] == 0

    # changed code: the same function, edited
    value, calls, record = run(factor=3)
    assert value == [3, 5]
    assert calls == ["scale", "total"]
    assert record["recomputed"] == {"b": f"code of '{__name__}:scale' changed", "total": "parent recomputed"}

    # changed argument: the node, the scale that takes it, the leaf
    value, calls, record = run(factor=3, base=2)
    assert value == [6, 5]
    assert calls == ["a", "scale", "total"]
    assert record["recomputed"] == {"a": "argument changed", "b": "parent recomputed", "total": "parent recomputed"}

    # the same graph with default names (shifted by every rebuild): each result is found by its fingerprint
    value, calls, record = run(factor=3, base=2, named=False)
    assert (value, calls) == ([6, 5], [])
    assert record["counts"]["computed"] == 0 and record["counts"]["stored"] == 4

    # an inserted node: only itself and the leaf that takes it are computed
    value, calls, record = run(factor=3, base=2, insert=True, named=False)
    assert value == [100, 6, 5]
    assert calls == ["extra", "total"]
    assert record["counts"]["computed"] == 2


# ---------------------------------------------------------------------------
# the backends
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster for the module's ray and raydag tests."""
    ray, temp_dir = start_local_cluster(__name__)
    yield ray
    stop_local_cluster(ray, temp_dir)


def test_ray(tmp_path, ray_cluster):
    check_scenario(tmp_path, "ray")


def test_raydag(tmp_path, ray_cluster):
    check_scenario(tmp_path, "raydag")


def test_raydag_durable_resume_of_a_stored_plan_reads_back_what_applies(tmp_path, ray_cluster):
    # raydag's own resume (a run given by its stored plan, no script) goes through the same core plan
    import functionfuse_raydag as raydag

    folder = str(tmp_path / "calls")
    os.makedirs(folder)
    storage = str(tmp_path / "storage")
    assert functionfuse.run(build(folder), backend="raydag", workflow_name="w", storage=storage) == [2, 5]
    ran(folder)
    assert raydag.resume("w", storage) == [2, 5]
    assert ran(folder) == []


@pytest.fixture(scope="module")
def prefect_server():
    """Stop the ephemeral API server Prefect starts on first use when this module ends."""
    yield
    if "prefect" not in sys.modules:
        return
    from prefect.logging.handlers import APILogHandler
    from prefect.server.api.server import SubprocessASGIServer

    APILogHandler().flush()
    SubprocessASGIServer().stop()


def test_prefect(tmp_path, prefect_server):
    check_scenario(tmp_path, "prefect")


def test_kfp(tmp_path):
    check_scenario(tmp_path, "kfp")


@pytest.fixture(scope="module")
def dask_cluster():
    import distributed
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    yield cluster
    cluster.close()


def test_dask(tmp_path, dask_cluster):
    check_scenario(tmp_path, "dask", cluster=dask_cluster)
