"""What a run carries: its context, and a typed façade over the plugin manager.

The façade decides once per run which per-node hooks have to go through
pluggy. When only the built-in implementation of a hook is registered and
tracing is off, the backend calls the built-in behaviour directly, so a
plain run pays no per-node hook cost.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

__all__ = ["RunContext", "RunHooks"]

# Built-in implementations the backends inline when they are the only ones.
_INLINED = {
    "ff_execute_node": {"plugins_builtin.core"},
    "ff_prepare_node": {"plugins_builtin.nodeplugins"},
    "ff_storage_save": {"plugins_builtin.core"},
    "ff_storage_read": {"plugins_builtin.core"},
    "ff_select_serializer": {"plugins_builtin.core"},
}


@dataclass
class RunContext:
    """One run of one workflow, as hooks see it.

    :ivar workflow_name: the workflow's name (its storage folder).
    :ivar backend: the workflow object running it.
    :ivar storage: the storage, or ``None``.
    :ivar order: every node of the run, in run order.
    :ivar state: a dict where plugins keep per-run state, keyed by their name.
    """

    workflow_name: str
    backend: Any
    storage: Any
    order: list
    leaves: tuple
    pm: pluggy.PluginManager
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: dict = field(default_factory=dict)

    @property
    def backend_name(self) -> str:
        return getattr(self.backend, "backend_name", type(self.backend).__name__)


def _live(pm: pluggy.PluginManager, hook_name: str) -> Callable | None:
    """The hook caller when it must be called per node, else ``None``."""
    caller = getattr(pm.hook, hook_name)
    impls = caller.get_hookimpls()
    if not impls:
        return None
    if getattr(pm, "_ff_tracing", None):
        return caller
    inlined = _INLINED.get(hook_name, ())
    if all(impl.plugin_name in inlined for impl in impls):
        return None
    return caller


class RunHooks:
    """Typed calls into the plugin manager for one run.

    Attributes named after per-node hooks (``before_node``, ``after_node``,
    ``node_error``, ``node_restored``) are the hook caller, or ``None`` when
    nothing implements the hook, so the hot path tests a flag.
    """

    def __init__(self, context: RunContext):
        pm = context.pm
        self.context = context
        self.pm = pm
        self.before_node = _live(pm, "ff_before_node")
        self.after_node = _live(pm, "ff_after_node")
        self.node_error = _live(pm, "ff_node_error")
        self.node_restored = _live(pm, "ff_node_restored")
        self._execute = _live(pm, "ff_execute_node")
        self._prepare = _live(pm, "ff_prepare_node")
        self._save = _live(pm, "ff_storage_save")
        self._read = _live(pm, "ff_storage_read")
        self.plain_execute = self._execute is None
        #: False when only the built-in node plugins prepare nodes (then only nodes with attributes need it)
        self.prepares_every_node = self._prepare is not None

    # -- run -----------------------------------------------------------------
    def before_run(self) -> None:
        self.pm.hook.ff_before_run(context=self.context)

    def after_run(self, error: BaseException | None) -> None:
        self.pm.hook.ff_after_run(context=self.context, error=error)

    # -- node ----------------------------------------------------------------
    def prepare(self, node: Any) -> list:
        """The picklable callables to run in the worker before ``node``'s function."""
        if self._prepare is None:
            from plugins_builtin.nodeplugins import prepare_callables

            return prepare_callables(node, self.context)
        callables: list = []
        for item in self._prepare(node=node, context=self.context):
            if item is None:
                continue
            if callable(item):
                callables.append(item)
            else:
                callables.extend(item)
        return callables

    def execute(self, node: Any, args: tuple, kwargs: dict) -> Any:
        """Run the node's call, through ``ff_execute_node`` when a plugin implements it."""
        if self._execute is None:
            return node.func(*args, **kwargs) if kwargs else node.func(*args)
        return self._execute(node=node, args=args, kwargs=kwargs or {}, context=self.context)

    # -- storage ---------------------------------------------------------------
    def save(self, storage: Any, task_name: str, obj: Any) -> None:
        if self._save is None:
            storage.save(self.context.workflow_name, task_name, obj)
        else:
            self._save(
                storage=storage, workflow_name=self.context.workflow_name, task_name=task_name, obj=obj,
                context=self.context,
            )

    def read(self, storage: Any, task_name: str) -> Any:
        if self._read is None:
            return storage.read_task(self.context.workflow_name, task_name)
        return self._read(
            storage=storage, workflow_name=self.context.workflow_name, task_name=task_name, context=self.context
        )
