"""Tests written against the survivors of tools/mutation.sh for plugins_builtin/fsstorage.py.

Each pins a documented behaviour of the file and S3 storage the rest of the suite left
open: which writer counts as alive, the text of time-outs, the options of the S3 kind
(each attempt bounded, listings never cached), what the bucket check says for each
fault, the bytes and names written on disk, what a failure leaves behind.

Real parts only: files in tmp_path, fsspec's memory filesystem, and a moto S3 server on
127.0.0.1 in this process reached over HTTP by s3fs (one per session).
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import zlib

import pytest
from s3_fixtures import running_moto, start_moto_with_auth

from functionfuse.errors import (
    CorruptResultError,
    InvalidOptionError,
    MissingClassError,
    MissingExtraError,
    SerializationError,
    StorageError,
    TaskNotFoundError,
)
from functionfuse.storage import storage_factory
from plugins_builtin import fsstorage
from plugins_builtin.fsstorage import FileStorage


@pytest.fixture(scope="session")
def moto():
    with running_moto() as server:
        yield server


def umasked(mode: int) -> int:
    current = os.umask(0)
    os.umask(current)
    return mode & ~current


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(60)
    return process.pid


# ---------------------------------------------------------------------------
# writer_alive: only a process known to be gone on this host makes its files stale
# ---------------------------------------------------------------------------


def test_a_writer_that_exited_on_this_host_is_not_alive():
    pid = dead_pid()
    assert fsstorage.writer_alive(f"{pid}@{fsstorage._HOST}-0123456789abcdef") is False
    # a temporary's name carries the prefix before the tag
    assert fsstorage.writer_alive(f"{fsstorage.TMP_PREFIX}{pid}@{fsstorage._HOST}-0123456789abcdef") is False


def test_a_live_process_of_this_host_is_alive():
    parent = os.getppid()  # alive while this test runs: it waits for us
    assert fsstorage.writer_alive(f"{parent}@{fsstorage._HOST}-0123456789abcdef") is True
    assert fsstorage.writer_alive(f"{fsstorage.TMP_PREFIX}{parent}@{fsstorage._HOST}-00") is True


def test_a_zombie_writes_nothing_any_more():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 60
        while True:  # exited, not yet reaped
            with open(f"/proc/{process.pid}/stat", "rb") as handle:
                if handle.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                    break
            assert time.monotonic() < deadline, "the child never exited"
            time.sleep(0.01)
        assert fsstorage.writer_alive(f"{process.pid}@{fsstorage._HOST}-0123456789abcdef") is False
    finally:
        process.wait(60)


def test_names_of_other_hosts_or_not_in_the_tag_form_count_as_alive():
    pid = dead_pid()
    for name in (
        f"{pid}@elsewhere.example-0123456789abcdef",  # another host: it may be writing
        f"{pid}@{fsstorage._HOST}",  # no random part
        f"{pid}{fsstorage._HOST}-0123",  # no @
        f"x{pid}@{fsstorage._HOST}-0123",  # not a pid
        f"@{fsstorage._HOST}-0123",  # no pid
        "zarr-chunk-folder",
        "",
    ):
        assert fsstorage.writer_alive(name) is True, name


def test_this_process_is_alive_only_for_the_saves_it_has_in_progress():
    tag = fsstorage.writer_tag()
    assert tag.startswith(f"{os.getpid()}@{fsstorage._HOST}-")
    assert fsstorage.writer_alive(tag) is False  # not in progress: left over by an earlier save
    with fsstorage._in_progress_lock:
        fsstorage._in_progress.add(tag)
    try:
        assert fsstorage.writer_alive(tag) is True
        assert fsstorage.writer_alive(fsstorage.TMP_PREFIX + tag) is True
    finally:
        with fsstorage._in_progress_lock:
            fsstorage._in_progress.discard(tag)
    assert fsstorage.writer_alive(tag) is False


def test_writer_tags_are_unique_and_marker_names_avoid_the_at_sign():
    first, second = fsstorage.writer_tag(), fsstorage.writer_tag()
    assert first != second and first[:-6] == second[:-6]
    assert int(second[-6:], 16) == int(first[-6:], 16) + 1  # a counter, six hex digits
    marker = fsstorage._marker_name(first)
    assert marker == first.replace("@", "~") and "@" not in marker
    assert fsstorage._marker_name("1@a@b") == "1~a@b"  # only the tag's own @


def test_a_forked_child_gets_its_own_tags():
    read, write = os.pipe()
    parent_tag = fsstorage.writer_tag()
    pid = os.fork()
    if pid == 0:  # the child: report its tag and leave at once
        try:
            os.write(write, fsstorage.writer_tag().encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as handle:
        child_tag = handle.read().decode()
    os.waitpid(pid, 0)
    assert child_tag.startswith(f"{pid}@{fsstorage._HOST}-")
    assert child_tag[:-6] != parent_tag[:-6] and child_tag.endswith("000000")  # its own random part and count


# ---------------------------------------------------------------------------
# the text of failures: time-outs say so
# ---------------------------------------------------------------------------


def test_timeouts_are_named_as_such_and_other_errors_by_their_class():
    class ReadTimeoutError(Exception):
        pass

    class ConnectTimeoutError(Exception):
        pass

    assert fsstorage._timeout_text(TimeoutError("no answer in 4 s")) == "timed out (TimeoutError: no answer in 4 s)"
    assert fsstorage._timeout_text(TimeoutError()) == "timed out (TimeoutError)"
    assert fsstorage._timeout_text(ReadTimeoutError("read")) == "timed out (ReadTimeoutError: read)"
    assert fsstorage._timeout_text(ConnectTimeoutError("connect")) == "timed out (ConnectTimeoutError: connect)"
    assert fsstorage._timeout_text(ValueError("boom")) == "ValueError: boom"
    assert fsstorage._timeout_text(ValueError()) == "ValueError: "


# ---------------------------------------------------------------------------
# bytes on disk
# ---------------------------------------------------------------------------


def test_result_files_markers_and_metadata_honour_the_umask(tmp_path):
    storage = FileStorage(str(tmp_path / "st"))
    run = storage.begin_run("w")
    storage.save("w", "n", 1, fingerprint="f" * 32)
    storage.save_meta("w", "note", b"x")
    folder = tmp_path / "st" / "w"
    marker = folder / ".fffp" / f".w-{fsstorage._marker_name(run.tag)}"
    for path in (folder / "n.ffr", folder / ".ffmeta" / "note", marker):
        assert stat.S_IMODE(path.stat().st_mode) == umasked(0o666), path
    storage.end_run("w", run, ok=False)
    done = folder / ".fffp" / f".d-{fsstorage._marker_name(run.tag)}"
    assert done.exists() and not marker.exists() and done.stat().st_size == 0


# ---------------------------------------------------------------------------
# the S3 kind: options
# ---------------------------------------------------------------------------


def s3(moto, path, **options):
    return fsstorage.s3_storage({"path": path, "s3fs": moto.s3fs_options(), **options})


def test_s3_storage_bounds_every_attempt_and_never_caches_listings(moto):
    bucket = moto.new_bucket()
    given = moto.s3fs_options()
    storage = fsstorage.s3_storage({"path": f"s3://{bucket}/runs/", "s3fs": given, "timeout": 12, "keep_runs": 3})
    assert given == moto.s3fs_options()  # the caller's options are not changed
    assert isinstance(storage, FileStorage) and storage.kind == "S3" and storage.object_store
    assert storage.root == f"{bucket}/runs" and storage.describe() == f"S3 storage s3://{bucket}/runs"
    assert storage.timeout == 12.0 and storage._deadline == {"timeout": 12.0} and storage.keep_runs == 3
    fs = storage.fs
    assert fs.config_kwargs == {"connect_timeout": 5.0, "read_timeout": 4.0,
                                "retries": {"max_attempts": 3, "mode": "standard"}}
    assert fs.dircache.use_listings_cache is False
    assert fs.retries == 2
    assert fs.endpoint_url == moto.endpoint and fs.key == moto.key
    # a short time-out shortens each attempt too, never below a second of reading
    quick = s3(moto, f"{bucket}/q", timeout=1.5)
    assert quick.fs.config_kwargs["connect_timeout"] == 1.5 and quick.fs.config_kwargs["read_timeout"] == 1.0
    assert quick.timeout == 1.5 and quick.keep_runs is None
    # the default: 30 s in all
    default = s3(moto, bucket)
    assert default.timeout == fsstorage.DEFAULT_TIMEOUT == 30.0
    assert default.fs.config_kwargs["read_timeout"] == 10.0 and default.fs.config_kwargs["connect_timeout"] == 5.0
    assert default.root == bucket


def test_s3_options_the_user_gives_win(moto):
    bucket = moto.new_bucket()
    config = {"read_timeout": 7, "retries": {"max_attempts": 1}}
    options = {**moto.s3fs_options(), "use_listings_cache": True, "config_kwargs": config}
    storage = fsstorage.s3_storage({"path": f"{bucket}/u", "s3fs": options, "timeout": 20})
    assert storage.fs.config_kwargs == {"read_timeout": 7, "retries": {"max_attempts": 1}, "connect_timeout": 5.0}
    assert config == {"read_timeout": 7, "retries": {"max_attempts": 1}}  # not changed in place
    assert storage.fs.dircache.use_listings_cache is True


@pytest.mark.parametrize("path", [None, "", "/", "s3://", "s3:///", 3])
def test_s3_path_must_name_a_bucket(path):
    with pytest.raises(InvalidOptionError) as caught:
        fsstorage.s3_storage({"path": path})
    assert str(caught.value) == f'storage kind "S3" needs the option "path" (bucket/prefix), got {path!r}'


@pytest.mark.parametrize("timeout", [0, -1, True, False, "5", None, [3]])
def test_timeout_must_be_a_positive_number(timeout, tmp_path):
    for kind, build in (("S3", fsstorage.s3_storage), ("file", fsstorage.file_storage)):
        with pytest.raises(InvalidOptionError) as caught:
            build({"path": "bucket/x" if kind == "S3" else str(tmp_path / "st"), "timeout": timeout})
        assert str(caught.value) == (f'storage kind "{kind}": the option "timeout" must be a number of seconds > 0, '
                                     f"got {timeout!r}")
    assert not (tmp_path / "st").exists()


@pytest.mark.parametrize("keep", [0, -2, True, 2.5, "3"])
def test_keep_runs_must_be_a_positive_integer(keep, tmp_path):
    for kind, options in (("file", {"path": str(tmp_path / "st")}), ("S3", {"path": "b/x", "check": False})):
        with pytest.raises(InvalidOptionError) as caught:
            storage_factory({"kind": kind, "options": {**options, "keep_runs": keep}})
        assert str(caught.value) == f'storage kind "{kind}": the option "keep_runs" must be an integer >= 1, got {keep!r}'


def test_file_storage_options(tmp_path):
    storage = fsstorage.file_storage({"path": str(tmp_path / "st"), "timeout": 2, "keep_runs": 1})
    assert storage.kind == "file" and storage.local and not storage.object_store
    assert storage.timeout == 2.0 and storage.keep_runs == 1 and storage._deadline == {}  # local calls: no deadline
    assert storage.root == str(tmp_path / "st") and storage.describe() == f"file storage {tmp_path / 'st'}"
    assert repr(storage) == f"<FileStorage kind='file' root={str(tmp_path / 'st')!r}>"
    memory = fsstorage.file_storage({"path": f"memory://ff-opts-{tmp_path.name}/x/",
                                     "storage_options": {"skip_instance_cache": True}})
    assert memory.root == f"/ff-opts-{tmp_path.name}/x" and not memory.local and not memory.object_store
    assert memory.describe() == f"file storage memory:///ff-opts-{tmp_path.name}/x"
    assert memory.timeout == 30.0 and memory.keep_runs is None
    with pytest.raises(InvalidOptionError) as caught:
        fsstorage.file_storage({"path": str(tmp_path / "st"), "storage_options": ["anon"]})
    assert str(caught.value) == ('storage kind "file": the option "storage_options" must be a dict of '
                                 "fsspec filesystem arguments, got list")


def test_s3_without_s3fs_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if not installed
    with pytest.raises(MissingExtraError) as caught:
        fsstorage.s3_storage({"path": "bucket/x"})
    assert str(caught.value) == 'storage kind "S3" needs s3fs: run pip install "functionfuse[s3]"'
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)


# ---------------------------------------------------------------------------
# the S3 kind: the bucket check names each fault
# ---------------------------------------------------------------------------


def test_a_missing_bucket_is_named_with_its_endpoint_and_not_created(moto):
    name = f"missing-{os.urandom(4).hex()}"
    with pytest.raises(StorageError) as caught:
        s3(moto, f"{name}/runs")
    assert str(caught.value) == (f"S3 storage s3://{name}/runs: the bucket {name!r} does not exist "
                                 f"(endpoint {moto.endpoint})")
    assert isinstance(caught.value.__cause__, FileNotFoundError)
    names = [b["Name"] for b in moto.client().list_buckets()["Buckets"]]
    assert name not in names
    # the endpoint given in client_kwargs is the one named; the bucket is the path's first part
    options = {"key": moto.key, "secret": moto.secret, "client_kwargs": {"endpoint_url": moto.endpoint}}
    with pytest.raises(StorageError, match=rf"the bucket '{name}' does not exist \(endpoint {moto.endpoint}\)$"):
        fsstorage.s3_storage({"path": f"/{name}/a/b/", "s3fs": options})
    # check=False: nothing is contacted
    unchecked = s3(moto, f"{name}/runs", check=False)
    assert unchecked.root == f"{name}/runs"


def test_the_bucket_check_passes_for_an_existing_bucket_and_its_prefixes(moto):
    bucket = moto.new_bucket()
    for path in (bucket, f"{bucket}/", f"/{bucket}/deep/prefix", f"s3://{bucket}/p"):
        storage = s3(moto, path)  # checked: no error
        assert storage.root.strip("/").split("/")[0] == bucket


def test_an_unreachable_endpoint_is_named_at_once():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    options = {"path": "bucket/x", "s3fs": {"endpoint_url": endpoint, "key": "k", "secret": "s"}}
    with pytest.raises(StorageError) as caught:
        fsstorage.s3_storage(options)
    assert str(caught.value).startswith(f"S3 storage s3://bucket/x: cannot reach the S3 endpoint {endpoint}: ")
    assert type(caught.value.__cause__).__name__ in str(caught.value)


def test_missing_credentials_are_named(moto, monkeypatch, tmp_path):
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StorageError) as caught:
        fsstorage.s3_storage({"path": "bucket/x", "s3fs": {"endpoint_url": moto.endpoint, "skip_instance_cache": True}})
    assert str(caught.value) == ('S3 storage s3://bucket/x: no S3 credentials were found: give "key" and "secret" '
                                 'in the "s3fs" options, or set up AWS credentials (environment, ~/.aws)')


@pytest.fixture(scope="session")
def moto_with_auth():
    process, server = start_moto_with_auth()
    try:
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_refused_credentials_are_named(moto_with_auth):
    server = moto_with_auth
    bucket = server.new_bucket()
    assert fsstorage.s3_storage({"path": f"{bucket}/a", "s3fs": server.s3fs_options()}).root == f"{bucket}/a"
    options = {**server.s3fs_options(), "secret": "wrong-secret"}
    with pytest.raises(StorageError) as caught:
        fsstorage.s3_storage({"path": f"{bucket}/a", "s3fs": options})
    message = str(caught.value)
    assert message.startswith(f"S3 storage s3://{bucket}/a: access to the bucket {bucket!r} was refused "
                              f"(endpoint {server.endpoint}): wrong credentials, or no permission on it (")
    assert isinstance(caught.value.__cause__, PermissionError)


# ---------------------------------------------------------------------------
# a serializer of our own: its data goes beside the result, under the save's own id
# ---------------------------------------------------------------------------


class Blob:
    """A value a serializer writes as a file of its own (as zarr writes an array)."""

    def __init__(self, data: bytes):
        self.data = data

    def __eq__(self, other):
        return isinstance(other, Blob) and other.data == self.data


class BlobSerializer:
    name = "blob"

    def __init__(self, fail_write: bool = False, fail_read: Exception | None = None):
        self.fail_write, self.fail_read = fail_write, fail_read

    def match(self, obj):
        return isinstance(obj, Blob)

    def write(self, obj, fs, path):
        if self.fail_write:
            raise RuntimeError("disk full (injected)")
        fs.pipe_file(path, obj.data)
        return len(obj.data)

    def read(self, token, fs, path):
        if self.fail_read is not None:
            raise self.fail_read
        data = fs.cat_file(path)
        assert len(data) == token
        return Blob(data)


def blob_storage(root, **serializer) -> FileStorage:
    storage = FileStorage(str(root))
    storage.register_persistent_serializers(BlobSerializer(**serializer))
    return storage


def expected_header(payload: bytes, data_id: bytes, fingerprint: bytes) -> bytes:
    """The FFR3 header, built from the module docstring's description (not from the code)."""
    tail = data_id + fingerprint
    fields = struct.pack("<4sQIHB", b"FFR3", len(payload), zlib.crc32(payload, zlib.crc32(tail)),
                         len(data_id), len(fingerprint))
    return fields + struct.pack("<I", zlib.crc32(tail, zlib.crc32(fields))) + tail


