"""The task plan: a workflow flattened into picklable task specs.

Nodes link to their parents and children, so pickling one pickles the whole
graph, recursively. A plan holds what a Ray task needs to compute one node
(function, argument templates, worker-side plugin callables, remote args)
and refers to other nodes by index, so it pickles flat whatever the depth
of the graph; :meth:`Plan.link` rebuilds the links after loading.

An argument template is the node's arguments with every dependency replaced
by ``Ref(k, keys)``: ``k`` is the position of the dependency's value among
the values the task receives, ``keys`` the indexing ``node[i]`` applied.
"""

from __future__ import annotations

from typing import Any

from functionfuse.frontend import Ref, _scan_nested, _substitute

__all__ = ["Plan", "TaskSpec", "build_plan", "fill_arguments"]


class TaskSpec:
    """One node of the plan. Duck-types the node attributes ``plan_resume`` reads
    (``name``, ``kind``, ``parents``, ``obj``)."""

    # What is pickled; the links (parents, obj, deps) are rebuilt from the indices by Plan.link().
    _STATE = (
        "index",
        "name",
        "kind",
        "func",
        "args",
        "kwargs",
        "dep_ids",
        "parent_ids",
        "obj_id",
        "prepared",
        "remote_args",
    )
    __slots__ = (
        "args",
        "dep_ids",
        "deps",
        "func",
        "index",
        "kind",
        "kwargs",
        "name",
        "obj",
        "obj_id",
        "parent_ids",
        "parents",
        "prepared",
        "remote_args",
    )

    def __init__(
        self,
        index: int,
        name: str,
        kind: str,
        func: Any,
        args: tuple,
        kwargs: dict,
        dep_ids: tuple,
        parent_ids: tuple,
        obj_id: int | None,
        prepared: list,
        remote_args: dict,
    ):
        self.index = index
        self.name = name
        self.kind = kind
        self.func = func
        self.args = args  # for a method call: without the object, which lives in the actor
        self.kwargs = kwargs
        self.dep_ids = dep_ids  # the nodes whose values fill the Ref placeholders, in order
        self.parent_ids = parent_ids  # every parent, chain edges included (what plan_resume walks)
        self.obj_id = obj_id
        self.prepared = prepared
        self.remote_args = remote_args
        self.parents: tuple = ()
        self.obj: TaskSpec | None = None
        self.deps: tuple = ()

    def __getstate__(self) -> tuple:
        # Links stay out of the pickle: indices are enough, and keep pickling flat.
        return tuple(getattr(self, slot) for slot in self._STATE)

    def __setstate__(self, state: tuple) -> None:
        for slot, value in zip(self._STATE, state):
            setattr(self, slot, value)
        self.parents, self.obj, self.deps = (), None, ()

    @property
    def payload(self) -> tuple:
        """What the Ray task receives besides the dependency values."""
        return (self.name, self.func, self.args, self.kwargs, self.prepared)

    def __repr__(self) -> str:
        return f"<TaskSpec {self.name!r} ({self.kind})>"


class Plan:
    """Every task spec of a workflow in run order, and its leaves."""

    def __init__(self, workflow_name: str, specs: list[TaskSpec], leaf_ids: list[int]):
        self.workflow_name = workflow_name
        self.specs = specs
        self.leaf_ids = leaf_ids
        self.link()

    def link(self) -> None:
        specs = self.specs
        for spec in specs:
            spec.parents = tuple(specs[i] for i in spec.parent_ids)
            spec.deps = tuple(specs[i] for i in spec.dep_ids)
            spec.obj = specs[spec.obj_id] if spec.obj_id is not None else None

    @property
    def leaves(self) -> tuple[TaskSpec, ...]:
        return tuple(self.specs[i] for i in self.leaf_ids)

    def __getstate__(self) -> dict:
        return {"workflow_name": self.workflow_name, "specs": self.specs, "leaf_ids": self.leaf_ids}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.link()


def build_plan(workflow: Any, prepare: Any) -> tuple[Plan, dict]:
    """The plan of ``workflow`` (a functionfuse Workflow), and the map spec -> node.

    :param prepare: ``hooks.prepare``: the worker-side plugin callables of a node (its local part runs now).
    """
    index_of = {node: i for i, node in enumerate(workflow.nodes)}
    specs: list[TaskSpec] = []
    nodes_of: dict[TaskSpec, Any] = {}
    for i, node in enumerate(workflow.nodes):
        kind = node.kind
        args = node.args
        obj_id = None
        if kind == "method":
            obj_id = index_of[node.obj]
            args = args[1:]  # the instance: the actor holds it
            # Chain edges only order the calls (the actor runs them in order); they are
            # dependencies only where they are arguments too, e.g. c.add(previous_call).
            chain = (node.obj, node.chain_prev)
            deps = [p for p in node.parents if p not in chain or _mentions(node, p)]
        else:
            deps = list(node.parents)
        slot_of = {dep: Ref(k, ()) for k, dep in enumerate(deps)}
        if deps:
            args = tuple(_substitute(a, slot_of) for a in args)
            kwargs = {key: _substitute(v, slot_of) for key, v in node.kwargs.items()}
        else:
            kwargs = dict(node.kwargs)
        remote_args = dict(workflow.attrs(node).get("remote_args") or {})
        spec = TaskSpec(
            i,
            node.name,
            kind,
            node.func,
            tuple(args),
            kwargs,
            tuple(index_of[d] for d in deps),
            tuple(index_of[p] for p in node.parents),
            obj_id,
            list(prepare(node)),
            remote_args,
        )
        specs.append(spec)
        nodes_of[spec] = node
    plan = Plan(workflow.workflow_name, specs, [index_of[leaf] for leaf in workflow.leaves])
    return plan, nodes_of


def _mentions(node: Any, other: Any) -> bool:
    """True when ``other`` appears among ``node``'s arguments (not only as a chain edge)."""
    probe: list = []
    _scan_nested((node.args[1:], node.kwargs), probe)
    return other in probe


def fill_arguments(args: tuple, kwargs: dict, values: tuple) -> tuple[tuple, dict]:
    """The template's arguments with each ``Ref(k, keys)`` replaced by ``values[k]`` indexed by ``keys``."""
    if not values:
        return args, kwargs
    return tuple(_substitute(a, values) for a in args), {k: _substitute(v, values) for k, v in kwargs.items()}
