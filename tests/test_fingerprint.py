"""Fingerprints: code that sees what a function depends on, values that are fast and safe, node calls chained."""

import copy
import importlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pluggy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from functionfuse import hookimpl, hookspecs, workflow
from functionfuse.errors import FunctionFuseError, UnfingerprintableError
from functionfuse.fingerprint import (
    NoFingerprint,
    args_fingerprint,
    call_fingerprint,
    code_fingerprint,
    code_manifest,
    describe_code_change,
    fingerprint_nodes,
    strip_no_fingerprint,
    value_fingerprint,
)
from functionfuse.markers import PROJECT


@pytest.fixture
def load(tmp_path, monkeypatch):
    """Write modules into a fresh directory and import them under their own names.

    Called again with other sources, it replaces the modules of the same
    names, as a user editing files and starting over would.
    """
    count = [0]
    loaded: set = set()

    def load(files: dict, main: str):
        count[0] += 1
        directory = tmp_path / f"v{count[0]}"
        directory.mkdir()
        for name, source in files.items():
            (directory / f"{name}.py").write_text(textwrap.dedent(source))
        for name in files:
            sys.modules.pop(name, None)
        loaded.update(files)
        monkeypatch.syspath_prepend(str(directory))
        importlib.invalidate_caches()
        return importlib.import_module(main)

    yield load
    for name in loaded:
        sys.modules.pop(name, None)


# ---------------------------------------------------------------------------
# code fingerprints
# ---------------------------------------------------------------------------

PLAIN = """
    import helpers

    SCALE = 10

    def scale(x, k=2):
        y = helpers.factor(x) * SCALE
        return [y * k for _ in range(3)]
"""

EDITED = '''
    """A module docstring, added."""
    import helpers

    SCALE = 10  # the scale


    def scale(x,
              k=2):
        """Scale x: a docstring, added."""
        # a comment
        y = (helpers.factor(x)
             *   SCALE)

        return [y * k
                for _ in range(3)]
'''

HELPERS = """
    from deep import offset

    def factor(x):
        return offset(x) + 1
"""

DEEP = """
    def offset(x):
        return x - 1
"""


def test_comment_docstring_and_formatting_edits_do_not_change_the_code_fingerprint(load):
    plain = load({"wf": PLAIN, "helpers": HELPERS, "deep": DEEP}, "wf")
    before = code_fingerprint(plain.scale)
    edited = load({"wf": EDITED, "helpers": HELPERS, "deep": DEEP}, "wf")
    assert edited.scale is not plain.scale
    assert code_fingerprint(edited.scale) == before
    # ... while a real edit does change it
    changed = load({"wf": PLAIN.replace("range(3)", "range(4)"), "helpers": HELPERS, "deep": DEEP}, "wf")
    assert code_fingerprint(changed.scale) != before


def test_renaming_a_local_variable_does_not_count_but_renaming_an_argument_does(load):
    base = code_fingerprint(load({"wf": "def f(a):\n    b = a + 1\n    return b\n"}, "wf").f)
    assert code_fingerprint(load({"wf": "def f(a):\n    total = a + 1\n    return total\n"}, "wf").f) == base
    assert code_fingerprint(load({"wf": "def f(x):\n    b = x + 1\n    return b\n"}, "wf").f) != base


def test_a_changed_helper_two_calls_deep_changes_the_code_fingerprint(load):
    first = load({"wf": PLAIN, "helpers": HELPERS, "deep": DEEP}, "wf")
    before, manifest = code_fingerprint(first.scale), code_manifest(first.scale)
    assert set(manifest) == {"wf:scale", "helpers:factor", "deep:offset"}
    second = load({"wf": PLAIN, "helpers": HELPERS, "deep": DEEP.replace("x - 1", "x - 2")}, "wf")
    assert code_fingerprint(second.scale) != before
    assert describe_code_change(manifest, code_manifest(second.scale)) == "code of 'deep:offset' changed"


def test_a_changed_module_constant_changes_the_code_fingerprint(load):
    before = code_fingerprint(load({"wf": PLAIN, "helpers": HELPERS, "deep": DEEP}, "wf").scale)
    after = load({"wf": PLAIN.replace("SCALE = 10", "SCALE = 11"), "helpers": HELPERS, "deep": DEEP}, "wf")
    assert code_fingerprint(after.scale) != before