def test_a_result_file_is_the_header_then_the_pickle(tmp_path):
    storage = FileStorage(str(tmp_path / "st"))
    value = {"a": [1, 2.5, "x"], "b": (None, True)}
    storage.save("w", "n", value, fingerprint="0123abcd" * 4)
    blob = (tmp_path / "st" / "w" / "n.ffr").read_bytes()
    payload = pickle.dumps(value, protocol=5)
    assert blob == expected_header(payload, b"", b"0123abcd" * 4) + payload
    storage.save("w", "plain", 7)  # without a fingerprint
    payload = pickle.dumps(7, protocol=5)
    assert (tmp_path / "st" / "w" / "plain.ffr").read_bytes() == expected_header(payload, b"", b"") + payload
    assert sorted(os.listdir(tmp_path / "st" / "w")) == [".fffp", "n.ffr", "plain.ffr"]
    assert storage.read_task("w", "n") == value and storage.read_task_checked("w", "n", "0123abcd" * 4) == value


def test_a_big_result_is_written_whole(tmp_path):
    storage = FileStorage(str(tmp_path / "st"))
    value = os.urandom(3 * fsstorage._JOIN_BELOW + 17)
    storage.save("w", "big", value, fingerprint="b" * 32)
    blob = (tmp_path / "st" / "w" / "big.ffr").read_bytes()
    payload = pickle.dumps(value, protocol=5)
    assert blob == expected_header(payload, b"", b"b" * 32) + payload
    assert storage.read_task("w", "big") == value
    small = b"s" * (fsstorage._JOIN_BELOW - 200)  # just below the size written in one call
    storage.save("w", "small", small)
    assert storage.read_task("w", "small") == small


