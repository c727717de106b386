"""The pluggy plugin functionfuse loads through the ``functionfuse`` entry point.

It must import without Ray: the plugin manager loads it in every run, so the
backend is registered as a lazy ``"module:attribute"`` string.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from functionfuse.errors import InvalidOptionError
from functionfuse.markers import hookimpl


@hookimpl
def ff_backends(register: Callable[..., None]) -> None:
    register("raydag", "functionfuse_raydag.backend:RayWorkflow")


@hookimpl
def ff_query_assign(nodes: list, key: str, value: Any, backend: Any) -> bool | None:
    # Ray itself names a bad option only when a task is submitted; the type is checked here, at query time.
    if key != "remote_args" or getattr(backend, "backend_name", None) != "raydag":
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        names = ", ".join(repr(n.name) for n in nodes[:3])
        raise InvalidOptionError(
            f"raydag: remote_args for nodes {names} must be a dict of ray.remote options "
            f"(e.g. {{'num_cpus': 1}}), got {type(value).__name__} {value!r:.60}"
        )
    return True
