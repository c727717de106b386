"""Ray backend under real faults: a restarted actor, a disk node that leaves, num_cpus=0 nodes, results Ray
cannot serialise. Each test has a time limit: a hang fails it.

The clusters are ``ray.cluster_utils.Cluster`` (a head and extra raylets as real processes on this machine);
nodes are removed with ``Cluster.remove_node``, which kills the raylet's processes.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time

import pytest

from functionfuse import workflow
from functionfuse.errors import InvalidOptionError, NodeExecutionError

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    from ray_fixtures import register_by_value

    register_by_value(__name__)
    temp_dir = tempfile.mkdtemp(prefix="ffrayf", dir="/tmp")
    # Cluster writes <tempdir>/ray/ray_current_cluster whatever temp_dir says, and fails if no
    # earlier ray.init made that folder (this module run alone on a fresh machine)
    os.makedirs(os.path.join(tempfile.gettempdir(), "ray"), exist_ok=True)
    # a head that runs nothing of ours (num_cpus=0, as Ray advises), and a worker raylet with 2 CPUs
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "temp_dir": temp_dir,
                                                      "include_dashboard": False})
    c.add_node(num_cpus=2)
    ray.init(address=c.address, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.path.dirname(os.path.abspath(__file__))}})
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


@workflow
class Counter:
    def __init__(self, start, flag):
        self.total = start
        self.flag = flag

    def add(self, n):
        if n == 2 and not os.path.exists(self.flag):
            open(self.flag, "w").close()
            os._exit(1)  # the actor's process dies once, during this call
        self.total += n
        return self.total


def test_a_restarted_actor_never_gives_a_wrong_value(cluster, tmp_path):
    from functionfuse.backends.builtin.rayback import RayWorkflow

    c = Counter(0, str(tmp_path / "died")).set_name("counter")
    a1, a2, a3 = c.add(1).set_name("a1"), c.add(2).set_name("a2"), c.add(3).set_name("a3")
    wf = RayWorkflow(a1, a2, a3, workflow_name="restarted")
    wf.query("^counter$").set_remote_args({"max_restarts": 1, "max_task_retries": 1})
    try:
        values = wf.run()
    except NodeExecutionError as exc:
        # refused: the object (or a call on it) is named, and nothing wrong came back. a1 may be the
        # one refused too: if the actor died before its reply for a1 reached the driver, Ray retries
        # a1 on the restarted actor, whose state is gone
        assert exc.node_name in ("counter", "a1", "a2", "a3"), exc
        assert "restarted" in str(exc) or "died" in str(exc), exc
    else:
        assert values == [1, 3, 6]  # only a right answer may come back
    assert os.path.exists(tmp_path / "died")  # the fault really happened


@workflow
def slow_square(x, seconds):
    time.sleep(seconds)
    return x * x


def test_a_disk_node_that_leaves_mid_run_fails_the_run_naming_the_storage(cluster, tmp_path):
    from functionfuse.backends.builtin.rayback import RayWorkflow
    from functionfuse.storage import storage_factory

    disk = cluster.add_node(num_cpus=0, resources={"_fault_disk": 1})  # Ray's usual head-like disk node
    cluster.wait_for_nodes()
    storage = storage_factory({"kind": "ray", "options": {"path": str(tmp_path / "st"),
                                                           "remoteArgs": {"resources": {"_fault_disk": 0.01}}}})
    wf = RayWorkflow(slow_square(3, 0.1).set_name("quick"), workflow_name="disk")
    wf.set_storage(storage)
    assert wf.run() == 9  # saves run on a num_cpus=0 node: storage tasks ask for no CPU
    assert storage.list_tasks("disk") == ["quick"]

    leaf = slow_square(4, 8).set_name("slow")
    wf = RayWorkflow(leaf, workflow_name="disk")
    wf.set_storage(storage)
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = wf.run()
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            outcome["error"] = exc

    runner = threading.Thread(target=run)
    runner.start()
    time.sleep(2)
    cluster.remove_node(disk)  # the raylet holding the disk resource goes away while `slow` runs
    runner.join(timeout=120)
    assert not runner.is_alive(), "the run waited for ever for a storage task that can never be scheduled"
    error = outcome.get("error")
    assert error is not None, outcome
    text = f"{error} {error.__cause__}"
    assert "slow" in text and "_fault_disk" in text, text


@workflow
def plain(x):
    return x + 1


def test_a_custom_resource_on_a_node_without_cpus_is_refused_before_submission(cluster):
    from functionfuse.backends.builtin.rayback import RayWorkflow

    cluster.add_node(num_cpus=0, resources={"_gpu_box": 1})
    cluster.wait_for_nodes()
    wf = RayWorkflow(plain(1).set_name("needs_box"), workflow_name="nocpu")
    wf.query("^needs_box$").set_remote_args({"resources": {"_gpu_box": 1}})
    began = time.monotonic()
    with pytest.raises(InvalidOptionError, match="needs_box.*CPU"):
        wf.run()
    assert time.monotonic() - began < 60


@workflow
def make_lock(_):
    return threading.Lock()


@workflow
def consume(value):
    return 1


@pytest.mark.parametrize("return_results", [True, False])
def test_a_leaf_ray_cannot_serialise_names_its_node(cluster, return_results):
    from functionfuse.backends.builtin.rayback import RayWorkflow

    wf = RayWorkflow(make_lock(plain(1).set_name("before")).set_name("lock_leaf"), workflow_name="unser")
    with pytest.raises(NodeExecutionError, match="'lock_leaf'") as info:
        wf.run(return_results=return_results)
    assert "pickle" in str(info.value) or "serial" in str(info.value).lower()


def test_an_inner_value_ray_cannot_serialise_names_the_producer_not_the_consumer(cluster):
    from functionfuse.backends.builtin.rayback import RayWorkflow

    wf = RayWorkflow(consume(make_lock(1).set_name("producer")).set_name("consumer"), workflow_name="inner")
    with pytest.raises(NodeExecutionError) as info:
        wf.run()
    assert info.value.node_name == "producer", info.value


# ---------------------------------------------------------------------------
# max_pending_tasks frees the object store (issue 14 item 4)
# ---------------------------------------------------------------------------

BIG = 40 * 1024**2


@workflow
def big_value(i):
    return bytes([i]) * BIG


@workflow
def shrink(value):
    time.sleep(0.2)  # consumers are slower than producers, so values would pile up in the store
    return len(value) + value[0]


@workflow
def total_of(*values):
    return sum(values)


def _store_stats(ray):
    """The cluster's object store counters (every raylet's, summed by the one asked)."""
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    return get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address)).store_stats


@pytest.mark.timeout(300)
def test_max_pending_tasks_frees_values_so_a_small_object_store_does_not_spill(cluster):
    """8 values of 40 MB (320 MB) through a 200 MB object store, at most 2 nodes in flight: nothing is spilled.

    With 2 nodes in flight at most 3 values are alive at once (a consumer's argument, a producer's new
    value, one waiting for its consumer): 120 MB. Ray spills past 80 % of the store (its
    object_spilling_threshold), 160 MB here; a driver that kept every value's ObjectRef spills 160 MB.
    """
    import ray

    from functionfuse.backends.builtin.rayback import RayWorkflow

    small = cluster.add_node(num_cpus=2, object_store_memory=200 * 1024**2, resources={"_small_store": 100})
    cluster.wait_for_nodes()
    try:
        leaf = total_of(*[shrink(big_value(i).set_name(f"big{i}")).set_name(f"shrink{i}") for i in range(8)])
        wf = RayWorkflow(leaf.set_name("total"), workflow_name="bounded")
        wf.query("^.*$").set_remote_args({"resources": {"_small_store": 1}})  # every value lives in the small store
        before = _store_stats(ray).spilled_bytes_total
        assert wf.run(max_pending_tasks=2) == 8 * BIG + sum(range(8))
        time.sleep(1.0)  # spilling is asynchronous: let a late one show in the counters
        stats = _store_stats(ray)
        spilled = stats.spilled_bytes_total - before
        assert spilled == 0, f"{spilled / 1024**2:.0f} MiB spilled ({stats.spilled_objects_total} objects in all)"
        assert stats.cumulative_created_bytes >= 8 * BIG  # the values really went through the object store
    finally:
        cluster.remove_node(small)
