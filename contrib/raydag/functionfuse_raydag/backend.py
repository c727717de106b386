"""The ``raydag`` backend: Ray Workflows' durable workflows rebuilt on Ray tasks and actors (see the README).

Every node's task saves its result before it returns, and the plan is stored beside the results, so
:func:`resume` finishes a workflow without its script. Submitting nodes, collecting them and naming the one
that failed is the ``ray`` backend's (:class:`plugins_builtin.rayback.RayWorkflow`); this one adds the run
lock, the stored plan and the run record saved at the start.
"""

from __future__ import annotations

import copy
from typing import Any

import cloudpickle

from functionfuse.base import READ, Run
from functionfuse.errors import SerializationError
from functionfuse.nodecall import METHOD, OBJECT
from plugins_builtin import rayback
from plugins_builtin.raycluster import check_init_args, validate_remote_args

from . import records
from .errors import WorkflowNotFoundError
from .plan import Plan, PlannedNode, build_plan

__all__ = ["RayWorkflow", "resume", "resume_all"]


def _save_plan(storage: Any, plan: Plan) -> None:
    try:
        data = cloudpickle.dumps(plan)
    except Exception as exc:
        raise SerializationError(
            f"raydag workflow {plan.workflow_name!r}: its functions and arguments cannot be pickled, so Ray "
            f"cannot ship them and resume could not rebuild them: {type(exc).__name__}: {exc}"
        ) from exc
    storage.save_meta(plan.workflow_name, records.PLAN_KEY, data)


class RayWorkflow(rayback.RayWorkflow):
    """Run the workflow on Ray with every node checkpointed (default storage: :func:`records.default_storage`)."""

    backend_name = "raydag"
    #: Ray's own default: a task whose worker died runs again (the ray backend leaves retries to set_retries)
    task_options = {"max_retries": 3}
    _plan: Plan | None = None  # set when resuming a stored plan: the nodes are its PlannedNodes

    @classmethod
    def _from_plan(cls, plan: Plan, storage: Any, ray_init_args: dict) -> RayWorkflow:
        # Workflow.__init__ wants Nodes; a stored plan has PlannedNodes, which quack like them for a Run.
        self = cls.__new__(cls)
        self.__dict__.update(
            leaves=plan.leaves, workflow_name=plan.workflow_name, nodes=plan.nodes, storage=storage, _plugins=(),
            node_attrs={n: {"remote_args": n.remote_args} for n in plan.nodes if n.remote_args}, _disable=(),
            _trace=None, record=True, progress=False, run_record=None, ray_init_args=ray_init_args, _plan=plan,
            resume="name", rerun=None)  # the plan is the run that stored the results: names are enough
        return self

    def run(self) -> Any:
        """Run every node not stored yet, holding the run lock; return the leaf value(s)."""
        if self.storage is None:
            self.storage = records.default_storage()
        # Before the run's record and plan: a refused driver writes nothing, so the status stays the runner's.
        with records.take_lock(self.storage, self.workflow_name):
            records.refuse_if_running(self.storage, self.workflow_name)  # a driver that took no lock (an older version)
            return super().run()

    def _check_run_options(self, options: dict) -> None:
        pass  # Ray is joined in the run, once its plan and record are saved (see _submit_and_collect)

    def _call(self, run: Run, node: Any, action: str) -> tuple:
        """The node call of ``node`` and its dependencies: the core's, or the stored plan's when resuming."""
        if action == READ or node.__class__ is not PlannedNode:
            return run.node_call(node, action)
        call = copy.copy(node.call)
        if run.saves(node):
            call.storage, call.always_read = self.storage, run.plan.always_read
        call.hooks = run.worker_hooks
        return call, node.deps

    def _submit_and_collect(self, run: Run, return_results: bool, max_pending_tasks: int) -> list:
        steps, computed = [], {}
        for node, action in run.steps():
            call, deps = self._call(run, node, action)
            remote_args = self.attrs(node).get("remote_args")
            if remote_args and node.kind != METHOD:  # a method call runs in its object's actor
                where = f"raydag workflow {self.workflow_name!r}: remote_args of node {node.name!r}"
                validate_remote_args(remote_args, where, actor=node.kind == OBJECT)
            steps.append((node, action, call, deps))
            if action != READ:
                computed[node] = call, deps
        if self._plan is None:
            _save_plan(self.storage, build_plan(self, computed))
        # The run-record plugin is required (mark_started): its ff_after_node has the ray backend watch every
        # node, so it never asks a PlannedNode for its children.
        record = records.mark_started(run.context, [leaf.name for leaf in self.leaves])
        try:
            # joins Ray; refuses what no node of the cluster can run
            super()._check_run_options({"max_pending_tasks": max_pending_tasks})
            return self._submit(run, steps, return_results, max_pending_tasks)
        except BaseException as exc:
            # Interrupted (Ctrl-C) rather than failed: the driver may live on, so say it can be resumed.
            record["interrupted"] = not isinstance(exc, Exception)
            raise

    # Ray Workflows' management calls, as static methods too (resume: set below, after the function).
    get_status = staticmethod(records.get_status)
    get_output = staticmethod(records.get_output)
    get_metadata = staticmethod(records.get_metadata)
    list_all = staticmethod(records.list_all)
    delete = staticmethod(records.delete)


def resume(workflow_name: str, storage: Any = None, ray_init_args: dict | None = None) -> Any:
    """Finish a workflow from its stored plan, without its script; a SUCCESSFUL one just returns its output."""
    storage = records.resolve_storage(storage)
    record = records._record_or_raise(storage, workflow_name)
    if records.effective_status(record) == records.SUCCESSFUL:
        return records.get_output(workflow_name, storage)
    records.refuse_if_running(storage, workflow_name)
    data = storage.read_meta(workflow_name, records.PLAN_KEY)
    if data is None:
        raise WorkflowNotFoundError(f"raydag: workflow {workflow_name!r} has a record but no stored plan to resume")
    plan = cloudpickle.loads(data)
    ray_init_args = check_init_args(ray_init_args, f"raydag workflow {workflow_name!r}")
    return RayWorkflow._from_plan(plan, storage, ray_init_args).run()


RayWorkflow.resume = staticmethod(resume)


def resume_all(storage: Any = None, include_failed: bool = False, ray_init_args: dict | None = None) -> list:
    """Resume every RESUMABLE workflow (and FAILED ones with ``include_failed``): ``[(name, output), ...]``."""
    storage = records.resolve_storage(storage)
    statuses = {records.RESUMABLE, records.FAILED} if include_failed else {records.RESUMABLE}
    return [
        (name, resume(name, storage, ray_init_args)) for name, _ in records.list_all(storage, status_filter=statuses)
    ]
