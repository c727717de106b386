"""File storage on fsspec: the ``file`` kind (any path or fsspec URL) and ``S3``.

Layout under the storage root::

    <workflow>/<task>.ffr        one result: header (magic, length, CRC32) + pickle
    <workflow>/<task>.ffd/<n>    objects a serializer wrote for that result (zarr, ...)
    <workflow>/.ffmeta/<key>     workflow metadata (run records)

A result is written whole or not at all: locally to a temporary file that is
then renamed, on object stores with one atomic put. The result file is
written last, so it is the commit mark of its serializer data too.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import struct
import uuid
import zlib
from collections.abc import Callable
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from functionfuse.errors import (
    CorruptResultError,
    FunctionFuseError,
    SerializationError,
    StorageError,
    TaskNotFoundError,
)
from functionfuse.markers import hookimpl
from functionfuse.storage import Storage

__all__ = ["FileStorage", "file_storage", "s3_storage"]

MAGIC = b"FFR1"
_HEADER = struct.Struct("<4sQI")  # magic, payload length, CRC32 of payload
RESULT_SUFFIX = ".ffr"
DATA_SUFFIX = ".ffd"
META_DIR = ".ffmeta"


def _reported(method: Callable) -> Callable:
    """Failures of the filesystem (network, permissions) become a StorageError naming the storage."""

    @functools.wraps(method)
    def reporting(self: FileStorage, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except FunctionFuseError:
            raise
        except Exception as exc:
            raise StorageError(f"{self.describe()}: {method.__name__} failed: {type(exc).__name__}: {exc}") from exc

    return reporting


class FileStorage(Storage):
    """Results as files on any fsspec filesystem.

    :param path: the root folder, or an fsspec URL (``memory://x``, ``s3://bucket/prefix``).
    :param fs: an fsspec filesystem to use instead of the one the URL names.
    :param storage_options: keyword arguments for the filesystem the URL names.
    """

    kind = "file"

    def __init__(self, path: str, fs: Any = None, storage_options: dict | None = None, kind: str = "file"):
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
        self._made: set[str] = set()
        self._used_serializers: dict = {}

    def __repr__(self) -> str:
        return f"<FileStorage kind={self.kind!r} root={self.root!r}>"

    def describe(self) -> str:
        """A short name for error messages."""
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return f"{self.kind} storage {protocol}://{self.root}" if not self.local else f"file storage {self.root}"

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_made"] = set()
        return state

    # -- paths ---------------------------------------------------------------
    def _workflow_dir(self, workflow_name: str) -> str:
        return f"{self.root}/{workflow_name}"

    def _result_path(self, workflow_name: str, task_name: str) -> str:
        return f"{self.root}/{workflow_name}/{task_name}{RESULT_SUFFIX}"

    def _data_dir(self, workflow_name: str, task_name: str) -> str:
        return f"{self.root}/{workflow_name}/{task_name}{DATA_SUFFIX}"

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

    # -- bytes ---------------------------------------------------------------
    def _write_atomic(self, path: str, header: bytes, payload: bytes | memoryview) -> None:
        if self.local:
            folder = os.path.dirname(path)
            tmp = os.path.join(folder, f".ff-tmp-{uuid.uuid4().hex}")
            try:
                with open(tmp, "wb") as handle:
                    handle.write(header)
                    handle.write(payload)
                os.replace(tmp, path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        else:
            # One put: object stores make it visible whole or not at all.
            self.fs.pipe_file(path, header + bytes(payload))

    def _read_bytes(self, path: str) -> bytes:
        if self.local:
            with open(path, "rb") as handle:
                return handle.read()
        return self.fs.cat_file(path)

    # -- serialisation -------------------------------------------------------
    def _dumps(self, obj: Any, workflow_name: str, task_name: str) -> bytes:
        selector_in_use = getattr(self, "_selector", None) is not None
        if not self.serializers and not selector_in_use:
            return pickle.dumps(obj, protocol=5)
        data_dir = self._data_dir(workflow_name, task_name)
        written: list[int] = []
        storage = self

        class _Pickler(pickle.Pickler):
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
                    storage._remove_data(data_dir)  # leftovers of an earlier save of this node
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
        try:
            _Pickler(buffer, protocol=5).dump(obj)
        except BaseException:
            if written:
                self._remove_data(data_dir)
            raise
        return buffer.getbuffer()

    def _loads(self, payload: bytes, workflow_name: str, task_name: str) -> Any:
        return _ResultUnpickler(io.BytesIO(payload), self, workflow_name, task_name).load()

    def _serializer_named(self, name: str, task_name: str) -> Any:
        for serializer in self.serializers:
            if serializer.name == name:
                return serializer
        if name in self._used_serializers:
            return self._used_serializers[name]
        from functionfuse.manager import get_plugin_manager, load_target, registrations

        registration = registrations(get_plugin_manager(), "ff_serializers").get(name)
        if registration is None:
            raise StorageError(
                f"{self.describe()}: the result of node {task_name!r} was written by serializer {name!r}, "
                "which no installed plugin provides"
            )
        target = load_target(registration, "serializer")
        return target() if isinstance(target, type) else target

    def _remove_data(self, data_dir: str) -> None:
        try:
            if self.fs.exists(data_dir):
                self.fs.rm(data_dir, recursive=True)
        except FileNotFoundError:
            pass

    # -- the interface -------------------------------------------------------
    def save(self, workflow_name: str, task_name: str, obj: Any) -> None:
        self.check_names(workflow_name, task_name)
        self._ensure_dir(self._workflow_dir(workflow_name))
        try:
            payload = self._dumps(obj, workflow_name, task_name)
        except SerializationError:
            raise
        except Exception as exc:
            raise SerializationError(
                f"the result of node {task_name!r} (workflow {workflow_name!r}) cannot be serialised: "
                f"{type(exc).__name__}: {exc}; nothing was written for it"
            ) from exc
        header = _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload))
        try:
            self._write_atomic(self._result_path(workflow_name, task_name), header, payload)
        except Exception as exc:
            raise StorageError(
                f"{self.describe()}: saving node {task_name!r} of workflow {workflow_name!r} failed: {exc}"
            ) from exc

    def read_task(self, workflow_name: str, task_name: str) -> Any:
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
                f"{type(exc).__name__}: {exc}"
            ) from exc
        payload = self._verify(blob, workflow_name, task_name)
        return self._loads(payload, workflow_name, task_name)

    def _verify(self, blob: bytes, workflow_name: str, task_name: str) -> memoryview:
        where = f"{self.describe()}: stored result of node {task_name!r} (workflow {workflow_name!r})"
        if len(blob) < _HEADER.size:
            raise CorruptResultError(f"{where} is truncated ({len(blob)} bytes)")
        magic, length, crc = _HEADER.unpack_from(blob)
        if magic != MAGIC:
            raise CorruptResultError(f"{where} is not a functionfuse result (bad header)")
        payload = memoryview(blob)[_HEADER.size:]
        if len(payload) != length:
            raise CorruptResultError(f"{where} is truncated: {len(payload)} of {length} bytes")
        if zlib.crc32(payload) != crc:
            raise CorruptResultError(f"{where} fails its checksum")
        return payload

    @_reported
    def file_exists(self, workflow_name: str, task_name: str) -> bool:
        self.check_names(workflow_name, task_name)
        path = self._result_path(workflow_name, task_name)
        return os.path.exists(path) if self.local else self.fs.exists(path)

    def _listdir(self, folder: str) -> list[str]:
        try:
            if self.local:
                return os.listdir(folder)
            return [entry.rstrip("/").rsplit("/", 1)[-1] for entry in self.fs.ls(folder, detail=False)]
        except (FileNotFoundError, NotADirectoryError):
            return []

    @_reported
    def list_tasks(self, workflow_name: str, pattern: str = "*") -> list[str]:
        self.check_names(workflow_name)
        names = [
            entry[: -len(RESULT_SUFFIX)]
            for entry in self._listdir(self._workflow_dir(workflow_name))
            if entry.endswith(RESULT_SUFFIX) and not entry.startswith(".ff-tmp-")
        ]
        return self.match_pattern(names, pattern)

    @_reported
    def list_workflows(self) -> list[str]:
        if self.local:
            entries = [e for e in self._listdir(self.root) if os.path.isdir(os.path.join(self.root, e))]
        else:
            try:
                entries = [
                    info["name"].rstrip("/").rsplit("/", 1)[-1]
                    for info in self.fs.ls(self.root, detail=True)
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
        for name in names:
            path = self._result_path(workflow_name, name)
            if self.local:
                os.unlink(path)
            else:
                self.fs.rm(path)
            self._remove_data(self._data_dir(workflow_name, name))
        return names

    @_reported
    def remove_workflow(self, workflow_name: str) -> None:
        self.check_names(workflow_name)
        folder = self._workflow_dir(workflow_name)
        self._made.discard(folder)
        try:
            if self.fs.exists(folder):
                self.fs.rm(folder, recursive=True)
        except FileNotFoundError:
            pass

    @_reported
    def new_workflow(self, workflow_name: str) -> None:
        self.check_names(workflow_name)
        self._ensure_dir(self._workflow_dir(workflow_name))

    # -- metadata ----------------------------------------------------------------
    @_reported
    def save_meta(self, workflow_name: str, key: str, data: bytes) -> None:
        self.check_names(workflow_name, key)
        folder = f"{self._workflow_dir(workflow_name)}/{META_DIR}"
        self._ensure_dir(folder)
        path = f"{folder}/{key}"
        if self.local:
            tmp = f"{folder}/.ff-tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)

    @_reported
    def read_meta(self, workflow_name: str, key: str) -> bytes | None:
        self.check_names(workflow_name, key)
        try:
            return self._read_bytes(f"{self._workflow_dir(workflow_name)}/{META_DIR}/{key}")
        except FileNotFoundError:
            return None

    @_reported
    def list_meta(self, workflow_name: str, pattern: str = "*") -> list[str]:
        self.check_names(workflow_name)
        names = [e for e in self._listdir(f"{self._workflow_dir(workflow_name)}/{META_DIR}") if not e.startswith(".")]
        return self.match_pattern(names, pattern)


class _ResultUnpickler(pickle.Unpickler):
    """Unpickles a result; objects a serializer wrote come back through it."""

    def __init__(self, file: Any, storage: FileStorage, workflow_name: str, task_name: str):
        super().__init__(file)
        self.storage = storage
        self.workflow_name = workflow_name
        self.task_name = task_name

    def persistent_load(self, pid: Any) -> Any:
        storage = self.storage
        name, number, token = pid
        serializer = storage._serializer_named(name, self.task_name)
        path = f"{storage._data_dir(self.workflow_name, self.task_name)}/{number}"
        try:
            return serializer.read(token, storage.fs, path)
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


def file_storage(options: dict) -> FileStorage:
    """The ``file`` kind: ``{"path": folder or fsspec URL, "storage_options": {...}}``."""
    from functionfuse.errors import InvalidOptionError

    if "path" not in options:
        raise InvalidOptionError('storage kind "file" needs the option "path"')
    return FileStorage(options["path"], storage_options=options.get("storage_options"))


def s3_storage(options: dict) -> FileStorage:
    """The ``S3`` kind: ``{"path": "bucket/prefix", "s3fs": {s3fs.S3FileSystem arguments}}``.

    The bucket is checked once, here, with one short attempt: an unreachable
    endpoint, rejected credentials or a missing bucket fail within seconds with
    an error naming the storage, instead of retrying for minutes at the first save.
    """
    from functionfuse.errors import InvalidOptionError

    path = options.get("path")
    if not isinstance(path, str) or not path.strip("/"):
        raise InvalidOptionError('storage kind "S3" needs the option "path" (bucket/prefix)')
    path = path.removeprefix("s3://")
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
    config.setdefault("connect_timeout", 5)  # botocore waits 60 s by default
    config.setdefault("retries", {"max_attempts": 3, "mode": "standard"})  # AWS' recommended mode; fails in seconds
    fs_options["config_kwargs"] = config
    try:
        fs = s3fs.S3FileSystem(**fs_options)
    except TypeError as exc:
        raise InvalidOptionError(f'storage kind "S3": bad "s3fs" options: {exc}') from exc
    storage = FileStorage(path, fs=fs, kind="S3")
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


@hookimpl
def ff_storage_kinds(register) -> None:
    register("file", "plugins_builtin.fsstorage:file_storage")
    register("S3", "plugins_builtin.fsstorage:s3_storage", extra="s3")
