"""Tests written against the survivors of tools/mutation.sh for plugins_builtin/fsstorage.py, second round.

What they pin, each a documented promise the first round (tests/test_mutation_fsstorage.py)
left open:

- ``timeout`` bounds every call to a network filesystem: each kind of request the storage
  makes (look, read, read of a header, list, put of a marker, remove, remove of a tree) fails
  with fsspec's time-out when the endpoint accepts connections and never answers;
- a folder removed with its workflow is made again before anything is written in it;
- results of the old layout (FFR1) read their serializer data from ``<task>.ffd/<n>``;
- an intact header is recognised whatever follows it;
- a serializer registered by an installed plugin (an entry point) is found by name when
  reading: an instance as it is, a missing module named as the serializer's;
- names are taken as they are from listings of other filesystems (no stripping): metadata
  keys, and the fingerprints in the markers of earlier versions;
- a ``.fffp`` that is not a folder is "no ``.fffp`` folder" (its results have no fingerprint);
- which writer is alive: the pid is what comes before the first ``@``, and a live process
  of another user counts as alive, and so does one whose state /proc cannot tell.

Real parts only: files in tmp_path, fsspec's memory filesystem (each test clears what it
made), and for the time-outs a TCP server on 127.0.0.1 that accepts connections and
never answers, reached by s3fs.
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
import sys
import threading
import zlib

import fsspec
import pytest

from functionfuse import manager
from functionfuse.errors import CorruptResultError, MissingExtraError, SerializationError, StorageError
from plugins_builtin import fsstorage
from plugins_builtin.fsstorage import FileStorage
from test_mutation_fsstorage import dead_pid  # the helper of the first round

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


class Blob:
    """A value a serializer writes as a file of its own (as zarr writes an array)."""

    def __init__(self, data: bytes):
        self.data = data

    def __eq__(self, other):
        return isinstance(other, Blob) and other.data == self.data


class RecordingSerializer:
    """Writes a Blob as one file; remembers the paths it was given to read."""

    def __init__(self, name: str = "blob2"):
        self.name = name
        self.read_paths: list[str] = []

    def match(self, obj):
        return isinstance(obj, Blob)

    def write(self, obj, fs, path):
        fs.pipe_file(path, obj.data)
        return len(obj.data)

    def read(self, token, fs, path):
        self.read_paths.append(path)
        data = fs.cat_file(path)
        assert len(data) == token
        return Blob(data)


def ffr3_header(payload: bytes, data_id: bytes = b"", fingerprint: bytes = b"") -> bytes:
    """The FFR3 header, built from the module docstring's description (not from the code)."""
    tail = data_id + fingerprint
    fields = struct.pack("<4sQIHB", b"FFR3", len(payload), zlib.crc32(payload, zlib.crc32(tail)),
                         len(data_id), len(fingerprint))
    return fields + struct.pack("<I", zlib.crc32(tail, zlib.crc32(fields))) + tail


@pytest.fixture
def memory_root():
    """A fresh folder on fsspec's memory filesystem, removed afterwards."""
    fs = fsspec.filesystem("memory")
    root = f"/ff-mut2-{os.getpid()}-{threading.get_ident()}"
    if fs.exists(root):
        fs.rm(root, recursive=True)
    yield f"memory://{root}"
    if fs.exists(root):
        fs.rm(root, recursive=True)


