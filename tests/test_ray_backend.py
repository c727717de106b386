"""The ``ray`` backend and the ``ray`` storage kind, on a real local Ray cluster (one per module)."""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import sys
import time

import pytest
from ray_fixtures import DriverOnly, start_local_cluster, stop_local_cluster

from functionfuse import hookimpl, workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.backends.builtin.rayback import RayWorkflow
from functionfuse.backends.plugins import InitializerPlugin, PluginCollection, RandomStatePlugin
from functionfuse.errors import InvalidOptionError, NodeExecutionError
from functionfuse.storage import storage_factory

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    ray, temp_dir = start_local_cluster(__name__)
    yield ray
    stop_local_cluster(ray, temp_dir)


# ---------------------------------------------------------------------------
# the functions of the tests' workflows
# ---------------------------------------------------------------------------


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
def keyword(a, *, scale=1):
    return a * scale


@workflow
class Counter:
    def __init__(self, start):
        self.count = start
        self.calls = []

    def add(self, n):
        self.count += n
        self.calls.append(n)
        return self.count

    def history(self):
        return list(self.calls)


@workflow
def describe(counter):
    return counter.count


@workflow
def fail(x):
    raise ValueError(f"bad input {x}")


@workflow
def die(x):
    os._exit(3)


@workflow
class Fragile:
    def crash(self):
        os._exit(3)


@workflow
def where():
    import ray

    return os.getpid(), ray.get_runtime_context().get_node_id()


@workflow
def driver_only_pair(driver_pid):
    return DriverOnly(driver_pid, 41), 1


@workflow
def payload(value):
    return value.payload if isinstance(value, DriverOnly) else value


@workflow
def rendezvous(i, folder, want, patience):
    """Mark this task active in ``folder``; wait (up to ``patience`` s) until ``want`` are active at once.

    Returns the most tasks it saw active together: what happened, not how long it took.
    """
    me = os.path.join(folder, f"active-{i}")
    open(me, "w").close()
    deadline = time.monotonic() + patience
    seen = 0
    while True:
        seen = max(seen, sum(1 for f in os.listdir(folder) if f.startswith("active-")))
        if seen >= want or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    time.sleep(0.05)  # still active while the others look
    os.remove(me)
    return seen


@workflow
def draw():
    return random.random()


@workflow
def current_flag():
    return socket.getdefaulttimeout()


@workflow
def flaky(marks):
    # fails on its first try, succeeds on the second: only a retry by Ray can make it pass
    with open(marks, "a") as handle:
        handle.write("x")
    tries = os.path.getsize(marks)
    if tries < 2:
        raise ConnectionError("first try fails")
    return tries


@workflow
def env_probe():
    return os.environ.get("FF_PROBE")


def set_flag():
    # a module default, like torch.set_default_dtype on the seed's page
    socket.setdefaulttimeout(12.5)


def seed_everything(seed):
    random.seed(seed)


def mixed_graph():
    """Nested references, indexed references, keywords, a stateful node: the shapes users write."""
    n1 = add(1, 1).set_name("node1")
    n2 = add(n1, 1).set_name("node2")
    pair = split(n2).set_name("pair")
    n3 = add(pair[0], pair[1]).set_name("node3")
    t = total([n1, n2, pair[1]], {"k": n3}).set_name("total")
    k = keyword(n3, scale=10).set_name("scaled")
    c = Counter(start=n1).set_name("counter")
    c.add(2).set_name("c1")
    c2 = c.add(t).set_name("c2")
    seen = describe(c).set_name("seen")
    hist = c.history().set_name("history")
    return t, k, c2, seen, hist


class Recorder:
    """Records the hooks the driver fires."""

    def __init__(self):
        self.events = []
        self.infos = {}

    @hookimpl
    def ff_before_run(self, context):
        self.events.append(("before_run", context.backend_name))

    @hookimpl
    def ff_after_run(self, context, error):
        self.events.append(("after_run", type(error).__name__ if error else None))

    @hookimpl
    def ff_before_node(self, node):
        self.events.append(("before", node.name))

    @hookimpl
    def ff_after_node(self, node, result, info):
        self.events.append(("after", node.name))
        self.infos[node.name] = info

    @hookimpl
    def ff_node_error(self, node, error):
        self.events.append(("error", node.name, type(error).__name__))

    @hookimpl
    def ff_node_restored(self, node):
        self.events.append(("restored", node.name))

    def names(self, kind):
        return [e[1] for e in self.events if e[0] == kind]