def test_serializer_data_lives_under_the_saves_own_id_named_in_the_header(tmp_path):
    storage = blob_storage(tmp_path / "st")
    value = {"first": Blob(b"one"), "second": Blob(b"two!"), "plain": [1, "x"]}
    storage.save("w", "n", value, fingerprint="f" * 20)
    folder = tmp_path / "st" / "w"
    [data_id] = os.listdir(folder / "n.ffd")
    assert data_id.startswith(f"{os.getpid()}@{fsstorage._HOST}-")
    assert sorted(os.listdir(folder / "n.ffd" / data_id)) == ["0", "1"]
    assert (folder / "n.ffd" / data_id / "0").read_bytes() == b"one"
    assert (folder / "n.ffd" / data_id / "1").read_bytes() == b"two!"
    blob = (folder / "n.ffr").read_bytes()
    payload = blob[fsstorage._HEADER.size + len(data_id) + 20:]
    assert blob == expected_header(payload, data_id.encode(), b"f" * 20) + payload
    assert storage.data_path("w", "n") == f"{folder}/n.ffd/{data_id}"
    assert blob_storage(tmp_path / "st").read_task("w", "n") == value  # a fresh storage object
    # a re-save switches to a new id and removes the old data
    storage.save("w", "n", {"first": Blob(b"uno")})
    [new_id] = os.listdir(folder / "n.ffd")
    assert new_id != data_id and os.listdir(folder / "n.ffd" / new_id) == ["0"]
    assert storage.read_task("w", "n") == {"first": Blob(b"uno")}
    assert not [e for e in os.listdir(folder) if e.startswith(fsstorage.TMP_PREFIX)]
    # a result without serializer data has no data path
    storage.save("w", "m", [1])
    assert storage.data_path("w", "m") is None and storage.data_path("w", "missing") is None
    assert not (folder / "m.ffd").exists()


def test_a_failing_serializer_leaves_the_committed_result_and_no_data_of_its_own(tmp_path):
    root = tmp_path / "st"
    blob_storage(root).save("w", "n", {"x": Blob(b"kept")})
    [committed] = os.listdir(root / "w" / "n.ffd")
    failing = blob_storage(root, fail_write=True)
    with pytest.raises(SerializationError) as caught:
        failing.save("w", "n", {"x": Blob(b"lost")})
    assert str(caught.value) == ("serializer 'blob' failed to write the result of node 'n' (workflow 'w'): "
                                 "RuntimeError: disk full (injected)")
    assert os.listdir(root / "w" / "n.ffd") == [committed]
    assert blob_storage(root).read_task("w", "n") == {"x": Blob(b"kept")}
    # a first save that fails leaves no data folder at all
    with pytest.raises(SerializationError):
        failing.save("w", "new", Blob(b"x"))
    assert sorted(os.listdir(root / "w")) == ["n.ffd", "n.ffr"]


def test_a_serializer_that_cannot_read_names_itself_the_node_and_the_storage(tmp_path):
    root = tmp_path / "st"
    blob_storage(root).save("w", "n", [Blob(b"abc")])
    broken = blob_storage(root, fail_read=ValueError("bad bytes"))
    with pytest.raises(SerializationError) as caught:
        broken.read_task("w", "n")
    assert str(caught.value) == (f"serializer 'blob' failed to read the result of node 'n' (workflow 'w') "
                                 f"from file storage {root}: ValueError: bad bytes")
    # its data gone: corrupt, naming the path
    path = blob_storage(root).data_path("w", "n")
    shutil.rmtree(path)
    with pytest.raises(CorruptResultError) as caught:
        blob_storage(root).read_task("w", "n")
    assert str(caught.value).startswith(
        f"file storage {root}: data of node 'n' (workflow 'w') written by serializer 'blob' is missing or "
        f"incomplete at {path}/0: ")


def test_a_result_of_a_serializer_no_plugin_provides_names_it(tmp_path):
    root = tmp_path / "st"
    blob_storage(root).save("w", "n", Blob(b"abc"))
    with pytest.raises(StorageError) as caught:
        FileStorage(str(root)).read_task("w", "n")
    assert str(caught.value) == (f"file storage {root}: the result of node 'n' was written by serializer 'blob', "
                                 "which no installed plugin provides")
    # the storage object that wrote it can read it back even without the serializer registered any more
    writer = blob_storage(root)
    writer.save("w", "m", Blob(b"x"))
    writer.persistent_serializers.clear()
    assert writer.read_task("w", "m") == Blob(b"x")


def test_results_pickle_by_value_when_pickle_cannot(tmp_path):
    storage = FileStorage(str(tmp_path / "st"))
    factor = 3
    storage.save("w", "f", lambda x: x * factor)
    assert FileStorage(str(tmp_path / "st")).read_task("w", "f")(2) == 6
    with_serializer = blob_storage(tmp_path / "st")
    with_serializer.save("w", "g", {"blob": Blob(b"z"), "f": lambda: factor})
    value = with_serializer.read_task("w", "g")
    assert value["blob"] == Blob(b"z") and value["f"]() == 3
    [data_id] = os.listdir(tmp_path / "st" / "w" / "g.ffd")
    assert os.listdir(tmp_path / "st" / "w" / "g.ffd" / data_id) == ["0"]  # the failed attempt's data went


def test_what_neither_pickle_nor_cloudpickle_can_store_is_refused_naming_the_node(tmp_path, monkeypatch):
    storage = FileStorage(str(tmp_path / "st"))
    with pytest.raises(SerializationError) as caught:
        storage.save("w", "lock", {"lock": threading.Lock()})
    assert str(caught.value) == ("the result of node 'lock' (workflow 'w') cannot be serialised: "
                                 "TypeError: cannot pickle '_thread.lock' object; nothing was written for it")
    with pytest.raises(SerializationError, match="cannot pickle '_thread.lock' object"):
        blob_storage(tmp_path / "st").save("w", "lock", [Blob(b"a"), threading.Lock()])
    monkeypatch.setitem(sys.modules, "cloudpickle", None)  # without cloudpickle: pickle's own error
    with pytest.raises(SerializationError, match=r"node 'f' \(workflow 'w'\) cannot be serialised: "
                                                 r"(PicklingError|AttributeError): "):
        storage.save("w", "f", lambda: 1)
    with pytest.raises(SerializationError, match=r"node 'g' \(workflow 'w'\) cannot be serialised: "
                                                 r"(PicklingError|AttributeError): "):
        blob_storage(tmp_path / "st").save("w", "g", [Blob(b"a"), lambda: 1])
    assert sorted(os.listdir(tmp_path / "st" / "w")) == []  # nothing was written, no data left


class Unpicklable:
    def __reduce__(self):
        raise ValueError("not today")


def test_a_result_whose_pickling_raises_is_refused_and_nothing_is_left(tmp_path):
    storage = FileStorage(str(tmp_path / "st"))
    with pytest.raises(SerializationError) as caught:
        storage.save("w", "n", [Unpicklable()], fingerprint="f" * 32)
    assert str(caught.value) == ("the result of node 'n' (workflow 'w') cannot be serialised: "
                                 "ValueError: not today; nothing was written for it")
    assert os.listdir(tmp_path / "st" / "w") == [".fffp"]
    assert [e for e in os.listdir(tmp_path / "st" / "w" / ".fffp") if not e.startswith(".d-")] == []
    with pytest.raises(SerializationError, match="ValueError: not today; nothing was written"):
        blob_storage(tmp_path / "st").save("w", "m", [Blob(b"a"), Unpicklable()])
    assert sorted(os.listdir(tmp_path / "st" / "w")) == [".fffp"]
    assert fsstorage._in_progress == set() or all(not t.startswith(f"{os.getpid()}@") for t in fsstorage._in_progress)


def test_a_write_that_fails_is_a_storage_error_and_leaves_no_temporary(tmp_path):
    root = tmp_path / "st"
    storage = blob_storage(root)
    (root / "w" / "n.ffr" / "in-the-way").mkdir(parents=True)  # a folder where the result goes
    with pytest.raises(StorageError) as caught:
        storage.save("w", "n", {"x": Blob(b"abc")}, fingerprint="f" * 32)
    assert str(caught.value).startswith(f"file storage {root}: saving node 'n' of workflow 'w' failed: ")
    assert isinstance(caught.value.__cause__, OSError)
    assert sorted(os.listdir(root / "w")) == [".fffp", "n.ffr"]  # no temporary, no data folder
    with pytest.raises(StorageError, match="saving node 'm' of workflow 'w' failed"):
        (root / "w" / "m.ffr" / "x").mkdir(parents=True)
        storage.save("w", "m", 5)
    assert sorted(os.listdir(root / "w")) == [".fffp", "m.ffr", "n.ffr"]


def test_a_fingerprint_longer_than_a_header_holds_is_refused(tmp_path):
    storage = FileStorage(str(tmp_path / "st"))
    storage.save("w", "ok", 1, fingerprint="x" * fsstorage._MAX_FP)
    assert storage.list_fingerprints("w") == {"ok": "x" * 255}
    with pytest.raises(StorageError) as caught:
        storage.save("w", "long", 1, fingerprint="x" * 256)
    assert str(caught.value) == f"file storage {tmp_path / 'st'}: the fingerprint of node 'long' is longer than 255 bytes"
    with pytest.raises(StorageError, match="longer than 255 bytes"):
        storage.save("w", "wide", 1, fingerprint="é" * 128)  # 256 bytes in UTF-8
    assert storage.list_tasks("w") == ["ok"]


