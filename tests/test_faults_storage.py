"""Fault injection for storage: literal names, re-saves that fail or race, killed writers,
folders removed between runs, tampered zarr chunks, silent S3 endpoints, bad options.

Real parts only: a moto S3 server on 127.0.0.1 reached by s3fs over HTTP, real
child processes killed with SIGKILL, files truncated and bit-flipped on disk.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from s3_fixtures import running_moto

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import (
    CorruptResultError,
    InvalidOptionError,
    StorageError,
    SerializationError,
    TaskNotFoundError,
)
from functionfuse.serializers.daskarray import DaskArraySerializer
from functionfuse.storage import storage_factory

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def moto_s3():
    with running_moto() as server:
        yield server


@pytest.fixture(params=["memory", "S3"])
def any_storage(request, tmp_path, moto_s3):
    """A fresh storage where fsspec expands globs in paths: memory:// and S3 (moto over HTTP)."""
    if request.param == "memory":
        return storage_factory({"kind": "file", "options": {"path": f"memory://ff-{tmp_path.name}"}})
    return storage_factory(moto_s3.storage_options(f"{moto_s3.new_bucket()}/runs"))


@pytest.fixture(params=["file", "S3"])
def dask_storage(request, tmp_path, moto_s3):
    """A fresh local or S3 storage writing Dask arrays as zarr."""
    if request.param == "file":
        storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}})
    else:
        storage = storage_factory(moto_s3.storage_options(f"{moto_s3.new_bucket()}/runs"))
    storage.register_persistent_serializers(DaskArraySerializer)
    return storage


# ---------------------------------------------------------------------------
# 1. names are literal: only arguments called ``pattern`` are globs
# ---------------------------------------------------------------------------


def test_removing_a_workflow_named_like_a_glob_removes_only_it(any_storage):
    for name in ("run1", "run2", "run[12]"):
        any_storage.save(name, "n", name)
    any_storage.remove_workflow("run[12]")
    assert any_storage.read_task("run1", "n") == "run1" and any_storage.read_task("run2", "n") == "run2"
    assert not any_storage.file_exists("run[12]", "n")
    assert any_storage.list_tasks("run1") == ["n"] and any_storage.list_tasks("run2") == ["n"]
    # reading and listing take such names literally too
    any_storage.save("w[x]", "n*", 1)
    any_storage.save("wx", "nn", 2)
    assert any_storage.read_task("w[x]", "n*") == 1 and any_storage.list_tasks("w[x]") == ["n*"]
    with pytest.raises(TaskNotFoundError):
        any_storage.read_task("w[x]", "nn")


def test_removing_a_task_named_like_a_glob_removes_only_it(any_storage):
    any_storage.register_persistent_serializers(DaskArraySerializer)
    for name in ("*", "a", "b", "a?", "[ab]"):
        any_storage.save("wf", name, {"name": name, "x": da.arange(4, chunks=2)})
    assert any_storage.remove_task("wf", task_name="*") == ["*"]
    assert any_storage.remove_task("wf", task_name="[ab]") == ["[ab]"]
    assert any_storage.remove_task("wf", task_name="a?") == ["a?"]
    assert any_storage.list_tasks("wf") == ["a", "b"]
    for name in ("a", "b"):
        value = any_storage.read_task("wf", name)
        assert value["name"] == name and list(value["x"].compute()) == [0, 1, 2, 3]
    # where the API says pattern=, it is a glob
    assert any_storage.remove_task("wf", pattern="[ab]") == ["a", "b"] and any_storage.list_tasks("wf") == []


# ---------------------------------------------------------------------------
# 2. a re-save never destroys the committed result
# ---------------------------------------------------------------------------


def _blocks(release: threading.Event, entered: threading.Event):
    def block(chunk):
        entered.set()
        assert release.wait(60), "the test never released the writer"
        return chunk + 100

    return block


def _boom(chunk, block_id=None):
    if block_id == (2,):
        raise RuntimeError("disk full (injected)")
    return chunk


def test_failed_resave_leaves_the_previous_result_readable(dask_storage):
    dask_storage.save("wf", "arr", {"x": da.arange(10, chunks=2)})
    failing = da.arange(10, chunks=2).map_blocks(_boom, dtype=int, meta=np.empty(0, int))
    with pytest.raises(SerializationError, match="'daskarray'.*'arr'.*disk full"):
        dask_storage.save("wf", "arr", {"x": failing})
    again = storage_factory_like(dask_storage)
    assert list(again.read_task("wf", "arr")["x"].compute()) == list(range(10))
    # and the failed attempt left no data folder of its own behind
    committed = dask_storage.data_path("wf", "arr").rsplit("/", 1)[-1]
    assert dask_storage._listdir(dask_storage._data_dir("wf", "arr")) == [committed]


