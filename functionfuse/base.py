"""The base class of every backend, and the run envelope they all share.

A backend implements one method, :meth:`Workflow._submit_and_collect`: given
a :class:`Run`, submit the nodes it says to compute (as
:class:`functionfuse.nodecall.NodeCall` objects, run anywhere by
:func:`functionfuse.nodecall.run_node_call`), collect their results, and
report each one to the run (:meth:`Run.finished`, :meth:`Run.failed`).
:meth:`Workflow.run` wraps it in the envelope: a new run, ``ff_before_run``,
submit-and-collect, ``ff_after_run``, with one precedence rule: the first
node error is the error of the run; a plugin or run-record failure after it
is attached to it (an exception note and ``__context__``), never a replacement.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator, NamedTuple

from . import graph
from .context import RunContext
from .errors import (
    DuplicateNameError,
    NodeExecutionError,
    NodeTimeoutError,
    PluginError,
    SerializationError,
    StorageError,
)
from .frontend import Node, validate_name
from .nodecall import CALL, METHOD, OBJECT, READ, NodeCall, RetryPolicy, WorkerHooks, make_template, prepare_callables
from .query import Query

if TYPE_CHECKING:  # pragma: no cover
    from .manager import PluginHost

__all__ = ["Workflow", "ResumePlan", "Run", "COMPUTE", "READ"]

#: what a run does with a node (:meth:`Run.steps`): compute it, or read its stored result
COMPUTE = "compute"


class ResumePlan(NamedTuple):
    """What a run computes and what it reads back (:meth:`Workflow.resume_plan`)."""

    #: names stored before the run
    stored: set
    #: the nodes to compute; ``None``: every node (no storage)
    to_compute: set | None
    #: the stored nodes whose results the computed ones (or the leaves) need
    to_read: set
    #: hand the stored copy of a fresh result to the next nodes (``storage.always_read``)
    always_read: bool


class Workflow:
    """A workflow given by its leaves, ready to run on one backend.

    Subclasses set ``backend_name`` and ``query_keys`` and implement
    :meth:`_submit_and_collect`.

    :param nodes: one or more leaf nodes; the workflow is their closure.
    :param workflow_name: the name results are stored under.
    :param plugins: extra plugins for this workflow's runs.
    :param disable: plugin names to block for this workflow's runs.
    :param trace: log every hook call (``True`` or ``"json"``); default ``FUNCTIONFUSE_TRACE``.
    :param record: keep a run record (``plugins_builtin.runrecord``); default: only when storage is set,
        so a run without storage pays nothing per node. The last record is ``self.run_record``.
    :param progress: show a progress bar on a terminal (``True``, or a progress plugin object).
    """

    backend_name = "base"
    #: attributes ``query(...).set_<key>`` accepts on this backend, besides ``plugins``
    query_keys: frozenset = frozenset({"plugins"})

    def __init__(
        self,
        *nodes: Node,
        workflow_name: str = "workflow",
        plugins: Iterable[Any] = (),
        disable: Iterable[str] = (),
        trace: bool | str | None = None,
        record: bool | None = None,
        progress: Any = False,
    ):
        from .manager import _check_plugin_args

        where = f"{type(self).__name__}({workflow_name!r})"
        self.leaves = graph.as_leaves(nodes, where=where)
        self.workflow_name = validate_name(workflow_name, "workflow")
        self.nodes = graph.closure(self.leaves)
        self.storage: Any = None
        self.node_attrs: dict[Node, dict] = {}
        self._plugins, self._disable = _check_plugin_args(plugins, disable)
        self._trace = trace
        self.record = record
        self.progress = progress
        #: the record of the last run (a dict) when recording was on; see ``plugins_builtin.runrecord``
        self.run_record: dict | None = None

    # -- plugins ------------------------------------------------------------
    @property
    def plugins(self) -> PluginHost:
        """The plugin façade of this workflow's runs."""
        from .manager import get_plugins

        return get_plugins(self._plugins, self._disable, self._trace)

    @property
    def plugin_manager(self) -> Any:
        """The pluggy manager of this workflow's runs."""
        return self.plugins.pm

    def _run_plugin_spec(self) -> tuple:
        """The plugins of one run: the workflow's, plus recording and progress when they are on.

        They are added here rather than listed in ``DEFAULT_PLUGINS`` because their per-node hooks
        would make every run take the hook path; a plain run without storage keeps the fast loop.
        """
        extra: tuple = ()
        if self.record if self.record is not None else self.storage is not None:
            extra += ("plugins_builtin.runrecord",)
        progress = self.progress
        if progress:
            if progress is True:
                progress = "plugins_builtin.progress:DEFAULT_PROGRESS"
            elif not hasattr(progress, "ff_before_run"):
                from .errors import InvalidOptionError

                raise InvalidOptionError(f"progress must be True, False or a ProgressPlugin, got {progress!r:.60}")
            extra += (progress,)
        return self._plugins + extra

    def _run_plugins(self) -> PluginHost:
        from .manager import get_plugins

        return get_plugins(self._run_plugin_spec(), self._disable, self._trace)

    # -- selection ------------------------------------------------------------
    def find_nodes(self, pattern: str | None = None) -> list[Node]:
        """Nodes whose name matches ``pattern`` in full (``re.fullmatch``); ``None`` gives all."""
        return graph.find_nodes(self.nodes, pattern)

    def query(self, pattern: str | None = None) -> Query:
        """A chainable :class:`Query` over the nodes matching ``pattern``."""
        return Query(self.find_nodes(pattern), self, pattern)

    def set_plugin(self, pattern: str | None, plugin: Any) -> Workflow:
        """Attach a node plugin to every node matching ``pattern``."""
        self.query(pattern).set_plugins(plugin)
        return self

    def attrs(self, node: Node) -> dict:
        """The attributes queries set on ``node`` (empty when none)."""
        return self.node_attrs.get(node, _EMPTY)

    # -- storage ----------------------------------------------------------------
    def set_storage(self, storage: Any) -> Workflow:
        """Save every node's result to ``storage`` and read it back on later runs.

        ``storage`` is a storage object, a ``storage_factory`` dict, or a path or fsspec URL.
        """
        from .storage import as_storage

        self.storage = as_storage(storage)
        return self

    def resume_plan(self) -> ResumePlan:
        """Plan the run from one listing of the storage (not one existence check per node).

        Without storage every node is computed. Creates the workflow's folder in the storage.
        """
        storage = self.storage
        if storage is None:
            return ResumePlan(set(), None, set(), False)
        storage.new_workflow(self.workflow_name)
        stored = set(storage.list_tasks(self.workflow_name))
        to_compute, to_read = graph.plan_resume(self.nodes, self.leaves, stored)
        return ResumePlan(stored, to_compute, to_read, bool(getattr(storage, "always_read", False)))

    def check_unique_names(self) -> None:
        """Refuse two nodes with one name in a stored workflow."""
        seen: dict[str, Node] = {}
        for node in self.nodes:
            name = node.name
            other = seen.get(name)
            if other is not None:
                raise DuplicateNameError(
                    f"workflow {self.workflow_name!r}: two nodes are named {name!r} ({other!r} and {node!r}); "
                    "stored results are keyed by name, so give each node its own with set_name()"
                )
            seen[name] = node

    # -- running ------------------------------------------------------------------
    def new_run(self) -> Run:
        """A fresh :class:`Run`: context, plugin façade, resume plan."""
        if self.storage is not None:
            self.check_unique_names()
        return Run(self)

    def run(self, **options: Any) -> Any:
        """Run every node not already stored; return the leaf's value, or a list for several leaves.

        ``options`` go to the backend (for Ray: ``return_results``, ``max_pending_tasks``).
        """
        self._check_run_options(options)
        run = self.new_run()
        return run.envelope(self._submit_and_collect, options)

    def _check_run_options(self, options: dict) -> None:
        """Refuse bad run options before anything runs (backends override)."""
        if options:
            from .errors import InvalidOptionError

            raise InvalidOptionError(
                f"{type(self).__name__}({self.workflow_name!r}).run() takes no option {sorted(options)[0]!r}"
            )

    def _submit_and_collect(self, run: Run, **options: Any) -> list:  # pragma: no cover - abstract
        """Submit the run's nodes, wait for them, and return the leaves' values (a list)."""
        raise NotImplementedError

    @staticmethod
    def _leaf_result(values: list) -> Any:
        return values[0] if len(values) == 1 else values

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.workflow_name!r}: {len(self.nodes)} nodes>"

    # -- notebooks: a workflow displays as its graph, when a plugin offers a display
    def _repr_svg_(self) -> str | None:
        return self.plugins.display(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict:
        svg = self._repr_svg_()
        bundle = {"text/plain": repr(self)}
        if svg is not None:
            bundle["image/svg+xml"] = svg
        return bundle


_EMPTY: dict = {}


def _attach(error: BaseException, late: BaseException, what: str) -> None:
    """Attach a failure that came after ``error`` to it, without replacing it."""
    note = f"then {what} failed too: {type(late).__name__}: {late}"
    if hasattr(error, "add_note"):
        error.add_note(note)
    tail = error
    seen = set()
    while tail.__context__ is not None and id(tail) not in seen:
        seen.add(id(tail))
        tail = tail.__context__
    if tail is not late:
        tail.__context__ = late


class Run:
    """One run of one workflow, as a backend drives it.

    :ivar workflow: the workflow object.
    :ivar context: the :class:`RunContext` hooks get.
    :ivar plugins: the run's plugin façade.
    :ivar plan: the :class:`ResumePlan` (made by :meth:`steps`).
    """

    def __init__(self, workflow: Workflow):
        self.workflow = workflow
        host = self.plugins = workflow._run_plugins()
        storage = workflow.storage
        self.context = RunContext(
            workflow_name=workflow.workflow_name,
            backend=workflow,
            storage=storage,
            order=workflow.nodes,
            leaves=workflow.leaves,
            pm=host.pm,
            plugins=host,
        )
        if storage is not None:
            bind_storage(storage, host)
        self.before_node = host.live("ff_before_node")
        self.after_node = host.live("ff_after_node")
        self.node_error = host.live("ff_node_error")
        self.node_restored = host.live("ff_node_restored")
        self._prepare = host.live("ff_prepare_node")
        #: False when only the built-in node plugins prepare nodes (then only nodes with attributes need it)
        self.prepares_every_node = self._prepare is not None
        self.plan: ResumePlan | None = None
        self.error: BaseException | None = None
        self._policy_calls: dict = {}  # node -> its NodeCall, for nodes with retries or a time limit
        execute = host.live("ff_execute_node") is not None
        save = host.live("ff_storage_save") is not None
        read = host.live("ff_storage_read") is not None
        if execute or save or read:
            # What the workers rebuild: the workflow's own plugin set (not the driver-side record/progress).
            self.worker_hooks: WorkerHooks | None = WorkerHooks(
                workflow._plugins, workflow._disable, workflow._trace, execute, save, read, self.context,
                host=workflow.plugins,
            )
        else:
            self.worker_hooks = None
        #: a plain run: no storage and no per-node hook, so a backend may take its shortest path
        self.plain = (
            storage is None and self.worker_hooks is None and self.before_node is None and self.after_node is None
        )

    # -- the envelope ---------------------------------------------------------------
    def envelope(self, submit_and_collect: Any, options: dict) -> Any:
        """``ff_before_run``, the backend's submit-and-collect, ``ff_after_run``; the first error wins."""
        host = self.plugins
        error: BaseException | None = None
        try:
            host.call("ff_before_run", None, context=self.context)
            return self.workflow._leaf_result(submit_and_collect(self, **options))
        except BaseException as exc:
            error = self.error or exc
            if error is not exc:
                _attach(error, exc, "the backend")
                raise error from error.__cause__
            raise
        finally:
            try:
                host.call("ff_after_run", None, context=self.context, error=error)
            except BaseException as late:
                if error is None:
                    if isinstance(late, PluginError):
                        raise
                    raise PluginError(f"ff_after_run failed after the run succeeded: {late}") from late
                _attach(error, late, "ff_after_run (run record, plugins)")

    # -- the plan ---------------------------------------------------------------------
    def steps(self) -> Iterator[tuple[Node, str]]:
        """Each node to run, in run order, with :data:`COMPUTE` or :data:`READ`.

        Nodes stored and not needed are skipped here (``ff_node_restored`` fires for them and
        for the nodes read back).
        """
        plan = self.resume()
        to_compute, to_read = plan.to_compute, plan.to_read
        restored = self.node_restored
        context = self.context
        if to_compute is None:
            for node in self.workflow.nodes:
                yield node, COMPUTE
            return
        for node in self.workflow.nodes:
            if node in to_compute:
                yield node, COMPUTE
                continue
            if node in to_read:
                yield node, READ
            if restored is not None:
                restored(node=node, context=context)

    def resume(self) -> ResumePlan:
        """The run's :class:`ResumePlan`, made once (from one listing of the storage)."""
        plan = self.plan
        if plan is None:
            plan = self.plan = self.workflow.resume_plan()
        return plan

    def saves(self, node: Node) -> bool:
        """Whether ``node``'s result is saved when it is computed."""
        plan = self.plan
        return self.workflow.storage is not None and node.kind != OBJECT and node.name not in plan.stored

    def prepare(self, node: Node) -> list:
        """The worker callables of ``node``'s plugins (their local parts run now, in the driver)."""
        if self._prepare is not None:
            return self.plugins.prepare_node(node, self.context)
        attrs = self.workflow.node_attrs
        if not attrs:
            return []
        found = attrs.get(node)
        return prepare_callables(found.get("plugins")) if found else []

    def node_call(self, node: Node, mode: str = COMPUTE, in_process: bool = False, with_func: bool = True) -> tuple:
        """The :class:`NodeCall` of ``node`` and its dependencies in placeholder order.

        :param mode: :data:`COMPUTE` or :data:`READ`.
        :param in_process: the call runs in this process with the run's results dict as its
            values: the template is the node itself and there are no dependencies to pass.
        :param with_func: put the function into the call (``False``: the backend supplies it).
        """
        workflow = self.workflow
        storage = workflow.storage
        if mode == READ:
            return NodeCall(node.name, workflow.workflow_name, READ, None, None, (), storage, False,
                            self.worker_hooks, node), []
        kind = node.kind
        callables = self.prepare(node)
        save = storage if self.saves(node) else None
        if in_process:
            template, deps = node, []
        else:
            template, deps = make_template(node)
        func = node.func if with_func else None
        mode = CALL if kind == CALL else METHOD if kind == METHOD else OBJECT
        call = NodeCall(node.name, workflow.workflow_name, mode, func, template, callables, save,
                        save is not None and self.plan.always_read, self.worker_hooks, node)
        attrs = workflow.node_attrs.get(node) if workflow.node_attrs else None
        if attrs is not None:
            retries = attrs.get("retries")
            call.retries = None if retries is None else RetryPolicy.of(retries)
            call.timeout = attrs.get("timeout")
            if call.retries is not None or call.timeout is not None:
                self._policy_calls[node] = call  # in-process backends: finished() reads call.attempts
        return call, deps

    # -- reporting --------------------------------------------------------------------
    def started(self, node: Node) -> None:
        """A node was submitted (``ff_before_node``)."""
        if self.before_node is not None:
            self.plugins.call("ff_before_node", node, node=node, context=self.context)

    def finished(self, node: Node, value: Any, info: dict) -> None:
        """A node was computed (``ff_after_node``); ``info`` has ``start``, ``duration``, ``worker``, ``host``.

        For a node with retries or a time limit it also has ``attempts`` (the backend's, or, for a
        call run in this process, the call's own count).
        """
        if self._policy_calls and "attempts" not in info:
            call = self._policy_calls.pop(node, None)
            if call is not None and call.attempts is not None:
                info["attempts"] = call.attempts
        if self.after_node is not None:
            self.plugins.call("ff_after_node", node, node=node, result=value, context=self.context, info=info)

    def failed(self, node: Node, exc: BaseException, info: dict | None = None, detail: str = "") -> BaseException:
        """The error of the run for ``node`` failing with ``exc`` (``ff_node_error`` fires first).

        Raise what it returns ``from exc``. A failing ``ff_node_error`` is attached, never a replacement.
        """
        attempts = getattr(exc, "_ff_attempts", None)
        if attempts is not None:
            info = {**(info or {}), "attempts": attempts}
        if isinstance(exc, (StorageError, SerializationError, NodeTimeoutError)) and not detail:
            error: BaseException = exc  # it names the node already (and the storage, the time limit)
        else:
            error = NodeExecutionError(node.name, self.workflow.workflow_name, exc, detail)
            error.__cause__ = exc
        if self.node_error is not None:
            try:
                self.plugins.call("ff_node_error", node, node=node, error=exc, context=self.context, info=info or {})
            except BaseException as late:  # noqa: BLE001 - the node's error wins
                _attach(error, late, "ff_node_error")
        if self.error is None:
            self.error = error
        return error

    def fail(self, node: Node, exc: BaseException, info: dict | None = None, detail: str = "") -> None:
        """Raise the error of the run for ``node`` failing with ``exc`` (see :meth:`failed`)."""
        error = self.failed(node, exc, info, detail)
        if error is exc:
            raise exc
        raise error from exc

    def find(self, name: str) -> Node | None:
        """The node of this run named ``name``."""
        for node in self.workflow.nodes:
            if node.name == name:
                return node
        return None

    def consumers(self) -> dict[Node, int]:
        """How many nodes still to compute take each node's value (to release results early)."""
        to_compute = self.resume().to_compute
        counts: dict[Node, int] = {}
        for node in self.workflow.nodes:
            if to_compute is not None and node not in to_compute:
                continue
            for parent in node.parents:
                counts[parent] = counts.get(parent, 0) + 1
        return counts


def info_of(start: float, duration: float, worker: str, host: str, **extra: Any) -> dict:
    """The ``info`` dict of ``ff_after_node`` / ``ff_node_error``."""
    info = {"start": start, "duration": duration, "worker": worker, "host": host}
    if extra:
        info.update(extra)
    return info


def bind_storage(storage: Any, host: PluginHost) -> None:
    """Give the storage the active serializers of this run's plugins, and the selection hook if needed."""
    if not hasattr(storage, "bind_run"):
        return
    from .manager import load_target

    active = []
    for registration in host.serializers().values():
        if registration.active:
            target = load_target(registration, "serializer")
            active.append(target() if isinstance(target, type) else target)
    caller = host.live("ff_select_serializer")
    selector = None if caller is None else (lambda obj: caller(obj=obj, storage=storage))
    storage.bind_run(active, selector)


_now = time.time
