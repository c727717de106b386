"""The ``local`` backend: runs a workflow serially, in this process.

Each node runs through :func:`functionfuse.nodecall.run_node_call`, with the
run's results dict as its values. When only the built-ins act per node (no
per-node hook, node plugin, retry or time limit) the backend hands the run to
the core's in-process loops instead, which do the same without a NodeCall per
node: :func:`~functionfuse.nodecall.run_plain_in_process` without storage,
:func:`~functionfuse.nodecall.run_stored_in_process` with it. A result is
released as soon as the last node that takes it has run (leaves and
``always_read`` copies aside), so a chain of large arrays holds two at a time.
"""

from __future__ import annotations

from time import perf_counter, time
from typing import Any

from functionfuse.base import READ, Run, Workflow, info_of
from functionfuse.markers import hookimpl
from functionfuse.nodecall import (
    release_parents,
    run_node_call,
    run_plain_in_process,
    run_stored_in_process,
    worker_location,
)

__all__ = ["LocalWorkflow"]


class LocalWorkflow(Workflow):
    """Run the workflow serially in this process.

    >>> wf = LocalWorkflow(node, workflow_name="ops")  # doctest: +SKIP
    >>> wf.set_storage(storage_factory({"kind": "file", "options": {"path": "storage"}}))  # doctest: +SKIP
    >>> wf.run()  # one leaf: its value; several: a list  # doctest: +SKIP
    """

    backend_name = "local"

    def _submit_and_collect(self, run: Run) -> list:
        if not self.node_attrs and not run.prepares_every_node:
            if run.plain:
                return self._run_plain(run)
            if self.storage is not None and run.worker_hooks is None and run.before_node is None \
                    and run.after_node is None:  # only the built-ins per node: the core's loop without NodeCalls
                results = run_stored_in_process(run, run.steps(), set(self.leaves))
                return [results[leaf] for leaf in self.leaves]
        results: dict = {}
        remaining = run.consumers()
        steps = run.steps()
        keep = set(self.leaves)
        node_call = run.node_call
        started = run.started if run.before_node is not None else None
        finished = run.finished if run.reports_nodes or self.node_attrs else None
        worker, host = worker_location()
        for node, action in steps:
            call, _ = node_call(node, action, in_process=True)
            if action == READ:
                try:
                    results[node] = run_node_call(call, results)[0]
                except Exception as exc:
                    run.fail(node, exc)
                continue
            if started is not None:
                started(node)
            began = perf_counter()
            try:
                value, start, duration = run_node_call(call, results)
            except Exception as exc:
                run.fail(node, exc, info_of(time() - (perf_counter() - began), perf_counter() - began,
                                                    worker, host))
            results[node] = value
            if finished is not None:
                finished(node, value, info_of(start, duration, worker, host))
            release_parents(node, remaining, results, keep)  # what no later node needs
        return [results[leaf] for leaf in self.leaves]

    def _run_plain(self, run: Run) -> list:
        """No storage, no per-node hook, no node attribute: the core's in-process loop."""
        results = run_plain_in_process(self.nodes, set(self.leaves), run.fail)
        return [results[leaf] for leaf in self.leaves]


@hookimpl
def ff_backends(register: Any) -> None:
    register("local", LocalWorkflow)
