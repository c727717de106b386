"""Building the plugin manager of a run, and looking up what plugins registered.

The manager of a run holds, in this order: names to block (``set_blocked``),
the entry points of group ``functionfuse`` (unless
``FUNCTIONFUSE_DISABLE_PLUGIN_AUTOLOAD=1``), the built-in plugins listed in
:data:`plugins_builtin.DEFAULT_PLUGINS`, then the plugins the caller passes.
Managers are cached per plugin set, so building one costs nothing after the
first run in a process.
"""

from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Iterable

import pluggy

from . import hookspecs
from .errors import MissingExtraError, PluginError
from .markers import PROJECT

__all__ = [
    "ENTRYPOINT_GROUP",
    "Registration",
    "get_plugin_manager",
    "registrations",
    "load_target",
    "plugin_name",
    "tracing_mode",
]

ENTRYPOINT_GROUP = "functionfuse"
_cache: dict[tuple, pluggy.PluginManager] = {}
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
        try:
            return importlib.import_module(spec)
        except ImportError as exc:
            raise PluginError(f"plugin module {spec!r} could not be imported: {exc}") from exc
    return spec


def plugin_name(plugin: Any) -> str:
    """The name a plugin object is registered under."""
    if isinstance(plugin, ModuleType):
        return plugin.__name__
    return getattr(plugin, "name", None) or f"{type(plugin).__module__}.{type(plugin).__qualname__}-{id(plugin):x}"


def _build(plugins: tuple, disable: tuple, autoload: bool, trace: str | None) -> pluggy.PluginManager:
    from plugins_builtin import DEFAULT_PLUGINS

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
            pm.register(importlib.import_module(module_name), name=module_name)
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
        from plugins_builtin.tracing import install_tracing

        install_tracing(pm, trace)
    return pm


def get_plugin_manager(
    plugins: Iterable[Any] = (), disable: Iterable[str] = (), trace: bool | str | None = None
) -> pluggy.PluginManager:
    """The plugin manager for this plugin set (built once per set, then cached).

    :param plugins: extra plugin objects, modules or module names.
    :param disable: plugin names to block, like pytest's ``-p no:NAME``
        (entry-point names or built-in module names such as ``plugins_builtin.nodeplugins``).
    :param trace: ``True``/``"json"`` logs every hook call; default from ``FUNCTIONFUSE_TRACE``.
    """
    plugins = tuple(plugins)
    disable = tuple(disable)
    mode = tracing_mode(trace)
    autoload = _autoload()
    try:
        key: tuple | None = (plugins, disable, autoload, mode)
        hash(key)
    except TypeError:
        key = None
    if key is not None:
        pm = _cache.get(key)
        if pm is not None:
            return pm
    with _lock:
        pm = _build(plugins, disable, autoload, mode)
        if key is not None:
            _cache[key] = pm
    return pm


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


def registrations(pm: pluggy.PluginManager, hook_name: str) -> dict[str, Registration]:
    """Everything registered through ``hook_name`` (e.g. ``"ff_backends"``), by name."""
    cache = pm.__dict__.setdefault("_ff_registrations", {})
    if hook_name in cache:
        return cache[hook_name]
    found: dict[str, Registration] = {}
    caller = getattr(pm.hook, hook_name)
    impls = caller.get_hookimpls()
    # Built-ins first, so an installed or explicit plugin can override a built-in name.
    impls.sort(key=lambda impl: not impl.plugin_name.startswith("plugins_builtin"))
    for impl in impls:

        def register(name: str, target: Any, extra: str | None = None, active: bool = False, _impl=impl) -> None:
            found[name] = Registration(name, target, extra, _impl.plugin_name, active)

        impl.function(register=register)
    cache[hook_name] = found
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
