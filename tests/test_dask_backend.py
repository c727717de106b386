"""The ``dask`` backend on real Dask clusters.

Most tests join a cluster this module starts itself: ``dask scheduler`` on
127.0.0.1 and two ``dask worker --nthreads 1 --no-nanny`` processes (one has
the resource ``slot``), joined by address. The scheduler allows no worker
failure (``distributed.scheduler.allowed-failures = 0``), so a worker killed
mid-node fails the run at once instead of being retried elsewhere. Other
tests let ``DaskWorkflow`` start its own ``LocalCluster``.
"""

from __future__ import annotations

import importlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from ray_fixtures import DriverOnly
from s3_fixtures import free_port

from functionfuse import workflow
from functionfuse.backends.builtin.daskback import DaskWorkflow
from functionfuse.backends.plugins import InitializerPlugin, RandomStatePlugin
from functionfuse.errors import InvalidOptionError, NodeExecutionError
from functionfuse.storage import storage_factory

pytestmark = pytest.mark.timeout(120)

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


# ---------------------------------------------------------------------------
# the cluster: a scheduler and two workers, started and killed by this module
# ---------------------------------------------------------------------------


def _env() -> dict:
    # Workers import this module (the tests' functions are pickled by reference) and ray_fixtures.
    path = os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}