def test_resave_in_progress_does_not_disturb_readers_then_switches(dask_storage):
    dask_storage.save("wf", "arr", da.arange(6, chunks=3))
    release, entered = threading.Event(), threading.Event()
    slow = da.arange(6, chunks=3).map_blocks(_blocks(release, entered), dtype=int, meta=np.empty(0, int))
    errors: list = []

    def resave():
        try:
            dask_storage.save("wf", "arr", slow)
        except BaseException as exc:  # noqa: BLE001 (reported by the assertion below)
            errors.append(exc)

    writer = threading.Thread(target=resave)
    writer.start()
    try:
        assert entered.wait(60)
        # the new data is being written: a reader still gets the committed result, whole
        reader = storage_factory_like(dask_storage)
        assert list(reader.read_task("wf", "arr").compute()) == [0, 1, 2, 3, 4, 5]
    finally:
        release.set()
        writer.join(60)
    assert not errors
    assert list(storage_factory_like(dask_storage).read_task("wf", "arr").compute()) == [100, 101, 102, 103, 104, 105]
    # the old version is gone once the new one is committed
    assert len(dask_storage._listdir(dask_storage._data_dir("wf", "arr"))) == 1


def storage_factory_like(storage):
    """A second storage object on the same place (as another process would build it)."""
    clone = __import__("pickle").loads(__import__("pickle").dumps(storage))
    clone._used_serializers = {}
    return clone


