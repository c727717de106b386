"""The ``daskarray`` serializer: Dask arrays kept as zarr (format 3) next to the node's result.

A Dask array inside a result is written chunk by chunk (``dask.array.store``
onto a zarr array) without being computed in memory first, under the
result's data folder of the same storage (local or S3). Every chunk carries
zarr's own CRC32C checksum (the ``crc32c`` codec after the compressor), so a
chunk truncated or altered on disk is never read back as numbers: reading it
raises :class:`~functionfuse.errors.CorruptResultError` naming the node, when
the chunk is read. Reading gives back a lazy ``dask.array`` over that zarr
array, with the original chunks. Removing the task or the workflow removes
the zarr data with it.

>>> from functionfuse.serializers.daskarray import DaskArraySerializer
>>> storage.register_persistent_serializers(DaskArraySerializer)  # doctest: +SKIP

Dask is imported only when an array is written or read, so registering this
plugin costs nothing where Dask is not installed.
"""

from __future__ import annotations

import math
import os
import uuid
from typing import Any

from functionfuse.errors import CorruptResultError, StorageError
from functionfuse.markers import hookimpl
from functionfuse.serializers import Serializer

__all__ = ["DaskArraySerializer", "CheckedZarrArray", "zarr_store"]


def zarr_store(fs: Any, path: str, read_only: bool = False) -> Any:
    """A zarr 3 store for ``path`` on the fsspec filesystem ``fs``.

    Local folders get zarr's ``LocalStore``; async filesystems (s3fs, gcsfs, ...)
    an ``FsspecStore`` built from the URL and the filesystem's own options (zarr
    wants an asynchronous instance); other fsspec filesystems are wrapped to look async.
    """
    from fsspec.implementations.local import LocalFileSystem
    from zarr.storage import FsspecStore, LocalStore

    if isinstance(fs, LocalFileSystem):
        return LocalStore(path, read_only=read_only)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if fs.async_impl:
        return FsspecStore.from_url(f"{protocol}://{path}", storage_options=dict(fs.storage_options), read_only=read_only)
    from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

    return FsspecStore(AsyncFileSystemWrapper(fs, asynchronous=True), path=path, read_only=read_only)


class DaskArraySerializer(Serializer):
    """Writes ``dask.array.Array`` objects to zarr and reads them back lazily.

    The zarr chunk grid is the array's chunks (irregular chunks are stored on
    the grid of their largest sizes and read back with the original chunks).
    Every chunk is written, even one equal to the fill value, so a chunk
    deleted behind the storage's back is detected on read instead of being
    silently read as zeros.
    """

    name = "daskarray"

    def match(self, obj: Any) -> bool:
        # No import of dask here: this runs for every object of every result.
        cls = type(obj)
        if cls.__name__ != "Array" or not cls.__module__.startswith("dask.array"):
            return False
        return obj.dtype.kind != "O"  # zarr has no codec for Python objects: pickle keeps those

    def write(self, obj: Any, fs: Any, path: str) -> dict:
        import dask.array as da
        import zarr

        if any(math.isnan(size) for size in obj.shape):
            raise ValueError(
                f"the Dask array has unknown chunk sizes (shape {obj.shape}); "
                "call .compute_chunk_sizes() on it before returning it"
            )
        chunks = obj.chunks
        grid = tuple(max(max(sizes, default=1), 1) for sizes in chunks)
        regular = all(all(size == step for size in sizes[:-1]) and (not sizes or sizes[-1] <= step)
                      for sizes, step in zip(chunks, grid))
        data = obj if regular else obj.rechunk(grid)  # zarr needs one chunk shape; the token keeps the original
        from zarr.codecs import Crc32cCodec, ZstdCodec

        target = zarr.create_array(
            store=zarr_store(fs, path),
            shape=obj.shape,
            chunks=grid,
            dtype=obj.dtype,
            overwrite=True,
            # zarr's default compressor, then a checksum of the stored bytes of every chunk
            compressors=[ZstdCodec(level=0), Crc32cCodec()],
            config={"write_empty_chunks": True},
        )
        # Chunk by chunk through Dask's scheduler: the array is never whole in memory.
        # Each Dask chunk maps to exactly one zarr chunk, so no lock is needed.
        _store(da.store(data, target, lock=False, compute=False))
        return {"chunks": chunks, "shape": obj.shape, "dtype": obj.dtype.str, "id": uuid.uuid4().hex, "crc32c": True}

    def read(self, token: dict, fs: Any, path: str) -> Any:
        import dask.array as da
        import zarr
        from zarr.errors import ArrayNotFoundError

        try:
            array = zarr.open_array(store=zarr_store(fs, path, read_only=True), mode="r")
        except (ArrayNotFoundError, FileNotFoundError) as exc:
            raise FileNotFoundError(f"zarr array {path} does not exist") from exc
        if tuple(array.shape) != tuple(token["shape"]):
            raise FileNotFoundError(f"zarr array {path} has shape {array.shape}, not the stored {token['shape']}")
        present = array.nchunks_initialized
        if present != array.nchunks:
            raise FileNotFoundError(
                f"zarr array {path} is missing {array.nchunks - present} of its {array.nchunks} chunks"
            )
        checked = CheckedZarrArray(array, _owner(path))
        return da.from_array(checked, chunks=token["chunks"], name=f"ff-zarr-{token['id']}", asarray=False,
                             fancy=False, lock=False, meta=np_empty(array.dtype, array.ndim))