class Cluster:
    def __init__(self, log_dir: Path):
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.processes: list = []
        self.scheduler = self.start(["dask", "scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                                     "--no-dashboard"], "scheduler")

    def start(self, argv: list, name: str) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "w")
        process = subprocess.Popen(argv, env=_env(), stdout=log, stderr=subprocess.STDOUT, cwd=str(TESTS))
        self.processes.append(process)
        return process

    def start_worker(self, name: str, resources: str | None = None) -> subprocess.Popen:
        argv = ["dask", "worker", self.address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                "--host", "127.0.0.1", "--name", name]
        if resources:
            argv += ["--resources", resources]
        return self.start(argv, name)

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from distributed import Client

    started = Cluster(tmp_path_factory.mktemp("dask"))
    try:
        started.start_worker("w0", "slot=1")
        started.start_worker("w1")
        with Client(started.address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def client(cluster):
    from distributed import Client

    with Client(cluster.address, timeout=60) as joined:
        yield joined


# ---------------------------------------------------------------------------
# the functions of the tests' workflows
# ---------------------------------------------------------------------------


def _worker_address():
    from distributed import get_worker

    return get_worker().address


@workflow
def add(a, b):
    return a + b


@workflow
def split(x):
    return (x, 2 * x)


@workflow
def total(values, extra):
    return sum(values) + extra["k"]


@workflow
def where(i):
    time.sleep(0.2)  # long enough that one worker does not take every task of a fan-out
    return (i, _worker_address(), os.getpid())


@workflow
def driver_only(driver_pid, payload):
    return DriverOnly(driver_pid, payload)


@workflow
def unwrap(value):
    return value.payload + 1


@workflow
def counted(path, value):
    with open(path, "a") as log:
        log.write(f"{os.getpid()}\n")
    return value


@workflow
def fails(x):
    raise ValueError(f"bad value {x}")


@workflow
def sleeps_once(flag, pid_file, x):
    # The first run writes its pid and sleeps (the test kills it meanwhile); later runs return at once.
    if not os.path.exists(flag):
        open(flag, "w").close()
        Path(pid_file).write_text(str(os.getpid()))
        time.sleep(60)
    return x * 10


@workflow
def read_global(x):
    return (x, os.environ.get("FF_DASK_TEST_INIT"))


def seed_random(seed):
    random.seed(seed)  # random.seed itself would pickle a copy of the module's generator


@workflow
def seeded(x):
    return random.random()


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
    return counter.n


DRIVER_PID = os.getpid()  # in a worker that imports this module: the worker's own pid


def lines(path) -> list:
    return Path(path).read_text().split() if Path(path).exists() else []


# ---------------------------------------------------------------------------
# the default: a LocalCluster for the run
# ---------------------------------------------------------------------------


def test_default_starts_a_local_cluster_of_worker_processes_and_closes_it(tmp_path):
    pair = split(add(1, 2).set_name("three")).set_name("pair")
    out = total([pair[0], pair[1]], {"k": where(0).set_name("where")[0]}).set_name("out")
    wf = DaskWorkflow(out, pair, workflow_name="local_cluster", record=True)
    assert wf.run() == [9, (3, 6)]
    pids = {int(entry["worker"].split()[1]) for entry in wf.run_record["nodes"].values()}
    assert DRIVER_PID not in pids
    for pid in pids:  # the run closed its cluster: its worker processes are gone
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"worker process {pid} of the run's LocalCluster is still alive")


def test_functionfuse_run_with_backend_dask(client):
    import functionfuse

    assert functionfuse.run(add(add(1, 1), 1), backend="dask", workflow_name="api", client=client) == 3


# ---------------------------------------------------------------------------
# a cluster joined by address
# ---------------------------------------------------------------------------


def test_nodes_run_on_both_workers_and_values_stay_there(cluster, client):
    spread = [where(i).set_name(f"where{i}") for i in range(16)]
    # DriverOnly cannot be unpickled in the driver: the run passes it between workers only
    hidden = unwrap(driver_only(DRIVER_PID, 41).set_name("hidden")).set_name("unwrapped")
    wf = DaskWorkflow(*spread, hidden, workflow_name="spread", address=cluster.address, record=True)
    results = wf.run()
    assert results[-1] == 42
    addresses = {address for _, address, _ in results[:-1]}
    workers = set(client.scheduler_info(n_workers=-1)["workers"])
    assert addresses <= workers and len(addresses) == 2
    recorded = {wf.run_record["nodes"][f"where{i}"]["dask_worker"] for i in range(16)}
    assert recorded == addresses
    assert DRIVER_PID not in {pid for _, _, pid in results[:-1]}


def test_references_are_resolved_on_the_worker(client):
    pair = split(add(2, 3)).set_name("pair")
    out = total([pair[0], pair[1], add(pair[1], 1)], {"k": pair[0]}).set_name("out")
    assert DaskWorkflow(out, workflow_name="refs", client=client).run() == 5 + 10 + 11 + 5


def test_stateful_node_lives_on_one_worker_and_its_calls_run_in_order(client):
    counter = Counter(add(1, 1)).set_name("counter")
    calls = [counter.add(k).set_name(f"call{k}") for k in range(1, 6)]
    seen = value_of(counter).set_name("seen")  # the state after the calls made before it
    later = counter.add(100).set_name("later")
    wf = DaskWorkflow(*calls, seen, later, counter, workflow_name="stateful", client=client)
    *values, seen_value, later_value, instance = wf.run()
    assert [n for n, _ in values] == [3, 5, 8, 12, 17]
    assert seen_value == 17
    assert later_value[0] == 117 and instance.n == 117
    assert len({address for _, address in values} | {later_value[1], instance.worker}) == 1


def test_stateful_nodes_are_spread_over_the_workers(client):
    counters = [Counter(i).set_name(f"counter{i}") for i in range(2)]
    calls = [c.add(1).set_name(f"inc{i}") for i, c in enumerate(counters)]
    values = DaskWorkflow(*calls, workflow_name="two_objects", client=client).run()
    assert [n for n, _ in values] == [1, 2]
    assert len({address for _, address in values}) == 2


def test_storage_is_written_by_the_workers_and_resumed(client, tmp_path):
    log = tmp_path / "computed.log"
    a = counted(str(log), 1).set_name("a")
    b = counted(str(log), add(a, 1)).set_name("b")
    c = counted(str(log), add(b, a)).set_name("c")
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}})
    wf = DaskWorkflow(c, workflow_name="stored", client=client)
    wf.set_storage(storage)
    assert wf.run() == 3
    assert DRIVER_PID not in {int(pid) for pid in lines(log)} and len(lines(log)) == 3
    record = wf.run_record["nodes"]
    assert {record[name]["outcome"] for name in ("a", "b", "c")} == {"computed"}
    assert all(record[name]["worker"] != f"pid {DRIVER_PID}" for name in ("a", "b", "c"))
    assert storage.read_task("stored", "b") == 2
    # resumed: nothing is computed again
    assert DaskWorkflow(c, workflow_name="stored", client=client).set_storage(storage).run() == 3
    assert len(lines(log)) == 3


