"""The ``dask`` backend's less travelled paths, on a real Dask cluster.

One ``LocalCluster`` of two worker processes (names ``0`` and ``1``, one thread each, no
worker failure allowed) serves the module: its workers are processes of ``multiprocessing``,
so what runs in them is measured too. Tests that need a worker to kill, or a worker with
resources the others lack, join ``dask worker`` subprocesses to its scheduler (the set-up of
``tests/test_dask_backend.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_dask_backend import TESTS, _env

from functionfuse import workflow
from functionfuse.backends.builtin.daskback import DaskWorkflow
from functionfuse.errors import InvalidOptionError, MissingExtraError, NodeExecutionError
from functionfuse.storage import storage_factory

pytestmark = pytest.mark.timeout(180)

DRIVER_PID = os.getpid()  # in a worker that imports this module: the worker's own pid


# ---------------------------------------------------------------------------
# the cluster
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address="127.0.0.1:0") as started:
            yield started


@pytest.fixture(scope="module")
def client(cluster):
    from distributed import Client

    with Client(cluster, timeout=60, set_as_default=False) as joined:
        yield joined


def workers_by_name(client) -> dict:
    return {str(info["name"]): address for address, info in client.scheduler_info(n_workers=-1)["workers"].items()}


class ExtraWorker:
    """A ``dask worker`` subprocess joined to the module's scheduler."""

    def __init__(self, client, tmp_path: Path, name: str, resources: str):
        self.client = client
        before = len(client.scheduler_info(n_workers=-1)["workers"])
        argv = [sys.executable, "-m", "distributed.cli.dask_worker", client.scheduler.address, "--nthreads", "1",
                "--no-nanny", "--no-dashboard", "--host", "127.0.0.1", "--name", name, "--resources", resources]
        self.log = open(tmp_path / f"{name}.log", "w")
        self.process = subprocess.Popen(argv, env=_env(), stdout=self.log, stderr=subprocess.STDOUT, cwd=str(TESTS))
        client.wait_for_workers(before + 1, timeout=60)
        self.address = workers_by_name(client)[name]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        for _ in range(300):  # until the scheduler has let go of it
            if self.address not in self.client.scheduler_info(n_workers=-1)["workers"]:
                break
            time.sleep(0.1)
        self.log.close()


def task_states(client) -> dict:
    """``key -> (state, address of the worker processing it or None)`` on the scheduler."""

    def states(dask_scheduler):
        return {str(key): (ts.state, ts.processing_on.address if ts.processing_on else None)
                for key, ts in dask_scheduler.tasks.items()}

    return client.run_on_scheduler(states)


def wait_until(predicate, what: str, tries: int = 600):
    for _ in range(tries):
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


# ---------------------------------------------------------------------------
# the functions of the workflows
# ---------------------------------------------------------------------------


def _worker_address():
    from distributed import get_worker

    return get_worker().address


@workflow
def add(a, b):
    return a + b


@workflow
def where(i):
    return (i, _worker_address(), os.getpid())


@workflow
def wait_for(flag):
    for _ in range(1200):
        if os.path.exists(flag):
            return 1
        time.sleep(0.1)
    raise TimeoutError(flag)


@workflow
def flaky(marker, x):
    # fails the first time it runs (the marker does not exist yet), then succeeds
    if not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        raise ConnectionError("first attempt fails")
    return (x, int(Path(marker).read_text()), os.getpid())


@workflow
def identity(x):
    return x


@workflow
class Counter:
    def __init__(self, start):
        self.n = start
        self.worker = _worker_address()

    def add(self, k):
        self.n += k
        return (self.n, _worker_address())


@workflow
def value_of(counter):
    return (counter.n, _worker_address())


@workflow
class LockHolder:
    """A stateful node whose instance cannot be pickled: it cannot be shipped as a value."""

    def __init__(self, n):
        self.n = n
        self.lock = threading.Lock()

    def get(self):
        return self.n


# ---------------------------------------------------------------------------
# options refused before anything runs
# ---------------------------------------------------------------------------


def test_a_missing_distributed_names_the_dask_extra(monkeypatch):
    wf = DaskWorkflow(add(1, 1).set_name("n"), workflow_name="no_dask")
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ModuleNotFoundError
    with pytest.raises(MissingExtraError, match=r'needs dask\.distributed: run pip install "functionfuse\[dask\]"'):
        wf.run()


def test_an_address_that_is_not_a_string_is_refused_naming_the_workflow():
    with pytest.raises(InvalidOptionError, match=r"DaskWorkflow\('addr'\): address must be a scheduler address "
                                                 r"string, got 8786"):
        DaskWorkflow(add(1, 1), workflow_name="addr", address=8786)


