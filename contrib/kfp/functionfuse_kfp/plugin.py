"""Entry point of the ``kfp`` backend: loaded in every run, so it registers the backend lazily, without kfp."""

from __future__ import annotations

from collections.abc import Callable

from functionfuse.markers import hookimpl

@hookimpl
def ff_backends(register: Callable[..., None]) -> None:
    register("kfp", "functionfuse_kfp.backend:KFPWorkflow")