def np_empty(dtype: Any, ndim: int) -> Any:
    import numpy as np

    return np.empty((0,) * ndim, dtype=dtype)


class CheckedZarrArray:
    """A zarr array whose chunk reads name the node when a chunk is corrupt or unreadable.

    ``zarr_array`` is the array itself; Dask reads through ``__getitem__``.
    """

    def __init__(self, zarr_array: Any, owner: str):
        self.zarr_array = zarr_array
        self.owner = owner
        self.shape = zarr_array.shape
        self.dtype = zarr_array.dtype
        self.ndim = zarr_array.ndim

    def __getitem__(self, key: Any) -> Any:
        try:
            return self.zarr_array[key]
        except OSError as exc:  # the storage, not the bytes: unreachable, timed out, removed
            raise StorageError(f"reading a zarr chunk of {self.owner} failed: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # a checksum mismatch, a truncated or undecodable chunk
            raise CorruptResultError(
                f"a zarr chunk of {self.owner} is corrupt (written by serializer 'daskarray'), "
                f"it is never returned as numbers: {type(exc).__name__}: {exc}"
            ) from exc

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"<CheckedZarrArray of {self.owner}: {self.zarr_array!r}>"


def _owner(path: str) -> str:
    """``node 'task' (workflow 'wf')`` from a data path ``.../<wf>/<task>.ffd/<id>/<n>``."""
    parts = path.rstrip("/").split("/")
    for index in range(len(parts) - 1, 0, -1):
        if parts[index].endswith(".ffd"):
            return f"node {parts[index][:-4]!r} (workflow {parts[index - 1]!r})"
    return f"the array at {path}"


def _store(task: Any) -> None:
    """Compute a ``da.store`` task; on the default threaded scheduler, with a pool of its own that
    is drained before an error propagates, so no chunk is still being written after ``write`` fails."""
    import dask
    import dask.threaded
    from dask.base import get_scheduler

    if get_scheduler(collections=[task]) is not dask.threaded.get:
        dask.compute(task)
        return
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(dask.config.get("num_workers", None) or os.cpu_count() or 1)
    try:
        dask.compute(task, scheduler="threads", pool=pool)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@hookimpl
def ff_serializers(register) -> None:
    register("daskarray", "plugins_builtin.daskarray:DaskArraySerializer", extra="dask")

