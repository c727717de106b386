"""``PrefectWorkflow``: a functionfuse workflow run as a Prefect 3 flow, one Prefect task per node.

>>> wf = PrefectWorkflow(node3, workflow_name="ops")  # doctest: +SKIP
>>> wf.set_prefect_flow_options({"task_runner": ThreadPoolTaskRunner(max_workers=4)})  # doctest: +SKIP
>>> wf.query("^node1$").set_task_args({"retries": 2})  # doctest: +SKIP
>>> wf.run()  # doctest: +SKIP

The flow body is the driver: it plans the run (reading stored results when
storage is set), submits every node still to compute as a Prefect task whose
inputs are its parents' futures, then waits for them in run order, firing
the functionfuse hooks as results arrive.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from functionfuse.errors import InvalidOptionError, NodeExecutionError
from functionfuse.frontend import Node, Ref, _substitute, resolve_args
from functionfuse.workflow import Workflow

__all__ = ["PrefectWorkflow", "check_flow_options", "check_task_args"]


def _option_names(cls: type) -> frozenset:
    """The keyword options of a Prefect ``Task`` / ``Flow`` constructor."""
    names = inspect.signature(cls.__init__).parameters
    return frozenset(name for name in names if name not in ("self", "fn"))


def check_task_args(task_args: Any, where: str = "") -> dict:
    """Refuse anything but a dict of ``prefect.task`` options, naming the bad key."""
    from prefect.tasks import Task

    return _check_options(task_args, _option_names(Task), "task_args", "prefect.task", where)


def check_flow_options(options: Any, where: str = "") -> dict:
    """Refuse anything but a dict of ``prefect.flow`` options, naming the bad key."""
    from prefect.flows import Flow

    return _check_options(options, _option_names(Flow), "prefect flow options", "prefect.flow", where)


def _check_options(options: Any, known: frozenset, what: str, api: str, where: str) -> dict:
    at = f" ({where})" if where else ""
    if not isinstance(options, dict):
        raise InvalidOptionError(f"{what}{at} must be a dict of {api} options, got {type(options).__name__}")
    for key in options:
        if key not in known:
            raise InvalidOptionError(
                f"{what}{at}: {key!r} is not a {api} option; valid options are: {', '.join(sorted(known))}"
            )
    return dict(options)


#: flow options every node's task gets too, unless its task_args set them
_INHERITED_BY_TASKS = ("persist_result", "result_storage", "result_serializer")


class _Slot:
    """Stands for the i-th parent's value in the arguments a Prefect task receives."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def __eq__(self, other: object) -> bool:
        return other.__class__ is _Slot and other.index == self.index  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((_Slot, self.index))

    def __getstate__(self) -> int:
        return self.index

    def __setstate__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"<parent {self.index}>"


def _fingerprint(func: Any, cache: dict) -> str:
    """``module.qualname@hash-of-code``: part of the task's inputs, so cache keys change with the code."""
    found = cache.get(func)
    if found is not None:
        return found
    target = func.__init__ if isinstance(func, type) else func
    code = getattr(target, "__code__", None)
    digest = "nocode"
    if code is not None:
        digest = hashlib.sha256(code.co_code + repr(code.co_consts).encode()).hexdigest()[:16]
    name = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', type(func).__name__)}@{digest}"
    cache[func] = name
    return name


def _node_task_fn(
    node: Node, callables: list, save: Any, workflow_name: str, always_read: bool, timings: dict
) -> Callable:
    """The function of one node's Prefect task.

    Its parameters are what Prefect shows and hashes for cache keys: the
    node's function fingerprint, its parents' values (Prefect resolves the
    futures) and its own arguments with parents as placeholders.
    """
    func = node.func
    name = node.name

    def call_node(function: str, inputs: list, args: list, kwargs: dict) -> Any:
        values = {_Slot(index): value for index, value in enumerate(inputs)}
        args = [_substitute(a, values) for a in args]
        kwargs = {k: _substitute(v, values) for k, v in kwargs.items()}
        start = time.time()
        began = time.perf_counter()
        for call in callables:  # node plugins: worker-side initialisation before the function
            call()
        value = func(*args, **kwargs)
        if save is not None:
            save.save(workflow_name, name, value)
            if always_read:
                value = save.read_task(workflow_name, name)
        timings[name] = {
            "start": start,
            "duration": time.perf_counter() - began,
            "worker": f"pid {os.getpid()} {threading.current_thread().name}",
            "host": socket.gethostname(),
        }
        return value

    return call_node


