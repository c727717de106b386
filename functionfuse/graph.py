"""Which nodes a workflow holds, and the order they run in. No recursion anywhere.

The closure rule: the given leaves, every ancestor of them, and every
descendant of their roots, closed under "parents of". Nodes are ordered by
creation, which is topological because a node's arguments exist before it.
"""

from __future__ import annotations

import operator
import re
from typing import Iterable

from .errors import NotANodeError
from .frontend import MethodNode, Node, ObjectNode, Ref

__all__ = ["as_leaves", "closure", "find_nodes", "consumers_count", "plan_resume"]


def as_leaves(nodes: Iterable, where: str = "workflow") -> tuple[Node, ...]:
    """Check that every leaf is a node (a reference counts as its node)."""
    leaves = []
    for position, item in enumerate(nodes):
        if item.__class__ is Ref:
            item = item.node
        if not isinstance(item, Node):
            raise NotANodeError(
                f"{where}: leaf #{position} is {type(item).__name__} {item!r:.60}, not a workflow node; "
                "pass the value returned by calling a @workflow function"
            )
        leaves.append(item)
    if not leaves:
        raise NotANodeError(f"{where}: give at least one leaf node")
    return tuple(leaves)


def closure(leaves: Iterable[Node]) -> list[Node]:
    """Every node of the workflow defined by ``leaves``, in run order."""
    members: set[Node] = set()
    stack = list(leaves)
    # 1. the leaves and their ancestors
    while stack:
        node = stack.pop()
        if node in members:
            continue
        members.add(node)
        stack.extend(node.parents)
    # 2. every descendant of their roots
    stack = [node for node in members if not node.parents]
    seen_desc: set[Node] = set(stack)
    while stack:
        node = stack.pop()
        children = node.children
        if children:
            for child in children:
                if child not in seen_desc:
                    seen_desc.add(child)
                    stack.append(child)
    # 3. closed under "parents of"
    stack = [node for node in seen_desc if node not in members]
    while stack:
        node = stack.pop()
        if node in members:
            continue
        members.add(node)
        stack.extend(p for p in node.parents if p not in members)
    order = list(members)
    order.sort(key=_seq_of)
    return order


_seq_of = operator.attrgetter("seq")


def find_nodes(nodes: Iterable[Node], pattern: str | None = None) -> list[Node]:
    """The nodes whose name matches ``pattern`` in full (``re.fullmatch``); ``None`` matches all."""
    if pattern is None:
        return list(nodes)
    regex = re.compile(pattern)
    return [node for node in nodes if regex.fullmatch(node.name)]


def consumers_count(order: list[Node]) -> dict[Node, int]:
    """How many nodes of ``order`` take each node as a parent."""
    counts: dict[Node, int] = dict.fromkeys(order, 0)
    for node in order:
        for parent in node.parents:
            counts[parent] += 1
    return counts


def plan_resume(order: list[Node], leaves: tuple, stored: set[str]) -> tuple[set[Node], set[Node]]:
    """Which nodes to compute and which stored results to read, given the stored names.

    A stateful object's calls change its state, so when any call of an
    object is not stored, the object is rebuilt and its calls replayed up to
    the last one that is not stored; later calls are read back.

    :returns: ``(to_compute, to_read)``.
    """
    to_compute: set[Node] = set()
    chains: dict[ObjectNode, list[MethodNode]] = {}
    for node in order:
        kind = node.kind
        if kind == "call":
            if node.name not in stored:
                to_compute.add(node)
        elif kind == "object":
            chains.setdefault(node, [])
        else:
            chains.setdefault(node.obj, []).append(node)

    def replay(obj: ObjectNode, upto: int) -> None:
        to_compute.add(obj)
        to_compute.update(chains[obj][: upto + 1])

    for obj, calls in chains.items():
        last = -1
        for index, call in enumerate(calls):
            if call.name not in stored:
                last = index
        if last >= 0:
            replay(obj, last)
    while True:
        needed = set(leaves)
        for node in to_compute:
            needed.update(node.parents)
        # An object handed to a plain function must exist: rebuild it with its whole chain.
        missing = [n for n in needed if n.kind == "object" and n not in to_compute]
        if not missing:
            break
        for obj in missing:
            replay(obj, len(chains[obj]) - 1)
    return to_compute, needed - to_compute
