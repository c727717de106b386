"""Storage: where node results are saved, so a run can resume.

>>> from functionfuse.storage import storage_factory
>>> storage = storage_factory({"kind": "file", "options": {"path": "storage"}})  # doctest: +SKIP

Storage kinds are registered by plugins through ``ff_storage_kinds``; the
built-in ones are ``file`` (any fsspec path or URL), ``S3`` and ``ray``.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from typing import Any, Iterable

from ..errors import InvalidOptionError, UnknownStorageKindError
from ..frontend import validate_name

__all__ = ["Storage", "storage_factory", "as_storage", "check_option_keys", "check_path_option"]


class Storage:
    """The interface every storage kind implements.

    ``always_read = True`` makes downstream nodes receive the stored copy of
    a result (read back after saving) instead of the in-memory value.
    """

    kind = "base"

    def __init__(self) -> None:
        self.always_read = False
        self.persistent_serializers: list = []
        self.run_serializers: list = []

    # -- serializers -------------------------------------------------------
    def register_persistent_serializers(self, *serializers: Any) -> None:
        """Use these serializers (classes or instances) for every result this storage writes."""
        for serializer in serializers:
            instance = serializer() if isinstance(serializer, type) else serializer
            if not all(hasattr(instance, attr) for attr in ("name", "match", "write", "read")):
                raise InvalidOptionError(
                    f"{serializer!r} is not a serializer: it needs name, match(), write() and read()"
                )
            if all(s.name != instance.name for s in self.persistent_serializers):
                self.persistent_serializers.append(instance)

    def bind_run(self, serializers: Iterable[Any] = (), selector: Any = None) -> None:
        """Called by a backend at the start of a run: the active serializers of its plugins,
        and, when plugins implement ``ff_select_serializer``, the hook that chooses."""
        self.run_serializers = [s for s in serializers if all(s.name != p.name for p in self.persistent_serializers)]
        self._selector = selector

    def select_serializer(self, obj: Any) -> Any:
        """The serializer that writes ``obj``, or ``None`` for pickle."""
        selector = getattr(self, "_selector", None)
        if selector is not None:
            return selector(obj)
        for serializer in self.persistent_serializers:
            if serializer.match(obj):
                return serializer
        for serializer in self.run_serializers:
            if serializer.match(obj):
                return serializer
        return None

    @property
    def serializers(self) -> list:
        """Every non-pickle serializer this storage may use (persistent first)."""
        return self.persistent_serializers + self.run_serializers

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_selector"] = None  # a hook caller is not picklable; workers use the lists
        return state

    # -- names -------------------------------------------------------------
    @staticmethod
    def check_names(workflow_name: str, task_name: str | None = None) -> None:
        validate_name(workflow_name, "workflow")
        if task_name is not None:
            validate_name(task_name, "node")

    @staticmethod
    def match_pattern(names: Iterable[str], pattern: str | None) -> list[str]:
        names = sorted(names)
        if pattern in (None, "*"):
            return names
        return fnmatch.filter(names, pattern)

    # -- the interface -------------------------------------------------------
    def save(self, workflow_name: str, task_name: str, obj: Any) -> None:
        """Save ``obj`` as the result of ``task_name``, whole or not at all."""
        raise NotImplementedError

    def read_task(self, workflow_name: str, task_name: str) -> Any:
        """The stored result of ``task_name``; raises if missing or corrupt."""
        raise NotImplementedError

    def file_exists(self, workflow_name: str, task_name: str) -> bool:
        """True when a result for ``task_name`` is stored."""
        raise NotImplementedError

    def list_tasks(self, workflow_name: str, pattern: str = "*") -> list[str]:
        """Names of the stored results of a workflow matching a glob ``pattern``, sorted."""
        raise NotImplementedError

    def list_workflows(self) -> list[str]:
        """Names of the workflows with a folder in this storage."""
        raise NotImplementedError

    def remove_task(self, workflow_name: str, task_name: str | None = None, pattern: str | None = None) -> list[str]:
        """Remove one stored result, or every one matching ``pattern``; returns the names removed."""
        raise NotImplementedError

    def remove_workflow(self, workflow_name: str) -> None:
        """Remove everything stored for a workflow."""
        raise NotImplementedError

    def new_workflow(self, workflow_name: str) -> None:
        """Make sure the workflow's folder exists."""
        raise NotImplementedError

    # -- files of the workflow besides results (run records, ...) ----------------
    def save_meta(self, workflow_name: str, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` among the workflow's metadata (not listed as a task)."""
        raise NotImplementedError

    def read_meta(self, workflow_name: str, key: str) -> bytes | None:
        """Metadata stored under ``key``, or ``None``."""
        raise NotImplementedError

    def list_meta(self, workflow_name: str, pattern: str = "*") -> list[str]:
        """Metadata keys of a workflow matching ``pattern``."""
        raise NotImplementedError


def check_option_keys(kind: str, options: dict, known: Iterable[str]) -> None:
    """Refuse option names a storage kind does not know, suggesting the closest known one.

    >>> check_option_keys("file", {"path": "x", "storage_optons": {}}, ("path", "storage_options"))
    Traceback (most recent call last):
    ...
    functionfuse.errors.InvalidOptionError: storage kind "file" has no option 'storage_optons' (did you mean 'storage_options'?); its options are: path, storage_options
    """
    known = tuple(known)
    for key in options:
        if key in known:
            continue
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InvalidOptionError(
            f"storage kind {kind!r} has no option {key!r}{hint}; its options are: {', '.join(known)}".replace(
                f"kind {kind!r}", f'kind "{kind}"')
        )


def check_path_option(kind: str, options: dict) -> str:
    """The ``path`` option as a string: present, a string or path-like, not empty."""
    if "path" not in options:
        raise InvalidOptionError(f'storage kind "{kind}" needs the option "path"')
    path = options["path"]
    if hasattr(path, "__fspath__"):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise InvalidOptionError(
            f'storage kind "{kind}": the option "path" must be a folder or URL string, got {type(path).__name__} {path!r}'
        )
    if not path.strip():
        raise InvalidOptionError(
            f'storage kind "{kind}": the option "path" is empty; give a folder (use "." for the current one)'
        )
    return path


def _storage_kinds(plugins: tuple = ()) -> dict:
    from ..manager import get_plugins

    return get_plugins(plugins).storage_kinds()


def storage_factory(opt: dict, plugins: Iterable[Any] = ()) -> Storage:
    """Build a storage from ``{"kind": KIND, "options": {...}}``.

    Kinds come from the ``ff_storage_kinds`` hook: ``file`` (``path``: a
    folder or any fsspec URL), ``S3`` (``path``: ``bucket/prefix``, ``s3fs``:
    ``s3fs.S3FileSystem`` arguments), ``ray`` (``path``, ``remoteArgs``,
    optional ``rayInitArgs``). ``plugins`` adds plugins that register more kinds.
    """
    from ..manager import load_target

    if not isinstance(opt, dict) or "kind" not in opt:
        raise InvalidOptionError(f'storage options must be a dict with a "kind" key, got {opt!r:.80}')
    kind = opt["kind"]
    options = opt.get("options", {}) or {}
    if not isinstance(options, dict):
        raise InvalidOptionError(f"storage kind {kind!r}: \"options\" must be a dict, got {type(options).__name__}")
    kinds = _storage_kinds(tuple(plugins))
    registration = kinds.get(kind)
    if registration is None:
        lowered = {name.lower(): reg for name, reg in kinds.items()}
        registration = lowered.get(str(kind).lower())
    if registration is None:
        raise UnknownStorageKindError(
            f"unknown storage kind {kind!r}; the kinds that exist are: {', '.join(sorted(kinds))}"
        )
    factory = load_target(registration, "storage kind")
    return factory(options)


def as_storage(storage: Any) -> Storage | None:
    """A storage from a storage object, a ``storage_factory`` dict, or a path / fsspec URL."""
    if storage is None or isinstance(storage, Storage):
        return storage
    if isinstance(storage, dict):
        return storage_factory(storage)
    if hasattr(storage, "__fspath__"):
        storage = str(storage)
    if isinstance(storage, str):
        if storage.startswith("s3://"):
            bucket_path = storage[len("s3://"):]
            return storage_factory({"kind": "S3", "options": {"path": bucket_path}})
        return storage_factory({"kind": "file", "options": {"path": storage}})
    if all(hasattr(storage, attr) for attr in ("save", "read_task", "list_tasks")):
        return storage  # duck-typed storage from a third party
    raise InvalidOptionError(
        f"storage must be a storage object, a storage_factory dict, or a path/URL string; got {type(storage).__name__}"
    )