def test_a_save_outside_a_run_marks_itself_only_when_an_index_may_be_misled(tmp_path):
    storage = FileStorage(str(tmp_path / "st"))
    storage.save("w", "plain", 1)  # no fingerprint, no .fffp folder: nothing to mislead
    assert sorted(os.listdir(tmp_path / "st" / "w")) == ["plain.ffr"]
    storage.save("w", "fp", 2, fingerprint="a" * 32)
    [done] = os.listdir(tmp_path / "st" / "w" / ".fffp")
    assert done.startswith(".d-") and "~" in done and "@" not in done
    storage.save("w", "plain2", 3)  # a .fffp folder exists now: marked too
    assert len(os.listdir(tmp_path / "st" / "w" / ".fffp")) == 2
    assert fsstorage._in_progress == set() or not any(t in done for t in fsstorage._in_progress)


def test_saves_in_a_run_are_covered_by_its_marker_and_listed_with_their_fingerprints(tmp_path):
    storage = FileStorage(str(tmp_path / "st"))
    run = storage.begin_run("w")
    fpdir = tmp_path / "st" / "w" / ".fffp"
    assert os.listdir(fpdir) == [f".w-{fsstorage._marker_name(run.tag)}"]
    assert storage.list_fingerprints("w") == {}
    storage.save("w", "a", 1, fingerprint="a" * 32)
    storage.save("w", "b", 2)
    assert os.listdir(fpdir) == [f".w-{fsstorage._marker_name(run.tag)}"]  # no marker of their own
    assert run.saved == {"a": "a" * 32, "b": None}
    assert storage.list_fingerprints("w") == {"a": "a" * 32, "b": None}
    storage.end_run("w", run, ok=True)
    assert os.listdir(fpdir) == [".index"]
    blob = (fpdir / ".index").read_bytes()
    body = pickle.dumps({"a": "a" * 32, "b": None}, protocol=5)
    assert blob == struct.pack("<4sI", b"FFI1", zlib.crc32(body)) + body


def test_results_without_a_fffp_folder_count_as_without_fingerprints(tmp_path):
    storage = FileStorage(str(tmp_path / "st"))
    storage.save("w", "a", 1, fingerprint="a" * 32)
    shutil.rmtree(tmp_path / "st" / "w" / ".fffp")  # as an earlier version left it
    run = storage.begin_run("w")
    assert run.forgotten is True and run.view is None and run.index is None and run.saved == {}
    assert storage.list_fingerprints("w") == {"a": None}
    storage.end_run("w", run, ok=True)
    fresh = storage.begin_run("w")
    assert fresh.forgotten is False
    assert storage.list_fingerprints("w") == {"a": None}
    storage.end_run("w", fresh, ok=True)


def test_the_header_fingerprint_is_read_only_from_an_intact_header(tmp_path):
    root = tmp_path / "st"
    storage = FileStorage(str(root))
    for name in ("good", "short", "flipped", "notutf8", "garbage", "tiny", "empty_fp"):
        storage.save("w", name, name, fingerprint="c" * 32 if name != "empty_fp" else None)
    folder = root / "w"
    blob = (folder / "short.ffr").read_bytes()
    (folder / "short.ffr").write_bytes(blob[:fsstorage._HEADER.size + 5])  # the fingerprint cut
    blob = bytearray((folder / "flipped.ffr").read_bytes())
    blob[fsstorage._HEADER.size + 3] ^= 1
    (folder / "flipped.ffr").write_bytes(bytes(blob))
    payload = pickle.dumps("notutf8", protocol=5)
    (folder / "notutf8.ffr").write_bytes(expected_header(payload, b"", b"\xff\xfe") + payload)
    (folder / "garbage.ffr").write_bytes(b"XXXX" + bytes(40))
    (folder / "tiny.ffr").write_bytes(b"FFR3" + bytes(5))
    assert storage.list_fingerprints("w") == {"empty_fp": None, "flipped": None, "garbage": None, "good": "c" * 32,
                                              "notutf8": None, "short": None, "tiny": None}
    assert storage._header_fingerprint("w", "missing", {}) is None
    # the header can be read alone: a result cut right after it still tells its fingerprint
    blob = (folder / "good.ffr").read_bytes()
    (folder / "good.ffr").write_bytes(blob[:fsstorage._HEADER.size + 32])
    assert storage._header_fingerprint("w", "good", {}) == "c" * 32
    (folder / "good.ffr").write_bytes(blob[:fsstorage._HEADER.size + 31])
    assert storage._header_fingerprint("w", "good", {}) is None


def test_old_results_take_their_fingerprint_from_exactly_one_marker(tmp_path):
    root = tmp_path / "st"
    storage = FileStorage(str(root))
    storage.save("w", "one", 1, fingerprint="a" * 32)
    storage.save("w", "two", 2, fingerprint="b" * 32)
    storage.save("w", "none", 3, fingerprint="c" * 32)
    for name, magic in (("one", b"FFR2"), ("two", b"FFR1"), ("none", b"FFR2")):
        payload = pickle.dumps(name, protocol=5)
        if magic == b"FFR2":
            blob = struct.pack("<4sQIH", magic, len(payload), zlib.crc32(payload, zlib.crc32(b"")), 0) + payload
        else:
            blob = struct.pack("<4sQI", magic, len(payload), zlib.crc32(payload)) + payload
        (root / "w" / f"{name}.ffr").write_bytes(blob)
    fpdir = root / "w" / ".fffp"
    (fpdir / ("one@" + "1" * 32)).touch()
    (fpdir / ("two@" + "2" * 32)).touch()
    (fpdir / ("two@" + "3" * 32)).touch()  # two markers: ambiguous
    assert storage.list_fingerprints("w") == {"one": "1" * 32, "two": None, "none": None}
    assert storage.read_task("w", "one") == "one" and storage.read_task("w", "two") == "two"
    assert storage.read_task_checked("w", "one", "9" * 32) == "one"  # nothing in the header to compare
    assert storage.data_path("w", "one") is None and storage.data_path("w", "two") == f"{root}/w/two.ffd"
    assert storage.remove_task("w", task_name="two") == ["two"]
    assert sorted(os.listdir(fpdir))[-1] == "one@" + "1" * 32 and not any(e.startswith("two@") for e in os.listdir(fpdir))


# ---------------------------------------------------------------------------
# stale temporaries and data: removed only when their writer is gone
# ---------------------------------------------------------------------------


def test_the_next_run_removes_what_dead_writers_left_and_keeps_the_rest(tmp_path):
    root = tmp_path / "st"
    storage = blob_storage(root)
    storage.save("w", "n", {"x": Blob(b"committed")}, fingerprint="f" * 32)
    storage.save_meta("w", "note", b"x")
    folder = root / "w"
    [committed] = os.listdir(folder / "n.ffd")
    dead = f"{dead_pid()}@{fsstorage._HOST}-00000000aa000001"
    live = f"{os.getppid()}@{fsstorage._HOST}-00000000bb000001"
    elsewhere = "1@elsewhere.example-00000000cc000001"
    for parent in (folder, folder / ".ffmeta", folder / ".fffp"):
        for tag in (dead, live, elsewhere):
            (parent / f"{fsstorage.TMP_PREFIX}{tag}").write_bytes(b"half")
    for tag in (dead, live, elsewhere):  # data folders of saves that never committed
        (folder / "n.ffd" / tag).mkdir()
        (folder / "n.ffd" / tag / "0").write_bytes(b"half")
    (folder / "ghost.ffd" / dead).mkdir(parents=True)  # data of a node without a result
    (folder / "ghost.ffd" / dead / "0").write_bytes(b"half")
    (folder / ".hidden.ffd" / dead).mkdir(parents=True)  # not a node's data (node names never start with ".")
    removed = storage.remove_stale_temporaries("w")
    assert sorted(removed) == sorted([
        f"{folder}/{fsstorage.TMP_PREFIX}{dead}",
        f"{folder}/.ffmeta/{fsstorage.TMP_PREFIX}{dead}",
        f"{folder}/.fffp/{fsstorage.TMP_PREFIX}{dead}",
        f"{folder}/n.ffd/{dead}",
        f"{folder}/ghost.ffd/{dead}",
    ])
    assert sorted(os.listdir(folder / "n.ffd")) == sorted([committed, live, elsewhere])
    assert not (folder / "ghost.ffd").exists()  # emptied: removed with its last data
    assert (folder / ".hidden.ffd" / dead).is_dir()
    for parent in (folder, folder / ".ffmeta", folder / ".fffp"):
        left = sorted(e for e in os.listdir(parent) if e.startswith(fsstorage.TMP_PREFIX))
        assert left == sorted(f"{fsstorage.TMP_PREFIX}{tag}" for tag in (live, elsewhere)), parent
    assert storage.read_task("w", "n") == {"x": Blob(b"committed")}
    assert storage.remove_stale_temporaries("w") == []
    # the run does it when it starts (new_workflow)
    (folder / f"{fsstorage.TMP_PREFIX}{dead}").write_bytes(b"half")
    storage.new_workflow("w")
    assert not (folder / f"{fsstorage.TMP_PREFIX}{dead}").exists()