# ---------------------------------------------------------------------------
# the seed's RayWorkflow page, line by line
# ---------------------------------------------------------------------------


def test_seed_page_ray_workflow(tmp_path):
    @workflow
    def sum(a, b):  # the page's own name
        return a + b

    a, b = 1, 1
    a_plus_b = sum(a, b).set_name("node1")
    a_plus_two_b = sum(a_plus_b, b).set_name("node2")

    ray_workflow = RayWorkflow(a_plus_two_b, workflow_name="sums")
    assert ray_workflow.run() == 3

    # Ray cluster options: used only when Ray is not initialised yet (here it is, so the
    # unreachable address below is never dialled).
    ray_options = {"address": "ray://localhost:10001", "ignore_reinit_error": True, "runtime_env": {"working_dir": "."}}
    ray_workflow = RayWorkflow(a_plus_two_b, workflow_name="sums", ray_init_args=ray_options)
    assert ray_workflow.run() == 3

    # Ray remote task options
    node1_remote_args = {"num_cpus": 1}
    node2_remote_args = {"resources": {"custom_resource": 0.1}}
    ray_workflow.query("^.*node1.*$").set_remote_args(node1_remote_args)
    ray_workflow.query("^.*node2.*$").set_remote_args(node2_remote_args)
    assert ray_workflow.run() == 3
    assert ray_workflow.attrs(a_plus_two_b)["remote_args"] == node2_remote_args

    # Plugins (torch is not installed: the same shapes with the standard library)
    seeds = []

    def init_float():
        set_flag()

    def set_seed(seed):
        random.seed(seed)
        seeds.append(seed)  # in the worker: a copy of the list, the driver's stays empty
        (tmp_path / f"seed-{os.getpid()}").write_text(str(seed))  # what the worker ran, for the driver to see

    random_state_plugin = RandomStatePlugin(
        min=-0x8000_0000_0000_0000, max=0xFFFF_FFFF_FFFF_FFFF, seed=-0x8000_0000_0000_0000, seed_func=set_seed
    )
    initializer_plugin = InitializerPlugin(init_float)
    plugin_collection = PluginCollection([initializer_plugin, random_state_plugin])
    ray_workflow.query("^.*node1.*$").set_plugins(initializer_plugin)
    ray_workflow.query("^.*node2.*$").set_plugins(plugin_collection)
    assert ray_workflow.run() == 3
    assert seeds == []  # the seed function ran in a worker, not in the driver ...
    ran = {p.name: p.read_text() for p in tmp_path.glob("seed-*")}  # ... and it did run there, with min + 1
    assert list(ran.values()) == [str(-0x8000_0000_0000_0000 + 1)] and f"seed-{os.getpid()}" not in ran

    # Storage
    ray_storage_remote_args = {"resources": {"_disk": 0.001}}
    opt = {"kind": "ray", "options": {"remoteArgs": ray_storage_remote_args, "path": str(tmp_path / "storage")}}
    storage = storage_factory(opt)
    ray_workflow.set_storage(storage)
    assert ray_workflow.run() == 3
    assert storage.list_tasks(workflow_name="sums", pattern="*") == ["node1", "node2"]
    assert storage.read_task(workflow_name="sums", task_name="node2") == 3
    assert {"node1.ffr", "node2.ffr"} <= set(os.listdir(tmp_path / "storage" / "sums"))


def test_docs_backends_ray_md_runs_as_written(tmp_path, monkeypatch, capsys):
    """Every python block of docs/backends-ray.md, in order; each ``print(...)  # output`` shows what it prints."""
    from doc_examples import run_blocks

    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_backends_ray"}  # not importable: Ray pickles its functions by value
    blocks = run_blocks("docs/backends-ray.md", namespace)  # every block, in order
    assert len(blocks) >= 12
    printed = capsys.readouterr().out.splitlines()
    expected = [c.strip() for block in blocks for c in re.findall(r"^\s*print\(.*\)  # (.*)$", block, re.MULTILINE)]
    assert len(expected) >= 10
    lines = iter(printed)
    for comment in expected:  # in order, each comment matches a printed line; "..." stands for anything
        pattern = ".*".join(re.escape(part) for part in comment.split("..."))
        assert any(re.fullmatch(pattern, line) for line in lines), f"the doc says {comment!r}; printed: {printed}"
    assert "FF_RUN_ID" not in os.environ  # the callable ff_prepare_node returned ran in the worker only
    assert decimal_precision_of_driver() == 28
    assert {"node1.ffr", "node2.ffr"} <= set(os.listdir(tmp_path / "storage" / "sums"))
    # the plugin's driver hook printed where the node ran: a Ray worker, not this process
    ran = [line for line in printed if line.startswith("run_id: ")]
    assert len(ran) == 1 and f"pid {os.getpid()} " not in ran[0]