class PrefectWorkflow(Workflow):
    """Run the workflow as a Prefect 3 flow named after the workflow, one task per node named after the node.

    :param nodes: one or more leaf nodes.
    :param workflow_name: the flow's name, and the name results are stored under.

    Options: :meth:`set_prefect_flow_options` (any ``prefect.flow`` option,
    e.g. ``task_runner``, ``persist_result``) and
    ``query(pattern).set_task_args(dict)`` (any ``prefect.task`` option, e.g.
    ``retries``, ``cache_key_fn``, ``cache_policy``). The flow options
    ``persist_result``, ``result_storage`` and ``result_serializer`` apply to
    every task as well (a node's ``task_args`` win). Tasks get no cache key
    (``NO_CACHE``) unless ``cache_policy``, ``cache_key_fn`` or
    ``persist_result`` is set, so inputs are not hashed on every call.
    """

    backend_name = "prefect"
    query_keys = frozenset({"plugins", "task_args"})

    def __init__(self, *nodes: Node, workflow_name: str = "workflow", **options: Any):
        super().__init__(*nodes, workflow_name=workflow_name, **options)
        self.flow_options: dict = {}

    def set_prefect_flow_options(self, options: dict) -> PrefectWorkflow:
        """Options for ``prefect.flow`` (``task_runner``, ``persist_result``, ``retries``, ...)."""
        self.flow_options = check_flow_options(options, where=f"workflow {self.workflow_name!r}")
        return self

    def generate_flow(self) -> Any:
        """The Prefect flow that runs this workflow; calling it runs it and returns the leaf value(s)."""
        from prefect import flow
        from prefect.exceptions import InvalidNameError as PrefectInvalidNameError

        def functionfuse_workflow() -> Any:
            return self._run_in_flow()

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

    # -- the flow body: the driver ------------------------------------------------
    def _run_in_flow(self) -> Any:
        context, hooks = self.new_run()
        hooks.before_run()
        error: BaseException | None = None
        try:
            return self._submit_and_wait(context, hooks)
        except BaseException as exc:
            error = exc
            raise
        finally:
            hooks.after_run(error)

    def _submit_and_wait(self, context: Any, hooks: Any) -> Any:
        from prefect import task as prefect_task
        from prefect.cache_policies import NO_CACHE

        storage = self.storage
        name = self.workflow_name
        stored, to_compute, to_read, always_read = self.resume_plan()
        attrs = self.node_attrs
        # Prefect 3 tasks do not follow the flow's result settings; functionfuse users set them once, on the flow.
        inherited = {key: self.flow_options[key] for key in _INHERITED_BY_TASKS if key in self.flow_options}
        values: dict = {}  # results read back from storage
        futures: dict = {}  # node -> PrefectFuture, in run order
        timings: dict = {}
        fingerprints: dict = {}
        for node in self.nodes:
            if to_compute is not None and node not in to_compute:
                if node in to_read:
                    values[node] = hooks.read(storage, node.name)
                if hooks.node_restored is not None:
                    hooks.node_restored(node=node, context=context)
                continue
            node_attrs = attrs.get(node, {})
            callables = hooks.prepare(node) if hooks.prepares_every_node or node_attrs else []
            slots = {parent: Ref(_Slot(index), ()) for index, parent in enumerate(node.parents)}
            inputs = [futures[p] if p in futures else values[p] for p in node.parents]
            args, kwargs = resolve_args(node, slots)
            save = storage if storage is not None and node.kind != "object" and node.name not in stored else None
            options = {"name": node.name, **inherited, **node_attrs.get("task_args", {})}
            # No cache key unless asked for: hashing every input costs time. Prefect writes a persisted
            # result under its cache key, so persist_result keeps Prefect's default policy (keyed by run).
            if "cache_policy" not in options and "cache_key_fn" not in options and not options.get("persist_result"):
                options["cache_policy"] = NO_CACHE
            fn = _node_task_fn(node, callables, save, name, always_read, timings)
            if hooks.before_node is not None:
                hooks.before_node(node=node, context=context)
            futures[node] = prefect_task(fn, **options).submit(
                _fingerprint(node.func, fingerprints), inputs, list(args), dict(kwargs)
            )
        results = values
        for node, future in futures.items():
            try:
                value = future.result()
            except Exception as exc:
                if hooks.node_error is not None:
                    hooks.node_error(node=node, error=exc, context=context, info=timings.get(node.name, {}))
                raise NodeExecutionError(node.name, name, exc) from exc
            results[node] = value
            if hooks.after_node is not None:
                hooks.after_node(node=node, result=value, context=context, info=timings.get(node.name, {}))
        return self._leaf_result([results[leaf] for leaf in self.leaves])
