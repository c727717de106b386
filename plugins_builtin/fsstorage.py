"""File storage on fsspec: the ``file`` kind (any path or fsspec URL) and ``S3``.

Layout under the storage root::

    <workflow>/<task>.ffr              one result: header (magic, length, CRC32s, data id, fingerprint) + pickle
    <workflow>/<task>.ffd/<id>/<n>     objects a serializer wrote for that result (zarr, ...)
    <workflow>/.ffmeta/<key>           workflow metadata (run records)
    <workflow>/.fffp/.index            every result's fingerprint, written at the end of a clean run
    <workflow>/.fffp/.w-<writer>       a writer that may be saving results (a run, or one save outside runs)
    <workflow>/.fffp/.d-<writer>       a writer that finished while another was writing

A result is written whole or not at all: locally to a temporary file that is
then renamed, on object stores with one atomic put. The result file is
written last, so it is the commit mark of its serializer data too: a re-save
writes its data under a new ``<id>`` beside the committed one, and the header
of the result file names the id it uses, so the switch is the rename (or put)
of the result file. A failed save leaves the previous result readable.

Temporaries and data folders carry their writer's ``<pid>@<host>``; the next
run removes those of writers that are no longer alive (on this host), never
a live writer's.

Fingerprints: each result's header carries the fingerprint it was saved with
(covered by a checksum of its own, so a header can be read alone). One file per
workflow, ``.fffp/.index``, lists them all, so resuming takes a listing and one
read instead of one read per result. The index is trusted only while no writer
marker exists: a run creates its marker before it looks at the storage and,
when it ends with no other marker present, writes the index (what it saw plus
what it saved) and then removes the marker; otherwise the marker stays (as
``.d-``), and the next run reads every result's header instead, after removing
the markers of writers that finished or died. A run killed mid-way leaves its
marker, so its results are never judged by an index written before them.

Names are literal paths everywhere; only arguments called ``pattern`` are globs.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import itertools
import os
import pickle
import shutil
import socket
import struct
import threading
import uuid
import zlib
from collections.abc import Callable
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from functionfuse.errors import (
    CorruptResultError,
    FunctionFuseError,
    InvalidOptionError,
    MissingClassError,
    SerializationError,
    StorageError,
    TaskNotFoundError,
)
from functionfuse.frontend import validate_name
from functionfuse.markers import hookimpl
from functionfuse.storage import Storage, check_option_keys, check_path_option

__all__ = ["FileStorage", "file_storage", "s3_storage", "DEFAULT_TIMEOUT"]

MAGIC_V1 = b"FFR1"  # header without a data id: data lives in <task>.ffd/<n> (read only)
MAGIC_V2 = b"FFR2"  # header with a data id, without a fingerprint (read only)
MAGIC = b"FFR3"
_HEADER_V1 = struct.Struct("<4sQI")  # magic, payload length, CRC32 of payload
_HEADER_V2 = struct.Struct("<4sQIH")  # magic, payload length, CRC32 of data id + payload, length of data id
#: magic, payload length, CRC32 of data id + fingerprint + payload, length of data id, length of fingerprint,
#: CRC32 of the header's fields before it + data id + fingerprint (so the fingerprint can be read and checked alone)
_HEADER = struct.Struct("<4sQIHBI")
_HEADER_FIELDS = struct.Struct("<4sQIHB")  # the same, without its last CRC
_CRC = struct.Struct("<I")
_MAX_ID = 255
_MAX_FP = 255
_HEAD_READ = _HEADER.size + _MAX_ID + _MAX_FP  # enough bytes for any header
RESULT_SUFFIX = ".ffr"
DATA_SUFFIX = ".ffd"
META_DIR = ".ffmeta"
#: the fingerprint index and the writer markers (and, from earlier versions, ``<task>@<fingerprint>`` markers)
FINGERPRINT_DIR = ".fffp"
INDEX_NAME = ".index"
_INDEX_MAGIC = b"FFI1"
_INDEX_HEADER = struct.Struct("<4sI")  # magic, CRC32 of the body
WRITING = ".w-"  # a writer that may still save
DONE = ".d-"  # a writer that finished while another writer was active
TMP_PREFIX = ".ff-tmp-"
#: seconds any one call to a remote storage may take in total (retries included)
DEFAULT_TIMEOUT = 30.0

_HOST = socket.gethostname().replace("/", "_").replace("@", "_") or "localhost"
_MAGIC_CHARS = frozenset("*?[")
# Data folders of saves running in this process: never removed as stale.
_in_progress: set[str] = set()
_in_progress_lock = threading.Lock()


_tag_state: list = [None, None, None]  # "<pid>@<host>-<random>" of this process, unused, a counter


def _new_tag_state() -> None:
    _tag_state[:] = [f"{os.getpid()}@{_HOST}-{uuid.uuid4().hex[:10]}", None, itertools.count()]


_new_tag_state()
# a child gets its own pid and random part (os.getpid per write was a system call per result)
os.register_at_fork(after_in_child=_new_tag_state)


def _runs_through_sync(fs: Any) -> bool:
    """Whether ``fs``'s blocking calls run through fsspec's ``sync()`` (which takes ``timeout=``).

    A wrapping filesystem (``dir://``) says it is asynchronous, but over a synchronous one (the
    local disk) it hands every keyword to that one, which refuses ``timeout=``.
    """
    if not getattr(fs, "async_impl", False):
        return False
    inner = getattr(fs, "fs", None)
    if isinstance(inner, fsspec.AbstractFileSystem) and inner is not fs:
        return _runs_through_sync(inner)
    return True


def writer_tag() -> str:
    """``<pid>@<host>-<random>``: a unique name that says which process wrote it.

    The random part is drawn once per process (a new one after a fork) and a counter makes
    each name unique: a uuid per write cost as much as the write of a small result.
    """
    return f"{_tag_state[0]}{next(_tag_state[2]):06x}"


def _marker_name(tag: str) -> str:
    """A writer tag as a marker name: ``~`` for ``@`` (unreserved in URLs; some S3 servers sign ``@`` differently)."""
    return tag.replace("@", "~", 1)


def writer_alive(name: str) -> bool:
    """Whether the writer named in a temporary's name may still be writing it.

    Names from another host, or not in the ``writer_tag`` form, count as alive:
    only a process known to be gone on this host makes its files stale.
    """
    if name.startswith(TMP_PREFIX):
        name = name[len(TMP_PREFIX):]
    pid_text, at, rest = name.partition("@")
    host, dash, _ = rest.rpartition("-")
    if not at or not dash or not pid_text.isdigit() or host != _HOST:
        return True
    pid = int(pid_text)
    if pid == os.getpid():
        with _in_progress_lock:
            return name in _in_progress
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    try:  # a killed child not yet reaped is a zombie: it writes nothing any more
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return True


def _timeout_text(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) or type(exc).__name__ in ("ReadTimeoutError", "ConnectTimeoutError"):
        return f"timed out ({type(exc).__name__}: {exc})".replace(": )", ")")
    return f"{type(exc).__name__}: {exc}"


def _reported(method: Callable) -> Callable:
    """Failures of the filesystem (network, permissions) become a StorageError naming the storage."""

    @functools.wraps(method)
    def reporting(self: FileStorage, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except FunctionFuseError:
            raise
        except Exception as exc:
            workflow = args[0] if args and isinstance(args[0], str) else kwargs.get("workflow_name")
            what = f" (workflow {workflow!r})" if workflow is not None else ""
            raise StorageError(f"{self.describe()}: {method.__name__}{what} failed: {_timeout_text(exc)}") from exc

    return reporting


class FileStorage(Storage):
    """Results as files on any fsspec filesystem.

    :param path: the root folder, or an fsspec URL (``memory://x``, ``s3://bucket/prefix``).
    :param fs: an fsspec filesystem to use instead of the one the URL names.
    :param storage_options: keyword arguments for the filesystem the URL names.
    :param timeout: seconds one call to an asynchronous (network) filesystem may take
        in total, retries included, before it fails with a :class:`StorageError`.
    """

    kind = "file"

    def __init__(self, path: str, fs: Any = None, storage_options: dict | None = None, kind: str = "file",
                 timeout: float | None = DEFAULT_TIMEOUT):
        super().__init__()
        if fs is None:
            fs, path = fsspec.core.url_to_fs(str(path), **(storage_options or {}))
        self.fs = fs
        self.kind = kind
        self.local = isinstance(fs, LocalFileSystem)
        protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
        self.object_store = bool(protocols & _OBJECT_STORES)
        root = fs._strip_protocol(path) if not self.local else os.path.abspath(path)
        self.root = root.rstrip("/") or "/"
        self.timeout = timeout
        # fsspec's sync() takes timeout=: it cancels the call (and its retries) when time is up
        self._deadline = {"timeout": timeout} if timeout and _runs_through_sync(fs) else {}
        self._made: set[str] = set()
        #: (folder, workflow name) -> the writer of plain results there (``_plain_writer``)
        self._writers_made: dict = {}
        self._selector = None
        #: runs of this object writing each workflow (their marker covers saves through this object only)
        self._runs: dict[str, list[_RunWriter]] = {}
        self._used_serializers: dict = {}
        #: runs whose records ``plugins_builtin.runrecord`` keeps per workflow (None: its default, 20)
        self.keep_runs: int | None = None

    def __repr__(self) -> str:
        return f"<FileStorage kind={self.kind!r} root={self.root!r}>"

    def describe(self) -> str:
        """A short name for error messages."""
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return f"{self.kind} storage {protocol}://{self.root}" if not self.local else f"file storage {self.root}"

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_made"] = set()
        state["_runs"] = {}  # a copy (a worker's) saves as a writer of its own: the run may end before it does
        state["_writers_made"] = {}  # closures over this object: a copy makes its own
        return state

    # -- paths ---------------------------------------------------------------
    def _workflow_dir(self, workflow_name: str) -> str:
        return f"{self.root}/{workflow_name}"

    def _result_path(self, workflow_name: str, task_name: str) -> str:
        return f"{self.root}/{workflow_name}/{task_name}{RESULT_SUFFIX}"

    def _data_dir(self, workflow_name: str, task_name: str) -> str:
        """The folder holding every saved version of a node's serializer data."""
        return f"{self.root}/{workflow_name}/{task_name}{DATA_SUFFIX}"

    @_reported
    def data_path(self, workflow_name: str, task_name: str) -> str | None:
        """The folder of the serializer data the committed result of ``task_name`` uses, or ``None``."""
        self.check_names(workflow_name, task_name)
        data_id = self._committed_data_id(workflow_name, task_name)
        if data_id is None:
            return None
        base = self._data_dir(workflow_name, task_name)
        return base if data_id == "" else f"{base}/{data_id}"

    def _ensure_dir(self, folder: str) -> None:
        if folder in self._made:
            return
        if self.object_store:  # no folders there; and s3fs' makedirs would create a missing bucket
            self._made.add(folder)
            return
        try:
            if self.local:
                os.makedirs(folder, exist_ok=True)
            else:
                self.fs.makedirs(folder, exist_ok=True)
        except Exception as exc:
            raise StorageError(f"{self.describe()}: cannot create {folder!r}: {exc}") from exc
        self._made.add(folder)

    def _forget_dirs(self, folder: str) -> None:
        """Forget that ``folder`` (and what is under it) exists: it was removed, or may have been."""
        self._made = {made for made in self._made if made != folder and not made.startswith(folder + "/")}

    def _write_local(self, folder: str, tmp: str, path: str, header: bytes, payload: bytes | memoryview,
                     at: _FolderHandle | None = None) -> None:
        """``header + payload`` to the temporary ``tmp`` in ``folder``, renamed to ``path``; the
        temporary is removed if anything fails. With ``at``, ``tmp`` and ``path`` are names in
        ``folder`` taken relative to its open descriptor (the kernel does not walk the folder's
        path again for every file)."""
        # os.open/os.write: open() adds an fstat, an ioctl and an lseek per file
        try:
            d = None if at is None else at.fd()
            fd = os.open(tmp, _CREATE_FLAGS, 0o666, dir_fd=d)  # 0o666 & ~umask, as open(..., "wb")
        except FileNotFoundError:  # the folder was removed behind our back (another run, a user)
            self._forget_dirs(folder)
            self._ensure_dir(folder)
            d = None if at is None else at.reopen()
            fd = os.open(tmp, _CREATE_FLAGS, 0o666, dir_fd=d)
        try:
            try:
                if len(payload) <= _JOIN_BELOW:  # one write system call
                    data = header + payload
                    written = os.write(fd, data)
                    if written != len(data):  # a short write: the rest
                        _write_all(fd, memoryview(data)[written:])
                else:
                    _write_all(fd, header)
                    _write_all(fd, payload)
            finally:
                os.close(fd)
            os.replace(tmp, path, src_dir_fd=d, dst_dir_fd=d)
        except BaseException:
            _unlink_quietly(tmp, d)
            raise

    # -- bytes: every call here takes paths literally ---------------------------------
    def _write_atomic(self, path: str, header: bytes, payload: bytes | memoryview, tag: str | None = None) -> None:
        """Write ``header + payload`` to ``path`` whole or not at all (``tag``: the temporary's writer tag)."""
        if self.local:
            folder = path.rpartition("/")[0]
            self._write_local(folder, f"{folder}/{TMP_PREFIX}{tag or writer_tag()}", path, header, payload)
        else:
            # One put: object stores make it visible whole or not at all.
            data = header + bytes(payload)
            try:
                self.fs.pipe_file(path, data, **self._deadline)
            except FileNotFoundError:
                if self.object_store:
                    raise
                folder = path.rsplit("/", 1)[0]
                self._forget_dirs(folder)
                self._ensure_dir(folder)
                self.fs.pipe_file(path, data, **self._deadline)

    def _read_bytes(self, path: str, end: int | None = None) -> bytes:
        if self.local:
            with open(path, "rb") as handle:
                return handle.read() if end is None else handle.read(end)
        if end is None:
            return self.fs.cat_file(path, **self._deadline)
        return self.fs.cat_file(path, start=0, end=end, **self._deadline)

    def _exists(self, path: str) -> bool:
        if self.local:
            return os.path.exists(path)
        try:  # not fs.exists: it turns a time-out into "missing"
            self.fs.info(path, **self._deadline)
        except FileNotFoundError:
            return False
        return True

    def _remove_file(self, path: str) -> None:
        try:
            if self.local:
                os.unlink(path)
            else:
                self.fs.rm_file(path, **self._deadline)
        except FileNotFoundError:
            pass

    def _remove_tree(self, folder: str) -> None:
        """Remove ``folder`` and everything under it, taking the path literally (no glob)."""
        self._forget_dirs(folder)
        if self.local:
            if os.path.isdir(folder):
                shutil.rmtree(folder)
            return
        if not _MAGIC_CHARS & set(folder):  # fsspec's rm expands globs: safe only without their characters
            try:
                self.fs.rm(folder, recursive=True, **self._deadline)
            except FileNotFoundError:
                pass
            return
        try:
            entries = self.fs.find(folder, withdirs=True, detail=True, **self._deadline)
        except FileNotFoundError:
            return
        for path in sorted(entries, key=len, reverse=True):  # files before the folders holding them
            if entries[path].get("type") == "directory":
                if not self.object_store:
                    try:
                        self.fs.rmdir(path)
                    except (FileNotFoundError, OSError):
                        pass
            else:
                self._remove_file(path)
        if not self.object_store:
            try:
                self.fs.rmdir(folder)
            except (FileNotFoundError, OSError):
                pass

    def _listdir(self, folder: str) -> list[str]:
        try:
            if self.local:
                return os.listdir(folder)
            return [entry.rstrip("/").rsplit("/", 1)[-1] for entry in self.fs.ls(folder, detail=False, **self._deadline)]
        except (FileNotFoundError, NotADirectoryError):
            return []

    # -- serialisation -------------------------------------------------------
    def _dumps(self, obj: Any, workflow_name: str, task_name: str, data_dir: str) -> tuple[memoryview | bytes, bool]:
        """The pickle of ``obj`` and whether a serializer wrote data under ``data_dir``."""
        selector_in_use = getattr(self, "_selector", None) is not None
        if not self.serializers and not selector_in_use:
            try:
                return pickle.dumps(obj, protocol=5), False
            except (pickle.PicklingError, AttributeError, TypeError) as exc:
                return _pickle_by_value(obj, exc), False
        try:
            return self._dumps_with(pickle.Pickler, obj, workflow_name, task_name, data_dir)
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            cloudpickle = _cloudpickle_for(exc)
            self._discard_quietly(data_dir)  # the serializers' part of the failed attempt
            try:
                return self._dumps_with(cloudpickle.Pickler, obj, workflow_name, task_name, data_dir)
            except SerializationError:
                raise
            except Exception:
                raise exc from None

    def _dumps_with(self, pickler: type, obj: Any, workflow_name: str, task_name: str,
                    data_dir: str) -> tuple[memoryview, bool]:
        written: list[int] = []
        storage = self

        class _Pickler(pickler):  # type: ignore[valid-type, misc]
            def persistent_id(self, item: Any) -> Any:
                if item.__class__ in _PLAIN:
                    return None
                serializer = storage.select_serializer(item)
                if serializer is None:
                    return None
                number = len(written)
                written.append(number)
                storage._used_serializers[serializer.name] = serializer  # so this storage can read it back
                if number == 0:
                    storage._ensure_dir(data_dir)
                try:
                    token = serializer.write(item, storage.fs, f"{data_dir}/{number}")
                except Exception as exc:
                    raise SerializationError(
                        f"serializer {serializer.name!r} failed to write the result of node {task_name!r} "
                        f"(workflow {workflow_name!r}): {type(exc).__name__}: {exc}"
                    ) from exc
                return (serializer.name, number, token)

        buffer = io.BytesIO()
        _Pickler(buffer, protocol=5).dump(obj)
        return buffer.getbuffer(), bool(written)


    def _loads(self, payload: bytes, workflow_name: str, task_name: str, data_dir: str) -> Any:
        try:
            return _ResultUnpickler(io.BytesIO(payload), self, workflow_name, task_name, data_dir).load()
        except FunctionFuseError:
            raise
        except Exception as exc:
            raise SerializationError(
                f"{self.describe()}: the result of node {task_name!r} (workflow {workflow_name!r}) "
                f"cannot be unpickled: {type(exc).__name__}: {exc}"
            ) from exc

    def _serializer_named(self, name: str, task_name: str) -> Any:
        for serializer in self.serializers:
            if serializer.name == name:
                return serializer
        if name in self._used_serializers:
            return self._used_serializers[name]
        from functionfuse.manager import get_plugins, load_target

        registration = get_plugins().serializers().get(name)
        if registration is None:
            raise StorageError(
                f"{self.describe()}: the result of node {task_name!r} was written by serializer {name!r}, "
                "which no installed plugin provides"
            )
        target = load_target(registration, "serializer")
        return target() if isinstance(target, type) else target

    # -- the interface -------------------------------------------------------
    #: ``save`` takes ``fingerprint=`` and ``list_fingerprints`` answers (the resume plan asks)
    keeps_fingerprints = True

    def save(self, workflow_name: str, task_name: str, obj: Any, fingerprint: str | None = None,
             replaces: str | None = None) -> None:
        """Save ``obj`` as the result of ``task_name``, whole or not at all.

        :param fingerprint: the node call's fingerprint, kept in the result's header.
        :param replaces: the fingerprint stored for this name before (unused: the header
            that carried it is replaced with the result; kept for callers of earlier versions).
        """
        fp_bytes = b""
        if fingerprint is not None:
            fp_bytes = fingerprint.encode()
            if len(fp_bytes) > _MAX_FP:
                raise StorageError(f"{self.describe()}: the fingerprint of node {task_name!r} is longer than "
                                   f"{_MAX_FP} bytes")
        runs = self._runs.get(workflow_name)
        if runs:  # a run of this storage object is writing: its marker covers this save
            self._save(workflow_name, task_name, obj, fp_bytes)
            for run in runs:
                run.saved[task_name] = fingerprint
            return
        # A save outside a run is a writer of its own: marked while it writes, so an index
        # written meanwhile (or before) is not trusted for it. Without a .fffp folder there is
        # no index to mislead, and a run that finds results without one trusts none of them.
        self.check_names(workflow_name, task_name)  # before anything is written
        try:
            # (elsewhere the look would cost a request as long as the save: mark always)
            marked = fingerprint is not None or not self.local or os.path.isdir(self._fp_dir(workflow_name))
            marker = self._mark_writer(workflow_name) if marked else None
        except FunctionFuseError:
            raise
        except Exception as exc:
            raise StorageError(f"{self.describe()}: saving node {task_name!r} of workflow {workflow_name!r} "
                               f"failed: {_timeout_text(exc)}") from exc
        try:
            self._save(workflow_name, task_name, obj, fp_bytes)
        except BaseException as exc:  # the save's own error is the one to see; a later failure goes with it
            if marker is not None:
                try:
                    self._finish_writer(workflow_name, marker)
                except Exception as later:  # noqa: BLE001
                    exc.add_note(f"then marking the failed save finished failed too: {_timeout_text(later)}")
            raise
        if marker is not None:
            try:
                self._finish_writer(workflow_name, marker)
            except Exception as exc:
                # saved and readable; its marker still says "writing", so no index is trusted for it
                raise StorageError(
                    f"{self.describe()}: node {task_name!r} of workflow {workflow_name!r} was saved, but marking "
                    f"the save finished failed: {_timeout_text(exc)}"
                ) from exc

    # -- the fingerprint index and its writers ------------------------------------------
    def _fp_dir(self, workflow_name: str) -> str:
        return f"{self.root}/{workflow_name}/{FINGERPRINT_DIR}"

    def _mark_writer(self, workflow_name: str) -> str:
        """Create this writer's marker (before any of its saves); returns its tag."""
        folder = self._fp_dir(workflow_name)
        self._ensure_dir(folder)
        tag = writer_tag()
        with _in_progress_lock:
            _in_progress.add(tag)  # never removed as stale by this process
        try:
            self._create_empty(f"{folder}/{WRITING}{_marker_name(tag)}")
        except BaseException:
            with _in_progress_lock:
                _in_progress.discard(tag)
            raise
        return tag

    def _create_empty(self, path: str) -> None:
        if self.local:
            try:
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), 0o666))
            except FileNotFoundError:  # the folder was removed behind our back
                folder = path.rpartition("/")[0]
                self._forget_dirs(folder)
                self._ensure_dir(folder)
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), 0o666))
        else:
            try:
                self.fs.pipe_file(path, b"", **self._deadline)
            except FileNotFoundError:
                if self.object_store:
                    raise
                folder = path.rsplit("/", 1)[0]  # removed behind our back, as on a local disk
                self._forget_dirs(folder)
                self._ensure_dir(folder)
                self.fs.pipe_file(path, b"", **self._deadline)

    def _finish_writer(self, workflow_name: str, tag: str) -> None:
        """Mark a writer finished: its saves are all done, but the index does not have them."""
        folder = self._fp_dir(workflow_name)
        try:
            if self.local:
                try:
                    os.rename(f"{folder}/{WRITING}{_marker_name(tag)}", f"{folder}/{DONE}{_marker_name(tag)}")
                except FileNotFoundError:  # removed with its folder: the index went with it
                    pass
            else:
                self._create_empty(f"{folder}/{DONE}{_marker_name(tag)}")  # the finished mark first
                self._remove_file(f"{folder}/{WRITING}{_marker_name(tag)}")
        finally:
            with _in_progress_lock:
                _in_progress.discard(tag)

    def _writers(self, workflow_name: str) -> list[str] | None:
        """The writer markers of a workflow (``None``: it has no ``.fffp`` folder)."""
        folder = self._fp_dir(workflow_name)
        try:
            entries = os.listdir(folder) if self.local else [
                e.rstrip("/").rsplit("/", 1)[-1] for e in self.fs.ls(folder, detail=False, **self._deadline)]
        except (FileNotFoundError, NotADirectoryError):
            return None
        return entries

    @_reported
    def begin_run(self, workflow_name: str) -> _RunWriter:
        """A run starts writing ``workflow_name``: mark it, before the run looks at the storage.

        Called by the ``ff_before_run`` hook of this module, in the driver; saves through this
        object are covered by the marker until :meth:`end_run`.
        """
        self.check_names(workflow_name)
        folder = self._fp_dir(workflow_name)
        # no .fffp folder beside stored results: written before fingerprints were kept (or they
        # were forgotten): those results count as without fingerprints, whatever their headers say
        forgotten = self._writers(workflow_name) is None and bool(self.list_tasks(workflow_name))
        self._forget_dirs(folder)  # checked again: it may have been removed since
        run = _RunWriter(self._mark_writer(workflow_name), forgotten)
        self._runs.setdefault(workflow_name, []).append(run)
        return run

    @_reported
    def end_run(self, workflow_name: str, run: _RunWriter, ok: bool) -> None:
        """The run ``run`` ends: write the fingerprint index when it may, and remove its marker.

        The index is written only after a run that succeeded and saw every stored fingerprint
        (``list_fingerprints`` during the run), when no other writer's marker is present: its
        content is what the run saw plus what it saved. Otherwise the marker stays as finished,
        and the next run reads the headers.
        """
        runs = self._runs.get(workflow_name, [])
        if run in runs:
            runs.remove(run)
        if not runs:
            self._runs.pop(workflow_name, None)
        folder = self._fp_dir(workflow_name)
        own = f"{WRITING}{_marker_name(run.tag)}"
        if ok and run.view is not None:
            entries = self._writers(workflow_name) or []
            others = [e for e in entries if e.startswith((WRITING, DONE)) and e != own]
            if own in entries and not others:
                index = {**run.view, **run.saved}
                if index != run.index:
                    body = pickle.dumps(index, protocol=5)
                    self._write_atomic(f"{folder}/{INDEX_NAME}",
                                       _INDEX_HEADER.pack(_INDEX_MAGIC, zlib.crc32(body)), body)
                self._remove_file(f"{folder}/{own}")
                with _in_progress_lock:
                    _in_progress.discard(run.tag)
                return
        self._finish_writer(workflow_name, run.tag)

    def _read_index(self, workflow_name: str) -> dict | None:
        try:
            blob = self._read_bytes(f"{self._fp_dir(workflow_name)}/{INDEX_NAME}")
        except FileNotFoundError:
            return None
        if len(blob) < _INDEX_HEADER.size:
            return None
        magic, crc = _INDEX_HEADER.unpack_from(blob)
        body = memoryview(blob)[_INDEX_HEADER.size:]
        if magic != _INDEX_MAGIC or zlib.crc32(body) != crc:
            return None  # damaged: read the headers instead
        try:
            index = pickle.loads(body)
        except Exception:
            return None
        return index if isinstance(index, dict) else None

    def _header_fingerprint(self, workflow_name: str, task_name: str, legacy: dict) -> str | None:
        """The fingerprint in a result's header (checked by the header's own CRC), or ``None``."""
        try:
            head = self._read_bytes(self._result_path(workflow_name, task_name), end=_HEAD_READ)
        except FileNotFoundError:
            return None
        magic = bytes(head[:4])
        if magic == MAGIC and len(head) >= _HEADER.size:
            _, length, crc, id_length, fp_length, head_crc = _HEADER.unpack_from(head)
            end = _HEADER.size + id_length + fp_length
            if len(head) < end:
                return None
            if zlib.crc32(head[_HEADER.size:end], zlib.crc32(head[:_HEADER.size - 4])) != head_crc:
                return None  # a damaged header: recompute (reading it would fail its checksum)
            fp = head[_HEADER.size + id_length:end]
            try:
                return fp.decode() if fp else None
            except UnicodeDecodeError:
                return None
        if magic in (MAGIC_V2, MAGIC_V1):  # written by an earlier version: its marker, if exactly one
            fps = legacy.get(task_name)
            return fps[0] if fps and len(fps) == 1 else None
        return None

    @_reported
    def list_fingerprints(self, workflow_name: str) -> dict[str, str | None]:
        """Every stored task -> its fingerprint (``None`` when it has none, e.g. saved before fingerprints).

        Two listings and one read (the index) when no writer is marked; else every result's header.
        """
        self.check_names(workflow_name)
        names = self.list_tasks(workflow_name)
        entries = self._writers(workflow_name)
        runs = self._runs.get(workflow_name) or []
        mine = {f"{WRITING}{_marker_name(run.tag)}" for run in runs}
        run = runs[-1] if runs else None
        if entries is None or (run is not None and run.forgotten):
            result: dict[str, str | None] = dict.fromkeys(names)
            if run is not None:
                run.view, run.index = dict(result), None
            return result
        markers = [e for e in entries if e.startswith((WRITING, DONE)) and e not in mine]
        index = self._read_index(workflow_name) if not markers else None
        if index is None and run is not None and markers:
            # this run's marker is in place: markers of writers that finished or died may go now,
            # because what they wrote is read from the headers below, after their removal
            folder = self._fp_dir(workflow_name)
            for entry in markers:
                if entry.startswith(DONE) or not writer_alive(entry[len(WRITING):].replace("~", "@", 1)):
                    self._remove_file(f"{folder}/{entry}")
        legacy: dict[str, list] = {}
        if index is None:
            for entry in entries:
                name, sep, fp = entry.rpartition("@")
                if sep and not entry.startswith("."):
                    legacy.setdefault(name, []).append(fp)
        result = {}
        for name in names:
            if index is not None and name in index:
                result[name] = index[name]
            else:
                result[name] = self._header_fingerprint(workflow_name, name, legacy)
        if run is not None:
            run.view, run.index = dict(result), index
        for active in runs:  # what this object saved since: the index does not have it yet
            for name, fp in active.saved.items():
                if name in result:
                    result[name] = fp
        return result

    def _save(self, workflow_name: str, task_name: str, obj: Any, fp_bytes: bytes = b"") -> None:
        self.check_names(workflow_name, task_name)
        folder = f"{self.root}/{workflow_name}"
        if folder not in self._made:
            self._ensure_dir(folder)
        if self.local and self._plain():
            self._plain_writer(workflow_name)(task_name, obj, fp_bytes)
            return
        data_id = writer_tag()
        # its temporary (and data) are never removed as stale meanwhile (set.add/discard/in are atomic
        # under the GIL: no lock on the hot path)
        _in_progress.add(data_id)
        wrote_data = False
        data_dir = ""
        try:
            try:
                if self._selector is None and not self.persistent_serializers and not self.run_serializers:
                    try:  # no serializer to consult: the plain pickle (most results)
                        payload = pickle.dumps(obj, protocol=5)
                    except (pickle.PicklingError, AttributeError, TypeError) as exc:
                        payload = _pickle_by_value(obj, exc)
                else:
                    data_dir = f"{self._data_dir(workflow_name, task_name)}/{data_id}"
                    payload, wrote_data = self._dumps(obj, workflow_name, task_name, data_dir)
            except SerializationError:
                wrote_data = True  # maybe partly: remove below
                raise
            except Exception as exc:
                wrote_data = True
                raise SerializationError(
                    f"the result of node {task_name!r} (workflow {workflow_name!r}) cannot be serialised: "
                    f"{type(exc).__name__}: {exc}; nothing was written for it"
                ) from exc
            if wrote_data:
                id_bytes = data_id.encode()
                tail = id_bytes + fp_bytes
            else:
                id_bytes, tail = b"", fp_bytes
            tail_crc = zlib.crc32(tail)
            fields = _HEADER_FIELDS.pack(MAGIC, len(payload), zlib.crc32(payload, tail_crc),
                                         len(id_bytes), len(fp_bytes))
            header = fields + _CRC.pack(zlib.crc32(tail, zlib.crc32(fields))) + tail
            try:
                self._write_atomic(f"{folder}/{task_name}{RESULT_SUFFIX}", header, payload, tag=data_id)
            except Exception as exc:
                raise StorageError(
                    f"{self.describe()}: saving node {task_name!r} of workflow {workflow_name!r} failed: "
                    f"{_timeout_text(exc)}"
                ) from exc
        except BaseException:
            if wrote_data and data_dir:
                self._discard_quietly(data_dir)  # only this save's own folder: the committed one stays
                self._remove_if_empty(self._data_dir(workflow_name, task_name))
            raise
        finally:
            _in_progress.discard(data_id)
        if wrote_data:
            # Committed: earlier versions of this node's data are garbage now (unless a live writer owns them).
            self._remove_stale_data(workflow_name, task_name, keep=data_id)

    def _plain_writer(self, workflow_name: str, at: _FolderHandle | None = None) -> Callable[[str, Any, bytes], None]:
        """``write(task_name, obj, fp_bytes)`` for ``_save`` of most results: no serializer to
        consult, a local folder, no data folder. Made once per workflow folder (names checked),
        or, with ``at`` (the folder's descriptor, for one run), once per run and not kept.

        The same bytes and the same whole-or-not-at-all write as the general path, in one
        function: the header and payload go to a temporary in the folder, renamed into place.
        """
        folder = f"{self.root}/{workflow_name}"
        key = (folder, workflow_name)
        write = self._writers_made.get(key) if at is None else None
        if write is not None:
            return write
        # the names of the temporary and of the result: full paths, or names in the folder of ``at``
        base = f"{folder}/" if at is None else ""
        prefix, describe, write_local = f"{base}{TMP_PREFIX}", self.describe, self._write_local
        pack_fields, pack_crc, crc32 = _HEADER_FIELDS.pack, _CRC.pack, zlib.crc32

        def write(task_name: str, obj: Any, fp_bytes: bytes) -> None:
            try:
                try:
                    payload = pickle.dumps(obj, protocol=5)
                except (pickle.PicklingError, AttributeError, TypeError) as exc:
                    payload = _pickle_by_value(obj, exc)
            except SerializationError:
                raise
            except Exception as exc:
                raise SerializationError(
                    f"the result of node {task_name!r} (workflow {workflow_name!r}) cannot be serialised: "
                    f"{type(exc).__name__}: {exc}; nothing was written for it"
                ) from exc
            fields = pack_fields(MAGIC, len(payload), crc32(payload, crc32(fp_bytes)), 0, len(fp_bytes))
            data = fields + pack_crc(crc32(fp_bytes, crc32(fields))) + fp_bytes
            tag = f"{_tag_state[0]}{next(_tag_state[2]):06x}"  # writer_tag(), inline
            tmp, path = prefix + tag, f"{base}{task_name}{RESULT_SUFFIX}"
            _in_progress.add(tag)  # its temporary is never removed as stale meanwhile
            try:
                d = None if at is None else at.open_fd
                if (d is None and at is not None) or len(payload) > _JOIN_BELOW:
                    write_local(folder, tmp, path, data, payload, at)  # opens the folder; large results
                else:
                    # _write_local's steps for a small result, inline (most results: the call costs)
                    try:
                        fd = os.open(tmp, _CREATE_FLAGS, 0o666, dir_fd=d)
                    except FileNotFoundError:  # the folder was removed: _write_local makes it again
                        write_local(folder, tmp, path, data, payload, at)
                    else:
                        try:
                            try:
                                data += payload
                                written = os.write(fd, data)
                                if written != len(data):
                                    _write_all(fd, memoryview(data)[written:])
                            finally:
                                os.close(fd)
                            os.replace(tmp, path, src_dir_fd=d, dst_dir_fd=d)
                        except BaseException:
                            _unlink_quietly(tmp, d)
                            raise
            except Exception as exc:
                raise StorageError(
                    f"{describe()}: saving node {task_name!r} of workflow {workflow_name!r} failed: "
                    f"{_timeout_text(exc)}"
                ) from exc
            finally:
                _in_progress.discard(tag)

        if at is None:
            if len(self._writers_made) >= 64:
                self._writers_made.clear()
            self._writers_made[key] = write
        return write

    def _plain(self) -> bool:
        """No serializer to consult: every result is a plain pickle."""
        return self._selector is None and not self.persistent_serializers and not self.run_serializers

    def run_saver(self, workflow_name: str) -> Callable[[str, Any, str | None], None] | None:
        """``save(task_name, obj, fingerprint)``: :meth:`save` during a run of this process, its
        per-save lookups done once (the core's in-process loop asks). ``None`` when there is
        no such shortcut: not a local folder, or no run of this object writing ``workflow_name``.

        Plain results are written relative to a descriptor of the workflow's folder, opened at
        the first save; the returned function's ``close()`` closes it (the loop calls it when
        the run's nodes are done; a later save opens it again).
        """
        runs = self._runs.get(workflow_name)
        if not self.local or not runs:
            return None
        self.check_names(workflow_name)
        folder = f"{self.root}/{workflow_name}"
        at = _FolderHandle(folder) if _DIR_FD_CALLS else None
        save, write = self.save, None

        def run_save(task_name: str, obj: Any, fingerprint: str | None = None) -> None:
            nonlocal write
            fp_bytes = b"" if fingerprint is None else fingerprint.encode()
            if fingerprint is None or len(fp_bytes) > _MAX_FP or not runs or self._selector is not None \
                    or self.persistent_serializers or self.run_serializers:  # not _plain()
                return save(workflow_name, task_name, obj, fingerprint=fingerprint)  # its own way, its errors
            validate_name(task_name, "node")
            if write is None:
                self._ensure_dir(folder)
                write = self._plain_writer(workflow_name, at)
            write(task_name, obj, fp_bytes)
            for run in runs:
                run.saved[task_name] = fingerprint

        run_save.close = at.close if at is not None else _no_close
        return run_save

    def _remove_if_empty(self, folder: str) -> None:
        if self.object_store:
            return  # no folders there
        try:
            if self.local:
                os.rmdir(folder)
            elif not self.fs.ls(folder, detail=False):
                self.fs.rmdir(folder)
        except Exception:  # not empty, or gone already
            pass

    def _discard_quietly(self, folder: str) -> None:
        try:
            self._remove_tree(folder)
        except Exception:  # the save's own error is what the user must see; the next run cleans up
            pass

    def read_task(self, workflow_name: str, task_name: str) -> Any:
        return self._read_result(workflow_name, task_name, None)

    def read_task_checked(self, workflow_name: str, task_name: str, fingerprint: str) -> Any:
        """:meth:`read_task`, refusing a result whose header holds another fingerprint than ``fingerprint``.

        A run reads back a result because its fingerprint matched when the run looked at the
        storage; if the file was replaced since (another writer, a stale index), its header says
        so and this raises :class:`CorruptResultError` instead of returning another call's value.
        Results written before fingerprints lived in the header (FFR1, FFR2) have nothing to compare.
        """
        return self._read_result(workflow_name, task_name, fingerprint)

    def _read_result(self, workflow_name: str, task_name: str, fingerprint: str | None) -> Any:
        self.check_names(workflow_name, task_name)
        path = self._result_path(workflow_name, task_name)
        try:
            blob = self._read_bytes(path)
        except FileNotFoundError as exc:
            raise TaskNotFoundError(
                f"{self.describe()}: no stored result for node {task_name!r} in workflow {workflow_name!r}"
            ) from exc
        except Exception as exc:
            raise StorageError(
                f"{self.describe()}: reading node {task_name!r} of workflow {workflow_name!r} failed: "
                f"{_timeout_text(exc)}"
            ) from exc
        payload, data_id = self._verify(blob, workflow_name, task_name)
        if fingerprint is not None and bytes(blob[:4]) == MAGIC:
            _, _, _, id_length, fp_length, _ = _HEADER.unpack_from(blob)
            stored = bytes(blob[_HEADER.size + id_length:_HEADER.size + id_length + fp_length])
            if stored != fingerprint.encode():
                raise CorruptResultError(
                    f"{self.describe()}: stored result of node {task_name!r} (workflow {workflow_name!r}) has "
                    f"fingerprint {stored.decode(errors='replace')[:16]!r}, not the {fingerprint[:16]!r} this run "
                    "planned to read: it was replaced after the run looked at the storage; run again to recompute it"
                )
        base = self._data_dir(workflow_name, task_name)
        return self._loads(payload, workflow_name, task_name, base if not data_id else f"{base}/{data_id}")

    def _verify(self, blob: bytes, workflow_name: str, task_name: str) -> tuple[memoryview, str]:
        """The payload of a result file and the id of its data folder, after checking both."""
        where = f"{self.describe()}: stored result of node {task_name!r} (workflow {workflow_name!r})"
        magic = bytes(blob[:4])
        if magic == MAGIC_V1 and len(blob) >= _HEADER_V1.size:
            _, length, crc = _HEADER_V1.unpack_from(blob)
            id_bytes, tail, start = b"", b"", _HEADER_V1.size
        elif magic == MAGIC_V2 and len(blob) >= _HEADER_V2.size:
            _, length, crc, id_length = _HEADER_V2.unpack_from(blob)
            start = _HEADER_V2.size + id_length
            id_bytes = tail = bytes(blob[_HEADER_V2.size:start])
        elif magic == MAGIC and len(blob) >= _HEADER.size:
            _, length, crc, id_length, fp_length, head_crc = _HEADER.unpack_from(blob)
            start = _HEADER.size + id_length + fp_length
            tail = bytes(blob[_HEADER.size:start])
            id_bytes = tail[:id_length]
            if len(tail) != id_length + fp_length or \
                    zlib.crc32(tail, zlib.crc32(memoryview(blob)[:_HEADER_FIELDS.size])) != head_crc:
                raise CorruptResultError(f"{where} fails its checksum")
        elif len(blob) < _HEADER.size and magic in (MAGIC, MAGIC_V2, MAGIC_V1, MAGIC[: len(magic)]):
            raise CorruptResultError(f"{where} is truncated ({len(blob)} bytes)")
        else:
            raise CorruptResultError(f"{where} is not a functionfuse result (bad header)")
        payload = memoryview(blob)[start:]
        if len(payload) != length:
            raise CorruptResultError(f"{where} is truncated: {len(payload)} of {length} bytes")
        if zlib.crc32(payload, zlib.crc32(tail)) != crc:
            raise CorruptResultError(f"{where} fails its checksum")
        try:
            return payload, id_bytes.decode()
        except UnicodeDecodeError as exc:  # cannot happen after the checksum matched, but never guess a path
            raise CorruptResultError(f"{where} has an unreadable data id") from exc

    def _committed_data_id(self, workflow_name: str, task_name: str) -> str | None:
        """The data id the committed result uses (``""``: the old layout), or ``None`` (no result, or no data)."""
        try:
            head = self._read_bytes(self._result_path(workflow_name, task_name), end=_HEAD_READ)
        except FileNotFoundError:
            return None
        magic = head[:4]
        if magic == MAGIC_V1:
            return ""
        if magic == MAGIC_V2 and len(head) >= _HEADER_V2.size:
            size = _HEADER_V2.size
        elif magic == MAGIC and len(head) >= _HEADER.size:
            size = _HEADER.size
        else:
            return None
        id_length = _HEADER_V2.unpack_from(head)[3]
        return head[size:size + id_length].decode("utf-8", "replace") or None

    def _remove_stale_data(self, workflow_name: str, task_name: str, keep: str | None = None) -> None:
        """Remove data folders of ``task_name`` that no result uses and no live writer is writing."""
        base = self._data_dir(workflow_name, task_name)
        entries = self._listdir(base)
        if not entries:
            return
        if keep is None:
            keep = self._committed_data_id(workflow_name, task_name)
        if keep == "":  # the committed result uses the old layout: <task>.ffd/<n>; leave all of it
            return
        for entry in entries:
            if entry != keep and not entry.isdigit() and not writer_alive(entry):
                self._discard_quietly(f"{base}/{entry}")
        if keep is None:
            self._remove_if_empty(base)

    def remove_stale_temporaries(self, workflow_name: str) -> list[str]:
        """Remove what writers that died mid-write left in a workflow's folder; returns what was removed.

        Temporary files (``.ff-tmp-<pid>@<host>-...``) and serializer data no
        committed result uses, whose writer process is no longer alive on this
        host. A live writer's files, and those of other hosts, are left alone.
        """
        self.check_names(workflow_name)
        removed: list[str] = []
        folder = self._workflow_dir(workflow_name)
        for parent in (folder, f"{folder}/{META_DIR}", f"{folder}/{FINGERPRINT_DIR}"):
            for entry in self._listdir(parent):
                if entry.startswith(TMP_PREFIX) and not writer_alive(entry):
                    self._remove_file(f"{parent}/{entry}")
                    removed.append(f"{parent}/{entry}")
        for entry in self._listdir(folder):
            if entry.endswith(DATA_SUFFIX) and not entry.startswith("."):
                task_name = entry[: -len(DATA_SUFFIX)]
                before = set(self._listdir(f"{folder}/{entry}"))
                self._remove_stale_data(workflow_name, task_name)
                after = set(self._listdir(f"{folder}/{entry}"))
                removed.extend(f"{folder}/{entry}/{gone}" for gone in sorted(before - after))
        return removed

    @_reported
    def file_exists(self, workflow_name: str, task_name: str) -> bool:
        self.check_names(workflow_name, task_name)
        return self._exists(self._result_path(workflow_name, task_name))

    @_reported
    def list_tasks(self, workflow_name: str, pattern: str = "*") -> list[str]:
        self.check_names(workflow_name)
        names = [
            entry[: -len(RESULT_SUFFIX)]
            for entry in self._listdir(self._workflow_dir(workflow_name))
            if entry.endswith(RESULT_SUFFIX) and not entry.startswith(".")
        ]
        return self.match_pattern(names, pattern)

    @_reported
    def storage_exists(self) -> bool:
        """True when the storage's root folder exists (on object stores: holds anything)."""
        if self.local:
            return os.path.isdir(self.root)
        if self.object_store:
            return bool(self._listdir(self.root))
        return self._exists(self.root)

    @_reported
    def workflow_exists(self, workflow_name: str) -> bool:
        """True when the storage has a folder (or, on object stores, any object) for ``workflow_name``."""
        self.check_names(workflow_name)
        folder = self._workflow_dir(workflow_name)
        if self.local:
            return os.path.isdir(folder)
        return bool(self._listdir(folder)) or (not self.object_store and self._exists(folder))

    @_reported
    def list_workflows(self) -> list[str]:
        if self.local:
            entries = [e for e in self._listdir(self.root) if os.path.isdir(os.path.join(self.root, e))]
        else:
            try:
                entries = [
                    info["name"].rstrip("/").rsplit("/", 1)[-1]
                    for info in self.fs.ls(self.root, detail=True, **self._deadline)
                    if info.get("type") == "directory"
                ]
            except FileNotFoundError:
                entries = []
        return sorted(e for e in entries if not e.startswith("."))

    @_reported
    def remove_task(self, workflow_name: str, task_name: str | None = None, pattern: str | None = None) -> list[str]:
        self.check_names(workflow_name, task_name)
        if task_name is not None:
            names = [task_name] if self.file_exists(workflow_name, task_name) else []
        else:
            names = self.list_tasks(workflow_name, pattern or "*")
        markers = None
        for name in names:
            self._remove_file(self._result_path(workflow_name, name))
            self._remove_tree(self._data_dir(workflow_name, name))
            for run in self._runs.get(workflow_name, ()):
                run.saved.pop(name, None)
            if markers is None:
                markers = self._listdir(self._fp_dir(workflow_name))
            for entry in markers:  # fingerprint markers of earlier versions
                if not entry.startswith(".") and entry.rpartition("@")[0] == name:
                    self._remove_file(f"{self._fp_dir(workflow_name)}/{entry}")
        return names

    @_reported
    def remove_workflow(self, workflow_name: str) -> None:
        self.check_names(workflow_name)
        self._remove_tree(self._workflow_dir(workflow_name))

    @_reported
    def new_workflow(self, workflow_name: str) -> None:
        """Make sure the workflow's folder exists (checked, not remembered: it may have been removed
        since), and remove the temporaries of writers that died."""
        self.check_names(workflow_name)
        folder = self._workflow_dir(workflow_name)
        self._forget_dirs(folder)
        self._ensure_dir(folder)
        self.remove_stale_temporaries(workflow_name)

    # -- metadata ----------------------------------------------------------------
    @_reported
    def save_meta(self, workflow_name: str, key: str, data: bytes) -> None:
        self.check_names(workflow_name, key)
        folder = f"{self._workflow_dir(workflow_name)}/{META_DIR}"
        self._ensure_dir(folder)
        self._write_atomic(f"{folder}/{key}", b"", data)

    @_reported
    def create_meta(self, workflow_name: str, key: str, data: bytes) -> bool:
        """Save ``data`` under ``key`` only if nothing is stored there: True when this call created it.

        Atomic, for locks: of several processes creating one key at once exactly one gets True,
        and a reader sees the whole of ``data`` or nothing. Locally a complete temporary is
        hard-linked into place (``link`` fails when the name exists); on S3 one put with
        ``If-None-Match: *``; other fsspec filesystems open the file with mode ``"xb"``
        (as atomic as the filesystem makes it). Put a unique token in ``data``: a put retried
        after a lost answer finds its own bytes, and counts as created.
        """
        self.check_names(workflow_name, key)
        folder = f"{self._workflow_dir(workflow_name)}/{META_DIR}"
        self._ensure_dir(folder)
        path = f"{folder}/{key}"
        if self.local:
            tmp = os.path.join(folder, f"{TMP_PREFIX}{writer_tag()}")
            try:
                with open(tmp, "wb") as handle:
                    handle.write(data)
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError as exc:  # a filesystem without hard links: create-exclusive, then write
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                try:
                    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(handle, "wb") as out:
                    out.write(data)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            return True
        try:
            if self.object_store:
                self.fs.pipe_file(path, data, mode="create", **self._deadline)
            else:
                with self.fs.open(path, "xb") as handle:
                    handle.write(data)
        except FileExistsError:
            try:
                return self._read_bytes(path) == data
            except FileNotFoundError:  # removed since: the caller looks again
                return False
        return True

    @_reported
    def read_meta(self, workflow_name: str, key: str) -> bytes | None:
        self.check_names(workflow_name, key)
        try:
            return self._read_bytes(f"{self._workflow_dir(workflow_name)}/{META_DIR}/{key}")
        except FileNotFoundError:
            return None

    @_reported
    def remove_meta(self, workflow_name: str, key: str) -> None:
        """Remove the metadata stored under ``key`` (nothing happens when there is none)."""
        self.check_names(workflow_name, key)
        self._remove_file(f"{self._workflow_dir(workflow_name)}/{META_DIR}/{key}")

    @_reported
    def list_meta(self, workflow_name: str, pattern: str = "*") -> list[str]:
        self.check_names(workflow_name)
        names = [e for e in self._listdir(f"{self._workflow_dir(workflow_name)}/{META_DIR}") if not e.startswith(".")]
        return self.match_pattern(names, pattern)