def decimal_precision_of_driver():
    import decimal

    return decimal.getcontext().prec


JOIN_BY_ADDRESS = """
import sys

import ray

from functionfuse import workflow
from functionfuse.backends.builtin.rayback import RayWorkflow

@workflow
def add(a, b):
    return a + b

address = sys.argv[1]
print(ray.is_initialized())
wf = RayWorkflow(add(add(1, 2), 3), workflow_name="joined", ray_init_args={"address": address, "log_to_driver": False})
print(wf.run())
print(ray.get_runtime_context().gcs_address == address)
# initialised now: these ray_init_args are not used, the address is never dialled
print(RayWorkflow(add(1, 1), workflow_name="again", ray_init_args={"address": "ray://nowhere.invalid:1"}).run())
"""

NOTEBOOK = """
import sys

import ray

from functionfuse.storage import storage_factory

address, path = sys.argv[1], sys.argv[2]
storage = storage_factory({"kind": "ray", "options": {
    "path": path, "remoteArgs": {"resources": {"_disk": 0.001}}, "rayInitArgs": {"address": address},
}})
print(ray.is_initialized())
print(storage.list_tasks(workflow_name="shared"))
print(storage.read_task(workflow_name="shared", task_name="node2"))
print(ray.get_runtime_context().gcs_address == address)
"""


