"""The ``numpy`` serializer: large NumPy arrays as ``.npy`` files next to the node's result.

Arrays of at least ``min_bytes`` (1 MiB by default) are written straight from
their buffer to ``<task>.ffd/<n>`` in NumPy's own format, with a CRC32 kept in
the result, instead of being copied into the pickle; smaller ones stay in the
pickle. Register it for a storage::

    from functionfuse.serializers.numpyarray import NumpyArraySerializer
    storage.register_persistent_serializers(NumpyArraySerializer(min_bytes=16 * 2**20))
"""

from __future__ import annotations

import zlib
from typing import Any

from functionfuse.markers import hookimpl
from functionfuse.serializers import Serializer

__all__ = ["NumpyArraySerializer"]

_BLOCK = 64 * 2**20  # checksum in slices: no second copy of a large array


class NumpyArraySerializer(Serializer):
    """Writes ``numpy.ndarray`` objects of at least ``min_bytes`` to ``.npy`` files.

    :param min_bytes: smaller arrays are left to pickle.
    """

    name = "numpy"

    def __init__(self, min_bytes: int = 2**20):
        self.min_bytes = min_bytes

    def match(self, obj: Any) -> bool:
        cls = type(obj)
        return (
            cls.__name__ == "ndarray"
            and cls.__module__ == "numpy"
            and obj.nbytes >= self.min_bytes
            and not obj.dtype.hasobject  # pickle writes Python objects
        )

    def write(self, obj: Any, fs: Any, path: str) -> dict:
        import numpy as np

        array = np.ascontiguousarray(obj)
        with fs.open(path, "wb") as handle:
            np.lib.format.write_array(handle, array, allow_pickle=False)
        return {"crc32": _crc32(array), "shape": array.shape, "dtype": array.dtype.str}

    def read(self, token: dict, fs: Any, path: str) -> Any:
        import numpy as np

        with fs.open(path, "rb") as handle:
            try:
                array = np.lib.format.read_array(handle, allow_pickle=False)
            except ValueError as exc:  # NumPy's word for a truncated file
                raise FileNotFoundError(f"{path} is truncated or not a .npy file: {exc}") from exc
        if array.shape != tuple(token["shape"]) or _crc32(array) != token["crc32"]:
            raise FileNotFoundError(f"{path} does not hold the array that was written (checksum differs)")
        return array


def _crc32(array: Any) -> int:
    flat = memoryview(array.reshape(-1).view("u1")) if array.size else memoryview(b"")
    crc = 0
    for start in range(0, len(flat), _BLOCK):
        crc = zlib.crc32(flat[start:start + _BLOCK], crc)
    return crc


@hookimpl
def ff_serializers(register) -> None:
    register("numpy", "plugins_builtin.numpyarray:NumpyArraySerializer")