def test_a_constant_read_through_a_module_attribute_counts(load):
    source = "import cfg\n\ndef f(x):\n    return x * cfg.SCALE\n"
    before = code_fingerprint(load({"wf": source, "cfg": "SCALE = 2\n"}, "wf").f)
    assert code_fingerprint(load({"wf": source, "cfg": "SCALE = 3\n"}, "wf").f) != before
    assert code_fingerprint(load({"wf": source, "cfg": "SCALE = 2\nOTHER = 1\n"}, "wf").f) == before


def test_rebinding_a_global_in_the_same_process_is_seen(load):
    """A notebook cell run again rebinds the constant; the function object stays the same."""
    module = load({"wf": PLAIN, "helpers": HELPERS, "deep": DEEP}, "wf")
    before = code_fingerprint(module.scale)
    module.SCALE = 12
    assert code_fingerprint(module.scale) != before
    module.SCALE = 10
    assert code_fingerprint(module.scale) == before
    sys.modules["deep"].offset = lambda x: x  # helpers bound `offset` at import: not what runs
    assert code_fingerprint(module.scale) == before
    sys.modules["helpers"].offset = lambda x: x
    assert code_fingerprint(module.scale) != before


def test_a_changed_closure_value_changes_the_code_fingerprint():
    def make(k):
        def scaled(x):
            return x * k

        return scaled

    assert code_fingerprint(make(2)) == code_fingerprint(make(2))
    assert code_fingerprint(make(2)) != code_fingerprint(make(3))


def test_a_changed_default_argument_changes_the_code_fingerprint(load):
    source = "def f(x, k=2, *, mode='a'):\n    return x * k, mode\n"
    before = code_fingerprint(load({"wf": source}, "wf").f)
    assert code_fingerprint(load({"wf": source.replace("k=2", "k=3")}, "wf").f) != before
    assert code_fingerprint(load({"wf": source.replace("'a'", "'b'")}, "wf").f) != before
    module = load({"wf": source}, "wf")
    assert code_fingerprint(module.f) == before
    module.f.__kwdefaults__ = {"mode": "c"}
    assert code_fingerprint(module.f) != before


def uses_the_standard_library(path):
    return json.dumps(os.path.join(path, "x")) + str(threading.active_count())


def test_standard_library_calls_count_by_name_not_by_code():
    assert code_manifest(uses_the_standard_library) == {
        f"{__name__}:uses_the_standard_library": code_manifest(uses_the_standard_library)[
            f"{__name__}:uses_the_standard_library"
        ]
    }

    def other(path):
        return json.loads(os.path.join(path, "x")) + str(threading.active_count())

    other.__name__ = other.__qualname__ = "uses_the_standard_library"
    assert code_fingerprint(other) != code_fingerprint(uses_the_standard_library)  # which function counts


def test_installed_packages_count_by_name_and_optionally_by_version():
    def norm(a):
        return np.linalg.norm(a)

    assert set(code_manifest(norm)) == {f"{__name__}:{norm.__qualname__}"}
    assert code_fingerprint(norm, include_package_versions=True) != code_fingerprint(norm)
    assert code_fingerprint(norm, include_package_versions=True) == code_fingerprint(norm, include_package_versions=True)


def test_mutual_recursion_and_long_helper_chains_need_no_recursion(load):
    cycle = load({"wf": "def a(n):\n    return b(n - 1) if n else 0\n\ndef b(n):\n    return a(n)\n"}, "wf")
    assert code_fingerprint(cycle.a) != code_fingerprint(cycle.b)
    assert set(code_manifest(cycle.a)) == {"wf:a", "wf:b"}
    depth = 3 * sys.getrecursionlimit()
    chain = "\n".join(f"def h{i}(x):\n    return h{i + 1}(x) + 1\n" for i in range(depth)) + f"\ndef h{depth}(x):\n    return x\n"
    module = load({"chain": chain}, "chain")
    before = code_fingerprint(module.h0)
    assert len(code_manifest(module.h0)) == depth + 1
    edited = load({"chain": chain.replace(f"def h{depth}(x):\n    return x", f"def h{depth}(x):\n    return -x")}, "chain")
    assert code_fingerprint(edited.h0) != before


