"""What hooks see of a run: its context."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RunContext"]


@dataclass
class RunContext:
    """One run of one workflow, as hooks see it in the driver.

    :ivar workflow_name: the workflow's name (its storage folder).
    :ivar backend: the workflow object running it.
    :ivar storage: the storage, or ``None``.
    :ivar order: every node of the run, in run order.
    :ivar leaves: the workflow's leaves.
    :ivar pm: the run's pluggy manager; ``plugins`` is its façade.
    :ivar run_id: this run's id.
    :ivar state: a dict where plugins keep per-run state, keyed by their name.

    In a worker, hooks get a :class:`functionfuse.nodecall.WorkerContext` instead
    (``workflow_name``, ``run_id``, ``backend_name``, ``storage``, ``state``).
    """

    workflow_name: str
    backend: Any
    storage: Any
    order: list
    leaves: tuple
    pm: Any
    plugins: Any = None
    #: the run's :class:`functionfuse.base.ResumePlan` once it is made (``plan.reasons``: why nodes recompute)
    plan: Any = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: dict = field(default_factory=dict)

    @property
    def backend_name(self) -> str:
        return getattr(self.backend, "backend_name", type(self.backend).__name__)
