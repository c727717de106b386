"""Connecting to Ray and checking what a task asks of the cluster.

Shared by the ray backend (``plugins_builtin.rayback``), the ``ray`` storage kind
(``plugins_builtin.raystorage``) and the raydag addon. Not a plugin: it registers nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from functionfuse.errors import InvalidOptionError

__all__ = ["check_init_args", "check_resources", "ensure_ray", "validate_remote_args"]


def check_init_args(ray_init_args: Any, where: str) -> dict:
    """A copy of ``ray_init_args`` (keyword arguments of ``ray.init``; ``None``: none); raise naming ``where``."""
    if ray_init_args is None:
        return {}
    if not isinstance(ray_init_args, dict) or not all(isinstance(k, str) for k in ray_init_args):
        raise InvalidOptionError(
            f"{where}: ray_init_args must be a dict of ray.init keyword arguments, "
            f"got {type(ray_init_args).__name__} {ray_init_args!r:.60}"
        )
    return dict(ray_init_args)


def ensure_ray(ray_init_args: dict | None = None) -> Any:
    """Import ray and connect (``ray.init(**ray_init_args)``) unless Ray is initialised already."""
    from functionfuse.errors import MissingExtraError

    try:
        import ray
    except ModuleNotFoundError as exc:
        raise MissingExtraError('the ray backend needs ray: run pip install "functionfuse[ray]"') from exc
    if not ray.is_initialized():
        ray.init(**(ray_init_args or {}))
    return ray


def validate_remote_args(remote_args: Any, where: str, actor: bool = False) -> dict:
    """Check ``remote_args`` against the options ``ray.remote`` accepts; raise naming ``where``.

    :param where: what the options are for, for the message (a node, a query, a storage).
    :param actor: check actor options (stateful nodes) rather than task options.
    """
    if not isinstance(remote_args, dict):
        raise InvalidOptionError(f"{where}: remote args must be a dict of ray.remote options, got {remote_args!r:.80}")
    try:
        from ray._common import ray_option_utils as options
    except ImportError:  # ray not installed, or moved: accept the keys, ray checks them at submission
        return remote_args
    known = options.actor_options if actor else options.task_options
    for key in remote_args:
        if key not in known:
            kind = "actor (stateful node)" if actor else "task"
            raise InvalidOptionError(
                f"{where}: {key!r} is not a ray.remote {kind} option; valid ones are "
                f"{', '.join(sorted(k for k in known if k != 'num_returns'))}"
            )
    if "num_returns" in remote_args:
        # Every node's task returns its run record and its value; more returns would break that.
        raise InvalidOptionError(
            f"{where}: 'num_returns' is set by the ray backend (a node returns one value); "
            "return a tuple and take its parts with node[i] instead"
        )
    try:
        if actor:
            options.validate_actor_options(dict(remote_args), in_options=True)
        else:
            options.validate_task_options(dict(remote_args), in_options=True)
    except (ValueError, TypeError) as exc:
        raise InvalidOptionError(f"{where}: invalid remote args {remote_args!r}: {exc}") from exc
    return remote_args


def _requested_resources(remote_args: dict, default_cpus: float = 0) -> dict:
    """What a task with ``remote_args`` needs of one node; ``default_cpus``: Ray's default when
    ``num_cpus`` is not given (1 for a task, 0 for an actor once it runs)."""
    wanted = dict(remote_args.get("resources") or {})
    for option, resource in (("num_cpus", "CPU"), ("num_gpus", "GPU"), ("memory", "memory")):
        amount = remote_args.get(option)
        if amount:
            wanted[resource] = amount
    if "num_cpus" not in remote_args and default_cpus and wanted:
        wanted["CPU"] = default_cpus  # a custom resource on a node with num_cpus=0 can never run the task
    return wanted


def check_resources(ray: Any, requests: Iterable[tuple], what_left: str = "") -> None:
    """Refuse a request no alive node of the cluster can satisfy (before submission, or while waiting).

    Ray would keep such a task pending forever; this names it instead.

    :param requests: ``(what, remote_args)`` or ``(what, remote_args, default_cpus)``; ``what`` names
        the node or storage.
    :param what_left: added to the message (``"the node holding it left the cluster"``).
    """
    nodes = None
    for request in requests:
        what, remote_args = request[0], request[1]
        wanted = _requested_resources(remote_args, request[2] if len(request) > 2 else 0)
        if not wanted:
            continue
        if nodes is None:
            nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        if any(all(have.get(r, 0) >= amount for r, amount in wanted.items()) for have in nodes):
            continue
        for resource, amount in wanted.items():
            best = max((have.get(resource, 0) for have in nodes), default=0)
            if best < amount:
                raise InvalidOptionError(
                    f"{what} asks for {amount} of resource {resource!r}, but no node of the Ray cluster has "
                    f"{'it' if best == 0 else f'more than {best}'}{what_left}; the cluster has: "
                    f"{', '.join(sorted(ray.cluster_resources()))}"
                )
        raise InvalidOptionError(
            f"{what} asks for {wanted}, which no single node of the Ray cluster has together"
        )