CLASSES = """
    class Base:
        def shift(self):
            return 1

    class Counter(Base):
        def __init__(self, start):
            self.n = start

        def add(self, k):
            self.n += k * self.shift()
            return self.n

        def total(self):
            return self.n
"""


def test_a_class_counts_its_methods_and_user_bases(load):
    before = code_fingerprint(load({"wfc": CLASSES}, "wfc").Counter)
    reordered = CLASSES.replace(
        "        def total(self):\n            return self.n\n", ""
    ).replace(
        "    class Counter(Base):\n",
        '    class Counter(Base):\n        """A docstring, added."""\n\n        def total(self):  # moved up\n'
        "            return self.n\n\n",
    )
    assert code_fingerprint(load({"wfc": reordered}, "wfc").Counter) == before  # name order, not source order
    assert code_fingerprint(load({"wfc": CLASSES.replace("return self.n\n", "return -self.n\n")}, "wfc").Counter) != before
    assert code_fingerprint(load({"wfc": CLASSES.replace("return 1", "return 2")}, "wfc").Counter) != before


def test_decorated_functions_and_classes_fingerprint_the_user_code():
    def double(x):
        return 2 * x

    assert code_fingerprint(workflow(double)) == code_fingerprint(double)

    class Thing:
        def run(self):
            return 1

    assert code_fingerprint(workflow(Thing)) == code_fingerprint(Thing)


# ---------------------------------------------------------------------------
# determinism across processes
# ---------------------------------------------------------------------------

CROSS_PROCESS = """
    import json, sys
    import numpy as np
    from functionfuse.fingerprint import code_fingerprint, value_fingerprint
    import wf

    import dataclasses, enum

    class Point:
        def __init__(self):
            self.tags = {"red", "green", "blue", "cyan"}
            self.xy = (1.5, -2)

    @dataclasses.dataclass
    class Settings:
        depth: int
        names: frozenset = frozenset({"n1", "n2", "n3"})

    class Mode(enum.Enum):
        FAST = "fast"
        SLOW = "slow"

    values = [
        {"b": 1, "a": [1, 2.5, None], "c": {"z", "y", "x"}},
        {"alpha", "beta", "gamma", "delta", "epsilon"},
        frozenset({"p", "q", "r"}),
        [({"k": (1, "v")}, [b"bytes", 3j]), {(1, 2): frozenset({"s", "t"})}],
        np.arange(12, dtype="float32").reshape(3, 4),
        np.array(["a", "bb"], dtype=object),
        Point(),
        Settings(3),
        [Mode.FAST, Mode.SLOW],
        code_fingerprint(Settings),
    ]
    print(json.dumps({
        "code": code_fingerprint(wf.scale),
        "values": [value_fingerprint(v) for v in values],
    }))
"""