_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_JOIN_BELOW = 1 << 16  # payloads up to this size are copied behind the header and written at once
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
#: names relative to an open folder work on this system (not on Windows)
_DIR_FD_CALLS = {os.open, os.rename, os.unlink} <= os.supports_dir_fd  # os.replace: as os.rename


class _FolderHandle:
    """An open descriptor of one folder, for the saves of one run (see ``run_saver``): opened
    when first asked for, again after :meth:`reopen` (the folder was made anew)."""

    __slots__ = ("folder", "open_fd")

    def __init__(self, folder: str):
        self.folder = folder
        #: the descriptor, ``None`` until :meth:`fd` opens it
        self.open_fd: int | None = None

    def fd(self) -> int:
        fd = self.open_fd
        if fd is None:
            fd = self.open_fd = os.open(self.folder, _DIR_FLAGS)
        return fd

    def reopen(self) -> int:
        self.close()
        return self.fd()

    def close(self) -> None:
        fd, self.open_fd = self.open_fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:  # a saver dropped without close(): no descriptor left behind
        try:
            self.close()
        except OSError:
            pass


def _no_close() -> None:
    pass


def _unlink_quietly(name: str, dir_fd: int | None) -> None:
    """Remove a temporary after a failed write; the write's own error is what counts."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def _write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until every byte is written (one call may write less, and at most about 2 GiB)."""
    written = os.write(fd, data)
    if written == len(data):
        return
    view = memoryview(data).cast("B")
    while written < len(view):
        written += os.write(fd, view[written:])


