"""A thread-pool backend: each node a ``concurrent.futures`` task, parents' futures awaited in the task."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, wait

from functionfuse import hookimpl
from functionfuse.base import READ, Workflow, info_of
from functionfuse.nodecall import run_node_call


def _node_task(call, deps, after):
    # runs in a pool thread: wait for the parents (a method call: the previous call on its
    # object too), then the node call does the rest
    wait(after)
    values = [future.result() for future in deps]
    value, start, duration = run_node_call(call, values)
    return value, info_of(start, duration, threading.current_thread().name, "localhost")


def _value(future):
    return future.result()[0]


class ThreadPoolWorkflow(Workflow):
    """Run nodes on a thread pool of ``max_workers`` threads."""

    backend_name = "threadpool"

    def __init__(self, *nodes, max_workers: int = 4, **options):
        super().__init__(*nodes, **options)
        self.max_workers = max_workers

    def _submit_and_collect(self, run):
        futures, values = {}, {}  # node -> Future of (value, info); node -> value-only Future
        with ThreadPoolExecutor(self.max_workers) as pool:
            for node, action in run.steps():  # run order: parents are submitted first
                call, deps = run.node_call(node, action)
                if action != READ:
                    run.started(node)
                after = [values[p] for p in node.parents if p in values]
                futures[node] = pool.submit(_node_task, call, [values[d] for d in deps], after)
                values[node] = pool.submit(_value, futures[node])
            wait(list(futures.values()))
            for node, future in futures.items():  # in run order: the first failure is the run's
                try:
                    value, info = future.result()
                except Exception as exc:
                    run.fail(node, exc)
                run.finished(node, value, info)
            return [values[leaf].result() for leaf in self.leaves]


@hookimpl
def ff_backends(register):
    register("threadpool", ThreadPoolWorkflow)