# ---------------------------------------------------------------------------
# 7. temporaries of writers killed mid-write are removed by the next run, never a live writer's
# ---------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import os, sys, time
    sys.path[:0] = [{repo!r}, {tests!r}]
    import dask.array as da
    import numpy as np
    from functionfuse.storage import storage_factory
    from functionfuse.serializers.daskarray import DaskArraySerializer

    root, mode, ready = sys.argv[1], sys.argv[2], sys.argv[3]
    storage = storage_factory({{"kind": "file", "options": {{"path": root}}}})
    storage.register_persistent_serializers(DaskArraySerializer)

    def signal_and_hang(*args, **kwargs):  # os.replace takes src_dir_fd=, dst_dir_fd=
        open(ready, "w").close()
        time.sleep(600)

    if mode == "result":  # killed between writing the temporary and renaming it
        os.replace = signal_and_hang
        storage.save("wf", "n", 42)
    elif mode == "meta":
        os.replace = signal_and_hang
        storage.save_meta("wf", "runrecord-x.json", b"{{}}")
    else:  # killed while the serializer writes the chunks of a re-save
        def chunk(block, block_id=None):
            if block_id == (1,):
                signal_and_hang()
            return block
        storage.save("wf", "arr", da.arange(8, chunks=2).map_blocks(chunk, dtype=int, meta=np.empty(0, int)))
    """
)


def start_writer(tmp_path: Path, root: Path, mode: str) -> subprocess.Popen:
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(repo=str(REPO), tests=str(REPO / "tests")))
    ready = tmp_path / f"ready-{mode}"
    ready.unlink(missing_ok=True)
    process = subprocess.Popen([sys.executable, str(script), str(root), mode, str(ready)])
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert process.poll() is None, f"the writer ({mode}) exited with {process.returncode}"
        assert time.monotonic() < deadline, "the writer never reached the point of the kill"
        time.sleep(0.05)
    return process


def leftovers(root: Path) -> list[str]:
    """Temporaries and data folders under the storage, relative to it."""
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root).as_posix()
        if ".ff-tmp-" in path.name or (path.parent.name.endswith(".ffd") and path.is_dir()):
            found.append(relative)
    return sorted(found)


@workflow
def constant(value):
    return value


def test_writers_killed_mid_write_leave_nothing_after_the_next_run(tmp_path):
    root = tmp_path / "storage"
    storage = storage_factory({"kind": "file", "options": {"path": str(root)}})
    storage.register_persistent_serializers(DaskArraySerializer)
    storage.save("wf", "arr", da.arange(8, chunks=2))  # the committed result the killed re-save must not harm
    committed = leftovers(root)
    for mode in ("result", "meta", "data"):
        process = start_writer(tmp_path, root, mode)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
    left = leftovers(root)
    assert len(left) == len(committed) + 3, left  # a result temporary, a metadata temporary, a data folder

    LocalWorkflow(constant(1).set_name("one"), workflow_name="wf").set_storage(root).run()
    assert leftovers(root) == committed
    again = storage_factory({"kind": "file", "options": {"path": str(root)}})
    assert list(again.read_task("wf", "arr").compute()) == list(range(8))


def test_a_live_writers_temporaries_are_left_alone(tmp_path):
    root = tmp_path / "storage"
    storage_factory({"kind": "file", "options": {"path": str(root)}}).new_workflow("wf")
    process = start_writer(tmp_path, root, "result")
    try:
        LocalWorkflow(constant(1).set_name("one"), workflow_name="wf").set_storage(root).run()
        assert [p for p in leftovers(root) if ".ff-tmp-" in p], "a live writer's temporary was removed"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
    LocalWorkflow(constant(1).set_name("one"), workflow_name="wf").set_storage(root).run()
    assert leftovers(root) == []


# ---------------------------------------------------------------------------
# 8. a storage folder removed between two runs of one process
# ---------------------------------------------------------------------------


def test_storage_folder_removed_between_runs_in_one_process(tmp_path):
    root = tmp_path / "storage"
    storage = storage_factory({"kind": "file", "options": {"path": str(root)}})
    assert LocalWorkflow(constant(5).set_name("five"), workflow_name="wf").set_storage(storage).run() == 5
    shutil.rmtree(root)
    assert LocalWorkflow(constant(6).set_name("six"), workflow_name="wf").set_storage(storage).run() == 6
    assert storage.read_task("wf", "six") == 6
    # and removed behind its back while it is in use: the next save makes the folders again
    shutil.rmtree(root)
    storage.save("wf", "seven", 7)
    storage.save_meta("wf", "note", b"x")
    assert storage.read_task("wf", "seven") == 7 and storage.read_meta("wf", "note") == b"x"


# ---------------------------------------------------------------------------
# 3. a zarr chunk truncated or bit-flipped on disk is never returned as numbers
# ---------------------------------------------------------------------------


def test_tampered_zarr_chunks_raise_corrupt_result_naming_the_node(tmp_path):
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}})
    storage.register_persistent_serializers(DaskArraySerializer)
    storage.save("wf", "flipped", da.arange(100.0, chunks=10))
    storage.save("wf", "truncated", {"x": da.arange(100.0, chunks=10)})
    chunk = Path(storage.data_path("wf", "flipped")) / "0" / "c" / "3"
    blob = bytearray(chunk.read_bytes())
    blob[len(blob) // 2] ^= 0x10  # one bit
    chunk.write_bytes(bytes(blob))
    chunk = Path(storage.data_path("wf", "truncated")) / "0" / "c" / "5"
    chunk.write_bytes(chunk.read_bytes()[:-3])

    flipped = storage.read_task("wf", "flipped")  # lazily: the chunks are read by compute()
    assert list(flipped[:30].compute()) == list(np.arange(30.0))  # the good chunks still read
    with pytest.raises(CorruptResultError, match=r"chunk of node 'flipped' \(workflow 'wf'\) is corrupt"):
        flipped.sum().compute()
    with pytest.raises(CorruptResultError, match=r"chunk of node 'truncated' \(workflow 'wf'\) is corrupt"):
        storage.read_task("wf", "truncated")["x"][50:60].compute()


# ---------------------------------------------------------------------------
# 5. an S3 endpoint that accepts connections and never answers: bounded, naming the node
# ---------------------------------------------------------------------------


class SilencingProxy:
    """An HTTP proxy on 127.0.0.1 in front of moto that never answers the requests ``silent`` picks.

    The connection is accepted and the request read, then nothing comes back
    until the proxy is closed: what a hung S3 endpoint does.
    """

    def __init__(self, upstream: str, silent):
        import http.client
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        upstream_host = urlsplit(upstream)
        proxy = self
        self.silent = silent
        self.hung: list[str] = []
        self.release = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle_one(self):
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        body += self.rfile.read(size)
                        self.rfile.readline()
                        if size == 0:
                            break
                else:
                    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.silent(self.command, self.path):
                    proxy.hung.append(f"{self.command} {self.path}")
                    proxy.release.wait(300)
                    self.close_connection = True
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "transfer-encoding")}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                connection = http.client.HTTPConnection(upstream_host.hostname, upstream_host.port, timeout=60)
                connection.request(self.command, self.path, body=body or None, headers=headers)
                response = connection.getresponse()
                data = response.read()
                self.send_response_only(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() in ("transfer-encoding", "connection") or (
                            key.lower() == "content-length" and self.command != "HEAD"):
                        continue
                    self.send_header(key, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_one

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def silencing_proxy(moto_s3):
    proxies = []

    def make(silent):
        proxy = SilencingProxy(moto_s3.endpoint, silent)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


def run_bounded(function, limit: float):
    """Run ``function`` in a thread; returns (error or None, seconds); fails when it is still running after ``limit``."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = function()
        except BaseException as exc:  # noqa: BLE001 (returned to the test)
            outcome["error"] = exc

    start = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit)
    elapsed = time.monotonic() - start
    assert not thread.is_alive(), f"still waiting on the storage after {elapsed:.0f} s"
    return outcome.get("error"), elapsed


