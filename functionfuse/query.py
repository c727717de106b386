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

    def set_retries(self, retries: int, delay: float = 0.0, backoff: float = 1.0,
                    on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,)) -> Query:
        """Try a failing node again, on every backend: up to ``retries`` more attempts.

        Before attempt ``k + 1`` the node waits ``delay * backoff ** (k - 1)`` seconds. Only
        exceptions that are instances of ``on`` are retried; a node that runs out of attempts
        fails with its last error, the attempt count in the message. Only the call is retried,
        never the save. See docs/concepts.md, "Retries and timeouts".

        >>> wf.query("^fetch_.*$").set_retries(3, delay=1.0, backoff=2.0, on=(OSError,))  # doctest: +SKIP
        """
        from .nodecall import RetryPolicy

        return self.set("retries", RetryPolicy(retries, delay, backoff, on))

    def set_timeout(self, seconds: float, kill: bool = False) -> Query:
        """Fail a node whose call has not returned after ``seconds`` (per attempt), on every backend.

        The run gets :class:`~functionfuse.errors.NodeTimeoutError` naming the node within the
        limit plus about a second. By default the call runs in a thread, which cannot be killed:
        a timed-out call is abandoned and runs on in its worker's background. With ``kill=True``
        each attempt runs in a fresh Python process that is killed at the limit (for code stuck in
        C or holding a device; its arguments and result must pickle, and a process start costs
        about a second). With :meth:`set_retries`, a timed-out attempt is retried when ``on``
        covers ``NodeTimeoutError`` (``Exception`` does).

        >>> wf.query("^train$").set_timeout(600)  # doctest: +SKIP
        >>> wf.query("^solve$").set_timeout(60, kill=True)  # doctest: +SKIP
        """
        from .nodecall import check_timeout

        if not isinstance(kill, bool):
            from .errors import InvalidOptionError

            raise InvalidOptionError(f"set_timeout: kill must be True or False, got {kill!r:.60}")
        self.set("timeout", check_timeout(seconds))
        return self.set("timeout_kill", kill)

    def set_version(self, version: str) -> Query:
        """A manual version, part of each node's fingerprint: bump it for what code cannot see.

        >>> wf.query("^load$").set_version("2")  # the input file changed: recompute load and what follows  # doctest: +SKIP
        """
        return self.set("version", str(version))

    def set_fingerprint_exclude(self, names: list) -> Query:
        """Leave the arguments called ``names`` out of the nodes' fingerprints (a logger, a client)."""
        return self.set("fingerprint_exclude", list(names))

    def __getattr__(self, attr: str):
        # set_<anything> reaches plugins that accept keys of their own.
        if attr.startswith("set_"):
            key = attr[4:]
            return lambda value: self.set(key, value)
        raise AttributeError(attr)
