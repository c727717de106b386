"""Node plugins: code that prepares the worker before a node's function runs.

``local_initialize()`` runs in the driver, once per node, in run order;
``remote_initialize()`` (or the callable :meth:`NodePlugin.prepare` returns)
runs in the worker right before the function. On the local backend both
run in-process.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from functionfuse.errors import InvalidOptionError
from functionfuse.markers import hookimpl

__all__ = ["NodePlugin", "InitializerPlugin", "RandomStatePlugin", "PluginCollection", "prepare_callables"]


class NodePlugin:
    """Base class: override ``local_initialize`` and/or ``remote_initialize``."""

    def local_initialize(self) -> None:
        """Runs in the driver before the node is submitted."""

    def remote_initialize(self) -> None:
        """Runs in the worker right before the node's function."""

    def prepare(self) -> list[Callable[[], Any]]:
        """Run the local part; return the picklable callables for the worker."""
        self.local_initialize()
        return [self.remote_initialize]


class InitializerPlugin(NodePlugin):
    """Call ``init_func()`` in the worker before the node (set a default dtype, a flag, ...).

    >>> InitializerPlugin(lambda: None).prepare()  # doctest: +ELLIPSIS
    [<function <lambda> at ...>]
    """

    def __init__(self, init_func: Callable[[], Any]):
        if not callable(init_func):
            raise InvalidOptionError(f"InitializerPlugin needs a callable, got {type(init_func).__name__}")
        self.init_func = init_func

    def remote_initialize(self) -> None:
        self.init_func()

    def prepare(self) -> list[Callable[[], Any]]:
        return [self.init_func]


class RandomStatePlugin(NodePlugin):
    """Give each node its own seed: ``seed_func(seed)`` runs in the worker before the node.

    The first node gets ``seed``; the seed advances by one per node in the
    driver, in run order, and wraps from ``max`` back to ``min``, so a run is
    reproducible on any backend.
    """

    def __init__(self, min: int, max: int, seed: int, seed_func: Callable[[int], Any]):
        if not min <= seed <= max:
            raise InvalidOptionError(f"RandomStatePlugin: seed {seed} is outside [min, max] = [{min}, {max}]")
        if not callable(seed_func):
            raise InvalidOptionError(f"RandomStatePlugin: seed_func must be callable, got {type(seed_func).__name__}")
        self.min = min
        self.max = max
        self.seed = seed
        self.seed_func = seed_func

    def local_initialize(self) -> None:
        self.seed = self.min if self.seed >= self.max else self.seed + 1

    def remote_initialize(self) -> None:
        self.seed_func(self.seed)

    def prepare(self) -> list[Callable[[], Any]]:
        # The node gets the current seed, bound now: the plugin advances for the next node.
        seed = self.seed
        self.local_initialize()
        return [functools.partial(self.seed_func, seed)]


class PluginCollection(NodePlugin):
    """Several node plugins applied in order."""

    def __init__(self, plugins: list):
        self.plugins = list(plugins)
        for plugin in self.plugins:
            _check_node_plugin(plugin)

    def local_initialize(self) -> None:
        for plugin in self.plugins:
            plugin.local_initialize()

    def remote_initialize(self) -> None:
        for plugin in self.plugins:
            plugin.remote_initialize()

    def prepare(self) -> list[Callable[[], Any]]:
        callables: list = []
        for plugin in self.plugins:
            callables.extend(_prepare_one(plugin))
        return callables


def _check_node_plugin(plugin: Any) -> None:
    if not (hasattr(plugin, "prepare") or hasattr(plugin, "local_initialize") or hasattr(plugin, "remote_initialize")):
        raise InvalidOptionError(
            f"{plugin!r} is not a node plugin: it needs local_initialize()/remote_initialize() or prepare()"
        )


def _prepare_one(plugin: Any) -> list:
    prepare = getattr(plugin, "prepare", None)
    if prepare is not None:
        return list(prepare())
    if hasattr(plugin, "local_initialize"):
        plugin.local_initialize()
    remote = getattr(plugin, "remote_initialize", None)
    return [remote] if remote is not None else []


def prepare_callables(node: Any, context: Any) -> list:
    """The worker-side callables of the node plugins attached to ``node`` (local parts run now)."""
    plugins = context.backend.attrs(node).get("plugins")
    if plugins is None:
        return []
    if isinstance(plugins, (list, tuple)):
        callables: list = []
        for plugin in plugins:
            callables.extend(_prepare_one(plugin))
        return callables
    return _prepare_one(plugins)


@hookimpl
def ff_prepare_node(node: Any, context: Any) -> list:
    return prepare_callables(node, context)


@hookimpl
def ff_query_assign(key: str, value: Any) -> bool | None:
    if key != "plugins":
        return None
    for plugin in value if isinstance(value, (list, tuple)) else [value]:
        _check_node_plugin(plugin)
    return True