@workflow
def ten():
    return 10


def test_silent_s3_endpoint_fails_the_run_within_40s_naming_the_node(moto_s3, silencing_proxy):
    bucket = moto_s3.new_bucket()
    proxy = silencing_proxy(lambda method, path: method == "PUT" and path.endswith("/result.ffr"))
    options = {"path": f"{bucket}/runs", "s3fs": {**moto_s3.s3fs_options(), "endpoint_url": proxy.endpoint}}
    storage = storage_factory({"kind": "S3", "options": options})  # the default time-out: 30 s
    workflow_run = LocalWorkflow(ten().set_name("result"), workflow_name="wf").set_storage(storage)
    error, elapsed = run_bounded(workflow_run.run, 90)
    assert proxy.hung, "the save never reached the silent endpoint"
    assert elapsed < 40, f"the run took {elapsed:.1f} s"
    assert isinstance(error, StorageError), repr(error)
    assert "'result'" in str(error) and "S3 storage s3://" in str(error) and "timed out" in str(error), str(error)


def test_silent_s3_read_times_out_after_the_timeout_option_naming_the_node(moto_s3, silencing_proxy):
    bucket = moto_s3.new_bucket()
    storage_factory(moto_s3.storage_options(f"{bucket}/runs")).save("wf", "stored", 1)
    proxy = silencing_proxy(lambda method, path: method == "GET" and path.endswith("/stored.ffr"))
    options = {"path": f"{bucket}/runs", "timeout": 4, "s3fs": {**moto_s3.s3fs_options(), "endpoint_url": proxy.endpoint}}
    storage = storage_factory({"kind": "S3", "options": options})
    error, elapsed = run_bounded(lambda: storage.read_task("wf", "stored"), 60)
    assert proxy.hung and elapsed < 15, f"{elapsed:.1f} s with a 4 s time-out"
    assert isinstance(error, StorageError), repr(error)
    assert "reading node 'stored' of workflow 'wf' failed: timed out" in str(error)


# ---------------------------------------------------------------------------
# 11. storage options that must be refused
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("opt", "message"),
    [
        ({"kind": "file", "options": {"path": None}}, r'"path" must be a folder or URL string, got NoneType None'),
        ({"kind": "file", "options": {"path": ""}}, r'the option "path" is empty'),
        ({"kind": "file", "options": {"path": "  "}}, r'the option "path" is empty'),
        ({"kind": "file", "options": {"path": "x", "storage_optons": {}}},
         r"storage kind \"file\" has no option 'storage_optons' \(did you mean 'storage_options'\?\)"),
        ({"kind": "S3", "options": {"path": "b/x", "s3f": {}}},
         r"storage kind \"S3\" has no option 's3f' \(did you mean 's3fs'\?\)"),
        ({"kind": "S3", "options": {"path": "b/x", "timout": 5}},
         r"storage kind \"S3\" has no option 'timout' \(did you mean 'timeout'\?\)"),
        ({"kind": "S3", "options": {"path": "b/x", "timeout": 0}}, r'"timeout" must be a number of seconds > 0'),
    ],
)
def test_bad_storage_options_are_refused_with_a_did_you_mean(opt, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidOptionError, match=message):
        storage_factory(opt)
    assert list(tmp_path.iterdir()) == [], "nothing may be created for refused options"


# ---------------------------------------------------------------------------
# 4. a result whose class cannot be imported names the node and the class;
#    classes a script defines are stored by `functionfuse run` and read back by `show`
# ---------------------------------------------------------------------------