def test_ray_init_is_called_only_when_ray_is_not_initialised(tmp_path, ray_cluster):
    """A fresh process connects with ray_init_args (rayInitArgs for a storage); an initialised one is left as is."""
    address = ray_cluster.get_runtime_context().gcs_address
    store = str(tmp_path / "store")
    storage = storage_factory({"kind": "ray", "options": {"path": store, "remoteArgs": {"resources": {"_disk": 0.001}}}})
    n2 = add(add(1, 1).set_name("node1"), 1).set_name("node2")
    assert RayWorkflow(n2, workflow_name="shared").set_storage(storage).run() == 3

    def run(script, *args):
        path = tmp_path / "script.py"
        path.write_text(script)
        done = subprocess.run([sys.executable, str(path), *args], check=False, capture_output=True, text=True, timeout=90,
                              cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.split()

    # RayWorkflow.run() in a process where Ray is not initialised: ray.init(**ray_init_args)
    assert run(JOIN_BY_ADDRESS, address) == ["False", "6", "True", "2"]
    # a notebook connected to the cluster only through the storage's rayInitArgs
    assert run(NOTEBOOK, address, store) == ["False", "['node1',", "'node2']", "3", "True"]


# ---------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------


def test_same_results_as_local_in_one_process():
    leaves = mixed_graph()
    local = LocalWorkflow(*leaves, workflow_name="mixed").run()
    on_ray = RayWorkflow(*leaves, workflow_name="mixed").run()
    assert on_ray == local
    assert local == [20, 90, 24, 24, [2, 20]]
    # the same nodes again, on Ray, with return_results=False: refs that give the same values
    import ray

    refs = RayWorkflow(*leaves, workflow_name="mixed").run(return_results=False)
    assert all(isinstance(r, ray.ObjectRef) for r in refs)
    assert ray.get(refs) == local


def test_indexed_reference_is_resolved_in_the_consumer_not_the_driver():
    pair = driver_only_pair(os.getpid()).set_name("pair")
    out = add(payload(pair[0]), pair[1]).set_name("out")
    assert RayWorkflow(out, workflow_name="refs").run() == 42


def test_stateful_node_is_an_actor_and_runs_calls_in_order():
    c = Counter(start=0).set_name("counter")
    calls = [c.add(i).set_name(f"add{i}") for i in range(1, 8)]
    hist = c.history().set_name("history")
    wf = RayWorkflow(*calls, hist, workflow_name="counter")
    assert wf.run() == [1, 3, 6, 10, 15, 21, 28, [1, 2, 3, 4, 5, 6, 7]]


def test_nodes_run_in_parallel_and_max_pending_tasks_bounds_them(tmp_path):
    # proven by how many tasks were active at once, never by clocks: a busy machine only makes it slower
    together = tmp_path / "together"
    together.mkdir()
    tasks = [rendezvous(i, str(together), 2, 120).set_name(f"s{i}") for i in range(4)]
    seen = RayWorkflow(*tasks, workflow_name="par").run()
    assert max(seen) == 2  # two ran at once (2 CPUs), never more
    alone = tmp_path / "alone"
    alone.mkdir()
    tasks = [rendezvous(i, str(alone), 2, 0.5).set_name(f"s{i}") for i in range(4)]
    assert RayWorkflow(*tasks, workflow_name="par").run(max_pending_tasks=1) == [1, 1, 1, 1]


def test_plugins_prepare_in_driver_in_order_and_run_in_worker():
    draws = [draw().set_name(f"draw{i}") for i in range(3)]
    flag = current_flag().set_name("flag")

    def build(backend):
        wf = backend(*draws, flag, workflow_name="plugins")
        wf.query("^draw.*$").set_plugins(RandomStatePlugin(min=0, max=100, seed=7, seed_func=seed_everything))
        wf.set_plugin("^flag$", InitializerPlugin(set_flag))
        return wf

    on_ray = build(RayWorkflow).run()
    expected = []
    for seed in (8, 9, 10):  # seeds advance in the driver, in run order, before each node (the original's sequence)
        random.seed(seed)
        expected.append(random.random())
    assert on_ray == [*expected, 12.5]
    assert socket.getdefaulttimeout() is None  # the initializer ran in the worker only
    try:
        assert build(LocalWorkflow).run() == [*expected, 12.5]
    finally:
        socket.setdefaulttimeout(None)


def test_driver_hooks_fire_as_results_arrive():
    recorder = Recorder()
    leaves = mixed_graph()
    wf = RayWorkflow(*leaves, workflow_name="hooks", plugins=[recorder])
    began = time.time()
    wf.run()
    elapsed = time.time() - began
    names = [n.name for n in wf.nodes]
    assert recorder.events[0] == ("before_run", "ray")
    assert recorder.events[-1] == ("after_run", None)
    assert recorder.names("before") == names  # at submission, in run order
    assert sorted(recorder.names("after")) == sorted(names)
    info = recorder.infos["total"]
    assert info["worker"] != f"pid {os.getpid()}" and 0 <= info["duration"] <= elapsed and info["node_id"]
    assert began <= info["start"] <= began + elapsed


def test_remote_args_reach_ray(tmp_path):
    once = flaky(str(tmp_path / "once")).set_name("flaky")
    with pytest.raises(NodeExecutionError, match="node 'flaky'.*ConnectionError: first try fails"):
        RayWorkflow(once, workflow_name="retries").run()  # no retry unless asked
    assert (tmp_path / "once").read_text() == "x"

    retried = flaky(str(tmp_path / "twice")).set_name("flaky")
    wf = RayWorkflow(retried, workflow_name="retries")
    wf.query("^flaky$").set_remote_args({"max_retries": 1, "retry_exceptions": True})
    assert wf.run() == 2

    probe = env_probe().set_name("probe")
    wf = RayWorkflow(probe, workflow_name="env")
    assert wf.run() is None
    wf.query("^probe$").set_remote_args({"runtime_env": {"env_vars": {"FF_PROBE": "set by runtime_env"}}})
    assert wf.run() == "set by runtime_env"


# ---------------------------------------------------------------------------
# storage
# ---------------------------------------------------------------------------


def test_file_storage_saves_in_the_worker_and_resumes(tmp_path):
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "s")}})
    pair = driver_only_pair(os.getpid()).set_name("pair")  # its value cannot even reach the driver
    first = payload(pair[0]).set_name("first")
    out = add(first, pair[1]).set_name("out")
    recorder = Recorder()
    wf = RayWorkflow(out, workflow_name="stored", plugins=[recorder])
    wf.set_storage(storage)
    assert wf.run() == 42
    assert storage.list_tasks("stored") == ["first", "out", "pair"]
    assert recorder.infos["pair"]["saved_on"] == recorder.infos["pair"]["node_id"]
    assert recorder.infos["pair"]["worker"] != f"pid {os.getpid()}"

    # resume: one listing, nothing computed again
    again = Recorder()
    wf = RayWorkflow(out, workflow_name="stored", plugins=[again])
    wf.set_storage(storage)
    assert wf.run() == 42
    assert again.names("after") == []
    assert sorted(again.names("restored")) == ["first", "out", "pair"]

    # a removed result is computed again, from the stored results of its parents
    storage.remove_task("stored", task_name="out")
    partial = Recorder()
    wf = RayWorkflow(out, workflow_name="stored", plugins=[partial])
    wf.set_storage(storage)
    assert wf.run() == 42
    assert partial.names("after") == ["out"]