def test_data_of_the_old_layout_is_left_alone(tmp_path):
    root = tmp_path / "st"
    folder = root / "w"
    (folder / "n.ffd" / "0").mkdir(parents=True)
    payload = pickle.dumps(1, protocol=5)
    (folder / "n.ffr").write_bytes(struct.pack("<4sQI", b"FFR1", len(payload), zlib.crc32(payload)) + payload)
    dead = f"{dead_pid()}@{fsstorage._HOST}-00000000aa000002"
    (folder / "n.ffd" / dead).mkdir()
    storage = FileStorage(str(root))
    assert storage.data_path("w", "n") == f"{folder}/n.ffd"  # FFR1: data in <task>.ffd/<n>
    assert storage.remove_stale_temporaries("w") == []
    assert sorted(os.listdir(folder / "n.ffd")) == sorted(["0", dead])
    # a digit folder is never a save's id: kept whatever the committed result is
    (folder / "m.ffd" / "3").mkdir(parents=True)
    assert storage.remove_stale_temporaries("w") == []
    assert os.listdir(folder / "m.ffd") == ["3"]


def test_an_ffr2_result_names_its_data_folder(tmp_path):
    root = tmp_path / "st"
    folder = root / "w"
    folder.mkdir(parents=True)
    data_id = b"7@host-abc"
    payload = pickle.dumps([1, 2], protocol=5)
    header = struct.pack("<4sQIH", b"FFR2", len(payload), zlib.crc32(payload, zlib.crc32(data_id)), len(data_id))
    (folder / "n.ffr").write_bytes(header + data_id + payload)
    storage = FileStorage(str(root))
    assert storage.data_path("w", "n") == f"{folder}/n.ffd/7@host-abc"
    assert storage.read_task("w", "n") == [1, 2]
    header = struct.pack("<4sQIH", b"FFR2", len(payload), zlib.crc32(payload), 0)
    (folder / "m.ffr").write_bytes(header + payload)
    assert storage.data_path("w", "m") is None and storage.read_task("w", "m") == [1, 2]
    (folder / "bad.ffr").write_bytes(b"FFR2\x00")
    assert storage.data_path("w", "bad") is None
    (folder / "bad3.ffr").write_bytes(b"FFR3\x00")
    assert storage.data_path("w", "bad3") is None
    (folder / "other.ffr").write_bytes(b"PK\x03\x04" + bytes(range(1, 60)))
    assert storage.data_path("w", "other") is None
    # a data id that is not UTF-8 (a damaged header): stale data is still cleaned up around it
    payload = pickle.dumps(1, protocol=5)
    (folder / "odd.ffr").write_bytes(expected_header(payload, b"\xff\xfe", b"") + payload)
    assert storage.data_path("w", "odd") == f"{folder}/odd.ffd/\ufffd\ufffd"
    dead = f"{dead_pid()}@{fsstorage._HOST}-00000000aa000004"
    (folder / "odd.ffd" / dead).mkdir(parents=True)
    assert storage.remove_stale_temporaries("w") == [f"{folder}/odd.ffd/{dead}"]
    with pytest.raises(CorruptResultError) as caught:  # but never read from a guessed path
        storage.read_task("w", "odd")
    assert str(caught.value) == f"file storage {root}: stored result of node 'odd' (workflow 'w') has an unreadable data id"
    (folder / "oddfp.ffr").write_bytes(expected_header(payload, b"", b"\xffab") + payload)
    with pytest.raises(CorruptResultError, match="has fingerprint '\ufffdab', not the 'ab' this run"):
        storage.read_task_checked("w", "oddfp", "ab")
    assert storage.read_task("w", "oddfp") == 1


# ---------------------------------------------------------------------------
# reading refuses what is not a whole result
# ---------------------------------------------------------------------------


def test_damaged_results_are_refused_with_what_is_wrong(tmp_path):
    root = tmp_path / "st"
    storage = FileStorage(str(root))
    storage.save("w", "n", list(range(50)), fingerprint="f" * 32)
    path = root / "w" / "n.ffr"
    good = path.read_bytes()
    where = f"file storage {root}: stored result of node 'n' (workflow 'w')"
    size = fsstorage._HEADER.size
    cases = {
        good[:-1]: f"{where} is truncated: {len(good) - size - 33} of {len(good) - size - 32} bytes",
        good + b"x": f"{where} is truncated: {len(good) - size - 31} of {len(good) - size - 32} bytes",
        good[:size + 10]: f"{where} fails its checksum",  # the fingerprint cut short
        good[:size - 1]: f"{where} is truncated ({size - 1} bytes)",
        good[:2]: f"{where} is truncated (2 bytes)",
        b"": f"{where} is truncated (0 bytes)",
        b"FFR2" + bytes(3): f"{where} is truncated (7 bytes)",
        b"FFR1" + bytes(3): f"{where} is truncated (7 bytes)",
        b"XXXX" + bytes(40): f"{where} is not a functionfuse result (bad header)",
        b"FF" + bytes(40): f"{where} is not a functionfuse result (bad header)",
        b"XYZ": f"{where} is not a functionfuse result (bad header)",
        b"FFX": f"{where} is not a functionfuse result (bad header)",
        good[:-3] + bytes([good[-3] ^ 1]) + good[-2:]: f"{where} fails its checksum",
        good[:size] + bytes([good[size] ^ 1]) + good[size + 1:]: f"{where} fails its checksum",
        good[:4] + bytes([good[4] ^ 1]) + good[5:]: f"{where} fails its checksum",  # the length, under the header CRC
    }
    for blob, message in cases.items():
        path.write_bytes(blob)
        with pytest.raises(CorruptResultError) as caught:
            storage.read_task("w", "n")
        assert str(caught.value).startswith(message), (blob[:20], str(caught.value))
    payload = pickle.dumps(5, protocol=5)
    for blob in (struct.pack("<4sQI", b"FFR1", len(payload), zlib.crc32(payload) ^ 1) + payload,
                 struct.pack("<4sQIH", b"FFR2", len(payload), zlib.crc32(payload) ^ 1, 0) + payload):
        path.write_bytes(blob)
        with pytest.raises(CorruptResultError, match="fails its checksum"):
            storage.read_task("w", "n")
    path.write_bytes(struct.pack("<4sQIH", b"FFR2", len(payload), zlib.crc32(payload), 0) + payload)
    assert storage.read_task("w", "n") == 5
    for header in (struct.pack("<4sQI", b"FFR1", 5, 0), struct.pack("<4sQIH", b"FFR2", 5, 0, 0)):  # a header alone
        path.write_bytes(header)
        with pytest.raises(CorruptResultError) as caught:
            storage.read_task("w", "n")
        assert str(caught.value) == f"{where} is truncated: 0 of 5 bytes"
    path.write_bytes(struct.pack("<4sQI", b"FFR1", len(payload), zlib.crc32(payload)) + payload)
    assert storage.read_task("w", "n") == 5


def test_a_missing_result_and_an_unreadable_one_are_told_apart(tmp_path):
    root = tmp_path / "st"
    storage = FileStorage(str(root))
    with pytest.raises(TaskNotFoundError) as caught:
        storage.read_task("w", "none")
    assert str(caught.value) == f"file storage {root}: no stored result for node 'none' in workflow 'w'"
    (root / "w" / "dir.ffr").mkdir(parents=True)
    with pytest.raises(StorageError) as caught:
        storage.read_task("w", "dir")
    assert str(caught.value).startswith(f"file storage {root}: reading node 'dir' of workflow 'w' failed: IsADirectoryError")
    assert not isinstance(caught.value, TaskNotFoundError)


def test_a_result_that_is_not_a_pickle_names_the_node(tmp_path):
    root = tmp_path / "st"
    storage = FileStorage(str(root))
    payload = b"not a pickle"
    (root / "w").mkdir(parents=True)
    (root / "w" / "n.ffr").write_bytes(expected_header(payload, b"", b"") + payload)
    with pytest.raises(SerializationError) as caught:
        storage.read_task("w", "n")
    assert str(caught.value).startswith(f"file storage {root}: the result of node 'n' (workflow 'w') cannot be "
                                        "unpickled: UnpicklingError: ")


def test_a_result_whose_class_is_gone_names_node_workflow_class_and_module(tmp_path):
    root = tmp_path / "st"
    storage = FileStorage(str(root))
    payload = b"\x80\x05\x8c\x0bff_no_such_\x94\x8c\x05Thing\x94\x93\x94."
    (root / "w").mkdir(parents=True)
    (root / "w" / "n.ffr").write_bytes(expected_header(payload, b"", b"") + payload)
    with pytest.raises(MissingClassError) as caught:
        storage.read_task("w", "n")
    assert str(caught.value) == (
        f"file storage {root}: the result of node 'n' (workflow 'w') holds an object of class 'Thing' from module "
        "'ff_no_such_', which cannot be imported here (ModuleNotFoundError: No module named 'ff_no_such_'); "
        "install or restore the module that defines it")
    payload = b"\x80\x05\x8c\x02os\x94\x8c\x0cno_such_attr\x94\x93\x94."
    (root / "w" / "m.ffr").write_bytes(expected_header(payload, b"", b"") + payload)
    with pytest.raises(MissingClassError, match=r"class 'no_such_attr' from module 'os'.*\(AttributeError: "):
        storage.read_task("w", "m")


# ---------------------------------------------------------------------------
# folders: made when missing, made again when removed behind the storage's back
# ---------------------------------------------------------------------------