def test_fingerprints_are_the_same_in_fresh_processes_with_other_hash_seeds(tmp_path):
    (tmp_path / "wf.py").write_text(textwrap.dedent(PLAIN.replace("import helpers", "").replace(
        "helpers.factor(x)", "len({'u', 'v', 'w'} & {x}) + (x in {'p', 'q', 'r', 's', 't'})"
    )))
    (tmp_path / "probe.py").write_text(textwrap.dedent(CROSS_PROCESS))
    outputs = []
    for seed in ("1", "2", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=os.pathsep.join([str(tmp_path)] + sys.path))
        done = subprocess.run([sys.executable, str(tmp_path / "probe.py")], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        outputs.append(json.loads(done.stdout))
    assert outputs[0] == outputs[1] == outputs[2]
    assert len(set(outputs[0]["values"])) == len(outputs[0]["values"])


# ---------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------


def test_numpy_dtype_and_shape_count_not_only_the_bytes():
    a = np.arange(8, dtype="int32")
    same_bytes = [a.view("float32"), a.view("uint8").reshape(32), a.reshape(2, 4), a.view("int16").reshape(4, 4)]
    fps = {value_fingerprint(x) for x in [a, *same_bytes]}
    assert len(fps) == 5
    assert value_fingerprint(a) == value_fingerprint(np.arange(8, dtype="int32"))
    # equal arrays are equal whatever their memory layout
    f = np.asfortranarray(np.arange(12).reshape(3, 4))
    assert value_fingerprint(f) == value_fingerprint(np.arange(12).reshape(3, 4))
    assert value_fingerprint(np.arange(12)[::2]) == value_fingerprint(np.arange(0, 12, 2))
    changed = a.copy()
    changed[5] = -1
    assert value_fingerprint(changed) != value_fingerprint(a)
    assert value_fingerprint(np.float32(1)) != value_fingerprint(np.float64(1)) != value_fingerprint(1.0)


def test_structured_and_datetime_arrays_count_their_fields_and_units():
    a = np.zeros(2, dtype=[("x", "<i4"), ("y", "<f8")])
    b = np.zeros(2, dtype=[("x", "<i4"), ("z", "<f8")])
    assert value_fingerprint(a) != value_fingerprint(b)
    assert value_fingerprint(np.array([1], "datetime64[s]")) != value_fingerprint(np.array([1], "datetime64[ms]"))


def test_a_dask_array_is_fingerprinted_by_its_graph_without_computing_it():
    import dask.array as da
    calls = []

    def block(x):
        calls.append(1)
        raise AssertionError("a fingerprint must not compute the array")

    lazy = da.ones((1000, 1000), chunks=(100, 100)).map_blocks(block, meta=np.array((), dtype=float))
    assert calls == []
    first = value_fingerprint(lazy)
    assert value_fingerprint([lazy, 1]) != first
    assert calls == []
    assert value_fingerprint(da.ones((4,), chunks=2)) == value_fingerprint(da.ones((4,), chunks=2))
    assert value_fingerprint(da.ones((4,), chunks=2)) != value_fingerprint(da.zeros((4,), chunks=2))


def test_pandas_objects_count_columns_and_index():
    import pandas as pd
    frame = pd.DataFrame({"a": [1, 2], "b": [3.0, 4.0]})
    assert value_fingerprint(frame) == value_fingerprint(frame.copy())
    assert value_fingerprint(frame) != value_fingerprint(frame.rename(columns={"b": "c"}))
    assert value_fingerprint(frame) != value_fingerprint(frame.set_axis([10, 11]))


def test_types_count_one_is_not_one_point_zero_nor_true():
    assert len({value_fingerprint(v) for v in (1, 1.0, True, "1", b"1", (1,), [1], {1}, frozenset({1}))}) == 9


def test_instances_of_user_classes_count_their_state_and_their_class_code():
    class Config:
        def __init__(self, depth):
            self.depth = depth
            self.names = {"a", "b"}

    assert value_fingerprint(Config(3)) == value_fingerprint(Config(3))
    assert value_fingerprint(Config(3)) != value_fingerprint(Config(4))

    class Other(Config):
        pass

    assert value_fingerprint(Other(3)) != value_fingerprint(Config(3))


def test_cyclic_values_are_fingerprinted_deterministically():
    a = [1, 2]
    a.append(a)
    b = [1, 2]
    b.append(b)
    assert value_fingerprint(a) == value_fingerprint(b)
    assert value_fingerprint(a) != value_fingerprint([1, 2, [1, 2]])


@pytest.mark.parametrize("value", [
    threading.Lock(),
    (i for i in range(3)),
    [1, {"deep": threading.RLock()}],
], ids=["lock", "generator", "nested-lock"])
def test_values_without_a_deterministic_fingerprint_raise(value):
    with pytest.raises(UnfingerprintableError) as raised:
        value_fingerprint(value)
    assert isinstance(raised.value, FunctionFuseError)
    assert "ff_fingerprint" in str(raised.value) and "NoFingerprint" in str(raised.value)


def test_open_files_raise():
    with open(__file__) as handle:
        with pytest.raises(UnfingerprintableError, match="TextIOWrapper"):
            value_fingerprint(handle)


class Handle:
    """A user type whose identity is a path, holding a lock that pickle refuses."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()


class HandleFingerprints:
    @hookimpl
    def ff_fingerprint(self, obj):
        if isinstance(obj, Handle):
            return obj.path
        return None


def test_hook_ff_fingerprint():
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(HandleFingerprints())
    hook = pm.hook.ff_fingerprint
    with pytest.raises(UnfingerprintableError):
        value_fingerprint(Handle("/data/a"))
    assert value_fingerprint(Handle("/data/a"), hook=hook) == value_fingerprint(Handle("/data/a"), hook=hook)
    assert value_fingerprint(Handle("/data/a"), hook=hook) != value_fingerprint(Handle("/data/b"), hook=hook)
    # nested values reach the hook too, and the hook is asked only for types the built-ins do not know
    assert value_fingerprint({"h": [Handle("/data/a")]}, hook=hook) != value_fingerprint({"h": [Handle("/b")]}, hook=hook)
    assert value_fingerprint([1, "x"], hook=hook) == value_fingerprint([1, "x"])

    @workflow
    def read(handle, n):
        return n

    node = read(Handle("/data/a"), 1)
    assert fingerprint_nodes([node], hook=hook)[node] == fingerprint_nodes([read(Handle("/data/a"), 1)], hook=hook).popitem()[1]


def test_a_hook_answer_that_is_a_value_is_fingerprinted_in_its_place():
    def hook(obj):
        return (obj.path, 1) if isinstance(obj, Handle) else None

    assert value_fingerprint(Handle("p"), hook=hook) != value_fingerprint(Handle("q"), hook=hook)


atoms = (
    st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.booleans()
    | st.none()
)
values = st.recursive(
    atoms,
    lambda inner: st.lists(inner, max_size=4)
    | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    | st.frozensets(st.text(max_size=4), max_size=4),
    max_leaves=12,
)


def rebuilt(value):
    """An equal value made of other objects, its dicts in reverse insertion order."""
    copied = pickle.loads(pickle.dumps(copy.deepcopy(value)))
    if isinstance(copied, dict):
        return {k: rebuilt(copied[k]) for k in reversed(list(copied))}
    if isinstance(copied, list):
        return [rebuilt(v) for v in copied]
    if isinstance(copied, tuple):
        return tuple(rebuilt(v) for v in copied)
    return copied


@settings(max_examples=300, deadline=None)
@given(values)
def test_equal_values_give_equal_fingerprints(value):
    assert value_fingerprint(rebuilt(value)) == value_fingerprint(value)


@settings(max_examples=300, deadline=None)
@given(values, values)
def test_unequal_values_give_different_fingerprints(a, b):
    if a != b:
        assert value_fingerprint(a) != value_fingerprint(b)


# ---------------------------------------------------------------------------
# node calls
# ---------------------------------------------------------------------------


@workflow
def add(a, b):
    return a + b


@workflow
def split(x):
    return x, x + 1


@workflow
def collect(*values, scale=1):
    return [v * scale for v in values]


@workflow
class Tally:
    def __init__(self, start):
        self.n = start

    def add(self, k):
        self.n += k
        return self.n


def test_a_node_fingerprint_is_the_merkle_combination_of_code_arguments_and_parents():
    one = add(1, 2)
    two = add(one, [one, {"k": one}])
    details = {}
    fps = fingerprint_nodes([one, two], details=details)
    for node in (one, two):
        expected = call_fingerprint(
            code_fingerprint(node.func), args_fingerprint(node, fps), [fps[p] for p in node.parents]
        )
        assert fps[node] == expected
        assert details[node] == (code_fingerprint(node.func), args_fingerprint(node, fps))


def test_inserting_a_node_keeps_the_fingerprints_of_the_others():
    """The issue's example: default names shift, fingerprints do not."""

    @workflow
    def load(x):
        return x * 10

    first = [load(1), load(2)]
    fp1 = fingerprint_nodes([*first, collect(*first)])
    extra = load(7)
    second = [load(1), load(2)]
    final = collect(extra, *second)
    fp2 = fingerprint_nodes([extra, *second, final])
    assert [fp1[n] for n in first] == [fp2[n] for n in second]
    assert first[0].name != second[0].name
    assert fp2[final] not in fp1.values()


def test_literal_arguments_parents_and_references_count():
    base = add(1, 2)
    fps = fingerprint_nodes([base, add(1, 2)])
    assert len(set(fps.values())) == 1  # a rebuilt graph: the same calls
    assert len(set(fingerprint_nodes([add(1, 2), add(2, 1), add(1, 2.0), add(1, b=2)]).values())) == 4
    pair = split(3)
    first, second = add(pair[0], 0), add(pair[1], 0)
    fps = fingerprint_nodes([pair, first, second])
    assert fps[first] != fps[second]
    nested_a, nested_b = collect([pair[0], {"x": pair}]), collect([pair[1], {"x": pair}])
    fps = fingerprint_nodes([pair, nested_a, nested_b])
    assert fps[nested_a] != fps[nested_b]


def test_a_changed_parent_changes_every_descendant():
    top, top2 = add(1, 1), add(1, 2)
    mid, mid2 = add(top, 1), add(top2, 1)
    end, end2 = collect(mid, scale=2), collect(mid2, scale=2)
    fps = fingerprint_nodes([top, top2, mid, mid2, end, end2])
    assert fps[mid] != fps[mid2] and fps[end] != fps[end2]


def test_versions_count_and_propagate():
    top, child = add(1, 1), None
    child = add(top, 1)
    plain = fingerprint_nodes([top, child])
    versioned = fingerprint_nodes([top, child], versions={top: "2"})
    assert plain[top] != versioned[top] and plain[child] != versioned[child]


def test_method_calls_chain_through_the_previous_call_on_the_object():
    def calls(first_k):
        tally = Tally(10)
        a = tally.add(first_k)
        b = tally.add(5)
        return fingerprint_nodes([tally, a, b]), tally, a, b

    fps1, t1, a1, b1 = calls(1)
    fps2, t2, a2, b2 = calls(2)
    assert fps1[t1] == fps2[t2]
    assert fps1[a1] != fps2[a2]
    assert fps1[b1] != fps2[b2]  # same call, but after a different one
    fps3, t3, a3, b3 = calls(1)
    assert (fps1[a1], fps1[b1]) == (fps3[a3], fps3[b3])


def test_an_unfingerprintable_argument_names_the_node_and_the_argument():
    @workflow
    def load(path, fh, *rest, mode="r"):
        return path

    lock = threading.Lock()
    cases = [
        (load("p", lock).set_name("load_data"), "fh"),
        (load("p", 1, 2, lock).set_name("load_data"), "rest[1]"),
        (load("p", 1, mode=[lock]).set_name("load_data"), "mode"),
        (load("p", [add(1, 1), lock]).set_name("load_data"), "fh"),
    ]
    for node, argument in cases:
        with pytest.raises(UnfingerprintableError) as raised:
            fingerprint_nodes([p for p in node.parents] + [node])
        error = raised.value
        assert (error.node_name, error.argument) == ("load_data", argument)
        message = str(error)
        assert "'load_data'" in message and repr(argument) in message and "_thread.lock" in message
        assert "ff_fingerprint" in message and "NoFingerprint(" in message


def test_no_fingerprint_leaves_an_argument_out_of_the_key():
    @workflow
    def report(x, progress):
        return x

    a = report(1, NoFingerprint(threading.Lock()))
    b = report(1, NoFingerprint(print))
    c = report(2, NoFingerprint(print))
    fps = fingerprint_nodes([a, b, c])
    assert fps[a] == fps[b] != fps[c]
    args, kwargs = strip_no_fingerprint(a.args, {"k": NoFingerprint(3)})
    assert args[1].__class__ is type(threading.Lock()) and kwargs == {"k": 3}


def test_excluding_arguments_by_name():
    @workflow
    def train(data, seed, *, log=None):
        return data

    a, b = train([1, 2], 1, log=threading.Lock()), train([1, 2], 2, log=threading.Lock())
    fps = fingerprint_nodes([a, b], exclude={a: ["seed", "log"], b: ["seed", "log"]})
    assert fps[a] == fps[b]
    with pytest.raises(FunctionFuseError, match="no_such"):
        fingerprint_nodes([a], exclude={a: ["no_such"]})


def test_a_parent_missing_from_the_order_is_a_clear_error():
    top = add(1, 1)
    with pytest.raises(ValueError, match="run order"):
        fingerprint_nodes([add(top, 1)])


def test_a_long_chain_needs_no_recursion():
    node = add(0, 0)
    order = [node]
    for _ in range(3 * sys.getrecursionlimit()):
        node = add(node, [node[0], {"k": 1}])
        order.append(node)
    fps = fingerprint_nodes(order)
    assert len(set(fps.values())) == len(order)


class PickledLater:
    def __init__(self, start):
        self.start = start


def test_pickling_a_class_does_not_change_its_fingerprint():
    import pickle

    from functionfuse.fingerprint import clear_caches, code_fingerprint

    clear_caches()
    before = code_fingerprint(PickledLater)
    pickle.dumps(PickledLater(1))  # copyreg caches __slotnames__ on the class
    assert "__slotnames__" in vars(PickledLater)
    clear_caches()
    assert code_fingerprint(PickledLater) == before