def test_s3_storage_is_saved_by_the_workers_over_http(tmp_path):
    """The shared storage of a multi-machine cluster: moto's S3 server on 127.0.0.1, s3fs in the workers."""
    from s3_fixtures import running_moto

    with running_moto() as server:
        storage = storage_factory(server.storage_options(f"{server.new_bucket('ffray')}/runs"))
        pair = driver_only_pair(os.getpid()).set_name("pair")  # its value cannot reach the driver
        out = add(payload(pair[0]).set_name("first"), pair[1]).set_name("out")
        recorder = Recorder()
        assert RayWorkflow(out, workflow_name="ons3", plugins=[recorder]).set_storage(storage).run() == 42
        assert sorted(storage.list_tasks("ons3")) == ["first", "out", "pair"]
        assert recorder.infos["pair"]["saved_on"] == recorder.infos["pair"]["node_id"]
        assert recorder.infos["pair"]["worker"] != f"pid {os.getpid()}"
        again = Recorder()
        assert RayWorkflow(out, workflow_name="ons3", plugins=[again]).set_storage(storage).run() == 42
        assert again.names("after") == [] and sorted(again.names("restored")) == ["first", "out", "pair"]


def test_ray_storage_routes_every_operation_to_the_disk_node(tmp_path, ray_cluster):
    storage = storage_factory(
        {"kind": "ray", "options": {"path": str(tmp_path / "rs"), "remoteArgs": {"resources": {"_disk": 0.001}}}}
    )
    storage.always_read = True
    leaves = mixed_graph()
    recorder = Recorder()
    wf = RayWorkflow(*leaves, workflow_name="raystore", plugins=[recorder])
    wf.set_storage(storage)
    assert wf.run() == [20, 90, 24, 24, [2, 20]]
    saved = storage.list_tasks("raystore")
    assert "counter" not in saved and "node1" in saved and "c2" in saved
    assert storage.read_task("raystore", "c2") == 24
    assert storage.file_exists("raystore", "total")
    assert "raystore" in storage.list_workflows()
    disk_node = ray_cluster.get_runtime_context().get_node_id()  # one machine: the only node
    assert {recorder.infos[name]["saved_on"] for name in saved} == {disk_node}
    # LocalWorkflow reads the same storage back, through the disk node
    assert LocalWorkflow(*leaves, workflow_name="raystore").set_storage(storage).run() == [20, 90, 24, 24, [2, 20]]
    assert storage.remove_task("raystore", pattern="c*") == ["c1", "c2"]
    storage.remove_workflow("raystore")
    assert storage.list_tasks("raystore") == []


def test_node_failure_names_the_node_and_keeps_finished_results(tmp_path):
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "s")}})
    n1 = add(1, 1).set_name("node1")
    bad = fail(n1).set_name("bad")
    after = add(bad, 1).set_name("after")
    recorder = Recorder()
    wf = RayWorkflow(after, workflow_name="failing", plugins=[recorder])
    wf.set_storage(storage)
    with pytest.raises(NodeExecutionError, match="node 'bad' of workflow 'failing' failed: ValueError: bad input 2") as info:
        wf.run()
    assert type(info.value.__cause__) is ValueError
    assert info.value.node_name == "bad"
    assert storage.list_tasks("failing") == ["node1"]
    assert ("error", "bad", "ValueError") in recorder.events
    assert recorder.events[-1] == ("after_run", "NodeExecutionError")


def test_failure_in_a_stateful_node_names_it():
    c = Counter(start="text").set_name("counter")
    bad = c.add(1).set_name("add_one")
    with pytest.raises(NodeExecutionError, match="node 'add_one'") as info:
        RayWorkflow(bad, workflow_name="actorfail").run()
    assert isinstance(info.value.__cause__, TypeError)
    broken = Counter(start=1, nonsense=2).set_name("broken")
    with pytest.raises(NodeExecutionError, match="node 'broken'") as info:
        RayWorkflow(broken.add(1), workflow_name="actorfail").run()
    assert isinstance(info.value.__cause__, TypeError)