def test_result_whose_module_is_gone_names_node_and_class(tmp_path, monkeypatch):
    import importlib
    import uuid

    module_name = f"ff_gone_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module_name}.py").write_text("class Reading:\n    def __init__(self, v):\n        self.v = v\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(module_name)
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "st")}})
    storage.save("wf", "reading", {"r": module.Reading(3)})
    (tmp_path / f"{module_name}.py").unlink()
    del sys.modules[module_name]
    importlib.invalidate_caches()
    with pytest.raises(SerializationError, match=rf"node 'reading' \(workflow 'wf'\).*class 'Reading' from module '{module_name}'"):
        storage.read_task("wf", "reading")
    # a renamed class in a module that still exists
    (tmp_path / f"{module_name}.py").write_text("class Renamed:\n    pass\n")
    importlib.invalidate_caches()
    with pytest.raises(SerializationError, match=rf"node 'reading'.*class 'Reading' from module '{module_name}'"):
        storage.read_task("wf", "reading")


SCRIPT_WITH_CLASS = '''
from functionfuse import workflow

class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y
    def __repr__(self):
        return f"Point({self.x}, {self.y})"

@workflow
def make_point(x):
    return Point(x, x + 1)

leaf = make_point(2).set_name("point")
'''


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "functionfuse", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_cli_run_stores_classes_the_script_defines_and_show_reads_them(tmp_path):
    (tmp_path / "points.py").write_text(SCRIPT_WITH_CLASS)
    ran = cli("run", "points.py:leaf", "--storage", "st", "--workflow-name", "pts", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    other = tmp_path / "elsewhere"  # another folder, another process: the script is not importable there
    other.mkdir()
    shown = cli("show", str(tmp_path / "st"), "pts", "point", cwd=other)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "Point(2, 3)"


# ---------------------------------------------------------------------------
# 12. the CLI says when what it was asked about does not exist
# ---------------------------------------------------------------------------


def test_cli_missing_storage_workflow_or_task_is_a_one_line_error(tmp_path):
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "st")}})
    storage.save("ops", "n", 1)
    cases = [
        (("ls", str(tmp_path / "typo")), "storage '.*typo' does not exist"),
        (("ls", str(tmp_path / "st"), "opps"), "has no workflow 'opps'; it has: ops"),
        (("rm", str(tmp_path / "st"), "opps"), "has no workflow 'opps'"),
        (("rm", str(tmp_path / "st"), "ops", "--pattern", "zz*"), "no stored task of workflow 'ops' matches 'zz\\*'"),
        (("show", str(tmp_path / "st"), "ops", "m"), "no stored result for node 'm' in workflow 'ops'"),
    ]
    import re

    for args, message in cases:
        done = cli(*args, cwd=tmp_path)
        assert done.returncode != 0, (args, done.stdout)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and re.search(message, lines[0]), (args, done.stderr)
        assert "removed" not in done.stdout
    assert storage.read_task("ops", "n") == 1


# ---------------------------------------------------------------------------
# 13. stored results are pickles: said in `show --help`; folders honour the umask
# ---------------------------------------------------------------------------


def test_show_help_says_results_are_pickles(tmp_path):
    done = cli("show", "--help", cwd=tmp_path)
    assert done.returncode == 0
    assert "pickles" in done.stdout and "runs whatever code its writer chose" in " ".join(done.stdout.split())


