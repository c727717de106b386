"""Which nodes a workflow holds, and the order they run in. No recursion anywhere.

The closure rule: the given leaves, every ancestor of them, and every
descendant of their roots, closed under "parents of". Nodes are ordered by
creation, which is topological because a node's arguments exist before it.
"""

from __future__ import annotations

import operator
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
    """Every node of the workflow defined by ``leaves``, in run order.

    That is: the leaves, their ancestors, every descendant of the roots among those
    ancestors, and the ancestors of those descendants.
    """
    # 1. the leaves and their ancestors
    ancestors: set[Node] = set()
    add = ancestors.add
    stack = list(leaves)
    pop, extend, push = stack.pop, stack.extend, stack.append
    while stack:
        node = pop()
        if node not in ancestors:
            add(node)
            parents = node._parents  # a tuple, or the one parent itself (see Node.parents)
            if parents.__class__ is tuple:
                extend(parents)
            else:
                push(parents)
    # 2. every descendant of their roots: the ancestors closed under "children of" (each
    #    ancestor descends from a root, and a root is an ancestor), so grow the set in place
    members = ancestors
    add = members.add
    stack: list = []
    append = stack.append
    for node in list(members):
        first = node._kids  # the children without building a list (see Node.__init__)
        if first is None:
            continue
        if first not in members:
            add(first)
            append(first)
        more = node._more_kids
        if more is None:
            continue
        if more.__class__ is not list:
            if more not in members:
                add(more)
                append(more)
            continue
        for child in more:
            if child not in members:
                add(child)
                append(child)
    grown = list(stack)
    pop = stack.pop
    while stack:
        node = pop()
        first = node._kids
        if first is None:
            continue
        if first not in members:
            add(first)
            append(first)
            grown.append(first)
        more = node._more_kids
        if more is None:
            continue
        for child in more if more.__class__ is list else (more,):
            if child not in members:
                add(child)
                append(child)
                grown.append(child)
    # 3. closed under "parents of": a descendant may also take a node from outside
    stack = [p for node in grown for p in node.parents if p not in members]
    pop, extend = stack.pop, stack.extend
    while stack:
        node = pop()
        if node not in members:
            add(node)
            extend(node.parents)
    order = list(members)
    order.sort(key=_seq_of)
    return order


_seq_of = operator.attrgetter("seq")


def find_nodes(nodes: Iterable[Node], pattern: str | None = None) -> list[Node]:
    """The nodes whose name matches ``pattern`` in full (``re.fullmatch``); ``None`` matches all."""
    if pattern is None:
        return list(nodes)
    from .validate import compile_pattern

    regex = compile_pattern(pattern, "query")
    return [node for node in nodes if regex.fullmatch(node.name)]


def consumers_count(order: list[Node]) -> dict[Node, int]:
    """How many nodes of ``order`` take each node as a parent."""
    counts: dict[Node, int] = dict.fromkeys(order, 0)
    for node in order:
        for parent in node.parents:
            counts[parent] += 1
    return counts


def plan_resume(
    order: list[Node], leaves: tuple, usable: dict[Node, str] | set
) -> tuple[set[Node], set[Node]]:
    """Which nodes to compute and which stored results to read.

    :param usable: the nodes whose stored result may be used (a set, or a dict node -> the name
        it is stored under). Everything else is computed.

    A stateful object's calls change its state, so when any call of an
    object is not usable, the object is rebuilt and its calls replayed up to
    the last one that is not usable; later calls are read back. A plain
    function that takes the object as a value and is computed needs the
    object as it was when the function was created: the object is rebuilt
    and every call made before that function replayed.

    :returns: ``(to_compute, to_read)``.
    """
    if not usable and all(node.kind == "call" for node in order):
        return set(order), set()  # nothing stored applies, no stateful object: every node is computed
    to_compute: set[Node] = set()
    chains: dict[ObjectNode, list[MethodNode]] = {}
    for node in order:
        kind = node.kind
        if kind == "call":
            if node not in usable:
                to_compute.add(node)
        elif kind == "object":
            chains.setdefault(node, [])
        else:
            chains.setdefault(node.obj, []).append(node)
    replayed: dict[ObjectNode, int] = {}  # object -> index of the last call replayed

    def replay(obj: ObjectNode, upto: int) -> None:
        if replayed.get(obj, -2) >= upto:
            return
        replayed[obj] = upto
        to_compute.add(obj)
        to_compute.update(chains[obj][: upto + 1])

    for obj, calls in chains.items():
        last = -1
        for index, call in enumerate(calls):
            if call not in usable:
                last = index
        if last >= 0:
            replay(obj, last)
    while True:
        needed = set(leaves)
        wanted: list[tuple[ObjectNode, Node]] = []
        for node in to_compute:
            for parent in node.parents:
                needed.add(parent)
                if parent.kind == "object" and node.kind != "method":
                    wanted.append((parent, node))
        for leaf in leaves:
            if leaf.kind == "object":
                wanted.append((leaf, None))
        changed = False
        for obj, consumer in wanted:
            calls = chains[obj]
            # the calls made before the consumer was created (a leaf object: all of them)
            upto = len(calls) - 1 if consumer is None else sum(1 for c in calls if c.seq < consumer.seq) - 1
            if obj not in to_compute or replayed.get(obj, -2) < upto:
                before = len(to_compute)
                replay(obj, max(upto, replayed.get(obj, -1)))
                changed = changed or len(to_compute) != before
        if not changed:
            break
    return to_compute, needed - to_compute
