"""A two-raylet Ray cluster on this machine: nodes run on both raylets, every save on the one holding ``_disk``."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from functionfuse import hookimpl, workflow
from functionfuse.backends.builtin.rayback import RayWorkflow
from functionfuse.storage import storage_factory

pytestmark = pytest.mark.timeout(180)


@workflow
def work(i):
    time.sleep(0.3)
    return i * i


@workflow
def total(*values):
    return sum(values)


class WhereItRan:
    """Records, per node, the Ray node that computed it and the one that saved it."""

    def __init__(self):
        self.computed = {}
        self.saved = {}

    @hookimpl
    def ff_after_node(self, node, info):
        self.computed[node.name] = info["node_id"]
        self.saved[node.name] = info["saved_on"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ray(*args: str, temp_dir: str) -> None:
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    subprocess.run(["ray", "start", *args, f"--temp-dir={temp_dir}", "--disable-usage-stats"],
                   check=True, env=env, capture_output=True, timeout=120)


def _processes_of(markers: tuple[str, ...]) -> set[int]:
    """Pids of the processes whose command line holds a marker, and of their descendants (not us)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmd = handle.read().decode(errors="replace")
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        table[int(entry)] = (cmd, ppid)
    mine = {os.getpid(), os.getppid()}
    found = {pid for pid, (cmd, _) in table.items() if pid not in mine and any(m in cmd for m in markers)}
    grew = True
    while grew:
        grew = False
        for pid, (_, ppid) in table.items():
            if ppid in found and pid not in found and pid not in mine:
                found.add(pid)
                grew = True
    return found


def _stop(markers: tuple[str, ...]) -> None:
    """Stop the raylets this test started, by pid (``ray stop`` would stop every Ray on the machine)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _processes_of(markers)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 5
        while pids and time.time() < deadline:
            time.sleep(0.2)
            pids = {pid for pid in pids if os.path.exists(f"/proc/{pid}") and _alive(pid)}
        if not pids:
            return


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def two_raylets():
    import ray
    import ray.cloudpickle

    if ray.is_initialized():
        ray.shutdown()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    temp_dir = tempfile.mkdtemp(prefix="ffcl", dir="/tmp")
    port = _free_port()
    markers = (temp_dir, f":{port} ", f":{port}\x00")
    try:
        _ray("--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false", "--node-ip-address=127.0.0.1",
             temp_dir=temp_dir)
        _ray(f"--address=127.0.0.1:{port}", "--num-cpus=1", '--resources={"_disk": 1}', "--node-ip-address=127.0.0.1",
             temp_dir=temp_dir)
        yield f"127.0.0.1:{port}"
    finally:
        ray.shutdown()
        _stop(markers)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_saves_run_on_the_disk_raylet_while_nodes_run_on_both(two_raylets, tmp_path):
    import ray

    squares = [work(i).set_name(f"w{i}") for i in range(8)]
    out = total(*squares).set_name("total")
    where = WhereItRan()
    wf = RayWorkflow(out, workflow_name="cluster", ray_init_args={"address": two_raylets}, plugins=[where])
    storage = storage_factory({"kind": "ray", "options": {
        "path": str(tmp_path / "store"),
        "remoteArgs": {"resources": {"_disk": 0.001}},
        "rayInitArgs": {"address": two_raylets},
    }})
    wf.set_storage(storage)
    assert wf.run() == sum(i * i for i in range(8))

    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 2
    disk_node = next(n["NodeID"] for n in nodes if n["Resources"].get("_disk"))
    assert set(where.saved.values()) == {disk_node}  # every save ran on the disk raylet
    assert set(where.computed.values()) == {n["NodeID"] for n in nodes}  # the nodes ran on both
    assert storage.list_tasks("cluster") == sorted([*(f"w{i}" for i in range(8)), "total"])
    assert storage.read_task("cluster", "w3") == 9

    # resumed: nothing recomputed, the stored results are read on the disk node
    again = WhereItRan()
    wf = RayWorkflow(out, workflow_name="cluster", plugins=[again]).set_storage(storage)
    assert wf.run() == sum(i * i for i in range(8))
    assert again.computed == {}