def _cloudpickle_for(exc: BaseException) -> Any:
    """cloudpickle, to retry after pickle failed with ``exc``; re-raises ``exc`` when it is not installed.

    Classes and functions defined in a script run by ``functionfuse run`` (or in
    ``__main__``, or locally in a function) cannot be found by name by another
    process: cloudpickle stores them by value, and a plain ``pickle.load`` reads them back.
    """
    try:
        import cloudpickle
    except ImportError:
        raise exc from None
    return cloudpickle


def _pickle_by_value(obj: Any, exc: BaseException) -> bytes:
    try:
        return _cloudpickle_for(exc).dumps(obj, protocol=5)
    except Exception:
        raise exc from None


class _ResultUnpickler(pickle.Unpickler):
    """Unpickles a result; objects a serializer wrote come back through it."""

    def __init__(self, file: Any, storage: FileStorage, workflow_name: str, task_name: str, data_dir: str):
        super().__init__(file)
        self.storage = storage
        self.workflow_name = workflow_name
        self.task_name = task_name
        self.data_dir = data_dir

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError) as exc:
            raise MissingClassError(
                f"{self.storage.describe()}: the result of node {self.task_name!r} (workflow {self.workflow_name!r}) "
                f"holds an object of class {name!r} from module {module!r}, which cannot be imported here "
                f"({type(exc).__name__}: {exc}); install or restore the module that defines it"
            ) from exc

    def persistent_load(self, pid: Any) -> Any:
        storage = self.storage
        name, number, token = pid
        serializer = storage._serializer_named(name, self.task_name)
        path = f"{self.data_dir}/{number}"
        try:
            return serializer.read(token, storage.fs, path)
        except FunctionFuseError:
            raise
        except FileNotFoundError as exc:
            raise CorruptResultError(
                f"{storage.describe()}: data of node {self.task_name!r} (workflow {self.workflow_name!r}) "
                f"written by serializer {name!r} is missing or incomplete at {path}: {exc}"
            ) from exc
        except Exception as exc:
            raise SerializationError(
                f"serializer {name!r} failed to read the result of node {self.task_name!r} "
                f"(workflow {self.workflow_name!r}) from {storage.describe()}: {type(exc).__name__}: {exc}"
            ) from exc


_OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})

_PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex, list, tuple, dict, set, frozenset})

FILE_OPTIONS = ("path", "storage_options", "timeout", "keep_runs")
S3_OPTIONS = ("path", "s3fs", "check", "timeout", "keep_runs")


def _timeout_option(kind: str, options: dict) -> float:
    timeout = options.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise InvalidOptionError(f'storage kind "{kind}": the option "timeout" must be a number of seconds > 0, '
                                 f"got {timeout!r}")
    return float(timeout)


def _keep_runs_option(kind: str, options: dict, storage: FileStorage) -> FileStorage:
    """``keep_runs``: how many runs' records (``plugins_builtin.runrecord``) the storage keeps per workflow."""
    keep = options.get("keep_runs", None)
    if keep is not None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise InvalidOptionError(f'storage kind "{kind}": the option "keep_runs" must be an integer >= 1, got {keep!r}')
        storage.keep_runs = keep
    return storage


def file_storage(options: dict) -> FileStorage:
    """The ``file`` kind: ``{"path": folder or URL, "storage_options": {...}, "timeout": seconds, "keep_runs": 20}``."""
    check_option_keys("file", options, FILE_OPTIONS)
    path = check_path_option("file", options)
    storage_options = options.get("storage_options")
    if storage_options is not None and not isinstance(storage_options, dict):
        raise InvalidOptionError('storage kind "file": the option "storage_options" must be a dict of '
                                 f"fsspec filesystem arguments, got {type(storage_options).__name__}")
    storage = FileStorage(path, storage_options=storage_options, timeout=_timeout_option("file", options))
    return _keep_runs_option("file", options, storage)


