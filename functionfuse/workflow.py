"""The base class of every backend."""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple

import pluggy

from . import graph
from .context import RunContext, RunHooks
from .errors import DuplicateNameError
from .frontend import Node, validate_name
from .query import Query

__all__ = ["Workflow", "ResumePlan"]


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

    Subclasses set ``backend_name`` and ``query_keys`` and implement :meth:`run`.

    :param nodes: one or more leaf nodes; the workflow is their closure.
    :param workflow_name: the name results are stored under.
    :param plugins: extra plugins for this workflow's runs.
    :param disable: plugin names to block for this workflow's runs.
    :param trace: log every hook call (``True`` or ``"json"``); default ``FUNCTIONFUSE_TRACE``.
    :param record: keep a run record (``plugins_builtin.runrecord``); default: only when storage is set,
        so a run without storage pays nothing per node. The last record is ``self.run_record``.
    :param progress: show a progress bar on a terminal (``True``, or a ``ProgressPlugin`` instance).
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
        self.leaves = graph.as_leaves(nodes, where=f"{type(self).__name__}({workflow_name!r})")
        self.workflow_name = validate_name(workflow_name, "workflow")
        self.nodes = graph.closure(self.leaves)
        self.storage: Any = None
        self.node_attrs: dict[Node, dict] = {}
        self._plugins = tuple(plugins)
        self._disable = tuple(disable)
        self._trace = trace
        self.record = record
        self.progress = progress
        #: the record of the last run (a dict) when recording was on; see ``plugins_builtin.runrecord``
        self.run_record: dict | None = None

    # -- plugins ------------------------------------------------------------
    @property
    def plugin_manager(self) -> pluggy.PluginManager:
        """The plugin manager of this workflow's runs."""
        from .manager import get_plugin_manager

        return get_plugin_manager(self._plugins, self._disable, self._trace)

    def _run_plugin_manager(self) -> pluggy.PluginManager:
        """The manager of one run: the workflow's plugins, plus recording and progress when they are on.

        They are added here rather than listed in ``DEFAULT_PLUGINS`` because their per-node hooks
        would make every run take the hook path; a plain run without storage keeps the fast loop.
        """
        extra: tuple = ()
        if self.record if self.record is not None else self.storage is not None:
            extra += ("plugins_builtin.runrecord",)
        if self.progress:
            from plugins_builtin.progress import as_progress_plugin

            extra += (as_progress_plugin(self.progress),)
        if not extra:
            return self.plugin_manager
        from .manager import get_plugin_manager

        return get_plugin_manager(self._plugins + extra, self._disable, self._trace)

    def new_run(self) -> tuple[RunContext, RunHooks]:
        """A fresh context and hook façade for one run; checks names when storage is set."""
        if self.storage is not None:
            self.check_unique_names()
        context = RunContext(
            workflow_name=self.workflow_name,
            backend=self,
            storage=self.storage,
            order=self.nodes,
            leaves=self.leaves,
            pm=self._run_plugin_manager(),
        )
        if self.storage is not None:
            bind_storage(self.storage, context.pm)
        return context, RunHooks(context)

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

    def run(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _leaf_result(values: list) -> Any:
        return values[0] if len(values) == 1 else values

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.workflow_name!r}: {len(self.nodes)} nodes>"

    # -- notebooks: a workflow displays as its graph (coloured by the last run when there is a record)
    def _repr_svg_(self) -> str | None:
        from plugins_builtin.graphback import notebook_svg

        return notebook_svg(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict:
        svg = self._repr_svg_()
        bundle = {"text/plain": repr(self)}
        if svg is not None:
            bundle["image/svg+xml"] = svg
        return bundle


_EMPTY: dict = {}


def bind_storage(storage: Any, pm: pluggy.PluginManager) -> None:
    """Give the storage the active serializers of this run's plugins, and the selection hook if needed."""
    if not hasattr(storage, "bind_run"):
        return
    from .context import _live
    from .manager import load_target, registrations

    active = []
    for registration in registrations(pm, "ff_serializers").values():
        if registration.active:
            target = load_target(registration, "serializer")
            active.append(target() if isinstance(target, type) else target)
    caller = _live(pm, "ff_select_serializer")
    selector = None if caller is None else (lambda obj: caller(obj=obj, storage=storage))
    storage.bind_run(active, selector)