def test_s3_storage_is_written_by_the_workers(client, tmp_path):
    from s3_fixtures import running_moto

    with running_moto() as s3:
        bucket = s3.new_bucket("ffdask")
        log = tmp_path / "computed.log"
        out = counted(str(log), add(counted(str(log), 20).set_name("twenty"), 1)).set_name("out")
        storage = storage_factory(s3.storage_options(f"{bucket}/runs"))
        assert DaskWorkflow(out, workflow_name="s3", client=client).set_storage(storage).run() == 21
        assert set(storage.list_tasks("s3")) >= {"twenty", "out"}
        assert DaskWorkflow(out, workflow_name="s3", client=client).set_storage(storage).run() == 21
        assert len(lines(log)) == 2


def test_node_plugins_run_on_the_worker(client):
    def init():
        os.environ["FF_DASK_TEST_INIT"] = str(os.getpid())

    nodes = [read_global(i).set_name(f"g{i}") for i in range(2)]
    wf = DaskWorkflow(*nodes, workflow_name="plugins", client=client)
    wf.query("^g.*$").set_plugins(InitializerPlugin(init))
    for x, pid in wf.run():
        assert pid is not None and int(pid) != DRIVER_PID

    rolls = [seeded(i).set_name(f"roll{i}") for i in range(3)]
    first = DaskWorkflow(*rolls, workflow_name="seeds", client=client)
    first.query("^roll.*$").set_plugins(RandomStatePlugin(min=0, max=1000, seed=7, seed_func=seed_random))
    second = DaskWorkflow(*rolls, workflow_name="seeds", client=client)
    second.query("^roll.*$").set_plugins(RandomStatePlugin(min=0, max=1000, seed=7, seed_func=seed_random))
    values = first.run()
    assert values == second.run() and len(set(values)) == 3


def test_a_failing_node_is_named_and_earlier_results_stay_saved(client, tmp_path):
    good = add(1, 2).set_name("good")
    bad = fails(good).set_name("bad")
    after = add(bad, 1).set_name("after")
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}})
    wf = DaskWorkflow(after, workflow_name="failing", client=client).set_storage(storage)
    with pytest.raises(NodeExecutionError, match=r"node 'bad' of workflow 'failing' failed: ValueError: bad value 3"):
        wf.run()
    assert set(storage.list_tasks("failing")) == {"good"}
    assert wf.run_record["nodes"]["bad"]["outcome"] == "failed"


# ---------------------------------------------------------------------------
# resources and remote args
# ---------------------------------------------------------------------------


def test_a_resource_some_worker_has_runs_there(client):
    nodes = [where(i).set_name(f"slotted{i}") for i in range(4)]
    wf = DaskWorkflow(*nodes, workflow_name="slots", client=client)
    wf.query("^slotted.*$").set_remote_args({"resources": {"slot": 1}})
    workers = client.scheduler_info(n_workers=-1)["workers"]
    w0 = next(address for address, info in workers.items() if info["name"] == "w0")
    assert {address for _, address, _ in wf.run()} == {w0}

    pinned = DaskWorkflow(where(9).set_name("on_w1"), workflow_name="named", client=client)
    pinned.query("^on_w1$").set_remote_args({"workers": "w1", "priority": 5})
    assert pinned.run()[1] != w0


def test_an_impossible_resource_is_refused_before_anything_runs(client, tmp_path):
    log = tmp_path / "computed.log"
    wf = DaskWorkflow(counted(str(log), counted(str(log), 1).set_name("first")).set_name("gpu_node"),
                      workflow_name="impossible", client=client)
    wf.query("^gpu_node$").set_remote_args({"resources": {"GPU": 1}})
    with pytest.raises(InvalidOptionError, match=r"node 'gpu_node' of workflow 'impossible' asks for 1 of "
                                                 r"resource 'GPU', but no worker of the Dask cluster has it"):
        wf.run()
    wf.query("^gpu_node$").set_remote_args({"resources": {"slot": 2}})
    with pytest.raises(InvalidOptionError, match="more than 1"):
        wf.run()
    wf.query("^gpu_node$").set_remote_args({"workers": ["tcp://127.0.0.1:1"]})
    with pytest.raises(InvalidOptionError, match="not in the Dask cluster"):
        wf.run()
    assert lines(log) == []  # refused before submission: nothing ran
    # a stateful node that asks for the impossible is refused too
    obj = DaskWorkflow(Counter(1).add(1), workflow_name="impossible_obj", client=client)
    obj.query("^Counter.*$").set_remote_args({"resources": {"GPU": 1}})
    with pytest.raises(InvalidOptionError, match="GPU"):
        obj.run()