def test_allow_other_workers_must_be_a_bool_and_a_bool_lets_the_node_run_elsewhere(client):
    wf = DaskWorkflow(where(1).set_name("loose"), workflow_name="loose_wf", client=client)
    with pytest.raises(InvalidOptionError, match=r"query on workflow 'loose_wf': remote arg 'allow_other_workers' "
                                                 r"must be a bool: workers= is a preference, not a restriction, "
                                                 r"got 'yes'"):
        wf.query("^loose$").set_remote_args({"allow_other_workers": "yes"})
    # a preference for a worker the cluster does not have is no refusal: the node runs on one it has
    wf.query("^loose$").set_remote_args({"workers": "tcp://127.0.0.1:1", "allow_other_workers": True})
    i, address, _ = wf.run()
    assert i == 1 and address in set(workers_by_name(client).values())


def test_resources_and_workers_no_single_worker_has_together_are_refused(client, tmp_path):
    extra = ExtraWorker(client, tmp_path, "slotted", "slot=1")
    try:
        wf = DaskWorkflow(where(2).set_name("both"), workflow_name="together", client=client)
        # 'slotted' has the slot, worker '0' exists: only the two together are impossible
        wf.query("^both$").set_remote_args({"resources": {"slot": 1}, "workers": "0"})
        with pytest.raises(InvalidOptionError, match=r"node 'both' of workflow 'together' asks for "
                                                     r"\{'resources': \{'slot': 1\}, 'workers': '0'\}, which no "
                                                     r"single worker of the Dask cluster has together"):
            wf.run()
        wf.query("^both$").set_remote_args({"resources": {"slot": 1}, "workers": "slotted"})
        assert wf.run()[1] == extra.address
    finally:
        extra.kill()


def test_an_argument_dask_cannot_serialise_names_the_node(client):
    lock = threading.Lock()
    wf = DaskWorkflow(identity(add(1, 2).set_name("fine")).set_name("after"),
                      identity(lock).set_name("unpicklable"), workflow_name="serialise", client=client)
    with pytest.raises(NodeExecutionError, match=r"node 'unpicklable' of workflow 'serialise' failed: "
                                                 r"TypeError: .*Could not serialize"):
        wf.run()


# ---------------------------------------------------------------------------
# stateful nodes: values, snapshots, pinning without workers
# ---------------------------------------------------------------------------


def test_a_stateful_node_passed_as_a_value_is_a_copy_of_its_state_at_that_point(client):
    counter = Counter(5).set_name("counter")
    first = counter.add(2).set_name("first")
    seen = value_of(counter).set_name("seen")  # after 'first' only: 7
    second = counter.add(10).set_name("second")  # submitted after 'seen': does not show in its copy
    wf = DaskWorkflow(first, seen, second, counter, workflow_name="snapshots", client=client)
    (n1, w1), (seen_n, seen_worker), (n2, w2), instance = wf.run()
    assert (n1, seen_n, n2, instance.n) == (7, 7, 17, 17)
    assert w1 == w2 == instance.worker  # every call on the one pinned instance
    assert seen_worker in set(workers_by_name(client).values())


def test_a_stateful_leaf_whose_instance_cannot_be_shipped_names_the_node(client):
    holder = LockHolder(3).set_name("locked")
    wf = DaskWorkflow(holder.get().set_name("got"), holder, workflow_name="unshippable", client=client)
    with pytest.raises(NodeExecutionError, match=r"node 'locked' of workflow 'unshippable' failed: "
                                                 r"TypeError: .*pickle '_thread.lock' object"):
        wf.run()
    assert wf.run_record is None or wf.run_record["nodes"]["locked"]["outcome"] == "failed"


def test_a_stateful_node_waits_for_a_first_worker_or_says_none_joined(monkeypatch):
    import plugins_builtin.daskback as daskback
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=0, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as empty, Client(empty, set_as_default=False) as client:
        counter = Counter(1).set_name("held")
        wf = DaskWorkflow(counter.add(1).set_name("inc"), workflow_name="no_workers", client=client)
        monkeypatch.setattr(daskback, "PIN_WAIT", 1)
        with pytest.raises(InvalidOptionError, match=r"stateful node 'held' of workflow 'no_workers': the Dask "
                                                     r"cluster has no worker to hold it \(none joined within 1 s\)"):
            wf.run()

        # an adaptive cluster: the first worker joins while the run waits for it
        monkeypatch.setattr(daskback, "PIN_WAIT", 60)
        waited = []
        original = client.wait_for_workers

        def wait_for_workers(n_workers, timeout=None):
            waited.append(n_workers)
            empty.scale(1)
            return original(n_workers, timeout=timeout)

        monkeypatch.setattr(client, "wait_for_workers", wait_for_workers)
        n, address = wf.run()
        assert n == 2 and waited == [1]
        assert list(client.scheduler_info(n_workers=-1)["workers"]) == [address]


# ---------------------------------------------------------------------------
# watching the cluster while the run waits
# ---------------------------------------------------------------------------


