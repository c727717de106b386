"""The ``raydag`` backend: durable workflows on Ray core tasks and actors.

What Ray Workflows gave (it was removed from Ray after 2.47), rebuilt on
``ray.remote`` and functionfuse storage:

* every node is checkpointed: the Ray task that computes a node saves its
  result before returning, so a driver that dies loses nothing finished;
* the workflow's plan (functions and argument templates) and a status record
  are stored beside the results, so :func:`resume` finishes a workflow
  without the script that built it;
* status, output and listing by workflow name (:mod:`functionfuse_raydag.records`).

The driver submits the whole graph at once, passing ObjectRefs between tasks,
then waits for the small per-node info objects, so values never pass through
the driver except the leaves'. A stateful node is one actor; its method calls
run in submission order, which is the run order.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Any

import cloudpickle
import ray
from ray.exceptions import RayError, RayTaskError

from functionfuse.errors import InvalidOptionError, NodeExecutionError, SerializationError
from functionfuse.workflow import Workflow
from functionfuse.graph import plan_resume

from . import records
from .errors import WorkflowRunningError
from .plan import Plan, TaskSpec, build_plan, fill_arguments

__all__ = ["RayWorkflow", "resume", "resume_all"]

_HOST = socket.gethostname()


# ---------------------------------------------------------------------------
# worker side: what runs in Ray tasks and actors
# ---------------------------------------------------------------------------


def _info(start: float, began: float) -> dict:
    return {"start": start, "duration": time.perf_counter() - began, "worker": f"pid {os.getpid()}", "host": _HOST}


def _tag(exc: BaseException, name: str) -> None:
    # Ray hands the driver this very exception as RayTaskError.cause (pickled with its __dict__),
    # so the driver can name the node that failed even when it learns it through a downstream task.
    if getattr(exc, "_ff_node", None) is None:
        try:
            exc._ff_node = name  # type: ignore[attr-defined]
        except AttributeError:
            pass


def _compute(ctx: tuple, payload: tuple, save: bool, values: tuple, instance: Any = None) -> tuple[Any, dict]:
    storage, workflow_name = ctx
    name, func, args, kwargs, prepared = payload
    start, began = time.time(), time.perf_counter()
    try:
        for call in prepared:
            call()
        args, kwargs = fill_arguments(args, kwargs, values)
        if instance is not None:
            args = (instance, *args)
        value = func(*args, **kwargs) if kwargs else func(*args)
        if save:
            storage.save(workflow_name, name, value)
            if storage.always_read:
                value = storage.read_task(workflow_name, name)
    except Exception as exc:
        _tag(exc, name)
        raise
    return value, _info(start, began)


@ray.remote(num_returns=2)
def _compute_task(ctx: tuple, payload: tuple, save: bool, *values: Any) -> tuple[Any, dict]:
    """Compute one function node and save its result: ``(value, info)``."""
    return _compute(ctx, payload, save, values)


@ray.remote(num_returns=2)
def _read_task(ctx: tuple, name: str) -> tuple[Any, dict]:
    """Read one stored result back: ``(value, info)``."""
    storage, workflow_name = ctx
    start, began = time.time(), time.perf_counter()
    try:
        value = storage.read_task(workflow_name, name)
    except Exception as exc:
        _tag(exc, name)
        raise
    return value, _info(start, began)


@ray.remote
class _StatefulNode:
    """The instance of one stateful node; its method calls run here, one at a time, in submission order."""

    def __init__(self) -> None:
        self.instance: Any = None

    def construct(self, ctx: tuple, payload: tuple, *values: Any) -> dict:
        name, func, args, kwargs, prepared = payload
        start, began = time.time(), time.perf_counter()
        try:
            for call in prepared:
                call()
            args, kwargs = fill_arguments(args, kwargs, values)
            self.instance = func(*args, **kwargs)
        except Exception as exc:
            _tag(exc, name)
            raise
        return _info(start, began)

    @ray.method(num_returns=2)
    def call(self, ctx: tuple, payload: tuple, save: bool, *values: Any) -> tuple[Any, dict]:
        return _compute(ctx, payload, save, values, self.instance)

    def snapshot(self) -> Any:
        """The instance as it is now (after every call submitted before this one)."""
        return self.instance


# ---------------------------------------------------------------------------
# driver side
# ---------------------------------------------------------------------------


def _ensure_ray(ray_init_args: dict) -> None:
    if not ray.is_initialized():
        ray.init(**ray_init_args)


def _check_init_args(ray_init_args: Any, workflow_name: str) -> dict:
    if ray_init_args is None:
        return {}
    if not isinstance(ray_init_args, dict) or not all(isinstance(k, str) for k in ray_init_args):
        raise InvalidOptionError(
            f"raydag workflow {workflow_name!r}: ray_init_args must be a dict of ray.init keyword arguments, "
            f"got {type(ray_init_args).__name__} {ray_init_args!r:.60}"
        )
    return dict(ray_init_args)


class _Execution:
    """One run of a plan on the Ray cluster: submit everything, then collect the per-node infos."""

    def __init__(self, plan: Plan, storage: Any, workflow_name: str, hooks: Any = None, nodes_of: dict | None = None):
        self.plan = plan
        self.storage = storage
        self.workflow_name = workflow_name
        self.hooks = hooks
        self.nodes_of = nodes_of or {}
        self.values: dict[TaskSpec, Any] = {}  # spec -> ObjectRef of its value
        self.actors: dict[TaskSpec, Any] = {}
        self.waiting: dict[Any, TaskSpec] = {}  # info ObjectRef -> spec
        self.computed: set[TaskSpec] = set()
        self._options: dict[tuple, Any] = {}

    # -- submission ---------------------------------------------------------
    def _with_options(self, remote: Any, spec: TaskSpec) -> Any:
        if not spec.remote_args:
            return remote
        try:
            key = (id(remote), tuple(sorted(spec.remote_args.items())))
            hash(key)
        except TypeError:
            key = None
        if key is not None and key in self._options:
            return self._options[key]
        if "num_returns" in spec.remote_args:
            raise InvalidOptionError(
                f"raydag workflow {self.workflow_name!r}: remote_args of node {spec.name!r} may not set "
                "num_returns: the backend returns each node's value and run info itself"
            )
        try:
            configured = remote.options(**spec.remote_args)
        except (ValueError, TypeError) as exc:
            raise InvalidOptionError(
                f"raydag workflow {self.workflow_name!r}: remote_args {spec.remote_args!r} of node {spec.name!r} "
                f"are not valid Ray options: {exc}"
            ) from exc
        if key is not None:
            self._options[key] = configured
        return configured

    def _value_ref(self, dep: TaskSpec) -> Any:
        if dep.kind == "object":
            # A plain function given the object gets it as it is at this point of the run order.
            return self.actors[dep].snapshot.remote()
        return self.values[dep]

    def submit(self) -> None:
        storage = self.storage
        stored = set(storage.list_tasks(self.workflow_name))  # one listing, not one check per node
        to_compute, to_read = plan_resume(self.plan.specs, self.plan.leaves, stored)
        ctx = ray.put((storage, self.workflow_name))
        hooks = self.hooks
        context = hooks.context if hooks is not None else None
        for spec in self.plan.specs:
            if spec not in to_compute:
                if spec in to_read:
                    value_ref, info_ref = _read_task.remote(ctx, spec.name)
                    self.values[spec] = value_ref
                    self.waiting[info_ref] = spec
                if hooks is not None and hooks.node_restored is not None:
                    hooks.node_restored(node=self.nodes_of[spec], context=context)
                continue
            if hooks is not None and hooks.before_node is not None:
                hooks.before_node(node=self.nodes_of[spec], context=context)
            values = [self._value_ref(dep) for dep in spec.deps]
            save = spec.kind != "object" and spec.name not in stored
            if spec.kind == "call":
                value_ref, info_ref = self._with_options(_compute_task, spec).remote(ctx, spec.payload, save, *values)
                self.values[spec] = value_ref
            elif spec.kind == "object":
                actor = self.actors[spec] = self._with_options(_StatefulNode, spec).remote()
                info_ref = actor.construct.remote(ctx, spec.payload, *values)
            else:
                value_ref, info_ref = self.actors[spec.obj].call.remote(ctx, spec.payload, save, *values)
                self.values[spec] = value_ref
            self.waiting[info_ref] = spec
            self.computed.add(spec)

    # -- collection -----------------------------------------------------------
    def collect(self) -> None:
        pending = list(self.waiting)
        hooks = self.hooks
        after_node = hooks.after_node if hooks is not None else None
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            if pending:  # sweep everything else that is done, so a big graph is not waited on one by one
                more, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
                ready.extend(more)
            for ref in ready:
                spec = self.waiting[ref]
                try:
                    info = ray.get(ref)
                except RayError as exc:
                    self._cancel(pending)
                    error = self._failure(spec, exc)
                    raise error from error.__cause__
                if after_node is not None and spec in self.computed:
                    after_node(node=self.nodes_of[spec], result=None, context=hooks.context, info=info)

    def _failure(self, spec: TaskSpec, exc: RayError) -> NodeExecutionError:
        cause: BaseException = exc
        if isinstance(exc, RayTaskError) and isinstance(exc.cause, BaseException):
            cause = exc.cause
        name = getattr(cause, "_ff_node", None) or spec.name
        failed = next((s for s in self.plan.specs if s.name == name), spec)
        hooks = self.hooks
        if hooks is not None and hooks.node_error is not None:
            hooks.node_error(node=self.nodes_of[failed], error=cause, context=hooks.context, info={})
        error = NodeExecutionError(name, self.workflow_name, cause)
        error.__cause__ = cause
        return error

    def _cancel(self, pending: list) -> None:
        # Stop what has not run yet; results finished before the failure stay saved.
        for ref in pending:
            # Ray may refuse to cancel some tasks (actor tasks, finished ones): harmless here.
            with contextlib.suppress(RayError, ValueError, TypeError):
                ray.cancel(ref)
        self.release()

    def release(self) -> None:
        for actor in self.actors.values():
            with contextlib.suppress(RayError, ValueError):
                ray.kill(actor)
        self.actors.clear()

    def leaf_values(self) -> list:
        refs = [self._value_ref(leaf) for leaf in self.plan.leaves]
        try:
            return ray.get(refs)
        finally:
            self.release()

    def run(self) -> list:
        try:
            self.submit()
            self.collect()
            return self.leaf_values()
        except BaseException:
            self.release()
            raise


def _drive(
    plan: Plan,
    storage: Any,
    workflow_name: str,
    ray_init_args: dict,
    run_id: str,
    hooks: Any = None,
    nodes_of: dict | None = None,
) -> list:
    """Run a plan with its status record kept: RUNNING, then SUCCESSFUL or FAILED."""
    record = records.start_record(storage, workflow_name, run_id, [s.name for s in plan.leaves], len(plan.specs))
    try:
        _ensure_ray(ray_init_args)
        values = _Execution(plan, storage, workflow_name, hooks, nodes_of).run()
    except Exception as exc:
        records.finish_record(storage, workflow_name, record, exc)
        raise
    except BaseException:
        # Interrupted (Ctrl-C) rather than failed: the driver may live on, so say it can be resumed.
        records.write_record(storage, workflow_name, dict(record, status=records.RESUMABLE, ended=time.time()))
        raise
    records.finish_record(storage, workflow_name, record, None)
    return values


def _refuse_if_running(storage: Any, workflow_name: str) -> None:
    record = records.read_record(storage, workflow_name)
    if record is None or record.get("status") != records.RUNNING:
        return
    if record.get("pid") == os.getpid() and record.get("host") == _HOST:
        return  # this process ran it before and was interrupted
    if records.driver_alive(record):
        raise WorkflowRunningError(
            f"raydag: workflow {workflow_name!r} is being run by another driver (pid {record.get('pid')} on "
            f"{record.get('host')}); wait for it, or kill it and resume"
        )


def _save_plan(storage: Any, workflow_name: str, plan: Plan) -> None:
    try:
        data = cloudpickle.dumps(plan)
    except Exception as exc:
        raise SerializationError(
            f"raydag workflow {workflow_name!r}: its functions and arguments cannot be pickled, so Ray cannot "
            f"ship them and resume could not rebuild them: {type(exc).__name__}: {exc}"
        ) from exc
    storage.save_meta(workflow_name, records.PLAN_KEY, data)


class RayWorkflow(Workflow):
    """Run the workflow on Ray with every node checkpointed, so a crashed run can be resumed.

    >>> wf = RayWorkflow(node, workflow_name="ops")  # doctest: +SKIP
    >>> wf.set_storage("file:/data/ff")              # doctest: +SKIP
    >>> wf.run()          # saves each node as it finishes     # doctest: +SKIP
    >>> get_status("ops", "file:/data/ff")           # 'SUCCESSFUL'  # doctest: +SKIP

    Without :meth:`set_storage` results go to ``$FUNCTIONFUSE_RAYDAG_STORAGE`` or ``~/.functionfuse/raydag``.

    :param nodes: the leaf nodes.
    :param workflow_name: the name the workflow is stored, resumed and listed under.
    :param ray_init_args: keyword arguments of ``ray.init``, used only when Ray is not initialised yet.
    """

    backend_name = "raydag"
    query_keys = frozenset({"plugins", "remote_args"})

    def __init__(self, *nodes: Any, workflow_name: str = "workflow", ray_init_args: dict | None = None, **kwargs: Any):
        super().__init__(*nodes, workflow_name=workflow_name, **kwargs)
        self.ray_init_args = _check_init_args(ray_init_args, self.workflow_name)

    def run(self) -> Any:
        """Run every node not already stored; return the leaf's value, or a list for several leaves.

        :raises NodeExecutionError: naming the node that failed (its exception is ``__cause__``);
            the workflow's status becomes FAILED and finished nodes stay saved.
        :raises WorkflowRunningError: when another live driver is running this workflow.
        """
        if self.storage is None:
            self.storage = records.default_storage()
        storage = self.storage
        context, hooks = self.new_run()
        _refuse_if_running(storage, self.workflow_name)
        storage.new_workflow(self.workflow_name)
        hooks.before_run()
        error: BaseException | None = None
        try:
            plan, nodes_of = build_plan(self, hooks.prepare)
            _save_plan(storage, self.workflow_name, plan)
            values = _drive(plan, storage, self.workflow_name, self.ray_init_args, context.run_id, hooks, nodes_of)
            return self._leaf_result(values)
        except BaseException as exc:
            error = exc
            raise
        finally:
            hooks.after_run(error)

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
    """Finish a workflow from its stored plan, computing only the nodes whose results are not saved.

    Needs no script: the plan stored by the first run holds the functions and arguments.
    A SUCCESSFUL workflow is not run again; its output is returned.

    :param storage: the storage it was run with (object, path or URL); default: the raydag default storage.
    :raises WorkflowNotFoundError: when the workflow was never run on that storage.
    :raises WorkflowRunningError: when its driver is still alive.
    """
    storage = records.resolve_storage(storage)
    record = records._record_or_raise(storage, workflow_name)
    if records.effective_status(record) == records.SUCCESSFUL:
        return records.get_output(workflow_name, storage)
    _refuse_if_running(storage, workflow_name)
    data = storage.read_meta(workflow_name, records.PLAN_KEY)
    if data is None:
        from .errors import WorkflowNotFoundError

        raise WorkflowNotFoundError(f"raydag: workflow {workflow_name!r} has a status but no stored plan to resume")
    plan = cloudpickle.loads(data)
    run_id = os.urandom(6).hex()
    values = _drive(plan, storage, workflow_name, _check_init_args(ray_init_args, workflow_name), run_id)
    return Workflow._leaf_result(values)


def resume_all(storage: Any = None, include_failed: bool = False, ray_init_args: dict | None = None) -> list:
    """Resume every RESUMABLE workflow (and FAILED ones with ``include_failed``): ``[(name, output), ...]``.

    A workflow that fails again raises, as :func:`resume` does.
    """
    storage = records.resolve_storage(storage)
    statuses = {records.RESUMABLE, records.FAILED} if include_failed else {records.RESUMABLE}
    return [
        (name, resume(name, storage, ray_init_args)) for name, _ in records.list_all(storage, status_filter=statuses)
    ]
