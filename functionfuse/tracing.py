"""Tracing: every hook call logged through structlog.

Switched on by ``FUNCTIONFUSE_TRACE=1`` (readable lines) or
``FUNCTIONFUSE_TRACE=json`` (one JSON object a line), or ``trace=`` on a
workflow / ``functionfuse.run``. It hangs on pluggy's
``add_hookcall_monitoring``; when it is off, nothing is installed and the
backends skip hooks that only built-ins implement.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import pluggy
import structlog

__all__ = ["install_tracing", "make_logger"]


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is now: a cached, traced plugin host outlives a swapped stderr."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def make_logger(mode: str, stream: Any = None) -> Any:
    """A structlog logger writing to ``stream`` (stderr by default), readable or JSON."""
    renderer = (
        structlog.processors.JSONRenderer()
        if mode == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    return structlog.wrap_logger(
        structlog.PrintLogger(stream or _CurrentStderr()),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            renderer,
        ],
    )


def _describe(kwargs: dict) -> dict:
    fields: dict = {}
    node = kwargs.get("node")
    if node is not None:
        fields["node"] = getattr(node, "name", repr(node))
    context = kwargs.get("context")
    workflow = getattr(context, "workflow_name", None) or kwargs.get("workflow_name")
    if workflow is None and kwargs.get("backend") is not None:
        workflow = getattr(kwargs["backend"], "workflow_name", None)
    if workflow is not None:
        fields["workflow"] = workflow
    if kwargs.get("task_name") is not None:
        fields["task"] = kwargs["task_name"]
    if kwargs.get("key") is not None:
        fields["key"] = kwargs["key"]
    return fields


def install_tracing(pm: pluggy.PluginManager, mode: str, stream: Any = None) -> Any:
    """Log every hook call of ``pm``: hook, plugins, node, workflow, duration, outcome.

    :returns: the function that undoes it.
    """
    log = make_logger(mode, stream)
    starts: list[float] = []

    def before(hook_name: str, hook_impls: list, kwargs: dict) -> None:
        starts.append(time.perf_counter())

    def after(outcome: Any, hook_name: str, hook_impls: list, kwargs: dict) -> None:
        duration = time.perf_counter() - starts.pop() if starts else 0.0
        exc = outcome.exception
        log.info(
            "hook",
            hook=hook_name,
            plugins=[impl.plugin_name for impl in hook_impls],
            duration_ms=round(duration * 1000, 3),
            outcome="ok" if exc is None else f"error: {type(exc).__name__}: {exc}",
            **_describe(kwargs),
        )

    return pm.add_hookcall_monitoring(before, after)