@pytest.mark.parametrize(
    "remote_args, match",
    [
        ({"retries": 3}, "set_retries"),
        ({"num_cpus": 1}, "not a dask remote arg"),
        ({"resources": {"GPU": 0}}, "resources"),
        ({"workers": 3}, "workers"),
        ({"priority": "high"}, "priority"),
        ({"key": "mine"}, "sets it itself"),
        ("fast", "must be a dict"),
    ],
)
def test_bad_remote_args_are_refused_by_the_query(remote_args, match):
    wf = DaskWorkflow(add(1, 1).set_name("n"), workflow_name="w")
    with pytest.raises(InvalidOptionError, match=match):
        wf.query("^n$").set_remote_args(remote_args)


def test_constructor_options_are_checked():
    with pytest.raises(InvalidOptionError, match="at most one of client, address and cluster"):
        DaskWorkflow(add(1, 1), address="tcp://127.0.0.1:1", cluster=object())
    with pytest.raises(InvalidOptionError, match="cluster_args"):
        DaskWorkflow(add(1, 1), address="tcp://127.0.0.1:1", cluster_args={"n_workers": 1})


# ---------------------------------------------------------------------------
# a worker killed mid-node
# ---------------------------------------------------------------------------


def test_a_worker_killed_mid_node_is_named_and_the_run_resumes(cluster, client, tmp_path):
    doomed = cluster.start_worker("doomed", "doomed=1")
    client.wait_for_workers(3, timeout=60)
    flag, pid_file = tmp_path / "started", tmp_path / "pid"
    before = add(1, 2).set_name("before")
    victim = sleeps_once(str(flag), str(pid_file), before).set_name("victim")
    after = add(victim, 1).set_name("after")
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}})
    wf = DaskWorkflow(after, workflow_name="killed", client=client).set_storage(storage)
    wf.query("^victim$").set_remote_args({"resources": {"doomed": 1}})

    def kill_when_running():
        for _ in range(600):
            if pid_file.exists() and pid_file.read_text():
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_when_running, daemon=True)
    killer.start()
    with pytest.raises(NodeExecutionError) as info:
        wf.run()
    killer.join(timeout=60)
    assert doomed.wait(timeout=30) == -signal.SIGKILL
    message = str(info.value)
    assert re.search(r"node 'victim' of workflow 'killed' failed: the Dask worker tcp://127\.0\.0\.1:\d+ running it "
                     r"died", message), message
    assert wf.run_record["nodes"]["victim"]["outcome"] == "failed"
    assert set(storage.list_tasks("killed")) == {"before"}
    # resumable: on the remaining workers, 'before' is read back, the rest computed
    again = DaskWorkflow(after, workflow_name="killed", client=client).set_storage(storage)
    assert again.run() == 31
    outcomes = {name: entry["outcome"] for name, entry in again.run_record["nodes"].items()}
    assert outcomes == {"before": "stored", "victim": "computed", "after": "computed"}


@workflow
def wait_for(flag):
    for _ in range(600):
        if os.path.exists(flag):
            return 1
        time.sleep(0.1)
    raise TimeoutError(flag)


@workflow
class Holder:
    def __init__(self, pid_file):
        Path(pid_file).write_text(str(os.getpid()))
        self.n = 0

    def add(self, k):
        self.n += k
        return self.n