def s3_storage(options: dict) -> FileStorage:
    """The ``S3`` kind: ``{"path": "bucket/prefix", "s3fs": {s3fs.S3FileSystem arguments}, "timeout": 30}``.

    The bucket is checked once, here, with one short attempt: an unreachable
    endpoint, rejected credentials or a missing bucket fail within seconds with
    an error naming the storage, instead of retrying for minutes at the first save.
    ``timeout`` bounds every later call (all its retries included).
    """
    check_option_keys("S3", options, S3_OPTIONS)
    path = options.get("path")
    if not isinstance(path, str) or not path.removeprefix("s3://").strip("/"):
        raise InvalidOptionError(f'storage kind "S3" needs the option "path" (bucket/prefix), got {path!r}')
    # "/bucket/prefix" and "bucket/prefix" are one place: the bucket is the first part either way
    path = path.removeprefix("s3://").lstrip("/")
    timeout = _timeout_option("S3", options)
    try:
        import s3fs
    except ModuleNotFoundError as exc:
        from functionfuse.errors import MissingExtraError

        raise MissingExtraError('storage kind "S3" needs s3fs: run pip install "functionfuse[s3]"') from exc
    if not isinstance(options.get("s3fs") or {}, dict):
        raise InvalidOptionError('storage kind "S3": the option "s3fs" must be a dict of s3fs.S3FileSystem arguments')
    fs_options = dict(options.get("s3fs") or {})
    # Results written by other processes (Ray workers, zarr) must show up: no stale listings.
    fs_options.setdefault("use_listings_cache", False)
    config = dict(fs_options.get("config_kwargs") or {})
    # Each attempt is bounded (botocore reads wait 60 s by default, s3fs' 15 s), and so is their number;
    # zarr's chunk reads and writes, which go through their own s3fs instance, get the same bounds.
    config.setdefault("connect_timeout", min(5.0, timeout))
    config.setdefault("read_timeout", max(1.0, timeout / 3))
    config.setdefault("retries", {"max_attempts": 3, "mode": "standard"})  # AWS' recommended mode
    fs_options["config_kwargs"] = config
    try:
        fs = s3fs.S3FileSystem(**fs_options)
    except TypeError as exc:
        raise InvalidOptionError(f'storage kind "S3": bad "s3fs" options: {exc}') from exc
    fs.retries = 2  # s3fs' own retry loop (5 by default) multiplies botocore's attempts
    storage = _keep_runs_option("S3", options, FileStorage(path, fs=fs, kind="S3", timeout=timeout))
    if options.get("check", True):
        _check_bucket(fs_options, path.strip("/").split("/", 1)[0], storage.describe())
    return storage