def test_a_restricted_node_whose_only_eligible_worker_left_fails_naming_it(client, tmp_path):
    gone = ExtraWorker(client, tmp_path, "gone", "gone=1")
    names = workers_by_name(client)
    flag = tmp_path / "go"
    early = where(0).set_name("early")  # restricted to worker '0', done long before the end
    slow = wait_for(str(flag)).set_name("slow")
    stranded = add(slow, 1).set_name("stranded")  # can only run on 'gone'
    wf = DaskWorkflow(stranded, early, workflow_name="gone_wf", client=client)
    wf.query("^early$").set_remote_args({"workers": names["0"]})
    wf.query("^slow$").set_remote_args({"workers": names["1"]})
    wf.query("^stranded$").set_remote_args({"resources": {"gone": 1}})

    def kill_once_early_is_done():
        wait_until(lambda: any(key.endswith("-early") and state == "memory"
                               for key, (state, _) in task_states(client).items()), "'early' computed")
        gone.kill()

    killer = threading.Thread(target=kill_once_early_is_done, daemon=True)
    killer.start()
    try:
        with pytest.raises(NodeExecutionError, match=r"node 'stranded' of workflow 'gone_wf' failed: no live Dask "
                                                     r"worker can run it any more: it asks for 1 of resource 'gone', "
                                                     r"but no worker of the Dask cluster has it"):
            wf.run()
    finally:
        killer.join(timeout=90)
        flag.touch()  # let 'slow' end on worker '1'
        gone.kill()


def test_a_task_cancelled_under_the_run_fails_naming_its_node(client, tmp_path):
    from distributed import Future

    flag = tmp_path / "go"
    wf = DaskWorkflow(wait_for(str(flag)).set_name("doomed_task"), workflow_name="cancelled", client=client)

    def cancel_when_running():
        key = wait_until(lambda: next((k for k, (state, _) in task_states(client).items()
                                       if k.endswith("-doomed_task") and state == "processing"), None),
                         "'doomed_task' running")
        client.cancel([Future(key, client)], force=True)

    canceller = threading.Thread(target=cancel_when_running, daemon=True)
    canceller.start()
    try:
        with pytest.raises(NodeExecutionError, match=r"node 'doomed_task' of workflow 'cancelled' failed: its Dask "
                                                     r"task was cancelled \(the client or cluster went away\): its "
                                                     r"Dask task '.*-doomed_task' was cancelled"):
            wf.run()
    finally:
        canceller.join(timeout=90)
        flag.touch()


# ---------------------------------------------------------------------------
# records and resumption
# ---------------------------------------------------------------------------


def test_retried_node_records_its_attempts_from_the_worker(client, tmp_path):
    marker = tmp_path / "first_attempt"
    wf = DaskWorkflow(add(flaky(str(marker), 1).set_name("flaky")[0], 1).set_name("out"),
                      workflow_name="retried", client=client, record=True)
    wf.query("^flaky$").set_retries(1)
    assert wf.run() == 2
    nodes = wf.run_record["nodes"]
    assert nodes["flaky"]["attempts"] == 2
    assert nodes["out"].get("attempts") is None  # no retry policy: no count
    # both attempts ran in the worker the record names, not in the driver
    pid = int(marker.read_text())
    assert pid != DRIVER_PID and nodes["flaky"]["worker"] == f"pid {pid}"


def test_a_partly_stored_run_without_record_reads_back_and_computes_the_rest(client, tmp_path):
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}})
    a = add(1, 2).set_name("a")
    assert DaskWorkflow(a, workflow_name="partial", client=client, record=False).set_storage(storage).run() == 3
    assert set(storage.list_tasks("partial")) == {"a"}
    # no record: the driver watches the leaf and the nodes with no child left to compute ('b' has 'c')
    b = add(a, 10).set_name("b")
    c = add(b, 100).set_name("c")
    wf = DaskWorkflow(c, workflow_name="partial", client=client, record=False).set_storage(storage)
    assert wf.run() == 113 and wf.run_record is None
    assert set(storage.list_tasks("partial")) == {"a", "b", "c"}
    assert storage.read_task("partial", "c") == 113


def test_where_outside_a_dask_worker_has_no_worker_address():
    from plugins_builtin.daskback import _where

    address, pid, host = _where()
    assert address is None and pid == os.getpid() and host


@workflow
def driver_only(driver_pid, payload):
    from ray_fixtures import DriverOnly

    return DriverOnly(driver_pid, payload)


def test_a_leaf_value_the_driver_cannot_load_names_the_leaf(client):
    # Computed fine on a worker; only loading it in the driver fails (as for a class the driver
    # lacks). The error names the leaf, as on the Ray backend.
    wf = DaskWorkflow(driver_only(DRIVER_PID, 41).set_name("unloadable"), workflow_name="unloadable_wf",
                      client=client)
    with pytest.raises(NodeExecutionError, match=r"node 'unloadable' of workflow 'unloadable_wf' failed: its value "
                                                 r"could not be loaded in the driver: RuntimeError\('this value was "
                                                 r"shipped to the driver'\)"):
        wf.run()