def test_a_root_that_is_a_file_is_a_storage_error_naming_the_folder(tmp_path):
    root = tmp_path / "st"
    root.write_bytes(b"a file")
    storage = FileStorage(str(root))
    with pytest.raises(StorageError) as caught:
        storage.save("w", "n", 1)
    assert str(caught.value).startswith(f"file storage {root}: cannot create '{root}/w': ")
    with pytest.raises(StorageError, match=f"cannot create '{root}/w'"):
        storage.save("w", "n", 1)  # not remembered as made


def test_marker_folders_removed_behind_the_storages_back_are_made_again(tmp_path):
    root = tmp_path / "st"
    storage = FileStorage(str(root))
    storage.save("w", "a", 1, fingerprint="a" * 32)
    shutil.rmtree(root / "w" / ".fffp")
    storage.save("w", "b", 2, fingerprint="b" * 32)  # its marker's folder is made again
    [mark] = os.listdir(root / "w" / ".fffp")
    assert mark.startswith(".d-") and (root / "w" / ".fffp" / mark).stat().st_size == 0
    shutil.rmtree(root / "w")
    storage.save("w", "c", 3, fingerprint="c" * 32)  # the workflow folder too
    assert storage.list_tasks("w") == ["c"] and storage.read_task("w", "c") == 3
    shutil.rmtree(root / "w" / ".fffp")
    run = storage.begin_run("w")  # a run's marker too
    assert os.listdir(root / "w" / ".fffp") == [f".w-{fsstorage._marker_name(run.tag)}"]
    shutil.rmtree(root / "w" / ".fffp")
    storage.end_run("w", run, ok=False)  # its marker gone with its folder: nothing to finish
    assert not (root / "w" / ".fffp").exists()
    assert run.tag not in fsstorage._in_progress


def test_the_same_layout_on_another_filesystem(tmp_path):
    url = f"memory://ff-layout-{tmp_path.name}"
    storage = blob_storage(url)
    assert storage._deadline == {} and not storage.local and not storage.object_store
    run = storage.begin_run("w")
    storage.save("w", "n", {"b": Blob(b"abc")}, fingerprint="f" * 32)
    storage.save("w", "m", 2, fingerprint="e" * 32)
    base = f"/ff-layout-{tmp_path.name}/w"
    fs = storage.fs
    assert storage.file_exists("w", "n") and not storage.file_exists("w", "zz")
    assert storage.list_tasks("w") == ["m", "n"]
    data_id = storage.data_path("w", "n").rsplit("/", 1)[1]
    assert data_id.startswith(f"{os.getpid()}@{fsstorage._HOST}-")
    assert fs.cat_file(f"{base}/n.ffd/{data_id}/0") == b"abc"
    assert storage.list_fingerprints("w") == {"m": "e" * 32, "n": "f" * 32}
    storage.end_run("w", run, ok=True)
    assert [p.rsplit("/", 1)[1] for p in fs.ls(f"{base}/.fffp", detail=False)] == [".index"]
    assert storage._read_index("w") == {"m": "e" * 32, "n": "f" * 32}
    payload = pickle.dumps(2, protocol=5)
    assert fs.cat_file(f"{base}/m.ffr") == expected_header(payload, b"", b"e" * 32) + payload
    # a save outside a run: finished mark written, then the writing mark removed
    storage.save("w", "k", 3, fingerprint="d" * 32)
    marks = sorted(p.rsplit("/", 1)[1] for p in fs.ls(f"{base}/.fffp", detail=False))
    assert marks[0] == ".d-" + fsstorage._marker_name(marks[0][3:].replace("~", "@", 1)) and len(marks) == 2
    assert fs.cat_file(f"{base}/.fffp/{marks[0]}") == b""
    assert storage.list_fingerprints("w") == {"k": "d" * 32, "m": "e" * 32, "n": "f" * 32}  # from the headers
    # a re-save of n removes the data of the old one
    storage.save("w", "n", {"b": Blob(b"new")})
    [new_id] = [p.rsplit("/", 1)[1] for p in fs.ls(f"{base}/n.ffd", detail=False)]
    assert new_id != data_id and storage.read_task("w", "n") == {"b": Blob(b"new")}
    storage.save_meta("w", "note", b"hello")
    assert storage.list_meta("w") == ["note"] and storage.read_meta("w", "note") == b"hello"
    assert storage.workflow_exists("w") and storage.list_workflows() == ["w"] and storage.storage_exists()
    # glob characters in names: taken literally, folders and all
    storage.save("w[1]", "n", {"b": Blob(b"x")})
    storage.save("w1", "n", 1)
    storage.remove_workflow("w[1]")
    assert not fs.exists(f"/ff-layout-{tmp_path.name}/w[1]") and storage.read_task("w1", "n") == 1
    assert not [p for p in fs.find(f"/ff-layout-{tmp_path.name}", withdirs=True) if "w[1]" in p]
    storage.remove_workflow("w[1]")  # gone already: nothing happens
    storage.remove_workflow("w")
    assert not fs.exists(base) and storage.list_workflows() == ["w1"]
    fs.rm(f"/ff-layout-{tmp_path.name}", recursive=True)


def test_a_url_root_and_a_relative_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative = FileStorage("rel/st/")
    assert relative.root == str(tmp_path / "rel" / "st") and relative.local
    top = FileStorage("memory://")
    assert top.root == "/" and top.describe() == "file storage memory:///"
    given = fsstorage.fsspec.filesystem("memory")
    with_fs = FileStorage("memory://ff-given/x", fs=given, timeout=None)
    assert with_fs.fs is given and with_fs.root == "/ff-given/x" and with_fs.timeout is None
    assert with_fs._made == set() and with_fs._runs == {} and with_fs._selector is None


def test_an_s3_storage_without_timeout_sets_no_deadline(moto):
    bucket = moto.new_bucket()
    storage = FileStorage(f"{bucket}/x", fs=s3(moto, bucket).fs, kind="S3", timeout=None)
    assert storage._deadline == {} and storage.object_store
    storage.save("w", "n", 1)
    assert storage.read_task("w", "n") == 1


def test_a_copy_for_a_worker_forgets_folders_and_runs(tmp_path):
    storage = blob_storage(tmp_path / "st")
    run = storage.begin_run("w")
    storage.save("w", "n", Blob(b"x"))
    copy = pickle.loads(pickle.dumps(storage))
    assert copy._made == set() and copy._runs == {} and copy.root == storage.root and copy.kind == "file"
    assert storage._runs == {"w": [run]} and storage._made  # the original keeps its own
    assert [s.name for s in copy.persistent_serializers] == ["blob"]
    copy.save("w", "m", 2, fingerprint="c" * 32)  # a writer of its own: marked
    assert any(e.startswith(".d-") for e in os.listdir(tmp_path / "st" / "w" / ".fffp"))
    storage.end_run("w", run, ok=True)


def test_on_a_filesystem_with_real_folders_they_are_made_and_removed(tmp_path):
    """An fsspec filesystem that is not the local one but has folders (a ``dir://`` view of a disk)."""
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem

    disk = tmp_path / "disk"
    disk.mkdir()
    storage = FileStorage("st", fs=DirFileSystem(path=str(disk), fs=LocalFileSystem()), timeout=None)
    storage.register_persistent_serializers(BlobSerializer())
    assert not storage.local and not storage.object_store and storage.describe() == "file storage dir://st"
    assert not storage.storage_exists() and not storage.workflow_exists("w")
    storage.save("w", "n", {"b": Blob(b"abc")}, fingerprint="f" * 32)
    assert storage.storage_exists() and storage.workflow_exists("w")
    folder = disk / "st" / "w"
    data_id = storage.data_path("w", "n").rsplit("/", 1)[1]
    assert sorted(os.listdir(folder)) == [".fffp", "n.ffd", "n.ffr"]
    assert os.listdir(folder / "n.ffd" / data_id) == ["0"]
    assert [e[:3] for e in os.listdir(folder / ".fffp")] == [".d-"]
    assert storage.list_fingerprints("w") == {"n": "f" * 32}
    # a failed save of new data removes its own folder and the emptied data folder
    failing = FileStorage("st", fs=storage.fs, timeout=None)
    failing.register_persistent_serializers(BlobSerializer(fail_write=True))
    with pytest.raises(SerializationError):
        failing.save("w", "new", Blob(b"x"))
    assert sorted(os.listdir(folder)) == [".fffp", "n.ffd", "n.ffr"]
    # folders removed behind its back: a run checks them first (a save outside runs does not: see below)
    shutil.rmtree(folder)
    storage.new_workflow("w")
    storage.save("w", "m", 1)
    storage.save("w", "k", 2, fingerprint="k" * 32)
    assert sorted(os.listdir(folder)) == [".fffp", "k.ffr", "m.ffr"]
    storage.save_meta("w", "note", b"x")
    shutil.rmtree(folder / ".ffmeta")
    storage.save_meta("w", "note", b"y")
    assert storage.read_meta("w", "note") == b"y"
    # stale data of a dead writer goes, with the folder it emptied
    dead = f"{dead_pid()}@{fsstorage._HOST}-00000000aa000003"
    (folder / "ghost.ffd" / dead).mkdir(parents=True)
    (folder / "ghost.ffd" / dead / "0").write_bytes(b"half")
    assert storage.remove_stale_temporaries("w") == [f"st/w/ghost.ffd/{dead}"]
    assert not (folder / "ghost.ffd").exists()
    # names with glob characters are removed literally, folders included
    for name in ("r[12]", "r1"):
        storage.save(name, "n", {"b": Blob(name.encode())}, fingerprint="a" * 32)
    storage.remove_workflow("r[12]")
    assert sorted(os.listdir(disk / "st")) == ["r1", "w"]
    assert storage.read_task("r1", "n") == {"b": Blob(b"r1")}
    storage.save("r[12]", "n", 5, fingerprint="b" * 32)  # made again after its removal
    assert storage.read_task("r[12]", "n") == 5
    storage.remove_workflow("r1")
    storage.remove_workflow("r1")
    assert sorted(os.listdir(disk / "st")) == ["r[12]", "w"]
    assert storage.remove_task("w", task_name="k") == ["k"] and storage.list_tasks("w") == ["m"]
    storage.remove_workflow("w")
    storage.save("w", "again", 1, fingerprint="c" * 32)  # its folders are not remembered as made
    assert storage.list_tasks("w") == ["again"]


