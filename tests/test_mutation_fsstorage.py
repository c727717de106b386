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
import shutil
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
    MissingExtraError,
    SerializationError,
    StorageError,
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


def test_touch_creates_an_empty_file_locally_and_elsewhere(tmp_path):
    local = FileStorage(str(tmp_path / "st"))
    local._ensure_dir(local.root)
    path = f"{local.root}/mark"
    local._touch(path)
    assert os.path.getsize(path) == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == umasked(0o666)
    memory = FileStorage(f"memory://ff-touch-{tmp_path.name}")
    memory._touch(f"{memory.root}/mark")
    assert memory.fs.cat_file(f"{memory.root}/mark") == b""


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
    with pytest.raises(SerializationError, match=r"node 'g' \(workflow 'w'\) cannot be serialised: "):
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
