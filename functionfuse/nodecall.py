"""One node call: the picklable description of running one node, and the one function that runs it.

Every backend turns the nodes it has to run into :class:`NodeCall` objects
(:meth:`functionfuse.run.Run.node_call`) and hands each one to
:func:`run_node_call` in whatever process runs the node: in-process on the
local backend, in a Ray task or actor, a Dask worker, a Prefect task, a
Kubeflow component. That function is the only place that knows what happens
to a node: run the node plugins' callables, put the parents' values into the
argument template, call the function through ``ff_execute_node``, save
through ``ff_storage_save``, read back when ``always_read`` asks, time it,
and tag a failure with the node's name. Reading a stored result instead of
computing it is a node call too (:data:`READ`).

A plugin manager does not pickle, so a call carries a :class:`WorkerHooks`:
the description of the run's plugin set (plugin names, entry points, plugin
objects that pickle) and which hooks a non-built-in plugin implements. A
worker rebuilds the manager from it once per process; when only built-ins
implement the hooks, the call carries ``None`` and the worker calls the
built-in behaviour directly.

Placeholders: in a call's argument template, the value of the i-th
dependency (with ``node[k]`` keys applied) is ``Ref(i, keys)``, and the
worker passes the tuple of dependency values; the local backend passes its
results dict and keeps the node's own arguments as the template.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import pickle
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from .context import COMPUTED
from .frontend import Ref, resolve_args

if TYPE_CHECKING:  # pragma: no cover
    from .frontend import Node

__all__ = [
    "CALL",
    "OBJECT",
    "METHOD",
    "READ",
    "NodeCall",
    "RetryPolicy",
    "Template",
    "WorkerContext",
    "WorkerHooks",
    "run_node_call",
    "pack_call",
    "unpack_call",
    "run_plain_in_process",
    "run_stored_in_process",
    "release_parents",
    "make_template",
    "prepare_callables",
    "node_error_name",
]

#: what a node call does: call a function, build a stateful object, call its method, or read a stored result
CALL = "call"
OBJECT = "object"
METHOD = "method"
READ = "read"


class Template:
    """A node's arguments with every dependency replaced by ``Ref(index, keys)``.

    It quacks like a node for :func:`functionfuse.frontend.resolve_args`
    (``args``, ``kwargs``, and ``slots``, which also tells the mode as in
    :attr:`Node.argmode <functionfuse.frontend.Node.argmode>`), which rebuilds the
    arguments from the tuple of dependency values, at any nesting depth.
    """

    __slots__ = ("args", "kwargs", "slots")

    def __init__(self, args: Any, kwargs: dict, slots: tuple | None):
        self.args = args
        self.kwargs = kwargs
        self.slots = slots

    def __getstate__(self) -> tuple:
        return (self.args, self.kwargs, self.slots)

    def __setstate__(self, state: tuple) -> None:
        self.args, self.kwargs, self.slots = state


class _Placeholders(dict):
    """Node -> ``Ref(index, ())``, numbering each dependency on first use."""

    __slots__ = ("order",)

    def __init__(self, seed: dict | None = None):
        super().__init__(seed or {})
        self.order: list = []

    def __missing__(self, node: Node) -> Ref:
        ref = self[node] = Ref(len(self), ())
        self.order.append(node)
        return ref


def make_template(node: Node) -> tuple[Template | None, list]:
    """The node's argument template and its dependencies in placeholder order.

    A method call's dependency 0 is its object (the instance: ``self``).
    ``None`` as the template means: the dependency values are the positional
    arguments, in order, and there is nothing else (the short path).
    """
    slots = node.slots  # the argument mode (Node.argmode): () none, positions top-level, None nested
    if node.kind == METHOD:
        placeholders = _Placeholders({node.obj: Ref(0, ())})
        placeholders.order.append(node.obj)
    else:
        if slots == ():  # no dependency: the arguments as given
            return Template(node.args, node.kwargs, slots), []
        if slots is not None and not node.kwargs and len(slots) == len(node.args):
            if all(a.__class__ is not Ref for a in node.args):
                # every argument is a whole dependency: the values are the arguments
                return None, list(node.args)
        placeholders = _Placeholders()
    args, kwargs = resolve_args(node, placeholders)
    return Template(tuple(args), kwargs, slots), placeholders.order


class WorkerContext:
    """What hooks get as ``context`` in a worker: the run's names, no manager, no graph.

    :ivar workflow_name: the workflow's name.
    :ivar run_id: the run's id.
    :ivar backend_name: the backend running it.
    :ivar storage: the run's storage, or ``None``.
    :ivar state: a dict for plugins' per-process state.
    """

    __slots__ = ("workflow_name", "run_id", "backend_name", "storage", "state")

    def __init__(self, workflow_name: str, run_id: str, backend_name: str, storage: Any):
        self.workflow_name = workflow_name
        self.run_id = run_id
        self.backend_name = backend_name
        self.storage = storage
        self.state: dict = {}

    def __getstate__(self) -> tuple:
        return (self.workflow_name, self.run_id, self.backend_name, self.storage)

    def __setstate__(self, state: tuple) -> None:
        self.workflow_name, self.run_id, self.backend_name, self.storage = state
        self.state = {}


class WorkerHooks:
    """The per-node hooks a worker must call, and how to rebuild the plugin manager that has them.

    :ivar plugins: the run's plugin set as :func:`functionfuse.manager.get_plugins` takes it
        (module names and plugin objects that pickle), with ``disable`` and ``trace``.
    :ivar execute: a plugin other than the built-in implements ``ff_execute_node``.
    :ivar save: likewise ``ff_storage_save``.
    :ivar read: likewise ``ff_storage_read``.
    :ivar context: the :class:`WorkerContext` hooks get (or the run's own context in-process).
    """

    __slots__ = ("plugins", "disable", "trace", "execute", "save", "read", "context", "_host")

    def __init__(self, plugins: tuple, disable: tuple, trace: Any, execute: bool, save: bool, read: bool,
                 context: Any, host: Any = None):
        self.plugins = plugins
        self.disable = disable
        self.trace = trace
        self.execute = execute
        self.save = save
        self.read = read
        self.context = context
        self._host = host  # the live façade in the driver's process; rebuilt after unpickling

    def __getstate__(self) -> tuple:
        context = self.context
        if not isinstance(context, WorkerContext):
            context = WorkerContext(context.workflow_name, context.run_id, context.backend_name, context.storage)
        return (self.plugins, self.disable, self.trace, self.execute, self.save, self.read, context)

    def __setstate__(self, state: tuple) -> None:
        self.plugins, self.disable, self.trace, self.execute, self.save, self.read, self.context = state
        self._host = None

    def host(self) -> Any:
        """The plugin façade of this run in this process (rebuilt once per process in a worker)."""
        host = self._host
        if host is None:
            from .manager import get_plugins

            host = self._host = get_plugins(self.plugins, self.disable, self.trace)
        return host


class NodeCall:
    """Everything needed to run one node anywhere; picklable when its parts are.

    :ivar name: the node's name (its storage key).
    :ivar workflow_name: the workflow's name.
    :ivar mode: :data:`CALL`, :data:`OBJECT`, :data:`METHOD` or :data:`READ`.
    :ivar func: the function, class (for an object) or unbound method; ``None`` when the
        backend supplies it (a Ray task exported per function).
    :ivar template: the argument template (:class:`Template`, the node itself in-process,
        or ``None``: the values are the positional arguments).
    :ivar callables: the worker callables of ``ff_prepare_node`` (node plugins).
    :ivar storage: where to save the result, or ``None`` (not saved).
    :ivar always_read: hand on the stored copy of the result instead of the computed one.
    :ivar hooks: the :class:`WorkerHooks` of the run, or ``None`` (only built-ins).
    :ivar node: the :class:`~functionfuse.frontend.Node` in the driver's process (not pickled).
    :ivar fingerprint: the node call's fingerprint, stored with the result, or ``None``.
    :ivar retries: the node's :class:`RetryPolicy` (``query(...).set_retries``), or ``None``.
    :ivar timeout: the node's time limit per attempt in seconds (``query(...).set_timeout``), or ``None``.
    :ivar attempts: how many attempts the last :func:`run_node_call` of this object took, when it
        had a retry policy or a time limit (``None`` otherwise; not pickled).
    """

    __slots__ = ("name", "workflow_name", "mode", "func", "template", "callables", "storage", "always_read",
                 "hooks", "node", "fingerprint", "retries", "timeout", "attempts", "replaces", "kill_on_timeout")

    def __init__(self, name: str, workflow_name: str, mode: str, func: Any, template: Any, callables: Any = (),
                 storage: Any = None, always_read: bool = False, hooks: WorkerHooks | None = None,
                 node: Any = None, fingerprint: str | None = None, retries: RetryPolicy | None = None,
                 timeout: float | None = None):
        self.retries = retries
        self.timeout = timeout
        self.attempts: int | None = None
        #: run each attempt in a child process, killed at the time limit (``set_timeout(s, kill=True)``)
        self.kill_on_timeout = False
        self.name = name
        self.workflow_name = workflow_name
        self.mode = mode
        self.func = func
        self.template = template
        self.callables = callables
        self.storage = storage
        self.always_read = always_read
        self.hooks = hooks
        self.node = node
        self.fingerprint = fingerprint
        #: the fingerprint stored under this name before (its marker is replaced), or ``None``
        self.replaces: str | None = None

    @property
    def kind(self) -> str:
        """The node kind, as :attr:`Node.kind` says it (``read`` for a read-back)."""
        return self.mode

    def __getstate__(self) -> tuple:
        return (self.name, self.workflow_name, self.mode, self.func, self.template, self.callables, self.storage,
                self.always_read, self.hooks, self.fingerprint, self.retries, self.timeout, self.replaces,
                self.kill_on_timeout)

    def __setstate__(self, state: tuple) -> None:
        (self.name, self.workflow_name, self.mode, self.func, self.template, self.callables, self.storage,
         self.always_read, self.hooks, self.fingerprint, self.retries, self.timeout, self.replaces,
         self.kill_on_timeout) = state
        self.node = None
        self.attempts = None

    def __repr__(self) -> str:
        return f"<NodeCall {self.mode} {self.name!r} of {self.workflow_name!r}>"


class RetryPolicy:
    """How a node call is tried again when it raises (``query(pattern).set_retries(...)``).

    Attempt ``k + 1`` (after ``k`` failures) waits ``delay * backoff ** (k - 1)`` seconds first.
    Only the call is retried (node plugins' callables and the function), never the save.

    :param retries: how many times to try again after the first attempt (``0``: never).
    :param delay: seconds to wait before the first retry.
    :param backoff: factor the wait grows by per retry.
    :param on: the exception class, or tuple of classes, that are retried; others fail at once.

    >>> RetryPolicy(3, delay=1.0, backoff=2.0).pauses()  # before attempts 2, 3, 4
    [1.0, 2.0, 4.0]
    """

    __slots__ = ("retries", "delay", "backoff", "on")

    def __init__(self, retries: int, delay: float = 0.0, backoff: float = 1.0,
                 on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,)):
        from .errors import InvalidOptionError

        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InvalidOptionError(f"set_retries: retries must be an int >= 0, got {retries!r:.60}")
        for option, number in (("delay", delay), ("backoff", backoff)):
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) \
                    or number < 0:
                raise InvalidOptionError(f"set_retries: {option} must be a finite number >= 0, got {number!r:.60}")
        if isinstance(on, type):
            on = (on,)
        if not isinstance(on, tuple) or not on or not all(isinstance(c, type) and issubclass(c, BaseException)
                                                           for c in on):
            raise InvalidOptionError(
                f"set_retries: on must be an exception class or a tuple of them, got {on!r:.80}"
            )
        self.retries = retries
        self.delay = float(delay)
        self.backoff = float(backoff)
        self.on = on

    @classmethod
    def of(cls, value: Any) -> RetryPolicy:
        """``value`` as a policy: a :class:`RetryPolicy` as it is, an int as ``RetryPolicy(value)``."""
        return value if isinstance(value, RetryPolicy) else cls(value)

    def pause(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failed attempts, before the next one."""
        return self.delay * self.backoff ** (failures - 1)

    def pauses(self) -> list[float]:
        """Every wait, in order."""
        return [self.pause(k) for k in range(1, self.retries + 1)]

    def __getstate__(self) -> tuple:
        return (self.retries, self.delay, self.backoff, self.on)

    def __setstate__(self, state: tuple) -> None:
        self.retries, self.delay, self.backoff, self.on = state

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RetryPolicy) and self.__getstate__() == other.__getstate__()

    def __hash__(self) -> int:
        return hash(self.__getstate__())

    def __repr__(self) -> str:
        on = ", ".join(c.__name__ for c in self.on)
        return f"RetryPolicy({self.retries}, delay={self.delay:g}, backoff={self.backoff:g}, on=({on},))"


def check_timeout(seconds: Any) -> float:
    """``seconds`` as a time limit, or :class:`~functionfuse.errors.InvalidOptionError`."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
            or seconds <= 0:
        from .errors import InvalidOptionError

        raise InvalidOptionError(f"set_timeout: seconds must be a finite number > 0, got {seconds!r:.60}")
    return float(seconds)


# ---------------------------------------------------------------------------
# running one node call, in any process
# ---------------------------------------------------------------------------


def _tag(exc: BaseException, name: str) -> None:
    # The node's name rides on the exception across processes, so the driver names the node
    # that raised even when only a descendant's result reports the error.
    if getattr(exc, "_ff_node", None) is None:
        with contextlib.suppress(Exception):  # a type that refuses attributes keeps its message only
            exc._ff_node = name  # type: ignore[attr-defined]


def node_error_name(exc: BaseException) -> str | None:
    """The name of the node whose call raised ``exc`` (tagged by :func:`run_node_call`), or ``None``."""
    return getattr(exc, "_ff_node", None)


def _read(call: NodeCall) -> Any:
    hooks = call.hooks
    if hooks is not None and hooks.read:
        return hooks.host().storage_read(call.storage, call.workflow_name, call.name, hooks.context,
                                         node=(call.node if call.node is not None else call))
    storage = call.storage
    if call.fingerprint is not None and hasattr(storage, "read_task_checked"):
        # the result must still be the call the run planned to read (its header holds the fingerprint)
        return storage.read_task_checked(call.workflow_name, call.name, call.fingerprint)
    return storage.read_task(call.workflow_name, call.name)


def _save(call: NodeCall, value: Any) -> None:
    hooks = call.hooks
    storage = call.storage
    if hooks is not None and hooks.save:
        hooks.host().storage_save(storage, call.workflow_name, call.name, value, hooks.context,
                                  node=(call.node if call.node is not None else call), fingerprint=call.fingerprint, replaces=call.replaces)
    elif call.fingerprint is not None:
        storage.save(call.workflow_name, call.name, value, fingerprint=call.fingerprint, replaces=call.replaces)
    else:
        storage.save(call.workflow_name, call.name, value)


#: argument values whose pickle is the same in every process (exact types: a subclass may live in a script)
_PLAIN_TYPES = frozenset({int, float, str, bytes, bool, type(None), complex})
_PLAIN_CONTAINERS = frozenset({tuple, list})


def _plain(values: Any, budget: list) -> bool:
    """Whether every value (recursively, at most ``budget[0]`` of them) is of a plain type or a placeholder."""
    for value in values:
        budget[0] -= 1
        if budget[0] < 0:
            return False
        cls = value.__class__
        if cls in _PLAIN_TYPES:
            continue
        if cls is Ref:
            if not _plain(value.keys, budget):
                return False
        elif cls in _PLAIN_CONTAINERS:
            if not _plain(value, budget):
                return False
        elif cls is dict:
            if not (_plain(value.keys(), budget) and _plain(value.values(), budget)):
                return False
        else:
            return False
    return True


def pack_call(call: NodeCall) -> NodeCall | bytes:
    """``call`` as the bytes of its pickle when that pickle is plain data, else ``call`` itself.

    For a backend that ships calls to other processes: Ray serialises a bytes argument as
    it is, but an object through cloudpickle, whose by-value checks cost the driver about
    40 µs per task. Packed are the calls whose every part pickles by reference to
    functionfuse or as a built-in value: no function (the backend supplies it), no node
    plugin callables, storage, hooks, retry policy or time limit, and arguments of
    built-in types (``int``, ``str``, ..., tuples, lists and dicts of them). Anything
    else (a user's class, a closure) needs cloudpickle, so the call goes as it is.
    :func:`unpack_call` undoes it in the worker.
    """
    if call.func is not None or call.callables or call.storage is not None or call.hooks is not None \
            or call.retries is not None or call.timeout is not None:
        return call
    template = call.template
    if template is not None:
        budget = [256]
        kwargs = template.kwargs
        if not _plain(template.args, budget) or (kwargs and not (_plain(kwargs.keys(), budget)
                                                                and _plain(kwargs.values(), budget))):
            return call
    return pickle.dumps(call, protocol=pickle.HIGHEST_PROTOCOL)


def unpack_call(call: NodeCall | bytes) -> NodeCall:
    """The :class:`NodeCall` that :func:`pack_call` gave (``call`` itself when it was not packed)."""
    return pickle.loads(call) if call.__class__ is bytes else call


def run_node_call(call: NodeCall, values: Any, func: Any = None) -> tuple[Any, float, float]:
    """Run ``call`` with its dependencies' ``values``; return ``(value, start, duration)``.

    ``values`` is a tuple in placeholder order (or, in-process, the results dict
    keyed by node when the template is the node itself). A method call's
    ``values[0]`` is the instance. ``func`` overrides ``call.func`` (a backend
    that exported the function once). Any failure carries the node's name
    (:func:`node_error_name`); the start is wall-clock time, the duration in seconds.
    """
    start = time.time()
    began = time.perf_counter()
    try:
        if call.mode == READ:
            return _read(call), start, time.perf_counter() - began
        if func is None:
            func = call.func
        template = call.template
        if template is None:
            args, kwargs = values, None
        else:
            args, kwargs = resolve_args(template, values)
        if call.retries is None and call.timeout is None:
            for prepare in call.callables:
                prepare()
            hooks = call.hooks
            if hooks is not None and hooks.execute:
                value = hooks.host().execute_node((call.node if call.node is not None else call), func, tuple(args), kwargs or {}, hooks.context)
            else:
                value = func(*args, **kwargs) if kwargs else func(*args)
        else:
            value = _call_with_policy(call, func, args, kwargs)
        duration = time.perf_counter() - began
        if call.storage is not None:
            _save(call, value)
            if call.always_read:
                value = _read(call)
    except BaseException as exc:
        _tag(exc, call.name)
        raise
    return value, start, duration


def run_plain_in_process(nodes: list, keep: set, fail: Callable[[Any, BaseException], None]) -> dict:
    """Run ``nodes`` (in run order) in this process when a run is plain; return the kept results.

    A plain run has no storage, no per-node hook, no node plugin, no retry or time limit, so
    a node call is only: put the parents' values into the arguments, call, tag a failure with
    the node's name (then ``fail(node, exc)`` raises the run's error). Every child of a node is
    a node of the run and is created after it (:func:`functionfuse.graph.closure`), so a result
    is released once its last child (``node.last_child``) has run, unless it is in ``keep``.
    """
    results: dict = {}
    for node in nodes:
        func = node.func
        slots = node.slots  # the argument mode (Node.argmode): () none, positions top-level, None nested
        try:
            if slots:
                args = list(node.args)
                for position in slots:
                    a = args[position]
                    args[position] = a.resolve(results[a.node]) if a.__class__ is Ref else results[a]
                kwargs = node.kwargs
                value = func(*args, **kwargs) if kwargs else func(*args)
            elif slots is None:
                args, kwargs = resolve_args(node, results)
                value = func(*args, **kwargs)
            else:
                kwargs = node.kwargs
                value = func(*node.args, **kwargs) if kwargs else func(*node.args)
        except Exception as exc:
            _tag(exc, node.name)
            fail(node, exc)
            raise  # ``fail`` raises the run's error; never go on without a value
        except BaseException as exc:  # Ctrl-C, SystemExit: not the node's failure, raised as it is
            _tag(exc, node.name)
            raise
        results[node] = value
        parents = node._parents
        for parent in parents if parents.__class__ is tuple else (parents,):
            last = parent._more_kids  # Node.last_child, inline
            if last is None:
                last = parent._kids
            elif last.__class__ is list:
                last = last[-1]
            if last is node and parent not in keep:
                del results[parent]
    return results


def run_stored_in_process(run: Any, steps: Any, keep: set) -> dict:
    """Run a stored run's ``steps`` (``(node, COMPUTE or READ)``, run order) in this process.

    For a run with storage whose node calls need nothing but the built-ins: no
    ``ff_execute_node`` / ``ff_storage_save`` / ``ff_storage_read`` wrapper, no
    ``ff_before_node`` / ``ff_after_node`` hook, no node plugin, retry or time
    limit. Then a node call is what :func:`run_node_call` does without them, and
    this loop does it without building a :class:`NodeCall` per node: put the
    parents' values into the arguments, call, save the result with its
    fingerprint (read back when ``always_read`` asks), tag a failure with the
    node's name (``run.fail`` raises the run's error), and note the outcome in
    ``run.context.outcomes``. A result is released once no later node needs it.
    """
    workflow = run.workflow
    storage = workflow.storage
    workflow_name = workflow.workflow_name
    plan = run.resume()
    fps = plan.fingerprints if run.keeps_fingerprints else None
    checked = getattr(storage, "read_task_checked", None) if fps else None
    # a storage may offer save(task_name, obj, fingerprint) for the saves of this run, lookups done once
    # (and a close() for what it holds meanwhile)
    run_saver = getattr(storage, "run_saver", None) if fps is not None else None
    run_save = run_saver(workflow_name) if run_saver is not None else None
    try:
        return _stored_steps(run, steps, keep, plan, fps, checked, run_save)
    finally:
        if run_save is not None:
            getattr(run_save, "close", _nothing)()  # what it holds for the run (an open folder)


def _nothing() -> None:
    pass


def _stored_steps(run: Any, steps: Any, keep: set, plan: Any, fps: dict | None, checked: Any, run_save: Any) -> dict:
    """The loop of :func:`run_stored_in_process`."""
    workflow = run.workflow
    storage = workflow.storage
    workflow_name = workflow.workflow_name
    stored, sources, always_read = plan.stored, plan.sources, plan.always_read
    save, read = storage.save, storage.read_task
    outcomes = run.context.outcomes
    worker, host = worker_location()
    remaining = run.consumers()
    results: dict = {}
    clock = time.perf_counter
    # a node's wall-clock start from the monotonic clock: one clock call per node less
    wall = time.time() - clock()
    for node, action in steps:
        name = node.name
        if action == READ:
            source = sources.get(node, name)
            fp = fps.get(node) if fps else None
            try:  # the stored result must still be the call the run planned to read
                results[node] = read(workflow_name, source) if checked is None or fp is None else \
                    checked(workflow_name, source, fp)
            except Exception as exc:
                _tag(exc, source)
                run.fail(node, exc)
            continue
        began = clock()
        start = wall + began
        try:
            slots = node.slots
            if slots and not node.kwargs:  # top-level dependencies only: resolve_args, inline for the common call
                args = list(node.args)
                for position in slots:
                    a = args[position]
                    args[position] = a.resolve(results[a.node]) if a.__class__ is Ref else results[a]
                value = node.func(*args)
            else:
                args, kwargs = resolve_args(node, results)
                value = node.func(*args, **kwargs) if kwargs else node.func(*args)
            duration = clock() - began
            if node.kind != OBJECT and sources.get(node) != name:  # Run.saves: not a replayed, still-stored call
                if run_save is not None:
                    run_save(name, value, fps.get(node))
                elif fps is not None:
                    save(workflow_name, name, value, fingerprint=fps.get(node), replaces=stored.get(name))
                else:
                    save(workflow_name, name, value)
                if always_read:
                    value = read(workflow_name, name) if checked is None else \
                        checked(workflow_name, name, fps.get(node))
        except Exception as exc:
            _tag(exc, name)
            elapsed = clock() - began
            run.fail(node, exc, {"start": start, "duration": elapsed, "worker": worker, "host": host})
            raise  # ``fail`` raises the run's error; never go on without a value
        except BaseException as exc:  # Ctrl-C, SystemExit: not the node's failure, raised as it is
            _tag(exc, name)
            raise
        results[node] = value
        if outcomes is not None:
            outcomes[name] = {"start": start, "duration": duration, "worker": worker, "host": host,
                              "outcome": COMPUTED}
        release_parents(node, remaining, results, keep)
    return results


def release_parents(node: Any, remaining: dict, results: dict, keep: set) -> None:
    """``node`` has run: drop the values of its parents that no later node needs (``remaining``:
    node -> consumers still to run, from ``Run.consumers``) unless they are in ``keep``."""
    for parent in node.parents:
        left = remaining[parent] - 1
        if left:
            remaining[parent] = left
        elif parent not in keep:
            del remaining[parent]
            results.pop(parent, None)


def _invoke(call: NodeCall, func: Any, args: Any, kwargs: Any) -> Any:
    """One attempt: the node plugins' callables, then the function (as the fast path of run_node_call)."""
    for prepare in call.callables:
        prepare()
    hooks = call.hooks
    if hooks is not None and hooks.execute:
        return hooks.host().execute_node((call.node if call.node is not None else call), func, tuple(args), kwargs or {}, hooks.context)
    return func(*args, **kwargs) if kwargs else func(*args)


