"""The ``local`` backend: runs a workflow serially, in this process."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from functionfuse.errors import NodeExecutionError
from functionfuse.frontend import Node, Ref, resolve_args
from functionfuse.markers import hookimpl
from functionfuse.workflow import Workflow

__all__ = ["LocalWorkflow"]


class LocalWorkflow(Workflow):
    """Run the workflow serially in this process.

    >>> wf = LocalWorkflow(node, workflow_name="ops")  # doctest: +SKIP
    >>> wf.set_storage(storage_factory({"kind": "file", "options": {"path": "storage"}}))  # doctest: +SKIP
    >>> wf.run()  # one leaf: its value; several: a list  # doctest: +SKIP
    """

    backend_name = "local"

    def run(self) -> Any:
        """Run every node not already stored; return the leaf's value, or a list for several leaves."""
        context, hooks = self.new_run()
        hooks.before_run()
        error: BaseException | None = None
        try:
            if self.storage is None and hooks.plain_execute and hooks.before_node is None and hooks.after_node is None:
                results = self._run_plain(context, hooks)
            else:
                results = self._run_full(context, hooks)
            return self._leaf_result([results[leaf] for leaf in self.leaves])
        except BaseException as exc:
            error = exc
            raise
        finally:
            hooks.after_run(error)

    def _fail(self, node: Node, exc: BaseException, hooks: Any, info: dict) -> NodeExecutionError:
        if hooks.node_error is not None:
            hooks.node_error(node=node, error=exc, context=hooks.context, info=info)
        return NodeExecutionError(node.name, self.workflow_name, exc)

    def _run_plain(self, context: Any, hooks: Any) -> dict:
        """No storage, no per-node hooks: the shortest loop."""
        results: dict = {}
        attrs = self.node_attrs
        prepare = hooks.prepare
        prepare_every_node = hooks.prepares_every_node
        for node in self.nodes:
            mode = node.argmode
            if mode == 1:  # inlined resolve_args: the common case of top-level positional dependencies
                args = list(node.args)
                for position in node.slots:
                    a = args[position]
                    args[position] = a.resolve(results[a.node]) if a.__class__ is Ref else results[a]
                kwargs = node.kwargs
            elif mode == 0:
                args, kwargs = node.args, node.kwargs
            else:
                args, kwargs = resolve_args(node, results)
            try:
                if prepare_every_node or (attrs and node in attrs):
                    for call in prepare(node):
                        call()
                results[node] = node.func(*args, **kwargs) if kwargs else node.func(*args)
            except Exception as exc:
                raise self._fail(node, exc, hooks, {}) from exc
        return results

    def _run_full(self, context: Any, hooks: Any) -> dict:
        storage = self.storage
        results: dict = {}
        stored, to_compute, to_read, always_read = self.resume_plan()
        host = socket.gethostname()
        worker = f"pid {os.getpid()}"
        for node in self.nodes:
            if to_compute is not None and node not in to_compute:
                if node in to_read:
                    results[node] = hooks.read(storage, node.name)
                if hooks.node_restored is not None:
                    hooks.node_restored(node=node, context=context)
                continue
            args, kwargs = resolve_args(node, results)
            if hooks.before_node is not None:
                hooks.before_node(node=node, context=context)
            start = time.time()
            began = time.perf_counter()
            try:
                for call in hooks.prepare(node):
                    call()
                value = hooks.execute(node, args, kwargs)
            except Exception as exc:
                info = {"start": start, "duration": time.perf_counter() - began, "worker": worker, "host": host}
                raise self._fail(node, exc, hooks, info) from exc
            duration = time.perf_counter() - began
            if storage is not None and node.kind != "object" and node.name not in stored:
                hooks.save(storage, node.name, value)
                if always_read:
                    value = hooks.read(storage, node.name)
            results[node] = value
            if hooks.after_node is not None:
                info = {"start": start, "duration": duration, "worker": worker, "host": host}
                hooks.after_node(node=node, result=value, context=context, info=info)
        return results


@hookimpl
def ff_backends(register) -> None:
    register("local", LocalWorkflow)