def test_a_stateful_node_whose_worker_leaves_while_idle_fails_instead_of_waiting(cluster, client, tmp_path):
    # Nothing runs on the holder when it dies, so Dask reports no KilledWorker: its pinned calls
    # would wait for it forever. The run must notice and name the stateful node instead.
    holder = cluster.start_worker("holder", "holder=1")
    client.wait_for_workers(len(client.scheduler_info(n_workers=-1)["workers"]) + 1, timeout=60)
    pid_file, flag = tmp_path / "pid", tmp_path / "go"
    obj = Holder(str(pid_file)).set_name("kept")
    call = obj.add(wait_for(str(flag)).set_name("slow")).set_name("inc")
    wf = DaskWorkflow(call, workflow_name="left", client=client)
    wf.query("^kept$").set_remote_args({"resources": {"holder": 1}})

    def kill_when_held():
        for _ in range(600):
            if pid_file.exists() and pid_file.read_text():
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
                holder.wait(timeout=30)
                flag.touch()  # now the call could run, but its instance is gone
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_when_held, daemon=True)
    killer.start()
    # (killed in the instant between the pid file and the constructor's return, Dask names it: KilledWorker)
    with pytest.raises(NodeExecutionError, match=r"node '(kept|inc)' of workflow 'left' failed: .*(holding the "
                                                 r"instance of stateful node 'kept' left the cluster|running it died)"):
        wf.run()
    killer.join(timeout=60)


# ---------------------------------------------------------------------------
# hooks of a third-party plugin fire in the workers
# ---------------------------------------------------------------------------


def test_dask_hooks_fire_for_every_node_from_an_entry_point_plugin(tmp_path, monkeypatch):
    import ff_hookcounter

    import functionfuse.manager

    log = str(tmp_path / "hooks.log")
    monkeypatch.setenv(ff_hookcounter.ENV, log)  # set before the cluster starts: its workers inherit it
    importlib.reload(ff_hookcounter)  # the entry point's object is chosen when the module is imported
    functionfuse.manager.clear_cache()
    try:
        one = add(1, 1).set_name("one")
        two = add(one, 1).set_name("two")
        pair = split(two).set_name("pair")
        out = add(pair[0], pair[1]).set_name("out")
        storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}})
        wf = DaskWorkflow(out, workflow_name="hooks", record=True,
                          cluster_args={"n_workers": 2, "threads_per_worker": 1})
        wf.set_storage(storage)
        assert wf.run() == 9
        first = ff_hookcounter.counts(log)
        names = ("one", "two", "pair", "out")
        expected = {(hook, name): 1 for name in names for hook in ("ff_execute_node", "ff_storage_save")}
        assert first["calls"] == expected
        workers = {int(wf.run_record["nodes"][name]["worker"].split()[1]) for name in names}
        assert first["pids"] == workers and DRIVER_PID not in first["pids"]
        # the second run reads back only the leaf it returns, in a worker
        assert wf.run() == 9
        second = ff_hookcounter.counts(log)
        assert {k: v for k, v in second["calls"].items() if k[0] == "ff_storage_read"} == {("ff_storage_read", "out"): 1}
        assert {k: v for k, v in second["calls"].items() if k[0] != "ff_storage_read"} == expected
        assert DRIVER_PID not in second["pids"]
    finally:
        monkeypatch.delenv(ff_hookcounter.ENV)
        importlib.reload(ff_hookcounter)
        functionfuse.manager.clear_cache()


# ---------------------------------------------------------------------------
# the docs' examples
# ---------------------------------------------------------------------------

def test_docs_backends_dask_md_runs_as_written(tmp_path, monkeypatch):
    """Every python block of docs/backends-dask.md runs, in order, its claims checked (the SLURM one is marked not run)."""
    from doc_examples import run_blocks

    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}  # the page is a script: its guarded parts run
    blocks = run_blocks("docs/backends-dask.md", namespace)  # every block, in order
    assert len(blocks) == 6 and namespace["cluster"].status.name == "closed"


def test_a_module_run_as_a_script_on_its_own(tmp_path):
    """A script whose workflow functions live in ``__main__`` runs on a fresh LocalCluster."""
    script = tmp_path / "script.py"
    script.write_text(
        "from functionfuse import workflow\n"
        "from functionfuse.backends.builtin.daskback import DaskWorkflow\n"
        "@workflow\n"
        "def add(a, b):\n"
        "    return a + b\n"
        "if __name__ == '__main__':\n"
        "    print(DaskWorkflow(add(add(1, 2), 3), cluster_args={'n_workers': 1}).run())\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=100, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "6"