def test_worker_death_is_an_error_not_a_hang():
    n1 = add(1, 1).set_name("node1")
    dead = die(n1).set_name("dies")
    after = add(dead, 1).set_name("after")
    with pytest.raises(NodeExecutionError, match="node 'dies'.*worker process running it died"):
        RayWorkflow(after, workflow_name="crash").run()
    crash = Fragile().set_name("fragile").crash().set_name("crash")
    with pytest.raises(NodeExecutionError, match="node 'crash'.*the Ray actor running it died"):
        RayWorkflow(crash, workflow_name="actorcrash").run()


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


def test_unknown_remote_arg_key_is_refused_naming_key_and_node():
    n1 = add(1, 1).set_name("node1")
    wf = RayWorkflow(n1, workflow_name="opts")
    with pytest.raises(InvalidOptionError, match=r"node 'node1'.*'num_cpu' is not a ray.remote task option"):
        wf.query("^node1$").set_remote_args({"num_cpu": 1})
    with pytest.raises(InvalidOptionError, match="node 'node1'.*num_cpus"):
        wf.query("^node1$").set_remote_args({"num_cpus": -1})
    with pytest.raises(InvalidOptionError, match="must be a dict"):
        wf.query("^node1$").set_remote_args(["num_cpus"])
    with pytest.raises(InvalidOptionError, match="node 'node1'.*'num_returns' is set by the ray backend"):
        wf.query("^node1$").set_remote_args({"num_returns": 2})
    c = Counter(start=1).set_name("counter")
    wf = RayWorkflow(c.add(1), workflow_name="opts")
    with pytest.raises(InvalidOptionError, match=r"node 'counter'.*'max_retries' is not a ray.remote actor \(stateful node\) option"):
        wf.query("^counter$").set_remote_args({"max_retries": 1})
    wf.query("^counter$").set_remote_args({"num_cpus": 0.5, "max_restarts": 0})
    assert wf.run() == 2


def test_missing_resource_is_refused_before_submission():
    n1 = add(1, 1).set_name("node1")
    wf = RayWorkflow(n1, workflow_name="res")
    wf.query("^node1$").set_remote_args({"resources": {"no_such_thing": 1}})
    began = time.perf_counter()
    with pytest.raises(InvalidOptionError, match="node 'node1'.*resource 'no_such_thing'.*no node"):
        wf.run()
    wf.query("^node1$").set_remote_args({"num_cpus": 64})
    with pytest.raises(InvalidOptionError, match="node 'node1'.*64 of resource 'CPU'"):
        wf.run()
    assert time.perf_counter() - began < 10


def test_bad_ray_storage_options(tmp_path):
    with pytest.raises(InvalidOptionError, match="unknown option 'remote_args'"):
        storage_factory({"kind": "ray", "options": {"path": "x", "remote_args": {}}})
    with pytest.raises(InvalidOptionError, match='needs the option "path"'):
        storage_factory({"kind": "ray", "options": {"remoteArgs": {}}})
    with pytest.raises(InvalidOptionError, match="remoteArgs.*'num_cpu'"):
        storage_factory({"kind": "ray", "options": {"path": "x", "remoteArgs": {"num_cpu": 1}}})
    with pytest.raises(InvalidOptionError, match="rayInitArgs"):
        storage_factory({"kind": "ray", "options": {"path": "x", "rayInitArgs": "auto"}})
    storage = storage_factory(
        {"kind": "ray", "options": {"path": str(tmp_path), "remoteArgs": {"resources": {"_nodisk": 1}}}}
    )
    with pytest.raises(InvalidOptionError, match="ray storage.*resource '_nodisk'"):
        storage.list_tasks("x")
    wf = RayWorkflow(add(1, 1), workflow_name="nodisk").set_storage(storage)
    with pytest.raises(InvalidOptionError, match="resource '_nodisk'"):
        wf.run()


def test_bad_run_arguments():
    with pytest.raises(InvalidOptionError, match="ray_init_args must be a dict"):
        RayWorkflow(add(1, 1), workflow_name="args", ray_init_args="auto")
    with pytest.raises(InvalidOptionError, match="max_pending_tasks"):
        RayWorkflow(add(1, 1), workflow_name="args").run(max_pending_tasks=-1)