# ---------------------------------------------------------------------------
# timeout: an endpoint that accepts connections and never answers
# ---------------------------------------------------------------------------


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never answers (a hung S3 endpoint).

    After ``give_up`` seconds it drops every connection: a call that is not bounded by the
    storage's deadline then fails (with another error than the deadline's) instead of hanging.
    """

    def __init__(self, give_up: float = 10.0):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.connections: list[socket.socket] = []
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        self.timer = threading.Timer(give_up, self.close)
        self.timer.daemon = True
        self.timer.start()

    def _accept(self):
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(connection)
            threading.Thread(target=self._continue, args=(connection,), daemon=True).start()

    @staticmethod
    def _continue(connection):
        """Let a PUT send its body (``Expect: 100-continue``), then say nothing more: without the
        deadline the client waits for the answer for its read time-out, not for ever."""
        head = b""
        try:
            while b"\r\n\r\n" not in head:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                head += chunk
            if b"100-continue" in head.lower():
                connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        except OSError:
            pass

    def close(self):
        self.timer.cancel()
        self.sock.close()
        for connection in self.connections:
            connection.close()


@pytest.fixture
def silent():
    server = SilentServer()
    yield server
    server.close()


def hung_storage(silent, root: str = "bucket/prefix") -> FileStorage:
    """An S3 storage whose endpoint never answers; its deadline (0.2 s) is far below the
    read time-out of each attempt (5 s), so only the deadline can end a call quickly."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=silent.endpoint, key="testing", secret="testing",
                           skip_instance_cache=True, use_listings_cache=False,
                           config_kwargs={"connect_timeout": 5, "read_timeout": 5,
                                          "retries": {"max_attempts": 1, "mode": "standard"}})
    fs.retries = 1
    return FileStorage(root, fs=fs, kind="S3", timeout=0.2)