def test_a_save_to_a_missing_bucket_fails_naming_the_node_and_creates_no_bucket(moto):
    name = f"missing-{os.urandom(4).hex()}"
    storage = s3(moto, f"{name}/runs", check=False)
    with pytest.raises(StorageError) as caught:
        storage.save("w", "n", 1)
    assert str(caught.value).startswith(f"S3 storage s3://{name}/runs: ")
    assert name not in [b["Name"] for b in moto.client().list_buckets()["Buckets"]]
    assert not storage.storage_exists() and storage.list_workflows() == [] and storage.list_tasks("w") == []


def test_on_s3_markers_data_and_removal_are_objects(moto):
    bucket = moto.new_bucket()
    storage = s3(moto, f"{bucket}/runs")
    storage.register_persistent_serializers(BlobSerializer())
    client = moto.client()

    def keys(prefix="runs/"):
        return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))

    assert not storage.storage_exists()
    storage.save("w", "n", {"b": Blob(b"abc")}, fingerprint="f" * 32)
    data_id = storage.data_path("w", "n").rsplit("/", 1)[1]
    [done] = [k for k in keys() if "/.fffp/" in k]
    assert done.startswith("runs/w/.fffp/.d-") and "@" not in done
    assert keys() == sorted([done, "runs/w/n.ffr", f"runs/w/n.ffd/{data_id}/0"])
    assert client.get_object(Bucket=bucket, Key=done)["Body"].read() == b""
    blob = client.get_object(Bucket=bucket, Key="runs/w/n.ffr")["Body"].read()
    payload = blob[fsstorage._HEADER.size + len(data_id) + 32:]
    assert blob == expected_header(payload, data_id.encode(), b"f" * 32) + payload
    assert storage.list_fingerprints("w") == {"n": "f" * 32}
    assert storage.storage_exists() and storage.workflow_exists("w") and not storage.workflow_exists("v")
    storage.save("w", "n", {"b": Blob(b"new")})  # the old data goes
    [new_id] = {k.split("/")[3] for k in keys("runs/w/n.ffd/")}
    assert new_id != data_id and storage.read_task("w", "n") == {"b": Blob(b"new")}
    for name in ("g[1]", "g1"):
        storage.save(name, "n", {"b": Blob(b"x")})
    storage.remove_workflow("g[1]")
    assert not keys("runs/g[1]/") and keys("runs/g1/")
    storage.remove_workflow("g1")
    storage.remove_workflow("g1")
    assert not keys("runs/g1/")
    run = storage.begin_run("w")
    assert f"runs/w/.fffp/.w-{fsstorage._marker_name(run.tag)}" in keys()
    assert storage.list_fingerprints("w") == {"n": None}  # the finished mark is removed, headers read
    assert not [k for k in keys() if "/.fffp/.d-" in k]
    storage.end_run("w", run, ok=True)
    assert [k for k in keys() if "/.fffp/" in k] == ["runs/w/.fffp/.index"]
    assert storage._read_index("w") == {"n": None}


def test_an_index_is_trusted_only_when_whole(tmp_path):
    root = tmp_path / "st"
    storage = FileStorage(str(root))
    run = storage.begin_run("w")
    storage.list_fingerprints("w")
    storage.save("w", "a", 1, fingerprint="a" * 32)
    storage.end_run("w", run, ok=True)
    path = root / "w" / ".fffp" / ".index"
    good = path.read_bytes()
    assert storage._read_index("w") == {"a": "a" * 32}
    body = pickle.dumps(["a"], protocol=5)
    for blob in (b"", good[:3], good[:8], good[:-1], b"FFI2" + good[4:], good[:4] + bytes([good[4] ^ 1]) + good[5:],
                 struct.pack("<4sI", b"FFI1", zlib.crc32(body)) + body,
                 struct.pack("<4sI", b"FFI1", zlib.crc32(b"junk")) + b"junk"):
        path.write_bytes(blob)
        assert storage._read_index("w") is None, blob
    body = pickle.dumps({}, protocol=5)
    path.write_bytes(struct.pack("<4sI", b"FFI1", zlib.crc32(body)) + body)
    assert storage._read_index("w") == {}
    path.unlink()
    assert storage._read_index("w") is None and storage._read_index("none") is None


def test_an_unchanged_index_is_not_written_again(tmp_path):
    root = tmp_path / "st"
    storage = FileStorage(str(root))
    first = storage.begin_run("w")
    storage.list_fingerprints("w")
    storage.save("w", "a", 1, fingerprint="a" * 32)
    storage.end_run("w", first, ok=True)
    path = root / "w" / ".fffp" / ".index"
    os.utime(path, ns=(1, 1))
    second = storage.begin_run("w")
    assert storage.list_fingerprints("w") == {"a": "a" * 32}
    assert second.index == {"a": "a" * 32} and second.view == {"a": "a" * 32}
    storage.end_run("w", second, ok=True)
    assert path.stat().st_mtime_ns == 1 and os.listdir(root / "w" / ".fffp") == [".index"]


def test_a_save_keeps_nothing_in_progress_after_it(tmp_path):
    storage = blob_storage(tmp_path / "st")
    before = set(fsstorage._in_progress)
    storage.save("w", "a", 1, fingerprint="a" * 32)
    storage.save("w", "b", Blob(b"x"))
    with pytest.raises(SerializationError):
        storage.save("w", "c", Unpicklable())
    assert set(fsstorage._in_progress) == before
    run = storage.begin_run("w")
    assert set(fsstorage._in_progress) == before | {run.tag}
    storage.save("w", "d", 2, fingerprint="d" * 32)
    storage.end_run("w", run, ok=True)
    assert set(fsstorage._in_progress) == before


def test_writer_tags_have_the_documented_form():
    tag = fsstorage.writer_tag()
    assert re.fullmatch(rf"{os.getpid()}@{re.escape(fsstorage._HOST)}-[0-9a-f]{{16}}", tag), tag
    assert "/" not in fsstorage._HOST and "@" not in fsstorage._HOST and fsstorage._HOST


def test_a_serializer_failing_after_pickle_fell_back_to_cloudpickle_is_named(tmp_path):
    storage = blob_storage(tmp_path / "st", fail_write=True)
    with pytest.raises(SerializationError) as caught:
        storage.save("w", "n", [lambda: 1, Blob(b"x")])
    assert str(caught.value) == ("serializer 'blob' failed to write the result of node 'n' (workflow 'w'): "
                                 "RuntimeError: disk full (injected)")
    assert os.listdir(tmp_path / "st" / "w") == []


def test_a_registered_serializer_is_found_by_name_when_reading(tmp_path):
    import dask.array as da

    from functionfuse.serializers.daskarray import DaskArraySerializer

    writer = FileStorage(str(tmp_path / "st"))
    writer.register_persistent_serializers(DaskArraySerializer)
    writer.save("w", "arr", {"x": da.arange(4, chunks=2)})
    value = FileStorage(str(tmp_path / "st")).read_task("w", "arr")  # nothing registered: the plugin's
    assert list(value["x"].compute()) == [0, 1, 2, 3]


def test_a_folder_made_again_keeps_the_modes_of_what_is_written_in_it(tmp_path):
    root = tmp_path / "st"
    storage = FileStorage(str(root))
    storage.save("w", "a", 1, fingerprint="a" * 32)
    shutil.rmtree(root / "w")
    storage.save("w", "b", 2)  # the result's temporary finds no folder: made again
    assert stat.S_IMODE((root / "w" / "b.ffr").stat().st_mode) == umasked(0o666)
    shutil.rmtree(root / "w" / ".fffp", ignore_errors=True)
    run = storage.begin_run("w")
    shutil.rmtree(root / "w" / ".fffp")
    storage.end_run("w", run, ok=False)
    storage.save("w", "c", 3, fingerprint="c" * 32)  # its marker finds no folder: made again
    [mark] = os.listdir(root / "w" / ".fffp")
    assert stat.S_IMODE((root / "w" / ".fffp" / mark).stat().st_mode) == umasked(0o666)


def test_a_save_elsewhere_is_always_marked(tmp_path):
    storage = FileStorage(f"memory://ff-marked-{tmp_path.name}")
    storage.save("w", "plain", 1)  # no fingerprint: marked anyway (looking would cost a request)
    marks = storage.fs.ls(f"/ff-marked-{tmp_path.name}/w/.fffp", detail=False)
    assert [m.rsplit("/", 1)[1][:3] for m in marks] == [".d-"]
    storage.fs.rm(f"/ff-marked-{tmp_path.name}", recursive=True)


