"""Tests written against the survivors of tools/mutation.sh for functionfuse/graph.py.

``closure``: the workflow a leaf defines holds every descendant of its roots, however
many children each has (the first child, a second, a list from the third on are kept
three ways in a node), and every other parent of those descendants.
"""

from __future__ import annotations

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.graph import closure


@workflow
def plus(*xs):
    return sum(xs) + 1


def test_the_closure_takes_descendants_with_one_two_and_many_children_and_their_other_parents():
    root = plus(0).set_name("root")
    leaf = plus(root).set_name("leaf")
    side = plus(root).set_name("side")  # a descendant of the root, not an ancestor of the leaf
    # side has three children (first, second, a list from the third on), b has two, c one
    b, c, d = plus(side).set_name("b"), plus(side).set_name("c"), plus(side).set_name("d")
    e1 = plus(b).set_name("e1")
    outside = plus(7).set_name("outside")  # a root of its own, reached only as e2's other parent
    e2 = plus(b, outside).set_name("e2")
    f = plus(c).set_name("f")
    expected = [root, leaf, side, b, c, d, e1, outside, e2, f]
    assert closure([leaf]) == expected  # in creation order
    assert closure([e2]) == expected  # from any leaf of the same workflow
    values = dict(zip(("leaf", "d", "e2", "f"), LocalWorkflow(leaf, d, e2, f).run()))
    assert values == {"leaf": 2, "d": 3, "e2": 12, "f": 4}
