"""The ``raydag`` backend: Ray Workflows' durable workflows rebuilt on Ray tasks and actors (see the README).

Every node's task saves its result before it returns, and the plan is stored beside the results, so
:func:`resume` finishes a workflow without its script.
"""

from __future__ import annotations

import contextlib
import copy
import os
import socket
from typing import Any

import cloudpickle
import ray

from functionfuse.base import READ, Run, Workflow, info_of
from functionfuse.errors import InvalidOptionError, SerializationError, WorkerLostError
from functionfuse.nodecall import METHOD, OBJECT, _tag, node_error_name, run_node_call, worker_location
from plugins_builtin.rayback import _reconstructed
from plugins_builtin.raycluster import ensure_ray, validate_remote_args

from . import records
from .errors import WorkflowNotFoundError, WorkflowRunningError
from .plan import Plan, PlannedNode, build_plan

__all__ = ["RayWorkflow", "resume", "resume_all"]


@ray.remote(num_returns=2)
def _node_task(call: Any, *values: Any) -> tuple[Any, dict]:
    """Run one node call (computing and saving, or reading back): ``(value, info)``."""
    value, start, duration = run_node_call(call, values)
    return value, info_of(start, duration, *worker_location())


@ray.remote
class _StatefulNode:
    """The instance of one stateful node; its method calls run here, one at a time, in submission order."""

    def __init__(self, name: str):
        # Ray rebuilt the actor (max_restarts): the instance and the state of its earlier calls are
        # gone, and queued calls may be replayed out of order. Refuse every call: never a wrong value.
        self.lost = _reconstructed() and (
            f"the Ray actor of stateful node {name!r} died and Ray restarted it (max_restarts): its state "
            f"after the earlier calls is lost, so its calls are refused; resume to rebuild the object and "
            f"replay its calls in order"
        )

    def construct(self, call: Any, *values: Any) -> dict:
        self._check()
        self.instance, start, duration = run_node_call(call, values)
        return info_of(start, duration, *worker_location())

    @ray.method(num_returns=2)
    def call(self, call: Any, *values: Any) -> tuple[Any, dict]:
        self._check(call)
        value, start, duration = run_node_call(call, (self.instance, *values))
        return value, info_of(start, duration, *worker_location())

    def snapshot(self) -> Any:
        """The instance as it is now (after every call submitted before this one)."""
        self._check()
        return self.instance

    def _check(self, call: Any = None) -> None:
        if self.lost:
            refused = WorkerLostError(self.lost)
            if call is not None:
                _tag(refused, call.name)  # the call refused; the message names the object
            raise refused


def _check_init_args(ray_init_args: Any, workflow_name: str) -> dict:
    if ray_init_args is None:
        return {}
    if not isinstance(ray_init_args, dict) or not all(isinstance(k, str) for k in ray_init_args):
        raise InvalidOptionError(
            f"raydag workflow {workflow_name!r}: ray_init_args must be a dict of ray.init keyword arguments, "
            f"got {type(ray_init_args).__name__} {ray_init_args!r:.60}"
        )
    return dict(ray_init_args)


def _refuse_if_running(storage: Any, workflow_name: str) -> None:
    record = records.read_record(storage, workflow_name)
    if record is None or record.get("status") != "running" or record.get("interrupted"):
        return
    if record.get("pid") == os.getpid() and record.get("host") == socket.gethostname():
        return  # this process ran it before and was interrupted
    if records.driver_alive(record):
        raise WorkflowRunningError(
            f"raydag: workflow {workflow_name!r} is being run by another driver (pid {record.get('pid')} on "
            f"{record.get('host')}); wait for it, or kill it and resume"
        )


def _save_plan(storage: Any, plan: Plan) -> None:
    try:
        data = cloudpickle.dumps(plan)
    except Exception as exc:
        raise SerializationError(
            f"raydag workflow {plan.workflow_name!r}: its functions and arguments cannot be pickled, so Ray "
            f"cannot ship them and resume could not rebuild them: {type(exc).__name__}: {exc}"
        ) from exc
    storage.save_meta(plan.workflow_name, records.PLAN_KEY, data)


