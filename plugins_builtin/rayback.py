"""The ``ray`` backend: every node is a Ray task, every stateful node a Ray actor.

The driver submits the whole graph without blocking: a node's arguments are the
ObjectRefs of its parents, so Ray moves results between workers and the driver
fetches only the leaves and a small record per node it waits for (a node whose
children take its value is waited for through them, unless hooks want every node's
record: its task returns the value alone). Each task or actor method
runs the node call (:func:`functionfuse.nodecall.run_node_call`), so node plugins,
``ff_execute_node`` and the storage hooks run in the worker; the driver fires the
run hooks and ``ff_before_node`` / ``ff_after_node`` / ``ff_node_error`` as
results arrive.

>>> wf = RayWorkflow(node, workflow_name="sums", ray_init_args={"address": "auto"})  # doctest: +SKIP
>>> wf.query("^node1$").set_remote_args({"num_cpus": 1})  # doctest: +SKIP
>>> wf.run()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import itertools
import re
import weakref
from typing import Any

from functionfuse.base import READ, Run, Workflow, info_of
from functionfuse.errors import InvalidOptionError
from functionfuse.frontend import Node
from functionfuse.markers import hookimpl
from functionfuse.nodecall import NodeCall, _tag, node_error_name, pack_call, run_node_call, unpack_call, worker_location

from .raycluster import check_init_args, check_resources, ensure_ray, validate_remote_args

__all__ = ["RayWorkflow", "check_resources", "ensure_ray", "validate_remote_args"]


# ---------------------------------------------------------------------------
# the worker side: one Ray task body per function, and the actor of a stateful node
# ---------------------------------------------------------------------------

_node_id: str | None = None


def _where() -> tuple:
    """(worker, host, Ray node id) of this worker process."""
    global _node_id
    if _node_id is None:
        import ray

        _node_id = ray.get_runtime_context().get_node_id()
    worker, host = worker_location()
    return worker, host, _node_id


def _task_body(func: Any, check: bool = False, record: bool = True) -> Any:
    """The function a Ray task runs for nodes calling ``func``; one per function, exported once.

    ``check``: first make sure Ray can serialise the value (a leaf whose value stays in the
    cluster: a failure there would otherwise surface only when someone fetches it).
    ``record``: return ``(run record, value)`` (two returns); ``False``: the value alone, for
    a node no one waits for (its children's tasks take its value; an error reaches them).
    A second return costs Ray about as much as the rest of a trivial task's overhead.
    """

    def body(call: NodeCall | bytes, *values: Any) -> Any:
        call = unpack_call(call)  # shipped as bytes when it could be (pack_call)
        value, start, duration = run_node_call(call, values, func)
        if check:
            import ray

            try:
                ray.put(value)
            except Exception as exc:
                _tag(exc, call.name)
                raise
        return (_record(call, start, duration), value) if record else value

    body.__name__ = getattr(func, "__name__", "node")
    body.__qualname__ = getattr(func, "__qualname__", body.__name__)
    return body


def _record(call: NodeCall, start: float, duration: float) -> tuple:
    worker, host, node_id = _where()
    saved_on = None
    if call.storage is not None:
        from . import raystorage

        saved_on = raystorage.last_saved_on if isinstance(call.storage, raystorage.RayStorage) else node_id
    return start, duration, worker, host, node_id, saved_on, call.attempts


def _reconstructed() -> bool:
    import ray

    try:
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # noqa: BLE001 - an old Ray without the flag: assume a first start
        return False


def _read_body(call: NodeCall) -> Any:
    return run_node_call(call, ())[0]


class StatefulNodeActor:
    """The Ray actor behind a stateful node: it holds the instance and runs its method calls in order."""

    def __init__(self, call: NodeCall, *values: Any):
        self.name, self.instance, self.error, self.lost = call.name, None, None, None
        if _reconstructed():
            # Ray rebuilt the actor from its constructor: the state of the calls made before is gone,
            # and queued calls may be replayed out of order. Refuse every call rather than give a wrong value.
            self.lost = (
                f"the Ray actor of stateful node {call.name!r} died and Ray restarted it (max_restarts): "
                "its state after the earlier calls is lost, so its calls are refused; rerun with storage to "
                "resume, which rebuilds the object and replays its calls in order"
            )
            return
        # A failing constructor is kept and reported by ready(), so the driver gets the original exception.
        try:
            self.instance, start, duration = run_node_call(call, values)
            self.meta = _record(call, start, duration)
        except Exception as exc:  # noqa: BLE001 - reported by ready() and every call
            self.error = exc

    def _check(self, name: str) -> None:
        if self.lost is not None:
            from functionfuse.errors import WorkerLostError

            refused = WorkerLostError(self.lost)
            _tag(refused, name)  # the call refused (the message names the object)
            raise refused
        if self.error is not None:
            raise self.error

    def ready(self) -> tuple:
        self._check(self.name)
        return self.meta

    def call(self, call: NodeCall, *values: Any) -> tuple:
        self._check(call.name)
        value, start, duration = run_node_call(call, (self.instance, *values))
        return _record(call, start, duration), value

    def snapshot(self) -> Any:
        self._check(self.name)
        return self.instance


# ---------------------------------------------------------------------------
# the driver side
# ---------------------------------------------------------------------------

# One ray.remote per function (weakly: a function that goes away takes its remote along), and the helpers.
_remotes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_helpers: dict = {}


def _remote_for(ray: Any, func: Any, check: bool = False, record: bool = True) -> Any:
    try:
        per_func = _remotes.setdefault(func, {})
    except TypeError:  # not weak-referenceable: kept for the process
        per_func = _helpers.setdefault(("func", func), {})
    key = (check, record)
    remote = per_func.get(key)
    if remote is None:
        remote = per_func[key] = ray.remote(max_retries=0, num_returns=2 if record else 1)(
            _task_body(func, check, record))
    return remote


def _probe(value: Any) -> None:
    """Nothing: a task taking a node's value fails with that node's error, if it had one."""


def _helper(ray: Any, name: str) -> Any:
    remote = _helpers.get(name)
    if remote is None:
        if name == "actor":
            remote = ray.remote(max_restarts=0)(StatefulNodeActor)
        else:
            remote = ray.remote(max_retries=0)(_probe if name == "probe" else _read_body)
        _helpers[name] = remote
    return remote


class RayWorkflow(Workflow):
    """Run the workflow on a Ray cluster: nodes as tasks, stateful nodes as actors.

    :param nodes: one or more leaf nodes.
    :param workflow_name: the name results are stored under.
    :param ray_init_args: arguments for ``ray.init()``, used when Ray is not initialised yet
        (``{"address": "auto"}`` joins a running cluster).
    :param kwargs: the :class:`functionfuse.base.Workflow` options (``plugins``, ``disable``, ...).

    >>> wf = RayWorkflow(n3, workflow_name="ops", ray_init_args={"address": "auto"})  # doctest: +SKIP
    >>> wf.query("^node1$").set_remote_args({"num_cpus": 1, "resources": {"custom_resource": 0.1}})  # doctest: +SKIP
    >>> wf.run()  # doctest: +SKIP
    """

    backend_name = "ray"
    query_keys = frozenset({"plugins", "remote_args"})
    #: ``ray.remote`` options every node's task gets before its own remote args (raydag: Ray's retries)
    task_options: dict = {}

    def __init__(self, *nodes: Node, workflow_name: str = "workflow", ray_init_args: dict | None = None, **kwargs: Any):
        super().__init__(*nodes, workflow_name=workflow_name, **kwargs)
        self.ray_init_args = check_init_args(ray_init_args, f"{self.backend_name} workflow {self.workflow_name!r}")

    # -- running ------------------------------------------------------------------
    def run(self, return_results: bool = True, max_pending_tasks: int = 0) -> Any:
        """Submit every node not already stored, wait for them, and return the leaves.

        :param return_results: ``True``: the leaf's value (a list for several leaves);
            ``False``: their ``ray.ObjectRef``\\ s, without fetching the values to the driver
            (the run still waits for every node, so errors and saves are complete).
        :param max_pending_tasks: at most this many nodes in flight at once (``0``: no bound).
        """
        return super().run(return_results=return_results, max_pending_tasks=max_pending_tasks)

    def _check_run_options(self, options: dict) -> None:
        max_pending_tasks = options["max_pending_tasks"]
        if not isinstance(max_pending_tasks, int) or max_pending_tasks < 0:
            raise InvalidOptionError(
                f"RayWorkflow({self.workflow_name!r}).run: max_pending_tasks must be an int >= 0, "
                f"got {max_pending_tasks!r}"
            )
        self._check_cluster(ensure_ray(self.ray_init_args))

    def _check_cluster(self, ray: Any) -> None:
        # What each node asks of the cluster, checked now and again while it waits (_check_in_flight);
        # Ray's default of 1 CPU (an actor: 1 to be placed) counts where num_cpus is not given.
        self._requests = {
            node: (f"node {node.name!r} of workflow {self.workflow_name!r}", attrs["remote_args"], 1)
            for node, attrs in self.node_attrs.items() if attrs.get("remote_args") and node.kind != "method"
        }
        storage_args = getattr(self.storage, "remote_args", None)
        storage = [(f"the ray storage of workflow {self.workflow_name!r}", storage_args, 0)] if storage_args else []
        check_resources(ray, [*self._requests.values(), *storage])

    def _submit_and_collect(self, run: Run, return_results: bool, max_pending_tasks: int) -> list:
        # A function's call goes without its function: the task body exported for that function has it.
        steps = ((node, action, *run.node_call(node, action, with_func=node.kind != "call"))
                 for node, action in run.steps())
        return self._submit(run, steps, return_results, max_pending_tasks)

    def _submit(self, run: Run, steps: Any, return_results: bool, max_pending: int) -> list:
        """Submit ``steps`` (``(node, action, call, deps)`` in run order), collect them, return the leaves."""
        import ray

        attrs = self.node_attrs
        watch_all = bool(max_pending) or run.reports_nodes
        refs: dict = {}  # node -> ObjectRef of its value
        actors: dict = {}  # object node -> actor handle
        watched: dict = {}  # ObjectRef of a node's run record -> node
        pending: list = []
        metas: dict = {}  # node -> its record ref (kept to find which node failed); its value ref if not watched
        plan_compute = None
        remaining = run.consumers()  # node -> consumers not submitted yet: its value ref goes at 0
        keep = set(self.leaves)
        leaves = keep if not return_results else ()

        def snapshot(obj: Node) -> Any:
            # An object handed to a function as a value: its state after the calls submitted so far.
            return actors[obj].snapshot.remote()

        for node, action, call, deps in steps:
            if plan_compute is None:
                plan_compute = run.plan.to_compute
            if action == READ:
                refs[node] = _helper(ray, "read").remote(call)
                continue
            if max_pending and len(pending) >= max_pending:
                pending = self._collect(ray, run, pending, watched, metas)
            kind = node.kind
            run.started(node)
            node_attrs = attrs.get(node) if attrs else None
            # A method call runs on its object's actor, which takes the object node's remote args.
            remote_args = node_attrs.get("remote_args") if node_attrs and kind != "method" else None
            # A method call's dep 0 is its object, which the actor holds.
            values = [refs[d] if d in refs else snapshot(d) for d in (deps[1:] if kind == "method" else deps)]
            watch = watch_all or kind != "call" or not node.children or not _has_computed_child(node, plan_compute)
            try:
                if kind == "call":
                    remote = _remote_for(ray, node.func, check=node in leaves, record=watch)
                    if remote_args or self.task_options:
                        remote = remote.options(**{**self.task_options, **(remote_args or {})})
                    shipped = pack_call(call)
                    if watch:
                        meta, value = remote.remote(shipped, *values)
                    else:
                        meta = value = remote.remote(shipped, *values)  # no record: see _task_body
                elif kind == "method":
                    meta, value = actors[node.obj].call.options(num_returns=2).remote(call, *values)
                else:  # a stateful node: an actor
                    maker = _helper(ray, "actor")
                    if remote_args:
                        maker = maker.options(**remote_args)
                    actor = actors[node] = maker.remote(call, *values)
                    meta, value = actor.ready.remote(), None
            except Exception as exc:  # arguments Ray cannot serialise, bad options, ...
                run.fail(node, exc)
            if value is not None:
                refs[node] = value
            metas[node] = meta
            for parent in node.parents:
                # the submitted task holds its own reference: the driver's can go once every consumer has one
                left = remaining.get(parent, 0) - 1
                remaining[parent] = left
                if left <= 0 and parent not in keep and parent.kind != "object":
                    refs.pop(parent, None)
            if watch:
                watched[meta] = node
                pending.append(meta)

        while pending:
            pending = self._collect(ray, run, pending, watched, metas)
        leaf_refs = []
        for leaf in self.leaves:
            ref = refs.get(leaf)
            if ref is None and leaf.kind == "object":
                ref = snapshot(leaf) if leaf in actors else None
            leaf_refs.append(ref)
        if not return_results:
            return leaf_refs
        try:
            return ray.get(leaf_refs)
        except Exception as exc:  # noqa: BLE001 - a leaf that Ray cannot bring back names its node
            for leaf, ref in zip(self.leaves, leaf_refs):
                try:
                    ray.get(ref)
                except Exception as leaf_exc:  # noqa: BLE001
                    origin = node_error_name(getattr(leaf_exc, "cause", None) or leaf_exc)
                    run.fail(run.find(origin, leaf), _original(leaf_exc))
            raise exc

    def _collect(self, ray: Any, run: Run, pending: list, watched: dict, metas: dict) -> list:
        """Wait for at least one watched result; fire hooks for what finished; raise on the first failure.

        Every few seconds without progress, the resources of what is in flight are checked again:
        a task whose resource left the cluster (a node removed, the storage's disk node gone) would
        wait for ever; it fails naming the node and the resource instead.
        """
        while True:
            ready, pending = ray.wait(pending, num_returns=1, timeout=_STALL_CHECK_SECONDS)
            if ready:
                break
            self._check_in_flight(ray, run, pending, watched)
        if pending:
            more, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
            ready.extend(more)
        try:
            records = ray.get(ready)
        except Exception:  # noqa: BLE001 - some node failed: find which below
            records = None
        if records is None:
            self._raise_first_failure(ray, run, ready, watched, metas)
        if run.reports_nodes:
            for ref, record in zip(ready, records):
                run.finished(watched[ref], None, _info(record))
        return pending

    def _check_in_flight(self, ray: Any, run: Run, pending: list, watched: dict) -> None:
        in_flight = [watched[ref] for ref in pending if ref in watched]
        checks = [(node, self._requests[node]) for node in in_flight if node in self._requests]
        storage_args = getattr(self.storage, "remote_args", None)
        if storage_args is not None and in_flight:
            what = f"the ray storage of workflow {self.workflow_name!r} ({self.storage.describe()})"
            checks.append((in_flight[0], (what, storage_args, 0)))
        for node, request in checks:
            try:
                check_resources(ray, [request], what_left=" any more (the node that had it left the cluster)")
            except InvalidOptionError as exc:
                run.fail(node, exc, {}, f"it can never be scheduled: {exc}")

    def _raise_first_failure(self, ray: Any, run: Run, ready: list, watched: dict, metas: dict) -> None:
        import ray.exceptions as rex

        position = {n: i for i, n in enumerate(self.nodes)}
        node, exc = _first_failure(ray, sorted(((watched[ref], ref) for ref in ready), key=lambda w: position[w[0]]))
        cause = getattr(exc, "cause", None)
        origin = node_error_name(cause) if cause is not None else None
        if origin is None and _INPUT_FAILED in _plain_text(exc):
            # The node's inputs could not be brought to it: a parent's value Ray could not serialise.
            found = _producer(node, _plain_text(exc))
            node = found if found is not None else node
        if origin is not None and origin != node.name:
            # A downstream node reported the error of the node that really raised: name that one.
            node = run.find(origin, node)
        elif cause is None or isinstance(exc, (rex.WorkerCrashedError, rex.RayActorError)):
            # No node name travelled with the error (a worker died): the earliest failed node in run order.
            earlier = list(itertools.takewhile(lambda item: item[0] is not node, metas.items()))  # in run order
            bare = {n for n, ref in earlier if ref not in watched}  # their value refs: no record to wait for
            node, exc = _first_failure(ray, earlier, bare=bare) or (node, exc)
        if node.kind == "object" and origin is None and isinstance(exc, rex.RayActorError):
            # The actor died; the reply of its creation can be lost with it. Name the call it was running.
            calls = [(call, meta) for call, meta in metas.items() if call.kind == "method" and call.obj is node]
            node, exc = _first_failure(ray, calls, timeout=5) or (node, exc)
        original = _original(exc)
        detail = ""
        if isinstance(original, rex.WorkerCrashedError):
            detail = "the Ray worker process running it died (WorkerCrashedError); nothing was returned"
        elif isinstance(original, rex.RayActorError):
            detail = f"the Ray actor running it died ({type(original).__name__}): {original}"
        run.fail(node, original, {}, detail)


_STALL_CHECK_SECONDS = 5.0
_INPUT_FAILED = "input arguments for this task could not be computed"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _plain_text(exc: BaseException) -> str:
    return _ANSI.sub("", str(exc))


def _producer(node: Node, text: str) -> Node | None:
    """The ancestor of ``node`` whose Ray task Ray's error names after "could not be computed"."""
    found = re.search(r"ray::([\w.<>]+)\(", text.split(_INPUT_FAILED, 1)[-1])
    if found is None:
        return None
    task = found.group(1).rsplit(".", 1)[-1]
    seen: set = set()
    stack = list(node.parents)
    while stack:
        parent = stack.pop(0)
        if parent in seen:
            continue
        seen.add(parent)
        if getattr(parent.func, "__name__", None) == task or parent.kind != "call" and task in ("call", "ready"):
            return parent
        stack.extend(parent.parents)
    return None


def _first_failure(ray: Any, watched: list, timeout: float = 0, bare: Any = ()) -> tuple | None:
    """The first ``(node, error)`` of ``watched`` (``(node, record ref)`` pairs) done within ``timeout``, or None.

    A node in ``bare`` has its value ref there, not a record's: it is not fetched (it may be
    large) but handed to a task that does nothing, which fails with the node's error if it had
    one. A value lost with its Ray node is no error of that node.
    """
    if not watched:
        return None
    import ray.exceptions as rex

    done = set(ray.wait([ref for _, ref in watched], num_returns=len(watched), timeout=timeout, fetch_local=False)[0])
    probes = {node: _helper(ray, "probe").remote(ref) for node, ref in watched if node in bare and ref in done}
    for node, ref in watched:
        if ref in done:
            try:
                ray.get(probes.get(node, ref))
            except Exception as exc:  # noqa: BLE001 - the first failure in their order
                if node in bare and isinstance(exc, rex.ObjectLostError):
                    continue  # its value went with its Ray node: not an error of its own
                return node, exc
    return None


def _has_computed_child(node: Node, to_compute: Any) -> bool:
    if to_compute is None:
        return bool(node.children)
    return any(child in to_compute for child in node.children)


def _original(exc: BaseException) -> BaseException:
    """The user's exception inside a Ray error, where Ray kept it."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        with contextlib.suppress(AttributeError):  # the node's name tag has done its work
            del cause._ff_node
        return cause
    return exc


def _info(record: tuple) -> dict:
    start, duration, worker, host, node_id, saved_on, attempts = record
    info = info_of(start, duration, worker, host, node_id=node_id, saved_on=saved_on)
    if attempts is not None:
        info["attempts"] = attempts  # a node with retries or a time limit
    return info


# ---------------------------------------------------------------------------
# hooks
# ---------------------------------------------------------------------------


@hookimpl
def ff_backends(register: Any) -> None:
    register("ray", "plugins_builtin.rayback:RayWorkflow", extra="ray")


@hookimpl
def ff_query_assign(nodes: list, key: str, value: Any, backend: Any) -> bool | None:
    if key != "remote_args" or getattr(backend, "backend_name", None) != "ray":
        return None
    query = f"query on workflow {getattr(backend, 'workflow_name', '?')!r}"
    if not isinstance(value, dict):
        validate_remote_args(value, query)
    for node in nodes:
        where = f"remote args of node {node.name!r} ({query})"
        validate_remote_args(value, where, actor=node.kind == "object")
    return True