def test_storage_folders_and_files_honour_the_umask(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path[:0] = [{str(REPO)!r}]
        os.umask(0o077)
        import dask.array as da
        from functionfuse.storage import storage_factory
        from functionfuse.serializers.daskarray import DaskArraySerializer
        storage = storage_factory({{"kind": "file", "options": {{"path": sys.argv[1]}}}})
        storage.register_persistent_serializers(DaskArraySerializer)
        storage.save("wf", "n", {{"x": da.arange(4, chunks=2)}})
        storage.save_meta("wf", "note", b"x")
        """
    )
    root = tmp_path / "private"
    subprocess.run([sys.executable, "-c", script, str(root)], check=True, timeout=300)
    modes = {path.relative_to(root).as_posix(): path.stat().st_mode & 0o777 for path in [root, *root.rglob("*")]}
    assert len(modes) > 6
    leaked = {name: oct(mode) for name, mode in modes.items() if mode & 0o077}
    assert not leaked, f"group/other may read these under umask 077: {leaked}"


# ---------------------------------------------------------------------------
# 11. inputs refused where they come in, naming the culprit
# ---------------------------------------------------------------------------


@workflow
def pair():
    return (1, 2)


@workflow
def plus(a, b):
    return a + b


@pytest.mark.parametrize("name", ["bad\udc80name", ".ff-tmp-123@host-abc", ".hidden", "."])
def test_names_that_cannot_be_storage_keys_fail_at_set_name(name):
    from functionfuse.errors import InvalidNameError

    with pytest.raises(InvalidNameError, match="node name .* is not allowed"):
        constant(1).set_name(name)


def test_workflow_names_colliding_with_internal_files_are_refused(tmp_path):
    from functionfuse.errors import InvalidNameError

    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "st")}})
    for name in (".ffmeta", ".ff-tmp-1@h-x", "w\ud800"):
        with pytest.raises(InvalidNameError, match="workflow name"):
            storage.save(name, "n", 1)
    assert not (tmp_path / "st").exists() or list((tmp_path / "st").iterdir()) == []


def test_a_lazy_node_has_no_truth_value_and_no_arithmetic():
    node = constant(1).set_name("lazy")
    with pytest.raises(TypeError, match="node 'lazy' has no value until it runs.*truth value"):
        if node:
            pass
    for expression, shown in [(lambda: node + 1, "'node \\+ int'"), (lambda: 1 + node, "'int \\+ node'"),
                              (lambda: node * node, "'node \\* Node'"), (lambda: -node, "'-node'"),
                              (lambda: pair()[0] / 2, "'node / int'")]:
        with pytest.raises(TypeError, match=f"has no value until it runs.*{shown}"):
            expression()
    with pytest.raises(TypeError, match=r"node 'lazy' has no value until it runs, so 'node \+ int'"):
        node + 1


def test_reference_that_does_not_fit_the_value_names_the_node():
    from functionfuse.errors import BadReferenceError
    from functionfuse.validate import apply_keys

    two = pair().set_name("two")
    with pytest.raises(BadReferenceError, match=r"reference two\[5\].*node 'two' is a tuple of 2 items"):
        two[5].resolve((1, 2))
    with pytest.raises(BadReferenceError, match=r"two\[0\]\['k'\].*node 'two'\[0\] is a int"):
        apply_keys((1, 2), (0, "k"), "two", "total")


def test_reference_out_of_range_on_the_local_backend_names_the_node():
    from functionfuse.errors import FunctionFuseError

    two = pair().set_name("two")
    with pytest.raises(FunctionFuseError, match=r"two\[5\]"):
        LocalWorkflow(plus(two[0], two[5]).set_name("total"), workflow_name="refs").run()


def test_plugin_arguments_and_query_patterns_are_checked():
    from functionfuse.validate import check_plugin_args, compile_pattern

    for plugins, disable, message in [
        ("mymodule", (), r"plugins must be a list .* got the str 'mymodule'; write plugins=\['mymodule'\]"),
        (5, (), "plugins must be a list .* got int 5"),
        ((), "name", r"disable must be a list of plugin names, got the str 'name'; write disable=\['name'\]"),
        ((), [3], "disable holds int 3"),
    ]:
        with pytest.raises(InvalidOptionError, match=message):
            check_plugin_args(plugins, disable, "LocalWorkflow('ops')")
    assert check_plugin_args(["m"], None, "x") == (("m",), ())
    with pytest.raises(InvalidOptionError, match=r"'\[unclosed' is not a valid regular expression"):
        compile_pattern("[unclosed", "query")


def test_workflow_refuses_string_plugins_and_bad_query_patterns():
    leaf = constant(1).set_name("one")
    with pytest.raises(InvalidOptionError, match="plugins must be a list"):
        LocalWorkflow(leaf, workflow_name="p", plugins="mymodule")
    with pytest.raises(InvalidOptionError, match="disable must be a list"):
        LocalWorkflow(leaf, workflow_name="p", disable="name")
    with pytest.raises(InvalidOptionError, match=r"'\[unclosed'"):
        LocalWorkflow(leaf, workflow_name="p").query("[unclosed")


def test_every_test_docs_reliability_names_exists():
    import re

    text = (REPO / "docs" / "reliability.md").read_text()
    sources = {path.name: path.read_text() for path in (REPO / "tests").glob("test_*.py")}
    named = re.findall(r"`(?:tests/(test_\w+\.py)::)?(test_\w+)(?:\[[^\]]*\])?`", text)
    assert len(named) > 20
    for file_name, test_name in named:
        where = [sources[file_name]] if file_name else [sources["test_faults_storage.py"]]
        assert any(f"def {test_name}(" in source for source in where), f"docs/reliability.md names {test_name}"
