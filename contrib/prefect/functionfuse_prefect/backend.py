"""``PrefectWorkflow``: a workflow run as a Prefect 3 flow, one task per node (see the README).

The flow body runs the core run envelope; each task runs its node's call (``run_node_call``).
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import Any

from functionfuse.base import READ, Run, Workflow, info_of
from functionfuse.errors import InvalidOptionError
from functionfuse.fingerprint import code_fingerprint
from functionfuse.frontend import Node
from functionfuse.nodecall import NodeCall, node_error_name, run_node_call, worker_location

__all__ = ["PrefectWorkflow", "check_options"]


def check_options(options: Any, api: str, where: str) -> dict:
    """Refuse anything but a dict of ``api`` options (``"prefect.task"`` or ``"prefect.flow"``), naming the bad key."""
    from prefect.flows import Flow
    from prefect.tasks import Task

    cls = Task if api == "prefect.task" else Flow
    known = set(inspect.signature(cls.__init__).parameters) - {"self", "fn"}  # the constructor's keyword options
    if not isinstance(options, dict):
        raise InvalidOptionError(f"{where} must be a dict of {api} options, got {type(options).__name__}")
    for key in options:
        if key not in known:
            raise InvalidOptionError(f"{where}: {key!r} is not a {api} option; valid options are: {', '.join(sorted(known))}")
    return dict(options)


#: flow options every node's task gets too, unless its task_args set them
_INHERITED_BY_TASKS = ("persist_result", "result_storage", "result_serializer")


def _task_fn(call: NodeCall, infos: dict) -> Callable:
    """The function of one node's task; its parameters are what Prefect shows and hashes for cache keys."""

    def call_node(function: str, parents: list, args: Any, kwargs: dict) -> Any:
        value, start, duration = run_node_call(call, parents)
        worker, host = worker_location()
        infos[call.name] = info_of(start, duration, f"{worker} {threading.current_thread().name}", host)
        return value

    return call_node


class PrefectWorkflow(Workflow):
    """Run the workflow as a Prefect 3 flow named after it, one task per node named after the node.

    Options: :meth:`set_prefect_flow_options` and ``query(pattern).set_task_args(dict)`` (see the README).
    """

    backend_name = "prefect"
    query_keys = frozenset({"plugins", "task_args"})

    def __init__(self, *nodes: Node, workflow_name: str = "workflow", **options: Any):
        super().__init__(*nodes, workflow_name=workflow_name, **options)
        self.flow_options: dict = {}

    def set_prefect_flow_options(self, options: dict) -> PrefectWorkflow:
        """Options for ``prefect.flow`` (``task_runner``, ``persist_result``, ``retries``, ...)."""
        self.flow_options = check_options(options, "prefect.flow", f"prefect flow options of workflow {self.workflow_name!r}")
        return self

    def generate_flow(self) -> Any:
        """The Prefect flow that runs this workflow; calling it runs it and returns the leaf value(s)."""
        from prefect import flow
        from prefect.exceptions import InvalidNameError as PrefectInvalidNameError

        def functionfuse_workflow() -> Any:
            return Workflow.run(self)  # the core envelope, inside the flow run

        options = {"name": self.workflow_name, **self.flow_options}
        try:
            return flow(functionfuse_workflow, **options)
        except PrefectInvalidNameError as exc:
            raise InvalidOptionError(
                f"workflow {self.workflow_name!r}: Prefect refuses the flow name {options['name']!r}: {exc}"
            ) from exc

    def run(self) -> Any:
        """Run the flow; return the leaf's value, or a list for several leaves."""
        return self.generate_flow()()

    def _submit_and_collect(self, run: Run) -> list:
        from prefect import task
        from prefect.cache_policies import NO_CACHE

        # Prefect 3 tasks do not follow the flow's result settings; functionfuse users set them once, on the flow.
        inherited = {key: self.flow_options[key] for key in _INHERITED_BY_TASKS if key in self.flow_options}
        values: dict = {}  # node -> its value (read back) or its PrefectFuture, then its value
        futures: dict = {}  # node -> PrefectFuture, in run order
        infos: dict = {}  # node name -> info of its call, written by the task
        for node, action in run.steps():
            call, deps = run.node_call(node, action)
            if action == READ:  # read in the flow: the read hooks fire here
                try:
                    values[node] = run_node_call(call, ())[0]
                except Exception as exc:
                    run.fail(node, exc)
                continue
            options = {"name": node.name, **inherited, **self.attrs(node).get("task_args", {})}
            # No cache key unless asked for: hashing every input costs time. Prefect writes a persisted
            # result under its cache key, so persist_result keeps Prefect's default policy (keyed by run).
            if "cache_policy" not in options and "cache_key_fn" not in options and not options.get("persist_result"):
                options["cache_policy"] = NO_CACHE
            template = call.template
            args, kwargs = (template.args, template.kwargs) if template is not None else ((), {})
            # A method call also waits for the previous call on its object (a parent it takes no value from).
            wait_for = [futures[p] for p in node.parents if p in futures and p not in deps]
            # Part of the task's inputs, so task_input_hash keys change with the code (the core's code fingerprint).
            function = f"{node.func.__module__}.{node.func.__qualname__}@{code_fingerprint(node.func)[:16]}"
            run.started(node)
            values[node] = futures[node] = task(_task_fn(call, infos), **options).submit(
                function, [values[d] for d in deps], args, kwargs, wait_for=wait_for
            )
        for node, future in futures.items():
            try:
                values[node] = future.result()
            except Exception as exc:
                failed = run.find(node_error_name(exc) or node.name, node)
                run.fail(failed, exc, infos.get(failed.name))
            run.finished(node, values[node], infos.get(node.name, {}))
        return [values[leaf] for leaf in self.leaves]
