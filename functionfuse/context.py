"""What hooks see of a run: its context."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

__all__ = ["COMPUTED", "FAILED", "NOT_REACHED", "OUTCOMES", "STORED", "RunContext"]

COMPUTED = "computed"
STORED = "stored"  # read back from storage, or not needed: its stored result applies
FAILED = "failed"
NOT_REACHED = "not reached"
#: every outcome a node can have, in the order tables show them
OUTCOMES = (COMPUTED, STORED, FAILED, NOT_REACHED)


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
    :ivar outcomes: ``None``, or a dict a plugin puts here in ``ff_before_run`` (the run record
        does): then the core fills it, on every backend, with what happened to each node, keyed by
        name: the ``info`` of ``ff_after_node`` / ``ff_node_error`` plus ``"outcome"``
        (:data:`COMPUTED`, :data:`STORED`, :data:`FAILED`) and, for a failure, ``"error"``. A node
        not in it was not reached. It costs a dict entry per node, not a hook call; backends
        report every node's ``info`` while it is set (``Run.reports_nodes``).

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
    outcomes: dict | None = None

    @property
    def backend_name(self) -> str:
        return getattr(self.backend, "backend_name", type(self.backend).__name__)
