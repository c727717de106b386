"""Serializers: who writes an object that pickle should not.

A serializer writes an object (or an object nested inside a node's result)
to its own files next to the result, and reads it back. Pickle writes
everything else. Serializers come from plugins (``ff_serializers``) or are
given to one storage with ``storage.register_persistent_serializers(...)``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Serializer"]


class Serializer:
    """The interface of a serializer; subclass it and set ``name``.

    ``write`` receives an fsspec filesystem and a folder path of its own
    (under the workflow's folder of the storage) and returns a small picklable
    token; ``read`` receives the same token, filesystem and path.
    """

    #: unique name, recorded with every object it writes
    name: str = ""

    def match(self, obj: Any) -> bool:
        """True when this serializer should write ``obj``."""
        raise NotImplementedError

    def write(self, obj: Any, fs: Any, path: str) -> Any:
        """Write ``obj`` under ``path`` on ``fs``; return a picklable token."""
        raise NotImplementedError

    def read(self, token: Any, fs: Any, path: str) -> Any:
        """The object written under ``path`` (``token`` is what ``write`` returned)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<serializer {self.name}>"
