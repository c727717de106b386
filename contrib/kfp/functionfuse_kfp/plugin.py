"""Entry point of the ``kfp`` backend (group ``functionfuse``).

Loaded in every functionfuse run, so it must not import kfp: the backend is
registered as a lazy ``"module:attribute"`` target.
"""

from __future__ import annotations

from collections.abc import Callable

from functionfuse.markers import hookimpl

BACKEND_NAME = "kfp"


@hookimpl
def ff_backends(register: Callable[..., None]) -> None:
    register(BACKEND_NAME, "functionfuse_kfp.backend:KFPWorkflow")