class RayWorkflow(Workflow):
    """Run the workflow on Ray with every node checkpointed (default storage: :func:`records.default_storage`)."""

    backend_name = "raydag"
    query_keys = frozenset({"plugins", "remote_args"})
    _plan: Plan | None = None  # set when resuming a stored plan: the nodes are its PlannedNodes

    def __init__(self, *nodes: Any, workflow_name: str = "workflow", ray_init_args: dict | None = None, **kwargs: Any):
        super().__init__(*nodes, workflow_name=workflow_name, **kwargs)
        self.ray_init_args = _check_init_args(ray_init_args, self.workflow_name)

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
            _refuse_if_running(self.storage, self.workflow_name)  # a driver that took no lock (an older version)
            return self.new_run().envelope(self._submit_and_collect, {})

    def _call(self, run: Run, node: Any, action: str) -> tuple:
        """The node call of ``node`` and its dependencies: the core's, or the stored plan's when resuming."""
        if action == READ or node.__class__ is not PlannedNode:
            return run.node_call(node, action)
        call = copy.copy(node.call)
        if run.saves(node):
            call.storage, call.always_read = self.storage, run.plan.always_read
        call.hooks = run.worker_hooks
        return call, node.deps

    def _submit_and_collect(self, run: Run) -> list:
        steps, computed = [], {}
        for node, action in run.steps():
            call, deps = self._call(run, node, action)
            remote_args = self.attrs(node).get("remote_args")
            if remote_args and node.kind != METHOD:  # a method call runs in its object's actor
                where = f"raydag workflow {self.workflow_name!r}: remote_args of node {node.name!r}"
                validate_remote_args(remote_args, where, actor=node.kind == OBJECT)
            else:
                remote_args = None
            steps.append((node, call, deps, remote_args))
            if action != READ:
                computed[node] = call, deps
        if self._plan is None:
            _save_plan(self.storage, build_plan(self, computed))
        record = records.mark_started(run.context, [leaf.name for leaf in self.leaves])
        try:
            ensure_ray(self.ray_init_args)
            return self._execute(run, steps)
        except BaseException as exc:
            # Interrupted (Ctrl-C) rather than failed: the driver may live on, so say it can be resumed.
            record["interrupted"] = not isinstance(exc, Exception)
            raise

    def _execute(self, run: Run, steps: list) -> list:
        values: dict = {}  # node -> ObjectRef of its value
        actors: dict = {}  # object node -> its actor
        waiting: dict = {}  # info ObjectRef -> (node, computed)

        def value_of(dep: Any) -> Any:
            # A plain function given the object gets it as it is at this point of the run order.
            return values[dep] if dep in values else actors[dep].snapshot.remote()

        try:
            for node, call, deps, remote_args in steps:
                mode = call.mode
                args = [value_of(dep) for dep in (deps[1:] if mode == METHOD else deps)]  # the actor has deps[0]
                if mode != READ:
                    run.started(node)
                if mode == METHOD:
                    values[node], info = actors[node.obj].call.remote(call, *args)
                elif mode == OBJECT:
                    actor = actors[node] = _StatefulNode.options(**remote_args or {}).remote(node.name)
                    info = actor.construct.remote(call, *args)
                else:
                    values[node], info = _node_task.options(**remote_args or {}).remote(call, *args)
                waiting[info] = node, mode != READ
            self._collect(run, waiting)
            return ray.get([value_of(leaf) for leaf in self.leaves])
        finally:
            for actor in actors.values():
                with contextlib.suppress(Exception):
                    ray.kill(actor)

    def _collect(self, run: Run, waiting: dict) -> None:
        pending = list(waiting)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            if pending:  # sweep everything else that is done, so a big graph is not waited on one by one
                more, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
                ready.extend(more)
            for ref in ready:
                node, computed = waiting[ref]
                try:
                    info = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a node failed: stop what has not run, name the node
                    for other in pending:
                        with contextlib.suppress(Exception):  # Ray refuses to cancel actor tasks: harmless
                            ray.cancel(other)
                    cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
                    run.fail(run.find(node_error_name(cause) or node.name, node), cause)
                if computed:
                    run.finished(node, None, info)

    # Ray Workflows' management calls, as static methods too.
    get_status = staticmethod(records.get_status)
    get_output = staticmethod(records.get_output)
    get_metadata = staticmethod(records.get_metadata)
    list_all = staticmethod(records.list_all)
    delete = staticmethod(records.delete)

    @staticmethod
    def resume(workflow_name: str, storage: Any = None, ray_init_args: dict | None = None) -> Any:
        """See :func:`resume`."""
        return resume(workflow_name, storage, ray_init_args)


def resume(workflow_name: str, storage: Any = None, ray_init_args: dict | None = None) -> Any:
    """Finish a workflow from its stored plan, without its script; a SUCCESSFUL one just returns its output."""
    storage = records.resolve_storage(storage)
    record = records._record_or_raise(storage, workflow_name)
    if records.effective_status(record) == records.SUCCESSFUL:
        return records.get_output(workflow_name, storage)
    _refuse_if_running(storage, workflow_name)
    data = storage.read_meta(workflow_name, records.PLAN_KEY)
    if data is None:
        raise WorkflowNotFoundError(f"raydag: workflow {workflow_name!r} has a record but no stored plan to resume")
    plan = cloudpickle.loads(data)
    return RayWorkflow._from_plan(plan, storage, _check_init_args(ray_init_args, workflow_name)).run()


def resume_all(storage: Any = None, include_failed: bool = False, ray_init_args: dict | None = None) -> list:
    """Resume every RESUMABLE workflow (and FAILED ones with ``include_failed``): ``[(name, output), ...]``."""
    storage = records.resolve_storage(storage)
    statuses = {records.RESUMABLE, records.FAILED} if include_failed else {records.RESUMABLE}
    return [
        (name, resume(name, storage, ray_init_args)) for name, _ in records.list_all(storage, status_filter=statuses)
    ]
