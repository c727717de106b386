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
from .context import COMPUTED, FAILED, STORED, RunContext
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


#: how a run decides that a stored result still applies (``resume=``)
RESUME_MODES = ("fingerprint", "name", "never")
#: the fingerprint index of a stored workflow (meta key): code and argument parts of each node's fingerprint
FINGERPRINT_INDEX = "fingerprints"


class ResumePlan(NamedTuple):
    """What a run computes and what it reads back (:meth:`Workflow.resume_plan`)."""

    #: names stored before the run (a dict: name -> the fingerprint stored with it, or ``None``)
    stored: dict
    #: the nodes to compute; ``None``: every node (no storage)
    to_compute: set | None
    #: the stored nodes whose results the computed ones (or the leaves) need
    to_read: set
    #: hand the stored copy of a fresh result to the next nodes (``storage.always_read``)
    always_read: bool
    #: node -> its fingerprint (``resume="fingerprint"`` with storage), else empty
    fingerprints: dict = {}
    #: node -> the stored name whose result applies to it (another name when the same call is stored there)
    sources: dict = {}
    #: node -> why it is computed again although a result is stored under its name
    reasons: dict = {}
    #: ``(node, source name)`` pairs, in order: stored results copied to the node's own name before
    #: the run, because the run overwrites the name they are stored under
    copies: tuple = ()


