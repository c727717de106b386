"""The ``ray`` storage kind: file storage on the Ray node that holds the disk.

Every save, read, listing and removal runs in a small Ray task with the
storage's ``remoteArgs`` (typically a custom resource only the disk node has,
``{"resources": {"_disk": 0.001}}``), wrapping a :class:`FileStorage` there.
From a driver connected to the cluster, ``read_task`` and ``list_tasks``
work like any storage. With :class:`plugins_builtin.rayback.RayWorkflow`, the
worker that computed a node saves it with a task on the disk node, so the
result goes from worker to disk node, never through the driver.

>>> storage = storage_factory({"kind": "ray", "options": {  # doctest: +SKIP
...     "path": "/data/storage", "remoteArgs": {"resources": {"_disk": 0.001}}}})

``path`` is made absolute against the driver's working directory; on a
cluster of several machines give an absolute path that exists on the disk node.
"""

from __future__ import annotations

import time
from typing import Any

from functionfuse.errors import InvalidOptionError, StorageError
from functionfuse.markers import hookimpl
from functionfuse.storage import Storage

from .fsstorage import FileStorage

__all__ = ["RayStorage", "ray_storage"]

_OPTIONS = ("path", "remoteArgs", "rayInitArgs")
_RECHECK_SECONDS = 5.0


def _storage_call(files: FileStorage, method: str, args: tuple) -> Any:
    """Runs on the disk node: one FileStorage operation."""
    return getattr(files, method)(*args)


def _save_here(files: FileStorage, workflow_name: str, task_name: str, value: Any, fingerprint: Any = None,
               replaces: Any = None) -> str:
    """Runs on the disk node: save a node's result (Ray brought it here); return this Ray node's id."""
    import ray

    files.save(workflow_name, task_name, value, fingerprint=fingerprint, replaces=replaces)
    return ray.get_runtime_context().get_node_id()


#: the Ray node id where the last save of this process ran (the ray backend reports it as ``saved_on``)
last_saved_on: str | None = None

_remotes: dict = {}


def _remote(ray: Any, name: str) -> Any:
    remote = _remotes.get(name)
    if remote is None:
        remote = ray.remote(_storage_call if name == "call" else _save_here)
        _remotes[name] = remote
    return remote


