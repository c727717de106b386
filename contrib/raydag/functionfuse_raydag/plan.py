"""The stored plan: a workflow as node calls, so :func:`functionfuse_raydag.resume` needs no script.

Planned nodes hold their links as indices, so a plan pickles flat whatever the depth of the graph.
"""

from __future__ import annotations

import copy
from typing import Any

from functionfuse.nodecall import METHOD, NodeCall, make_template

__all__ = ["Plan", "PlannedNode", "build_plan"]


class PlannedNode:
    """One node of a stored plan."""

    _STATE = ("name", "kind", "qualname", "seq", "call", "dep_ids", "parent_ids", "obj_id", "remote_args")
    __slots__ = (*_STATE, "deps", "parents", "obj")

    def __init__(self, name: str, kind: str, qualname: str, seq: int, call: NodeCall, dep_ids: tuple,
                 parent_ids: tuple, obj_id: int | None, remote_args: dict | None):
        self.name, self.kind, self.qualname, self.call = name, kind, qualname, call
        self.seq = seq  # the node's creation number (the resume plan orders a stateful chain by it)
        self.dep_ids = dep_ids  # the nodes whose values fill the call's placeholders, in order
        self.parent_ids = parent_ids  # every parent, chain edges included (what the resume plan walks)
        self.obj_id = obj_id
        self.remote_args = remote_args
        self.deps: tuple = ()
        self.parents: tuple = ()
        self.obj: PlannedNode | None = None

    def __getstate__(self) -> tuple:  # links stay out of the pickle: indices keep it flat
        return tuple(getattr(self, slot) for slot in self._STATE)

    def __setstate__(self, state: tuple) -> None:
        for slot, value in zip(self._STATE, state):
            setattr(self, slot, value)

    @property
    def func(self) -> Any:
        return self.call.func

    def __repr__(self) -> str:
        return f"<PlannedNode {self.name!r} ({self.kind})>"


class Plan:
    """Every node of a workflow in run order, and its leaves."""

    def __init__(self, workflow_name: str, nodes: list[PlannedNode], leaf_ids: list[int]):
        self.workflow_name, self.nodes, self.leaf_ids = workflow_name, nodes, leaf_ids
        self.link()

    def link(self) -> None:
        nodes = self.nodes
        for node in nodes:
            node.deps = tuple(nodes[i] for i in node.dep_ids)
            node.parents = tuple(nodes[i] for i in node.parent_ids)
            node.obj = nodes[node.obj_id] if node.obj_id is not None else None

    @property
    def leaves(self) -> tuple[PlannedNode, ...]:
        return tuple(self.nodes[i] for i in self.leaf_ids)

    def __getstate__(self) -> tuple:
        return (self.workflow_name, self.nodes, self.leaf_ids)

    def __setstate__(self, state: tuple) -> None:
        self.workflow_name, self.nodes, self.leaf_ids = state
        self.link()


def build_plan(workflow: Any, calls: dict) -> Plan:
    """The plan of ``workflow``; ``calls``: ``node -> (NodeCall, deps)`` of the nodes this run computes."""
    index_of = {node: i for i, node in enumerate(workflow.nodes)}
    planned = []
    for node in workflow.nodes:
        attrs = workflow.attrs(node)
        found = calls.get(node)
        if found is None:
            template, deps = make_template(node)
            call = NodeCall(node.name, workflow.workflow_name, node.kind, node.func, template,
                            retries=attrs.get("retries"), timeout=attrs.get("timeout"))
        else:
            call, deps = found
            call = copy.copy(call)  # storage and worker hooks are the run's, set when it is submitted
            call.storage, call.always_read, call.hooks = None, False, None
        obj_id = index_of[node.obj] if node.kind == METHOD else None
        planned.append(PlannedNode(node.name, node.kind, node.qualname, node.seq, call,
                                   tuple(index_of[d] for d in deps), tuple(index_of[p] for p in node.parents),
                                   obj_id, attrs.get("remote_args")))
    return Plan(workflow.workflow_name, planned, [index_of[leaf] for leaf in workflow.leaves])
