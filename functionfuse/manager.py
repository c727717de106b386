"""Building the plugin manager of a run, and the typed façade every hook call goes through.

The manager of a run holds, in this order: names to block (``set_blocked``),
the entry points of group ``functionfuse`` (unless
``FUNCTIONFUSE_DISABLE_PLUGIN_AUTOLOAD=1``), the built-in plugins listed by
module name in :data:`DEFAULT_PLUGINS`, then the plugins the caller passes,
then ``check_pending``. :class:`PluginHost` wraps it (as tox 4 does): the
rest of functionfuse calls its typed methods, never ``pm.hook.*``. Hosts are
cached per plugin set (a bounded cache), so building one costs nothing after
the first run in a process, in the driver and in every worker.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Iterable

import pluggy

from . import hookspecs
from .errors import FunctionFuseError, MissingExtraError, PluginError
from .markers import PROJECT

__all__ = [
    "DEFAULT_PLUGINS",
    "ENTRYPOINT_GROUP",
    "PluginHost",
    "Registration",
    "get_plugins",
    "get_plugin_manager",
    "registrations",
    "load_target",
    "plugin_name",
    "tracing_mode",
]

ENTRYPOINT_GROUP = "functionfuse"

#: the plugins shipped with functionfuse, by module name (block one with ``disable=["plugins_builtin.NAME"]``)
DEFAULT_PLUGINS: tuple[str, ...] = (
    "plugins_builtin.core",
    "plugins_builtin.nodeplugins",
    "plugins_builtin.fsstorage",
    "plugins_builtin.daskarray",
    "plugins_builtin.numpyarray",
    "plugins_builtin.localback",
    "plugins_builtin.rayback",
    "plugins_builtin.daskback",
    "plugins_builtin.raystorage",
    "plugins_builtin.graphback",
    "plugins_builtin.graphcli",
)

_CACHE_SIZE = 64
_cache: OrderedDict[tuple, PluginHost] = OrderedDict()
_lock = threading.Lock()


def tracing_mode(trace: bool | str | None = None) -> str | None:
    """``None`` (off), ``"console"`` or ``"json"``, from the argument or ``FUNCTIONFUSE_TRACE``."""
    if trace is None:
        trace = os.environ.get("FUNCTIONFUSE_TRACE", "")
    if trace is True:
        return "console"
    if not trace or str(trace).lower() in ("0", "false", "no", "off"):
        return None
    return "json" if str(trace).lower() == "json" else "console"


def _autoload() -> bool:
    return os.environ.get("FUNCTIONFUSE_DISABLE_PLUGIN_AUTOLOAD", "").lower() not in ("1", "true", "yes")


def _import_plugin(spec: Any) -> Any:
    """A plugin object from an object, a module, or a module name."""
    if isinstance(spec, str):
        module_name, _, attribute = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise PluginError(f"plugin module {module_name!r} could not be imported: {exc}") from exc
        if not attribute:
            return module
        try:
            return getattr(module, attribute)
        except AttributeError as exc:
            raise PluginError(f"plugin {spec!r}: module {module_name!r} has no attribute {attribute!r}") from exc
    return spec


def plugin_name(plugin: Any) -> str:
    """The name a plugin object is registered under."""
    if isinstance(plugin, ModuleType):
        return plugin.__name__
    return getattr(plugin, "name", None) or f"{type(plugin).__module__}.{type(plugin).__qualname__}-{id(plugin):x}"


def _check_plugin_args(plugins: Any, disable: Any) -> tuple[tuple, tuple]:
    from .validate import check_plugin_args

    return check_plugin_args(plugins, disable, "functionfuse plugins")


def _build(plugins: tuple, disable: tuple, autoload: bool, trace: str | None) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in disable:
        pm.set_blocked(name)
    if autoload:
        try:
            pm.load_setuptools_entrypoints(ENTRYPOINT_GROUP)
        except Exception as exc:  # a broken third-party plugin must say which
            raise PluginError(f"loading entry points of group {ENTRYPOINT_GROUP!r} failed: {exc}") from exc
    for module_name in DEFAULT_PLUGINS:
        if not pm.is_blocked(module_name):
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name != module_name:
                    raise
                continue  # a built-in left out of this installation
            pm.register(module, name=module_name)
    for spec in plugins:
        plugin = _import_plugin(spec)
        name = plugin_name(plugin)
        if pm.is_blocked(name) or pm.is_registered(plugin):
            continue
        try:
            pm.register(plugin, name=name)
        except ValueError as exc:
            raise PluginError(f"plugin {name!r} could not be registered: {exc}") from exc
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"a plugin implements a hook functionfuse does not have: {exc}") from exc
    if trace:
        from .tracing import install_tracing

        install_tracing(pm, trace)
    return pm


def _inlinable(impl: Any) -> bool:
    return bool(getattr(impl.function, "ff_builtin", False))


def _culprit(pm: pluggy.PluginManager, hook_name: str, exc: BaseException) -> Any:
    """The hook implementation whose frame is innermost in ``exc``'s traceback, or ``None``."""
    impls = {impl.function.__code__: impl for impl in getattr(pm.hook, hook_name).get_hookimpls()
             if hasattr(impl.function, "__code__")}
    found = None
    tb = exc.__traceback__
    while tb is not None:
        impl = impls.get(tb.tb_frame.f_code)
        if impl is not None:
            found = impl
        tb = tb.tb_next
    return found