def _check_bucket(fs_options: dict, bucket: str, where: str) -> None:
    """One quick HEAD of the bucket, without retries; raises a StorageError naming the storage."""
    import s3fs

    config = dict(fs_options.get("config_kwargs") or {})
    config.update(connect_timeout=3, read_timeout=3, retries={"max_attempts": 1, "mode": "standard"})
    probe = s3fs.S3FileSystem(**{**fs_options, "config_kwargs": config, "skip_instance_cache": True})
    probe.retries = 1  # s3fs' own retry loop (5 attempts with back-off by default)
    endpoint = fs_options.get("endpoint_url") or (fs_options.get("client_kwargs") or {}).get("endpoint_url") or "AWS"
    try:
        probe.call_s3("head_bucket", Bucket=bucket)
    except FileNotFoundError as exc:
        raise StorageError(f"{where}: the bucket {bucket!r} does not exist (endpoint {endpoint})") from exc
    except PermissionError as exc:
        raise StorageError(
            f"{where}: access to the bucket {bucket!r} was refused (endpoint {endpoint}): "
            f"wrong credentials, or no permission on it ({exc})"
        ) from exc
    except Exception as exc:
        if type(exc).__name__ == "NoCredentialsError":
            raise StorageError(
                f'{where}: no S3 credentials were found: give "key" and "secret" in the "s3fs" options, '
                "or set up AWS credentials (environment, ~/.aws)"
            ) from exc
        raise StorageError(
            f"{where}: cannot reach the S3 endpoint {endpoint}: {type(exc).__name__}: {exc}"
        ) from exc


class _RunWriter:
    """One run writing one workflow through one storage object: its marker and what it saw and saved."""

    __slots__ = ("tag", "forgotten", "view", "index", "saved")

    def __init__(self, tag: str, forgotten: bool):
        self.tag = tag
        self.forgotten = forgotten
        self.view: dict | None = None  # every stored fingerprint, as listed during the run
        self.index: dict | None = None  # the index as read then (not written again when unchanged)
        self.saved: dict = {}


_STATE_KEY = "fsstorage"


@hookimpl
def ff_before_run(context: Any) -> None:
    storage = context.storage
    if isinstance(storage, FileStorage):
        context.state[_STATE_KEY] = storage.begin_run(context.workflow_name)


@hookimpl
def ff_after_run(context: Any, error: BaseException | None) -> None:
    run = context.state.pop(_STATE_KEY, None)
    if run is not None:
        context.storage.end_run(context.workflow_name, run, ok=error is None)


@hookimpl
def ff_storage_kinds(register) -> None:
    register("file", "plugins_builtin.fsstorage:file_storage")
    register("S3", "plugins_builtin.fsstorage:s3_storage", extra="s3")
