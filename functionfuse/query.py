"""Queries: select nodes by name and set backend attributes on them."""

from __future__ import annotations

from typing import Any

from .errors import UnknownQueryAttributeError

__all__ = ["Query"]


class Query:
    """The nodes of a workflow whose names match a pattern; setters chain.

    >>> wf.query("^node1$").set_remote_args({"num_cpus": 1}).set_plugins(plugin)  # doctest: +SKIP

    Every ``set_<key>(value)`` goes through the ``ff_query_assign`` hook, so a
    plugin validates the value (and can accept new keys); accepted values are
    kept by the workflow object, never on the nodes.
    """

    def __init__(self, nodes: list, backend: Any, pattern: str | None = None):
        self.nodes = nodes
        self.backend = backend
        self.pattern = pattern

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self):
        return iter(self.nodes)

    def __repr__(self) -> str:
        return f"<Query {self.pattern!r}: {len(self.nodes)} node(s)>"

    def set(self, key: str, value: Any) -> Query:
        """Set attribute ``key`` to ``value`` on every node of the query."""
        backend = self.backend
        accepted = backend.plugins.query_assign(self.nodes, key, value, backend)
        if not any(accepted):
            known = sorted(getattr(backend, "query_keys", ()))
            raise UnknownQueryAttributeError(
                f"backend {backend.backend_name!r} does not accept the attribute {key!r} "
                f"(query {self.pattern!r}); it accepts: {', '.join(known) or 'none'}"
            )
        attrs = backend.node_attrs
        for node in self.nodes:
            attrs.setdefault(node, {})[key] = value
        return self

    def set_plugins(self, plugins: Any) -> Query:
        """Node plugins (``InitializerPlugin``, ``RandomStatePlugin``, ``PluginCollection``, ...)."""
        return self.set("plugins", plugins)

    def set_remote_args(self, remote_args: dict) -> Query:
        """Backend execution options (for Ray: any ``ray.remote`` option)."""
        return self.set("remote_args", remote_args)

    def set_task_args(self, task_args: dict) -> Query:
        """Task options of an addon backend (for Prefect: any ``prefect.task`` option)."""
        return self.set("task_args", task_args)

    def __getattr__(self, attr: str):
        # set_<anything> reaches plugins that accept keys of their own.
        if attr.startswith("set_"):
            key = attr[4:]
            return lambda value: self.set(key, value)
        raise AttributeError(attr)