class PluginHost:
    """The typed façade over one plugin manager: every hook call of functionfuse goes through it.

    :ivar pm: the pluggy manager (for plugins and tests that need pluggy itself).
    :ivar tracing: the tracing mode (``None``, ``"console"``, ``"json"``).
    :ivar spec: ``(plugins, disable, trace)``, what rebuilds this host in another process.
    """

    def __init__(self, pm: pluggy.PluginManager, tracing: str | None, spec: tuple):
        self.pm = pm
        self.tracing = tracing
        self.spec = spec
        self._registrations: dict[str, dict[str, Registration]] = {}
        self._live: dict[str, Any] = {}

    # -- registration --------------------------------------------------------
    def backends(self) -> dict[str, Registration]:
        """Every registered backend, by name."""
        return self.registrations("ff_backends")

    def storage_kinds(self) -> dict[str, Registration]:
        """Every registered storage kind, by name."""
        return self.registrations("ff_storage_kinds")

    def serializers(self) -> dict[str, Registration]:
        """Every registered serializer, by name."""
        return self.registrations("ff_serializers")

    def registrations(self, hook_name: str) -> dict[str, Registration]:
        """Everything registered through ``hook_name`` (e.g. ``"ff_backends"``), by name."""
        found = self._registrations.get(hook_name)
        if found is None:
            found = self._registrations[hook_name] = _collect_registrations(self.pm, hook_name)
        return found

    def cli_commands(self, subparsers: Any) -> None:
        """Let every plugin add its CLI subcommands."""
        self.call("ff_cli_commands", None, subparsers=subparsers)

    def display(self, workflow: Any) -> Any:
        """The notebook display of ``workflow`` a plugin offers (an SVG string), or ``None``."""
        return self.call("ff_display", None, workflow=workflow)

    def query_assign(self, nodes: list, key: str, value: Any, backend: Any) -> list:
        """Every plugin's answer to ``Query.set_<key>(value)``."""
        return self.call("ff_query_assign", None, nodes=nodes, key=key, value=value, backend=backend)

    # -- per-node hooks --------------------------------------------------------
    def live(self, hook_name: str) -> Callable | None:
        """The hook caller when something other than a built-in must run per node, else ``None``.

        When only the built-in implementation answers and tracing is off,
        backends call the built-in behaviour directly: unused hooks cost nothing.
        """
        if hook_name in self._live:
            return self._live[hook_name]
        caller = getattr(self.pm.hook, hook_name)
        impls = caller.get_hookimpls()
        if not impls or (not self.tracing and all(_inlinable(impl) for impl in impls)):
            caller = None
        self._live[hook_name] = caller
        return caller

    def call(self, hook_name: str, node: Any, /, **kwargs: Any) -> Any:
        """Call hook ``hook_name``; a plugin that raises becomes a :class:`PluginError` naming it.

        An exception raised below a built-in implementation (the node's own function, the
        storage) is not the plugin's fault and passes through unchanged.
        """
        caller = getattr(self.pm.hook, hook_name)
        try:
            return caller(**kwargs)
        except FunctionFuseError:
            raise  # raised on purpose (a plugin refusing a value, a storage error): already names its cause
        except Exception as exc:
            impl = _culprit(self.pm, hook_name, exc)
            if impl is None or _inlinable(impl):
                raise
            where = f" for node {getattr(node, 'name', node)!r}" if node is not None else ""
            raise PluginError(
                f"plugin {impl.plugin_name!r} failed in hook {hook_name}{where}: {type(exc).__name__}: {exc}"
            ) from exc

    def execute_node(self, node: Any, func: Any, args: tuple, kwargs: dict, context: Any) -> Any:
        """``ff_execute_node``: the call itself, through every plugin that wraps or replaces it."""
        if getattr(node, "func", None) is None:
            node.func = func  # a worker's node call whose backend exported the function on its own
        return self.call("ff_execute_node", node, node=node, args=args, kwargs=kwargs, context=context)

    def storage_save(self, storage: Any, workflow_name: str, task_name: str, obj: Any, context: Any,
                     node: Any = None, fingerprint: str | None = None, replaces: str | None = None) -> Any:
        """``ff_storage_save``: write a node's result (with its fingerprint, when the storage keeps them)."""
        return self.call("ff_storage_save", node if node is not None else task_name, storage=storage, workflow_name=workflow_name,
                         task_name=task_name, obj=obj, context=context, fingerprint=fingerprint, replaces=replaces)

    def storage_read(self, storage: Any, workflow_name: str, task_name: str, context: Any, node: Any = None) -> Any:
        """``ff_storage_read``: read a stored result."""
        return self.call("ff_storage_read", node if node is not None else task_name, storage=storage, workflow_name=workflow_name,
                         task_name=task_name, context=context)

    def prepare_node(self, node: Any, context: Any) -> list:
        """``ff_prepare_node``: the worker callables of every plugin, flattened, in order."""
        callables: list = []
        for item in self.call("ff_prepare_node", node, node=node, context=context):
            if item is None:
                continue
            if callable(item):
                callables.append(item)
            else:
                callables.extend(item)
        return callables