def timed_out(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is fsspec's time-out of the whole call."""
    from fsspec.exceptions import FSTimeoutError

    while exc is not None:
        if isinstance(exc, FSTimeoutError):
            return True
        exc = exc.__cause__
    return False


@pytest.mark.parametrize("call", [
    pytest.param(lambda st: st.file_exists("w", "n"), id="exists"),
    pytest.param(lambda st: st.read_meta("w", "k"), id="read"),
    pytest.param(lambda st: st.remove_meta("w", "k"), id="remove_file"),
    pytest.param(lambda st: st.remove_workflow("w"), id="remove_tree"),
    pytest.param(lambda st: st.list_tasks("w"), id="listdir"),
    pytest.param(lambda st: st.begin_run("w"), id="writers"),
    pytest.param(lambda st: st.save("w", "n", 1), id="marker"),
])
def test_every_call_to_a_silent_endpoint_ends_at_the_storages_timeout(silent, call):
    storage = hung_storage(silent)
    with pytest.raises(StorageError) as caught:
        call(storage)
    assert timed_out(caught.value), repr(caught.value)
    assert "timed out (FSTimeoutError)" in str(caught.value)
    assert str(caught.value).startswith("S3 storage s3://bucket/prefix: ")


def test_reading_a_header_ends_at_the_timeout_too(silent):
    storage = hung_storage(silent)
    with pytest.raises(StorageError) as caught:
        storage.data_path("w", "n")  # reads only the head of the result
    assert timed_out(caught.value), repr(caught.value)
    assert str(caught.value).startswith("S3 storage s3://bucket/prefix: data_path (workflow 'w') failed: timed out")


def test_removing_a_tree_whose_name_holds_glob_characters_ends_at_the_timeout(silent):
    storage = hung_storage(silent, "bucket/runs[1]")  # literal: listed with find, not rm's glob
    with pytest.raises(StorageError) as caught:
        storage.remove_workflow("w")
    assert timed_out(caught.value), repr(caught.value)


# ---------------------------------------------------------------------------
# folders removed with their workflow are made again
# ---------------------------------------------------------------------------


def test_metadata_is_created_again_after_its_workflow_was_removed(tmp_path):
    storage = FileStorage(str(tmp_path / "st"))
    assert storage.create_meta("w", "lock", b"first") is True
    storage.remove_workflow("w")
    assert not (tmp_path / "st" / "w").exists()
    assert storage.create_meta("w", "lock", b"second") is True
    assert storage.read_meta("w", "lock") == b"second"


def test_only_the_removed_folder_and_what_is_under_it_are_forgotten(tmp_path):
    storage = FileStorage(str(tmp_path / "st"))
    storage.create_meta("w", "lock", b"1")
    storage.create_meta("wx", "lock", b"1")  # a sibling whose name starts like it
    storage.remove_workflow("w")
    assert storage.create_meta("w", "lock", b"2") is True
    assert storage.create_meta("wx", "other", b"3") is True
    assert storage.list_meta("wx") == ["lock", "other"]


# ---------------------------------------------------------------------------
# old layout: FFR1 results read their serializer data from <task>.ffd/<n>
# ---------------------------------------------------------------------------


def test_an_ffr1_result_reads_its_serializer_data_from_the_data_folder_itself(tmp_path):
    root = tmp_path / "st"
    serializer = RecordingSerializer()
    writer = FileStorage(str(root))
    writer.register_persistent_serializers(serializer)
    writer.save("w", "n", {"x": Blob(b"abc")})
    # rewrite it as an FFR1 result: data in n.ffd/0, header without a data id
    folder = root / "w"
    data_id = os.path.basename(writer.data_path("w", "n"))
    blob = (folder / "n.ffr").read_bytes()
    payload = blob[23 + len(data_id):]
    os.rename(folder / "n.ffd" / data_id / "0", folder / "n.ffd" / "0")
    os.rmdir(folder / "n.ffd" / data_id)
    (folder / "n.ffr").write_bytes(struct.pack("<4sQI", b"FFR1", len(payload), zlib.crc32(payload)) + payload)
    reader = FileStorage(str(root))
    reader.register_persistent_serializers(serializer)
    assert reader.read_task("w", "n") == {"x": Blob(b"abc")}
    assert serializer.read_paths == [f"{root}/w/n.ffd/0"]


# ---------------------------------------------------------------------------
# an intact header is recognised whatever follows it
# ---------------------------------------------------------------------------


def test_an_intact_header_without_a_pickle_fails_as_a_pickle_not_as_a_header(tmp_path):
    root = tmp_path / "st"
    (root / "w").mkdir(parents=True)
    (root / "w" / "n.ffr").write_bytes(ffr3_header(b""))  # exactly the fixed header: 23 bytes
    storage = FileStorage(str(root))
    with pytest.raises(SerializationError) as caught:
        storage.read_task("w", "n")
    assert not isinstance(caught.value, CorruptResultError)
    assert "cannot be unpickled" in str(caught.value)


# ---------------------------------------------------------------------------
# a serializer an installed plugin registers is found by name when reading
# ---------------------------------------------------------------------------

PLUGIN_MODULE = '''
from functionfuse import hookimpl


class InstanceSerializer:
    name = "ff2inst"

    def match(self, obj):
        return False

    def write(self, obj, fs, path):
        raise AssertionError("not used to write")

    def read(self, token, fs, path):
        return ("read by the registered instance", token)


INSTANCE = InstanceSerializer()


@hookimpl
def ff_serializers(register):
    register("ff2inst", INSTANCE)  # an instance, not a class
    register("ff2ghost", "ff2_no_such_module:GhostSerializer")  # its module is not installed
'''


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A distribution on sys.path whose entry point (group ``functionfuse``) registers serializers."""
    site = tmp_path / "site"
    dist = site / "ff_mut2_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ff-mut2-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[functionfuse]\nff_mut2 = ff_mut2_plugin\n")
    (site / "ff_mut2_plugin.py").write_text(PLUGIN_MODULE)
    monkeypatch.delenv("FUNCTIONFUSE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.syspath_prepend(str(site))
    manager.clear_cache()
    yield
    manager.clear_cache()
    sys.modules.pop("ff_mut2_plugin", None)


class NamedSerializer(RecordingSerializer):
    def read(self, token, fs, path):
        raise AssertionError("the reader has no serializers of its own")


def write_with(root, name: str) -> None:
    writer = FileStorage(str(root))
    writer.register_persistent_serializers(NamedSerializer(name))
    writer.save("w", "n", [Blob(b"xy")])


def test_a_serializer_registered_as_an_instance_is_used_as_it_is(tmp_path, installed_plugin):
    write_with(tmp_path / "st", "ff2inst")
    assert FileStorage(str(tmp_path / "st")).read_task("w", "n") == [("read by the registered instance", 2)]


def test_a_registered_serializer_whose_module_is_missing_is_named_as_a_serializer(tmp_path, installed_plugin):
    write_with(tmp_path / "st", "ff2ghost")
    with pytest.raises(MissingExtraError) as caught:
        FileStorage(str(tmp_path / "st")).read_task("w", "n")
    assert str(caught.value).startswith("serializer 'ff2ghost' needs the package 'ff2_no_such_module'")


# ---------------------------------------------------------------------------
# names from listings of other filesystems are taken as they are
# ---------------------------------------------------------------------------


def test_metadata_keys_are_listed_as_they_are_on_another_filesystem(memory_root):
    storage = FileStorage(memory_root)
    for key in ("BOX", "run ", "plain"):  # a key may end with a capital, or a space
        storage.save_meta("w", key, key.encode())
    assert storage.list_meta("w") == ["BOX", "plain", "run "]
    assert [storage.read_meta("w", key) for key in storage.list_meta("w")] == [b"BOX", b"plain", b"run "]


def test_fingerprints_of_old_markers_are_taken_as_they_are_on_another_filesystem(memory_root):
    storage = FileStorage(memory_root)
    fs, root = storage.fs, storage.root
    payload = pickle.dumps(1, protocol=5)
    ffr2 = struct.pack("<4sQIH", b"FFR2", len(payload), zlib.crc32(payload), 0) + payload
    for task, fingerprint in (("t", "abcX"), ("u", "abc ")):  # an FFR2 result and its one marker
        fs.pipe_file(f"{root}/w/{task}.ffr", ffr2)
        fs.pipe_file(f"{root}/w/.fffp/{task}@{fingerprint}", b"")
    assert storage.list_fingerprints("w") == {"t": "abcX", "u": "abc "}


def test_a_fffp_that_is_not_a_folder_means_no_fingerprints(tmp_path):
    storage = FileStorage(str(tmp_path / "st"))
    storage.save("w", "n", 1, fingerprint="f" * 32)
    fp_dir = tmp_path / "st" / "w" / ".fffp"
    for entry in os.listdir(fp_dir):
        os.unlink(fp_dir / entry)
    os.rmdir(fp_dir)
    fp_dir.write_bytes(b"")  # a file where the folder was: there is no .fffp folder
    assert storage.list_fingerprints("w") == {"n": None}


# ---------------------------------------------------------------------------
# which writer is alive
# ---------------------------------------------------------------------------


def answer_of_child(look) -> bytes:
    """What ``look()`` returns in a forked child (which may change its user or mounts for it)."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(read)
            os.write(write, look())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as handle:
        answer = handle.read()
    os.waitpid(child, 0)
    return answer


def test_the_pid_is_what_comes_before_the_first_at_sign():
    pid = dead_pid()
    # the random part is whatever follows the host's last dash, an @ in it included
    assert fsstorage.writer_alive(f"{pid}@{fsstorage._HOST}-ab@cd") is False
    assert fsstorage.writer_alive(f"{fsstorage.TMP_PREFIX}{pid}@{fsstorage._HOST}-0@1") is False


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_a_live_process_of_another_user_counts_as_alive():
    tag = f"{os.getpid()}@{fsstorage._HOST}-0123456789abcdef"  # this process, as seen by another user

    def look() -> bytes:  # become nobody, look whether the (root) parent is alive
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 65534, 65534)
        return b"1" if fsstorage.writer_alive(tag) else b"0"

    assert answer_of_child(look) == b"1"


def test_a_live_process_whose_state_cannot_be_read_counts_as_alive():
    """Where /proc cannot tell whether a live pid is a zombie, the writer may still be writing."""
    import ctypes

    tag = f"{os.getpid()}@{fsstorage._HOST}-0123456789abcdef"  # this (live) process

    def look() -> bytes:  # its own mount namespace, an empty /proc in it, then look
        libc = ctypes.CDLL(None, use_errno=True)
        ms_rec, ms_private, clone_newns = 0x4000, 1 << 18, 0x00020000
        if (libc.unshare(clone_newns) != 0 or libc.mount(None, b"/", None, ms_rec | ms_private, None) != 0
                or libc.mount(b"none", b"/proc", b"tmpfs", 0, None) != 0):
            return b"skip"
        return b"1" if fsstorage.writer_alive(tag) else b"0"

    answer = answer_of_child(look)
    if answer == b"skip":
        pytest.skip("cannot make a mount namespace here (needs CAP_SYS_ADMIN)")
    assert answer == b"1"
    assert os.path.exists(f"/proc/{os.getpid()}/stat")  # this process's /proc is untouched