class PlanEntry(NamedTuple):
    """One node's fate in :meth:`Workflow.plan`."""

    name: str
    #: ``"compute"`` (nothing stored), ``"read back"``, ``"recompute"`` (stored, but it no longer
    #: applies), or ``"stored"`` (stored and applies; not needed by this run)
    fate: str
    reason: str


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
        resume: str = "fingerprint",
    ):
        from .validate import check_plugin_args

        where = f"{type(self).__name__}({workflow_name!r})"
        self.leaves = graph.as_leaves(nodes, where=where)
        self.workflow_name = validate_name(workflow_name, "workflow")
        self.nodes = graph.closure(self.leaves)
        self.storage: Any = None
        self.node_attrs: dict[Node, dict] = {}
        self._plugins, self._disable = check_plugin_args(plugins, disable, where)
        self._trace = trace
        self.record = record
        self.progress = progress
        #: the record of the last run (a dict) when recording was on; see ``plugins_builtin.runrecord``
        self.run_record: dict | None = None
        self.resume = check_resume(resume, where)
        #: node names (a regex, full match) to recompute with everything downstream (``--rerun``)
        self.rerun: str | None = None

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

        With ``resume="fingerprint"`` (the default) a stored result is read only when its
        fingerprint matches the node call's (under the node's name, or under another name of
        the workflow: shifted default names resume); ``"name"`` trusts the name alone (unsafe:
        an edited script can get another node's result); ``"never"`` recomputes everything.
        Without storage every node is computed. Creates the workflow's folder in the storage.
        """
        storage = self.storage
        if storage is None:
            return ResumePlan({}, None, set(), False)
        storage.new_workflow(self.workflow_name)
        stored = stored_fingerprints(storage, self.workflow_name)
        mode = self.resume
        fps: dict = {}
        usable: dict = {}
        reasons: dict = {}
        rerun = self._rerun_nodes()
        if mode == "fingerprint":
            fps = self.fingerprints()
            by_fp: dict = {}
            for name, fp in stored.items():
                if fp is not None:
                    by_fp.setdefault(fp, name)
            for node in self.nodes:
                if node.kind == OBJECT or node in rerun:
                    continue
                fp = fps[node]
                name = node.name
                if name in stored and stored[name] == fp:
                    usable[node] = name
                elif fp in by_fp:
                    usable[node] = by_fp[fp]
        elif mode == "name":
            for node in self.nodes:
                if node.kind != OBJECT and node.name in stored and node not in rerun:
                    usable[node] = node.name
        while True:
            to_compute, to_read = graph.plan_resume(self.nodes, self.leaves, usable)
            copies = _alias_copies(to_compute, usable)
            if copies is not None:
                break
            # aliases that would read a name this run overwrites, in a cycle: compute them instead
            for node in [n for n, source in usable.items() if source != n.name]:
                del usable[node]
        if stored:
            reasons = self._reasons(to_compute, stored, fps, usable, rerun)
        return ResumePlan(stored, to_compute, to_read, bool(getattr(storage, "always_read", False)),
                          fps, usable, reasons, copies)

    def set_rerun(self, pattern: str | None) -> Workflow:
        """Recompute the nodes whose names match ``pattern`` (a regex, full match) and everything downstream."""
        if pattern is not None:
            self.find_nodes(pattern)  # a bad pattern fails here, naming it
        self.rerun = pattern
        return self

    def fingerprints(self) -> dict:
        """Every node's fingerprint (:func:`functionfuse.fingerprint.fingerprint_nodes`), computed here."""
        from .fingerprint import fingerprint_nodes

        versions = {n: a["version"] for n, a in self.node_attrs.items() if a.get("version") is not None}
        exclude = {n: a["fingerprint_exclude"] for n, a in self.node_attrs.items() if a.get("fingerprint_exclude")}
        hook = self.plugins.live("ff_fingerprint")
        self._fp_details: dict = {}
        return fingerprint_nodes(self.nodes, versions or None, hook, exclude=exclude or None,
                                 details=self._fp_details)

    def _rerun_nodes(self) -> set:
        """The nodes ``rerun`` matches and everything downstream of them."""
        if not self.rerun:
            return set()
        found = set(self.find_nodes(self.rerun))
        for node in self.nodes:  # run order: parents first
            if node not in found and any(p in found for p in node.parents):
                found.add(node)
        return found

    def _reasons(self, to_compute: set, stored: dict, fps: dict, usable: dict, rerun: set) -> dict:
        """Why each node computed again although its name is stored."""
        entries, manifests = _index_entries(self.storage, self.workflow_name) if fps else ({}, {})
        details = getattr(self, "_fp_details", {})
        reasons: dict = {}
        recomputed: set = set()
        for node in self.nodes:
            if node not in to_compute:
                continue
            name = node.name
            if node.kind == OBJECT:
                # rebuilt; its calls were recomputed because of it only when its own call changed
                if (entries.get(name) or _NO_ENTRY)[0] != fps.get(node):
                    recomputed.add(node)
                continue
            if name not in stored:
                if node not in usable:
                    recomputed.add(node)
                continue
            if node not in usable:
                recomputed.add(node)
            if node in rerun:
                why = "asked to rerun (--rerun)" if node in set(self.find_nodes(self.rerun)) else \
                    "downstream of a node asked to rerun"
            elif self.resume == "never":
                why = 'resume="never"'
            elif node in usable:
                why = f"replayed: stateful object {node.obj.name!r} is rebuilt" if node.kind == METHOD else \
                    "needed again"
            elif stored[name] is None:
                why = "no fingerprint"
            else:
                why = _what_changed(node, details.get(node), entries.get(name), manifests, recomputed)
            reasons[node] = why
        return reasons

    def plan(self) -> list[PlanEntry]:
        """Each node's fate in a run now (compute / read back / recompute / stored), and why; runs nothing.

        >>> for entry in wf.plan():  # doctest: +SKIP
        ...     print(entry.name, entry.fate, entry.reason)
        """
        plan = self.resume_plan()
        entries = []
        for node in self.nodes:
            if plan.to_compute is None or node in plan.to_compute:
                reason = plan.reasons.get(node)
                if reason is None:
                    entries.append(PlanEntry(node.name, "compute", "not stored" if self.storage else "no storage"))
                else:
                    entries.append(PlanEntry(node.name, "recompute", reason))
            elif node in plan.to_read:
                source = plan.sources.get(node, node.name)
                why = "stored, same call" if source == node.name else f"the same call is stored as {source!r}"
                entries.append(PlanEntry(node.name, "read back", why))
            elif node.kind == OBJECT:
                entries.append(PlanEntry(node.name, "stored", "not rebuilt: every call on it applies as stored"))
            else:
                entries.append(PlanEntry(node.name, "stored", "stored, same call; not needed by this run"))
        return entries

    def check_unique_names(self) -> None:
        """Refuse two nodes with one name in a stored workflow."""
        nodes = self.nodes
        if len({node.name for node in nodes}) == len(nodes):  # the usual case, without a dict of nodes
            return
        seen: dict[str, Node] = {}
        for node in nodes:
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
        #: the storage keeps fingerprints with its results (``save(..., fingerprint=)``)
        self.keeps_fingerprints = bool(getattr(storage, "keeps_fingerprints", False))
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

    @property
    def reports_nodes(self) -> bool:
        """Whether the backend must report every computed node's ``info`` (:meth:`finished`).

        True when a plugin implements ``ff_after_node`` or keeps ``context.outcomes`` (set in
        ``ff_before_run``, so ask after it: in ``_submit_and_collect``).
        """
        return self.after_node is not None or self.context.outcomes is not None

    @property
    def plain(self) -> bool:
        """No storage, no per-node hook, no node outcomes kept: a backend may take its shortest path."""
        return (self.workflow.storage is None and self.worker_hooks is None and self.before_node is None
                and not self.reports_nodes)

    # -- the envelope ---------------------------------------------------------------
    def envelope(self, submit_and_collect: Any, options: dict) -> Any:
        """``ff_before_run``, the backend's submit-and-collect, ``ff_after_run``; the first error wins."""
        host = self.plugins
        error: BaseException | None = None
        try:
            host.call("ff_before_run", None, context=self.context)
            result = self.workflow._leaf_result(submit_and_collect(self, **options))
            if self.plan is not None and self.plan.fingerprints:
                write_fingerprint_index(self.workflow, self.plan, complete=True)
            return result
        except BaseException as exc:
            error = self.error or exc
            if error is not exc:
                _attach(error, exc, "the backend")
                raise error from error.__cause__
            raise
        finally:
            if error is not None and self.plan is not None and self.plan.fingerprints:
                try:
                    write_fingerprint_index(self.workflow, self.plan, complete=False)
                except BaseException as late:  # noqa: BLE001 - the node's error wins
                    _attach(error, late, "saving the fingerprint index")
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
        if plan.copies:
            self._copy_aliases(plan)
        to_compute, to_read = plan.to_compute, plan.to_read
        restored = self.node_restored
        context = self.context
        if to_compute is None:
            for node in self.workflow.nodes:
                yield node, COMPUTE
            return
        outcomes = context.outcomes
        for node in self.workflow.nodes:
            if node in to_compute:
                yield node, COMPUTE
                continue
            if node in to_read:
                yield node, READ
            if outcomes is not None:
                outcomes[node.name] = {"outcome": STORED}
            if restored is not None:
                restored(node=node, context=context)

    def resume(self) -> ResumePlan:
        """The run's :class:`ResumePlan`, made once (from one listing of the storage)."""
        plan = self.plan
        if plan is None:
            plan = self.plan = self.context.plan = self.workflow.resume_plan()
        return plan

    def _copy_aliases(self, plan: ResumePlan) -> None:
        """Copy stored results to the names of the nodes they apply to, before this run overwrites them."""
        storage = self.workflow.storage
        workflow_name = self.workflow.workflow_name
        for node, source in plan.copies:
            value = storage.read_task(workflow_name, source)
            fp = plan.fingerprints.get(node)
            if self.keeps_fingerprints:
                storage.save(workflow_name, node.name, value, fingerprint=fp, replaces=plan.stored.get(node.name))
            else:
                storage.save(workflow_name, node.name, value)
            plan.sources[node] = node.name
            plan.stored[node.name] = fp

    def saves(self, node: Node) -> bool:
        """Whether ``node``'s result is saved when it is computed (a stale stored result is overwritten)."""
        if self.workflow.storage is None or node.kind == OBJECT:
            return False
        # a replayed call whose stored result still applies under its name is not written again
        return self.plan.sources.get(node) != node.name

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
            source = self.plan.sources.get(node, node.name)
            call = NodeCall(source, workflow.workflow_name, READ, None, None, (), storage, False,
                            self.worker_hooks, node)
            if self.keeps_fingerprints:
                call.fingerprint = self.plan.fingerprints.get(node)  # the read refuses a result replaced since
            return call, []
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
        if save is not None and self.keeps_fingerprints:
            call.fingerprint = self.plan.fingerprints.get(node)
            call.replaces = self.plan.stored.get(node.name)
        attrs = workflow.node_attrs.get(node) if workflow.node_attrs else None
        if attrs is not None:
            retries = attrs.get("retries")
            call.retries = None if retries is None else RetryPolicy.of(retries)
            call.timeout = attrs.get("timeout")
            call.kill_on_timeout = bool(attrs.get("timeout_kill"))
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
        outcomes = self.context.outcomes
        if outcomes is not None:
            outcomes[node.name] = {**info, "outcome": COMPUTED}
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
        outcomes = self.context.outcomes
        if outcomes is not None:
            outcomes[node.name] = {**(info or {}), "outcome": FAILED, "error": f"{type(exc).__name__}: {exc}"}
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

    def find(self, name: str | None, default: Node | None = None) -> Node | None:
        """The node of this run named ``name``, else ``default`` (nodes have no truth value: no ``or``)."""
        for node in self.workflow.nodes:
            if node.name == name:
                return node
        return default

    def consumers(self) -> dict[Node, int]:
        """How many nodes still to compute take each node's value (to release results early)."""
        to_compute = self.resume().to_compute
        counts: dict[Node, int] = {}
        get = counts.get
        for node in self.workflow.nodes:
            if to_compute is not None and node not in to_compute:
                continue
            try:
                parents = node._parents  # a tuple, or the one parent itself (Node.parents without a tuple)
            except AttributeError:  # another kind of node (raydag's planned nodes): its parents
                parents = tuple(node.parents)
            if parents.__class__ is tuple:
                for parent in parents:
                    counts[parent] = get(parent, 0) + 1
            else:
                counts[parents] = get(parents, 0) + 1
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


def check_resume(resume: Any, where: str) -> str:
    """Refuse a ``resume=`` that is not one of :data:`RESUME_MODES`."""
    if resume not in RESUME_MODES:
        from .errors import InvalidOptionError

        raise InvalidOptionError(f"{where}: resume must be one of {', '.join(map(repr, RESUME_MODES))}, got {resume!r}")
    return resume


def stored_fingerprints(storage: Any, workflow_name: str) -> dict:
    """Every stored task name of the workflow -> the fingerprint stored with it (``None``: none).

    One listing: a storage that keeps fingerprints with its results answers
    ``list_fingerprints``; for any other storage the fingerprint index the
    driver writes after each run stands in.
    """
    lister = getattr(storage, "list_fingerprints", None)
    if lister is not None:
        return lister(workflow_name)
    names = storage.list_tasks(workflow_name)
    entries, _ = _index_entries(storage, workflow_name)
    return {name: (entries.get(name) or _NO_ENTRY)[0] for name in names}


_NO_ENTRY = (None, None, None)  # (fp, code fp, args fp) of a node the index does not have


def read_fingerprint_index(storage: Any, workflow_name: str) -> dict:
    """The fingerprint index of a stored workflow: ``{"nodes": {name: {...}}, "manifests": {...}}``."""
    entries, manifests = _index_entries(storage, workflow_name)
    return {"nodes": {name: {"fp": fp, "code": code, "args": args} for name, (fp, code, args) in entries.items()},
            "manifests": manifests} if entries or manifests else {}


def _index_entries(storage: Any, workflow_name: str) -> tuple[dict, dict]:
    """The stored index as ``({name: (fp, code_fp, args_fp)}, manifests)``; empty when absent or unreadable.

    Stored as JSON columns (``names``, ``fp``, ``code``, ``args``: a dict per node cost most of the
    writing), a column of fingerprints packed into one string (:func:`_pack_column`); the earlier
    forms (columns as lists, ``{"nodes": {name: {"fp", "code", "args"}}}``) are still read.
    """
    import json

    reader = getattr(storage, "read_meta", None)
    if reader is None:
        return {}, {}
    try:
        data = reader(workflow_name, FINGERPRINT_INDEX)
    except Exception:  # noqa: BLE001 - an unreadable index only loses the reasons: results are checked by fingerprint
        return {}, {}
    if not data:
        return {}, {}
    try:
        index = json.loads(data)
        manifests = index.get("manifests") or {}
        if "names" in index:
            names = index["names"]
            fps, codes, args = (_unpack_column(index[key], len(names)) for key in ("fp", "code", "args"))
            if not len(names) == len(fps) == len(codes) == len(args):
                return {}, {}
            return dict(zip(names, zip(fps, codes, args))), manifests
        return {name: (entry.get("fp"), entry.get("code"), entry.get("args"))
                for name, entry in (index.get("nodes") or {}).items()}, manifests
    except (ValueError, TypeError, AttributeError, KeyError):
        return {}, {}


_HEX = 32  # the width of a fingerprint: an xxh3-128 hex digest


def _pack_column(column: list) -> Any:
    """A column of fingerprints as one string (``_HEX`` characters each: a JSON string per node costs
    more than the rest of the index); any other column (one with ``None``) as it is."""
    if column and all(map(str.__instancecheck__, column)) and set(map(len, column)) == {_HEX}:
        return "".join(column)
    return column


def _unpack_column(column: Any, count: int) -> list:
    """The list :func:`_pack_column` packed; a list as it is (a column of another length is damage)."""
    if column.__class__ is str:
        if len(column) != _HEX * count:
            return []
        return [column[i:i + _HEX] for i in range(0, len(column), _HEX)]
    return column


def write_fingerprint_index(workflow: Workflow, plan: ResumePlan, complete: bool) -> None:
    """Keep what each node's fingerprint was made of, so a later mismatch can say what changed.

    :param complete: the run succeeded, so every node's result now matches its fingerprint;
        after a failure only the nodes whose stored result already applied are recorded.
    """
    import json

    storage = workflow.storage
    if storage is None or not plan.fingerprints or getattr(storage, "save_meta", None) is None:
        return
    from .fingerprint import code_manifest

    old, old_manifests = _index_entries(storage, workflow.workflow_name)
    manifests = dict(old_manifests)
    details = getattr(workflow, "_fp_details", {})
    no_detail = (None, None)
    fingerprints = plan.fingerprints
    if not complete:
        sources = plan.sources
        fingerprints = {node: fp for node, fp in fingerprints.items()
                        if node.kind == OBJECT or sources.get(node) == node.name}
    nodes = list(fingerprints)
    parts = [details.get(node, no_detail) for node in nodes]
    codes = [part[0] for part in parts]
    for code_fp in set(codes) - manifests.keys():  # once per distinct code
        if code_fp is not None:
            func = nodes[codes.index(code_fp)].func
            try:
                manifests[code_fp] = code_manifest(func)
            except Exception:  # noqa: BLE001 - a manifest only serves the reasons
                manifests[code_fp] = {}
    names = [node.name for node in nodes]
    if old:  # this run's entries over the stored ones
        entries = dict(old)
        entries.update(zip(names, zip(fingerprints.values(), codes, (part[1] for part in parts))))
        if entries == old and manifests == old_manifests:
            return
        values = list(entries.values())
        names, fp_column, codes, args_column = list(entries), [v[0] for v in values], [v[1] for v in values], \
            [v[2] for v in values]
    else:
        if not names and manifests == old_manifests:
            return
        fp_column, args_column = list(fingerprints.values()), [part[1] for part in parts]
    index = {"names": names, "fp": _pack_column(fp_column), "code": _pack_column(codes),
             "args": _pack_column(args_column), "manifests": manifests}
    storage.save_meta(workflow.workflow_name, FINGERPRINT_INDEX, json.dumps(index, separators=(",", ":")).encode())


def _what_changed(node: Node, now: tuple | None, before: tuple | None, manifests: dict, recomputed: set) -> str:
    """Why ``node``'s fingerprint differs from the stored one (``before``: its index entry), in a phrase."""
    if before is None or now is None:
        return "fingerprint changed"
    code_fp, args_fp = now
    _, code_before, args_before = before
    if code_before != code_fp:
        from .fingerprint import code_manifest, describe_code_change

        old = manifests.get(code_before)
        if old:
            try:
                return describe_code_change(old, code_manifest(node.func))
            except Exception:  # noqa: BLE001
                pass
        return "code changed"
    changed = [p.name for p in node.parents if p in recomputed]
    if changed:  # a parent's fingerprint is part of the arguments' (where it stands in them)
        return "parent recomputed" if len(changed) == 1 else "parents recomputed"
    if args_before != args_fp:
        return "argument changed"
    return "version changed"


def _alias_copies(to_compute: set, usable: dict) -> tuple | None:
    """The copies that keep aliases right when this run overwrites their source names, in a safe order.

    A node whose result is stored under another name ``S`` can read ``S`` directly unless this
    run writes ``S`` (a node named ``S`` is computed, or another copy lands on ``S``); then the
    result is first copied to the node's own name. A copy onto ``S`` must come after every copy
    from ``S``. ``None`` when the copies form a cycle.
    """
    written = {node.name for node in to_compute if node.kind != OBJECT}
    aliases = {node: source for node, source in usable.items() if source != node.name and node not in to_compute}
    needed: dict = {}
    changed = True
    while changed:
        changed = False
        for node, source in aliases.items():
            if node not in needed and source in written:
                needed[node] = source
                written.add(node.name)
                changed = True
    if not needed:
        return ()
    # order: a copy from S before the copy onto S
    by_target = {node.name: node for node in needed}
    order: list = []
    state: dict = {}
    for start in needed:
        stack = [start]
        while stack:
            node = stack[-1]
            if state.get(node) == 2:
                stack.pop()
                continue
            state[node] = 1
            # copies reading this node's name must run first
            pending = [other for other, source in needed.items() if source == node.name and state.get(other) != 2]
            if any(state.get(other) == 1 for other in pending):
                return None
            if pending:
                stack.extend(pending)
                continue
            state[node] = 2
            order.append((node, needed[node]))
            stack.pop()
    del by_target
    return tuple(order)