def _invoke_within(call: NodeCall, func: Any, args: Any, kwargs: Any, limit: float, attempt: int) -> Any:
    """One attempt in a daemon thread, waited for at most ``limit`` seconds.

    A thread cannot be killed: past the limit the call is abandoned (it runs on in the background
    of this process, and its result is dropped) and :class:`NodeTimeoutError` names the node.
    """
    outcome: list = []

    def attempt_once() -> None:
        try:
            outcome.append((True, _invoke(call, func, args, kwargs)))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            outcome.append((False, exc))

    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(attempt_once,), daemon=True,
                              name=f"functionfuse node {call.name}")
    thread.start()
    thread.join(limit)
    if not outcome:
        from .errors import NodeTimeoutError

        raise NodeTimeoutError(call.name, call.workflow_name, limit, attempt)
    ok, result = outcome[0]
    if ok:
        return result
    raise result


def _invoke_in_child(call: NodeCall, func: Any, args: Any, kwargs: Any, limit: float, attempt: int) -> Any:
    """One attempt in a fresh Python process, killed (SIGKILL) when it has not answered within ``limit``.

    For calls a thread cannot stop (stuck in C, holding a device). The call, its arguments and its
    result travel pickled (cloudpickle); the child rebuilds the plugin set from the call's
    :class:`WorkerHooks`, runs the node plugins' callables and the function, and writes the
    outcome to its stdout (the function's own prints go to stderr). A subprocess rather than
    multiprocessing, so it works in daemonic worker processes (Dask's) too.
    """
    import subprocess
    import sys

    import cloudpickle

    payload = cloudpickle.dumps((call, func, tuple(args), kwargs))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    child = subprocess.Popen([sys.executable, "-c", "from functionfuse.nodecall import _child_main; _child_main()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        out, _ = child.communicate(payload, timeout=limit)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        from .errors import NodeTimeoutError

        raise NodeTimeoutError(call.name, call.workflow_name, limit, attempt, killed=True) from None
    if not out:
        from .errors import WorkerLostError

        raise WorkerLostError(f"the process running node {call.name!r} (set_timeout(kill=True)) ended with exit "
                              f"status {child.returncode} and no result")
    ok, result = cloudpickle.loads(out)
    if ok:
        return result
    raise result


def _child_main() -> None:
    """The child process of :func:`_invoke_in_child`: read the call from stdin, write ``(ok, outcome)`` to stdout."""
    import sys

    import cloudpickle

    result_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # the function's prints go to stderr; stdout carries the outcome only
    call, func, args, kwargs = cloudpickle.loads(sys.stdin.buffer.read())
    try:
        outcome = (True, _invoke(call, func, args, kwargs))
    except BaseException as exc:  # noqa: BLE001 - handed to the parent
        outcome = (False, exc)
    try:
        data = cloudpickle.dumps(outcome)
    except Exception as exc:  # noqa: BLE001 - an unpicklable result is the node's error
        data = cloudpickle.dumps((False, TypeError(f"the result of node {call.name!r} cannot be pickled: {exc}")))
    result_out.write(data)
    result_out.flush()


def _call_with_policy(call: NodeCall, func: Any, args: Any, kwargs: Any) -> Any:
    """The call with its retry policy and time limit; ``call.attempts`` says how many attempts it took."""
    policy = call.retries
    limit = call.timeout
    last = 1 + policy.retries if policy is not None else 1
    attempt = 1
    while True:
        try:
            if limit is None:
                value = _invoke(call, func, args, kwargs)
            elif call.kill_on_timeout:
                value = _invoke_in_child(call, func, args, kwargs, limit, attempt)
            else:
                value = _invoke_within(call, func, args, kwargs, limit, attempt)
        except BaseException as exc:
            if policy is None or attempt >= last or not isinstance(exc, policy.on):
                call.attempts = attempt
                if policy is not None:
                    with contextlib.suppress(Exception):  # read by NodeExecutionError's message
                        exc._ff_attempts = attempt  # type: ignore[attr-defined]
                raise
            pause = policy.pause(attempt)
            if pause > 0:
                time.sleep(pause)
            attempt += 1
            continue
        call.attempts = attempt
        return value


_location: tuple | None = None


def worker_location() -> tuple[str, str]:
    """``(worker, host)`` of this process, for run records: ``"pid N"`` and the host name."""
    global _location
    if _location is None or _location[2] != os.getpid():
        _location = (f"pid {os.getpid()}", socket.gethostname(), os.getpid())
    return _location[0], _location[1]


# ---------------------------------------------------------------------------
# node plugins: the original protocol
# ---------------------------------------------------------------------------


def _prepare_one(plugin: Any, callables: list) -> None:
    prepare = getattr(plugin, "prepare", None)
    if prepare is not None:
        callables.extend(prepare())
        return
    # The original protocol: local_initialize() in the driver, remote_initialize() *returns*
    # the callable the worker runs before the function.
    local = getattr(plugin, "local_initialize", None)
    if local is not None:
        local()
    remote = getattr(plugin, "remote_initialize", None)
    if remote is not None:
        worker_callable = remote()
        if worker_callable is not None:
            if not callable(worker_callable):
                from .errors import PluginError

                raise PluginError(
                    f"node plugin {plugin!r}: remote_initialize() must return the callable the worker runs "
                    f"before the node (or None), got {type(worker_callable).__name__}"
                )
            callables.append(worker_callable)


def prepare_callables(plugins: Any) -> list[Callable[[], Any]]:
    """The worker callables of the node plugins ``plugins`` (one, or a list); their local parts run now."""
    callables: list = []
    if plugins is None:
        return callables
    if isinstance(plugins, (list, tuple)):
        for plugin in plugins:
            _prepare_one(plugin, callables)
    else:
        _prepare_one(plugins, callables)
    return callables