def get_plugins(
    plugins: Iterable[Any] = (), disable: Iterable[str] = (), trace: bool | str | None = None
) -> PluginHost:
    """The :class:`PluginHost` for this plugin set (built once per set, then cached).

    :param plugins: extra plugin objects, modules or module names.
    :param disable: plugin names to block, like pytest's ``-p no:NAME``
        (entry-point names or built-in module names such as ``plugins_builtin.nodeplugins``).
    :param trace: ``True``/``"json"`` logs every hook call; default from ``FUNCTIONFUSE_TRACE``.
    """
    plugins, disable = _check_plugin_args(plugins, disable)
    mode = tracing_mode(trace)
    autoload = _autoload()
    try:
        key: tuple | None = (plugins, disable, autoload, mode)
        hash(key)
    except TypeError:
        key = None
    if key is not None:
        host = _cache.get(key)
        if host is not None:
            _cache.move_to_end(key)
            return host
    with _lock:
        host = PluginHost(_build(plugins, disable, autoload, mode), mode, (plugins, disable, mode))
        if key is not None:
            _cache[key] = host
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
    return host


def get_plugin_manager(
    plugins: Iterable[Any] = (), disable: Iterable[str] = (), trace: bool | str | None = None
) -> pluggy.PluginManager:
    """The pluggy manager of this plugin set (``get_plugins(...).pm``)."""
    return get_plugins(plugins, disable, trace).pm


def clear_cache() -> None:
    """Forget every cached manager (after installing a plugin in this process)."""
    _cache.clear()


# ---------------------------------------------------------------------------
# registrations: backends, storage kinds, serializers
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Registration:
    """One thing a plugin registered: a backend, a storage kind or a serializer."""

    name: str
    target: Any
    extra: str | None
    plugin: str
    active: bool = False


def registrations(pm: Any, hook_name: str) -> dict[str, Registration]:
    """Everything registered through ``hook_name`` (e.g. ``"ff_backends"``), by name.

    :param pm: a :class:`PluginHost` (or a pluggy manager, uncached).
    """
    if isinstance(pm, PluginHost):
        return pm.registrations(hook_name)
    return _collect_registrations(pm, hook_name)


def _collect_registrations(pm: pluggy.PluginManager, hook_name: str) -> dict[str, Registration]:
    found: dict[str, Registration] = {}
    caller = getattr(pm.hook, hook_name)
    impls = caller.get_hookimpls()
    # Built-ins first, so an installed or explicit plugin can override a built-in name.
    impls.sort(key=lambda impl: impl.plugin_name not in DEFAULT_PLUGINS)
    for impl in impls:

        def register(name: str, target: Any, extra: str | None = None, active: bool = False, _impl=impl) -> None:
            found[name] = Registration(name, target, extra, _impl.plugin_name, active)

        try:
            impl.function(register=register)
        except Exception as exc:
            raise PluginError(f"plugin {impl.plugin_name!r} failed in hook {hook_name}: {type(exc).__name__}: {exc}") from exc
    return found


def load_target(registration: Registration, what: str) -> Any:
    """Import a registration's lazy ``"module:attribute"`` target.

    A missing optional dependency becomes :class:`MissingExtraError` naming the
    ``pip install`` to run.
    """
    target = registration.target
    if not isinstance(target, str):
        return target
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if registration.extra:
            hint = f'pip install "functionfuse[{registration.extra}]"'
        else:
            hint = f"pip install {exc.name}"
        raise MissingExtraError(
            f"{what} {registration.name!r} needs the package {exc.name!r}, which is not installed: run {hint}"
        ) from exc
    return getattr(module, attribute) if attribute else module
