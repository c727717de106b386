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
import socket
import stat
import subprocess
import sys
import time

import pytest
from s3_fixtures import running_moto, start_moto_with_auth

from functionfuse.errors import InvalidOptionError, MissingExtraError, StorageError
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
