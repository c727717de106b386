"""Node plugins: code that prepares the worker before a node's function runs.

The original protocol: ``local_initialize()`` runs in the driver, once per
node, in run order; ``remote_initialize()`` runs in the driver right after it
and returns the picklable callable the worker runs right before the
function. A plugin may instead offer ``prepare()``, returning a list of such
callables. :func:`functionfuse.nodecall.prepare_callables` applies the protocol.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from functionfuse.errors import InvalidOptionError
from functionfuse.markers import builtin, hookimpl
from functionfuse.nodecall import prepare_callables

__all__ = ["NodePlugin", "InitializerPlugin", "RandomStatePlugin", "PluginCollection", "prepare_callables"]


class NodePlugin:
    """Base class, in the original protocol: ``local_initialize()`` runs in the driver before the
    node is submitted; ``remote_initialize()`` runs there too and *returns* the picklable callable
    the worker runs right before the node's function (or ``None``)."""

    def local_initialize(self) -> None:
        """Runs in the driver before the node is submitted."""

    def remote_initialize(self) -> Callable[[], Any] | None:
        """Return the callable the worker runs right before the node's function."""
        return None


class InitializerPlugin(NodePlugin):
    """Call ``init_func()`` in the worker before the node (set a default dtype, a flag, ...).

    >>> InitializerPlugin(print).remote_initialize()  # doctest: +ELLIPSIS
    <built-in function print>
    """

    def __init__(self, init_func: Callable[[], Any]):
        if not callable(init_func):
            raise InvalidOptionError(f"InitializerPlugin needs a callable, got {type(init_func).__name__}")
        self.init_func = init_func

    def remote_initialize(self) -> Callable[[], Any]:
        return self.init_func


class RandomStatePlugin(NodePlugin):
    """Give each node its own seed: ``seed_func(seed)`` runs in the worker before the node.

    ``local_initialize`` advances the seed in the driver, in run order, before
    each node, wrapping from ``max`` back to ``min``: with ``seed=100`` the
    first node gets 101. A run is reproducible on any backend.

    >>> plugin = RandomStatePlugin(min=0, max=1000, seed=100, seed_func=print)
    >>> plugin.local_initialize(); plugin.remote_initialize()()
    101
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

    def remote_initialize(self) -> Callable[[], Any]:
        # bound now: the plugin advances again for the next node
        return functools.partial(self.seed_func, self.seed)


class PluginCollection(NodePlugin):
    """Several node plugins applied in order."""

    def __init__(self, plugins: list):
        self.plugins = list(plugins)
        for plugin in self.plugins:
            _check_node_plugin(plugin)

    def local_initialize(self) -> None:
        self._callables = prepare_callables(self.plugins)

    def remote_initialize(self) -> Callable[[], Any]:
        return functools.partial(_run_all, tuple(getattr(self, "_callables", ())))


def _run_all(callables: tuple) -> None:
    for call in callables:
        call()


def _check_node_plugin(plugin: Any) -> None:
    if not (hasattr(plugin, "prepare") or hasattr(plugin, "local_initialize") or hasattr(plugin, "remote_initialize")):
        raise InvalidOptionError(
            f"{plugin!r} is not a node plugin: it needs local_initialize()/remote_initialize() or prepare()"
        )


@hookimpl
@builtin
def ff_prepare_node(node: Any, context: Any) -> list:
    return prepare_callables(context.backend.attrs(node).get("plugins"))


@hookimpl
def ff_query_assign(key: str, value: Any) -> bool | None:
    if key != "plugins":
        return None
    for plugin in value if isinstance(value, (list, tuple)) else [value]:
        _check_node_plugin(plugin)
    return True