class RayStorage(Storage):
    """File storage whose every operation runs on the Ray node matching ``remote_args``.

    :param path: the root folder on the disk node.
    :param remote_args: ``ray.remote`` options of the storage tasks (``{"resources": {"_disk": 0.001}}``).
    :param ray_init_args: ``ray.init`` arguments, used when Ray is not initialised yet.
    """

    kind = "ray"

    def __init__(self, path: str, remote_args: dict | None = None, ray_init_args: dict | None = None):
        super().__init__()
        self.files = FileStorage(path, kind="ray")
        self.remote_args = dict(remote_args or {})
        self.ray_init_args = dict(ray_init_args or {})
        self._checked = -1e9  # time.monotonic() of the last resource check

    def __repr__(self) -> str:
        return f"<RayStorage root={self.files.root!r} remote_args={self.remote_args!r}>"

    def describe(self) -> str:
        return f"ray storage {self.files.root} ({self.remote_args or 'any node'})"

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_checked"] = -1e9
        return state

    # -- routing -------------------------------------------------------------------
    def _ray(self) -> Any:
        from .raycluster import check_resources, ensure_ray

        ray = ensure_ray(self.ray_init_args)
        now = time.monotonic()
        if now - self._checked > _RECHECK_SECONDS:
            # A resource no alive node has would leave every storage task pending for ever; checked
            # again after a while, since the node holding the disk may leave the cluster.
            check_resources(ray, [(self.describe(), self.remote_args, 0)])
            self._checked = now
        return ray

    def _get(self, ray: Any, ref: Any) -> Any:
        """``ray.get`` that notices, every few seconds, when no alive node can run the storage task."""
        from .raycluster import check_resources

        while True:
            try:
                return ray.get(ref, timeout=_RECHECK_SECONDS)
            except ray.exceptions.GetTimeoutError:
                try:
                    check_resources(ray, [(self.describe(), self.remote_args, 0)],
                                    what_left=" any more (the node holding the disk left the cluster)")
                except Exception as exc:
                    ray.cancel(ref, force=True)
                    raise StorageError(f"{self.describe()}: {exc}") from exc

    def _shipped(self) -> FileStorage:
        files = self.files
        files.persistent_serializers = self.persistent_serializers
        files.run_serializers = self.run_serializers
        files.always_read = self.always_read
        return files

    def _options(self, remote: Any) -> Any:
        # storage tasks need no CPU unless asked: the disk's node may have num_cpus=0 (Ray's advice for a head)
        return remote.options(**{"num_cpus": 0, **self.remote_args})

    def _call(self, method: str, *args: Any) -> Any:
        ray = self._ray()
        return self._get(ray, self._options(_remote(ray, "call")).remote(self._shipped(), method, args))

    # -- the interface ---------------------------------------------------------------
    def save(self, workflow_name: str, task_name: str, obj: Any, fingerprint: str | None = None,
             replaces: str | None = None) -> None:
        global last_saved_on
        self.check_names(workflow_name, task_name)
        ray = self._ray()
        remote = self._options(_remote(ray, "save"))
        last_saved_on = self._get(ray, remote.remote(self._shipped(), workflow_name, task_name, obj, fingerprint,
                                                     replaces))

    def read_task(self, workflow_name: str, task_name: str) -> Any:
        self.check_names(workflow_name, task_name)
        return self._call("read_task", workflow_name, task_name)

    def read_task_checked(self, workflow_name: str, task_name: str, fingerprint: str) -> Any:
        self.check_names(workflow_name, task_name)
        return self._call("read_task_checked", workflow_name, task_name, fingerprint)

    def file_exists(self, workflow_name: str, task_name: str) -> bool:
        return self._call("file_exists", workflow_name, task_name)

    def list_tasks(self, workflow_name: str, pattern: str = "*") -> list[str]:
        return self._call("list_tasks", workflow_name, pattern)

    def list_workflows(self) -> list[str]:
        return self._call("list_workflows")

    def remove_task(self, workflow_name: str, task_name: str | None = None, pattern: str | None = None) -> list[str]:
        return self._call("remove_task", workflow_name, task_name, pattern)

    def remove_workflow(self, workflow_name: str) -> None:
        self._call("remove_workflow", workflow_name)

    def new_workflow(self, workflow_name: str) -> None:
        self._call("new_workflow", workflow_name)

    def save_meta(self, workflow_name: str, key: str, data: bytes) -> None:
        self._call("save_meta", workflow_name, key, data)

    def read_meta(self, workflow_name: str, key: str) -> bytes | None:
        return self._call("read_meta", workflow_name, key)

    def remove_meta(self, workflow_name: str, key: str) -> None:
        self._call("remove_meta", workflow_name, key)

    def create_meta(self, workflow_name: str, key: str, data: bytes) -> bool:
        """Create-exclusive on the disk node: True when this call created ``key`` (a run lock)."""
        return self._call("create_meta", workflow_name, key, data)

    def list_fingerprints(self, workflow_name: str) -> dict:
        return self._call("list_fingerprints", workflow_name)

    keeps_fingerprints = True

    def list_meta(self, workflow_name: str, pattern: str = "*") -> list[str]:
        return self._call("list_meta", workflow_name, pattern)


def ray_storage(options: dict) -> RayStorage:
    """The ``ray`` kind: ``{"path": ..., "remoteArgs": {ray.remote options}, "rayInitArgs": {ray.init args}}``."""
    from .raycluster import validate_remote_args

    unknown = [key for key in options if key not in _OPTIONS]
    if unknown:
        raise InvalidOptionError(
            f'storage kind "ray": unknown option {unknown[0]!r}; the options are {", ".join(_OPTIONS)}'
        )
    path = options.get("path")
    if not isinstance(path, str) or not path:
        raise InvalidOptionError(f'storage kind "ray" needs the option "path" (a folder on the disk node), got {path!r}')
    remote_args = options.get("remoteArgs") or {}
    validate_remote_args(remote_args, 'storage kind "ray", option "remoteArgs"')
    ray_init_args = options.get("rayInitArgs") or {}
    if not isinstance(ray_init_args, dict):
        raise InvalidOptionError(
            f'storage kind "ray": option "rayInitArgs" must be a dict of ray.init arguments, got {ray_init_args!r:.80}'
        )
    return RayStorage(path, remote_args, ray_init_args)


@hookimpl
def ff_storage_kinds(register: Any) -> None:
    register("ray", "plugins_builtin.raystorage:ray_storage", extra="ray")
