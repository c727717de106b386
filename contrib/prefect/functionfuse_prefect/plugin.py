"""Entry point of the ``prefect`` backend: loaded in every run, so it registers the backend lazily, without prefect."""

from __future__ import annotations

from typing import Any

from functionfuse.markers import hookimpl

BACKEND_NAME = "prefect"


@hookimpl
def ff_backends(register) -> None:
    register(BACKEND_NAME, "functionfuse_prefect.backend:PrefectWorkflow")


@hookimpl
def ff_query_assign(nodes: list, key: str, value: Any, backend: Any) -> bool | None:
    """Accept ``task_args`` on the prefect backend: a dict of ``prefect.task`` options."""
    if key != "task_args" or getattr(backend, "backend_name", None) != BACKEND_NAME:
        return None
    from .backend import check_options

    check_options(value, "prefect.task", f"task_args of workflow {backend.workflow_name!r}, {len(nodes)} node(s)")
    return True