def test_a_save_outside_a_run_after_its_folder_was_removed_on_a_filesystem_with_folders(tmp_path):
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem

    storage = FileStorage("st", fs=DirFileSystem(path=str(tmp_path), fs=LocalFileSystem()), timeout=None)
    storage.save("w", "a", 1)
    shutil.rmtree(tmp_path / "st" / "w")
    storage.save("w", "b", 2)  # as test_storage_folder_removed_between_runs_in_one_process does locally
    assert storage.read_task("w", "b") == 2


def test_a_host_name_with_dashes_is_told_from_the_random_part(monkeypatch):
    monkeypatch.setattr(fsstorage, "_HOST", "build-box-1")
    pid = dead_pid()
    assert fsstorage.writer_alive(f"{pid}@build-box-1-0123456789abcdef") is False
    assert fsstorage.writer_alive(f"{pid}@build-box-0123456789abcdef") is True  # host "build-box": another one


def test_looking_whether_a_writer_is_alive_leaves_it_alone():
    """The look is signal 0: a live writer must not be hurt by it (any other signal ends a plain process)."""
    # SIGHUP ends it (whatever this process inherited, e.g. under nohup); it says so before the look
    script = ("import signal, sys; signal.signal(signal.SIGHUP, signal.SIG_DFL); print('ready', flush=True); "
              "sys.stdin.readline(); print('still here')")
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        assert fsstorage.writer_alive(f"{child.pid}@{fsstorage._HOST}-0123456789abcdef") is True
        out, _ = child.communicate("go\n", timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(60)
    assert out.strip() == "still here" and child.returncode == 0


def test_a_zombie_whose_name_holds_a_parenthesis_is_still_a_zombie():
    # the process name sits in parentheses in /proc/<pid>/stat and may hold ") R (" itself
    script = "import ctypes; ctypes.CDLL(None).prctl(15, b'ff) R (x', 0, 0, 0)"
    process = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while True:
            with open(f"/proc/{process.pid}/stat", "rb") as handle:
                if handle.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                    break
            assert time.monotonic() < deadline, "the child never exited"
            time.sleep(0.01)
        with open(f"/proc/{process.pid}/comm", "rb") as handle:
            assert handle.read().strip() == b"ff) R (x"
        assert fsstorage.writer_alive(f"{process.pid}@{fsstorage._HOST}-0123456789abcdef") is False
    finally:
        process.wait(60)


def test_data_path_refuses_names_that_are_not_storage_keys(tmp_path):
    from functionfuse.errors import InvalidNameError

    storage = FileStorage(str(tmp_path / "st"))
    for workflow_name, task_name in (("w", ".."), ("w", "a/b"), ("..", "n"), ("w", "")):
        for call in (storage.data_path, storage.read_task, lambda w, t: storage.read_task_checked(w, t, "f")):
            with pytest.raises(InvalidNameError):
                call(workflow_name, task_name)


def test_s3_options_that_s3fs_refuses_are_named_and_no_s3fs_option_is_fine():
    with pytest.raises(InvalidOptionError) as caught:
        fsstorage.s3_storage({"path": "bucket/x", "s3fs": {"max_paths": "many"}, "check": False})
    assert str(caught.value).startswith('storage kind "S3": bad "s3fs" options: ')
    assert isinstance(caught.value.__cause__, TypeError)
    plain = fsstorage.s3_storage({"path": "bucket/x", "check": False})  # nothing contacted
    assert plain.fs.config_kwargs["connect_timeout"] == 5.0 and plain.fs.dircache.use_listings_cache is False


def test_a_checked_read_names_both_fingerprints_shortened(tmp_path):
    root = tmp_path / "st"
    storage = FileStorage(str(root))
    storage.save("w", "n", 1, fingerprint="0123456789abcdef" * 2)
    with pytest.raises(CorruptResultError) as caught:
        storage.read_task_checked("w", "n", "fedcba9876543210" * 2)
    assert str(caught.value) == (
        f"file storage {root}: stored result of node 'n' (workflow 'w') has fingerprint '0123456789abcdef', not the "
        "'fedcba9876543210' this run planned to read: it was replaced after the run looked at the storage; "
        "run again to recompute it")
    storage.save("w", "bare", 2)  # saved without a fingerprint: never the one a run planned to read
    with pytest.raises(CorruptResultError, match=r"has fingerprint '', not the 'ab'"):
        storage.read_task_checked("w", "bare", "ab")
    blob_storage(root).save("w", "data", Blob(b"x"), fingerprint="d" * 32)  # the data id is not the fingerprint
    assert blob_storage(root).read_task_checked("w", "data", "d" * 32) == Blob(b"x")
    with pytest.raises(CorruptResultError, match="has fingerprint 'dddddddddddddddd', not the 'eeee"):
        blob_storage(root).read_task_checked("w", "data", "e" * 32)


def test_after_a_fork_the_tags_get_a_new_random_part_and_count_from_zero():
    saved = list(fsstorage._tag_state)
    before = fsstorage.writer_tag()
    try:
        fsstorage._new_tag_state()  # what a forked child runs first (os.register_at_fork)
        first, second = fsstorage.writer_tag(), fsstorage.writer_tag()
    finally:
        fsstorage._tag_state[:] = saved
    pattern = rf"{os.getpid()}@{re.escape(fsstorage._HOST)}-[0-9a-f]{{10}}"
    assert re.fullmatch(pattern + "000000", first) and re.fullmatch(pattern + "000001", second), (first, second)
    assert first[:-6] != before[:-6]


def test_file_storage_passes_its_storage_options_to_the_filesystem_the_url_names(tmp_path):
    storage = fsstorage.file_storage({"path": "dir://st", "storage_options": {"path": str(tmp_path),
                                                                            "target_protocol": "file"}})
    assert storage.fs.path == str(tmp_path) and storage.root == "st" and storage.list_tasks("w") == []
    for options, message in (({}, 'storage kind "file" needs the option "path"'),
                             ({"path": None}, 'storage kind "file": the option "path" must be a folder or URL string, '
                                              "got NoneType None"),
                             ({"path": " "}, 'storage kind "file": the option "path" is empty')):
        with pytest.raises(InvalidOptionError) as caught:
            fsstorage.file_storage(options)
        assert str(caught.value).startswith(message)


def test_a_file_storage_on_a_dir_url_saves_and_removes(tmp_path):
    storage = fsstorage.file_storage({"path": "dir://st", "storage_options": {"path": str(tmp_path),
                                                                            "target_protocol": "file"}})
    storage.save("w", "n", 1)
    assert storage.read_task("w", "n") == 1
    storage.remove_workflow("w")


def test_a_write_cut_short_by_a_signal_is_finished():
    """``os.write`` returns early when a signal arrives after part of the data is written (a
    blocked pipe here, a slow disk or network file system elsewhere): the rest must follow."""
    read_end, write_end = os.pipe()
    data = bytes(range(256)) * 4096  # 1 MiB, far more than a pipe holds (64 KiB)
    got = bytearray()
    drain = threading.Event()

    def reader():
        drain.wait(60)
        while chunk := os.read(read_end, 1 << 16):
            got.extend(chunk)

    def on_alarm(signum, frame):
        drain.set()  # the write is blocked on a full pipe: let the reader empty it from now on

    thread = threading.Thread(target=reader)
    thread.start()
    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        fsstorage._write_all(write_end, data)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        drain.set()
        os.close(write_end)
        thread.join(60)
        os.close(read_end)
    assert bytes(got) == data


class _FolderSwapper(BlobSerializer):
    """Writes the blob, then puts a file where the workflow's .fffp folder was (another
    process, or a user, tidying the disk while the save runs)."""

    name = "swapper"

    def __init__(self, fffp: str, then_fail: bool = False):
        super().__init__()
        self.fffp, self.then_fail = fffp, then_fail

    def write(self, obj, fs, path):
        token = super().write(obj, fs, path)
        shutil.rmtree(self.fffp)
        with open(self.fffp, "w") as handle:
            handle.write("not a folder")
        if self.then_fail:
            raise RuntimeError("disk full (injected)")
        return token


@pytest.mark.parametrize("then_fail", [False, True])
def test_a_save_whose_writer_mark_cannot_be_finished_says_so_and_keeps_the_first_error(tmp_path, then_fail):
    storage = FileStorage(str(tmp_path))
    storage.save("wf", "before", 1, fingerprint="f" * 32)  # makes wf/.fffp
    fffp = storage._fp_dir("wf")
    assert os.path.isdir(fffp)
    storage.register_persistent_serializers(_FolderSwapper(fffp, then_fail))
    if then_fail:
        # the serializer's failure is the error; the failed clean-up is a note on it
        with pytest.raises(SerializationError, match="disk full") as info:
            storage.save("wf", "node", Blob(b"abc"), fingerprint="a" * 32)
        assert any("marking the failed save finished failed too: NotADirectoryError" in n
                   for n in getattr(info.value, "__notes__", []))
        assert storage.read_task("wf", "before") == 1
    else:
        with pytest.raises(StorageError, match=r"node 'node' of workflow 'wf' was saved, but marking the save "
                                               r"finished failed: NotADirectoryError"):
            storage.save("wf", "node", Blob(b"abc"), fingerprint="a" * 32)
        assert storage.read_task("wf", "node") == Blob(b"abc")  # saved, as the error says
