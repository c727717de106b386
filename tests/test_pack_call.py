"""``pack_call``: a node call goes to another process as the bytes of its pickle only when
that pickle is plain data (every class by reference to functionfuse or a built-in value),
and as the call itself (for cloudpickle) otherwise; ``unpack_call`` gives the same call back."""

from __future__ import annotations

import collections
import pickle

from functionfuse import workflow
from functionfuse.nodecall import CALL, NodeCall, make_template, pack_call, run_node_call, unpack_call


@workflow
def combine(*args, **kwargs):
    return args, kwargs


class Mine:  # a user's class: a worker may not import the module it lives in
    pass


def call_of(node, **parts) -> tuple:
    template, deps = make_template(node)
    call = NodeCall(node.name, "wf", CALL, None, template, (), None, False, None, node)
    for key, value in parts.items():
        setattr(call, key, value)
    return call, deps


def test_a_call_of_plain_values_goes_as_bytes_and_comes_back_the_same():
    root = combine(1).set_name("root")
    node = combine(root, 2, "x", 3.5, None, True, b"b", [root, (4, {"k": root[0]})], key={"a": [1, 2]}).set_name("n")
    call, deps = call_of(node, fingerprint="f" * 32)
    packed = pack_call(call)
    assert packed.__class__ is bytes and len(packed) < 400
    back = unpack_call(packed)
    assert (back.name, back.workflow_name, back.mode, back.fingerprint) == ("n", "wf", CALL, "f" * 32)
    assert back.node is None  # the driver's node stays in the driver
    root_value = ((1,), {})
    value, _, _ = run_node_call(back, (root_value,), node.func)
    assert value == ((root_value, 2, "x", 3.5, None, True, b"b", [root_value, (4, {"k": (1,)})]), {"key": {"a": [1, 2]}})
    assert unpack_call(call) is call  # an unpacked call passes through


def test_a_call_with_anything_else_goes_as_it_is():
    root = combine(1).set_name("root")
    Point = collections.namedtuple("Point", "x y")
    for odd in (Mine(), Mine, lambda: 1, Point(1, 2), {1, 2}, [[[[Mine()]]]], {"k": Mine()}, {Mine: 1}):
        call, _ = call_of(combine(root, odd))
        assert pack_call(call) is call, odd
    call, _ = call_of(combine(root, key=Mine()))
    assert pack_call(call) is call  # a keyword argument too
    call, _ = call_of(combine(root, [0] * 1000))
    assert pack_call(call) is call  # too many values to check: as it is
    # any part a worker needs cloudpickle (or the backend's care) for
    for parts in ({"func": combine}, {"callables": (print,)}, {"storage": object()}, {"hooks": object()},
                  {"timeout": 1.0}, {"retries": object()}):
        call, _ = call_of(combine(root, 1), **parts)
        assert pack_call(call) is call, parts
    call, _ = call_of(combine(root, 1))
    assert pickle.loads(pack_call(call)).template.args[1] == 1
