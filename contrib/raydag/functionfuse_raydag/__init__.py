"""functionfuse-raydag: durable Ray workflows (the ``raydag`` backend); Ray is imported on first use only."""

from __future__ import annotations

from typing import Any

from .errors import WorkflowNotFinishedError, WorkflowNotFoundError, WorkflowRunningError
from .records import (
    FAILED,
    RESUMABLE,
    RUNNING,
    SUCCESSFUL,
    default_storage,
    delete,
    get_metadata,
    get_output,
    get_status,
    list_all,
)

__all__ = [
    "FAILED",
    "RESUMABLE",
    "RUNNING",
    "SUCCESSFUL",
    "RayWorkflow",
    "WorkflowNotFinishedError",
    "WorkflowNotFoundError",
    "WorkflowRunningError",
    "default_storage",
    "delete",
    "get_metadata",
    "get_output",
    "get_status",
    "list_all",
    "resume",
    "resume_all",
]

_LAZY = {"RayWorkflow", "resume", "resume_all"}


def __getattr__(name: str) -> Any:
    # Ray is imported on first use only: the plugin module (loaded in every functionfuse run) imports this package.
    if name in _LAZY:
        from . import backend

        return getattr(backend, name)
    raise AttributeError(f"module 'functionfuse_raydag' has no attribute {name!r}")
