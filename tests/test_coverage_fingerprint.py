"""Fingerprints, the paths the main tests leave out: class members, closures, imports inside functions, odd values."""

import importlib
import sys
import textwrap
import threading

import numpy as np
import pytest

from functionfuse import workflow
from functionfuse.errors import UnfingerprintableError
from functionfuse.fingerprint import (
    _package_version,
    code_fingerprint,
    code_manifest,
    describe_code_change,
    fingerprint_nodes,
    value_fingerprint,
)


@pytest.fixture
def load(tmp_path, monkeypatch):
    """Write modules (``pkg/mod`` for a package) into a fresh directory and import ``main`` from there."""
    count = [0]
    loaded: set = set()

    def load(files: dict, main: str):
        count[0] += 1
        directory = tmp_path / f"v{count[0]}"
        for name, source in files.items():
            path = directory / f"{name}.py"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source))
        names = {name.replace("/", ".").removesuffix(".__init__") for name in files}
        for name in names | {n.partition(".")[0] for n in names}:
            sys.modules.pop(name, None)
        loaded.update(names | {n.partition(".")[0] for n in names})
        monkeypatch.syspath_prepend(str(directory))
        importlib.invalidate_caches()
        return importlib.import_module(main)

    yield load
    for name in loaded:
        sys.modules.pop(name, None)


# ---------------------------------------------------------------------------
# what a class's members contribute
# ---------------------------------------------------------------------------

MEMBERS = """
    import functools

    @functools.lru_cache(maxsize=None)
    def cached_helper(x):
        return x + {cached}

    class Shape:
        @staticmethod
        def unit():
            return {static}

        @classmethod
        def make(cls):
            return cls()

        @property
        def area(self):
            return {prop}

        @functools.cached_property
        def perimeter(self):
            return {cprop}

        def scaled(self):
            return cached_helper(self.area)
"""
BASE = {"cached": 1, "static": 1, "prop": 2, "cprop": 3}


@pytest.mark.parametrize("member", sorted(BASE))
def test_a_change_inside_a_static_class_property_cached_or_lru_cached_member_changes_the_class_fingerprint(
    load, member
):
    before = code_fingerprint(load({"shapes": MEMBERS.format(**BASE)}, "shapes").Shape)
    assert code_fingerprint(load({"shapes": MEMBERS.format(**BASE)}, "shapes").Shape) == before
    changed = dict(BASE, **{member: 99})
    after_module = load({"shapes": MEMBERS.format(**changed)}, "shapes")
    assert code_fingerprint(after_module.Shape) != before
    # the manifest names the changed function: the member, or the lru_cache'd helper it reaches
    old = code_manifest(load({"shapes": MEMBERS.format(**BASE)}, "shapes").Shape)
    new = code_manifest(load({"shapes": MEMBERS.format(**changed)}, "shapes").Shape)
    expected = {"cached": "cached_helper", "static": "Shape.unit", "prop": "Shape.area", "cprop": "Shape.perimeter"}
    assert describe_code_change(old, new) == f"code of 'shapes:{expected[member]}' changed"


def test_a_bound_method_held_in_a_global_counts_its_function_and_its_instance(load):
    source = """
        class Greeter:
            def __init__(self, word):
                self.word = word
            def greet(self, name):
                return self.word + name
        greet = Greeter({word!r}).greet
        def run(name):
            return greet(name)
    """
    hello = code_fingerprint(load({"bound": source.format(word="hello ")}, "bound").run)
    assert code_fingerprint(load({"bound": source.format(word="hello ")}, "bound").run) == hello
    assert code_fingerprint(load({"bound": source.format(word="bye ")}, "bound").run) != hello


def test_the_docstring_of_a_class_defined_in_a_function_does_not_count_its_attributes_do(load):
    source = '''
        def make():
            class Local:
                """{doc}"""
                size = {size}
            return Local
    '''
    plain = code_fingerprint(load({"local": source.format(doc="one", size=1)}, "local").make)
    assert code_fingerprint(load({"local": source.format(doc="another text", size=1)}, "local").make) == plain
    assert code_fingerprint(load({"local": source.format(doc="one", size=2)}, "local").make) != plain


# ---------------------------------------------------------------------------
# names bound later, or never
# ---------------------------------------------------------------------------


def test_a_closure_cell_filled_after_the_fingerprint_recomputes_it_and_emptied_again_restores_it():
    def outer():
        def inner():
            return later  # noqa: F821 - bound below, after the first fingerprint

        fps = [code_fingerprint(inner), code_fingerprint(inner)]
        later = 5
        fps.append(code_fingerprint(inner))
        later = 6
        fps.append(code_fingerprint(inner))
        del later
        fps.append(code_fingerprint(inner))
        return fps

    empty, empty_again, five, six, emptied = outer()
    assert empty == empty_again == emptied
    assert len({empty, five, six}) == 3


def test_a_global_that_does_not_exist_yet_counts_once_it_is_defined(load):
    module = load({"late": "def run():\n    return not_defined_yet\n"}, "late")
    missing = code_fingerprint(module.run)
    module.not_defined_yet = 1
    one = code_fingerprint(module.run)
    module.not_defined_yet = 2
    assert len({missing, one, code_fingerprint(module.run)}) == 3


def test_a_user_module_attribute_that_appears_later_is_seen(load):
    module = load({"helpers_late": "", "uses_late": "import helpers_late\ndef run():\n    return helpers_late.factor\n"},
                  "uses_late")
    missing = code_fingerprint(module.run)
    module.helpers_late.factor = 3
    assert code_fingerprint(module.run) != missing


# ---------------------------------------------------------------------------
# imports inside a function
# ---------------------------------------------------------------------------

PACKAGE = {
    "shop/__init__": "from . import prices\n",  # only a module already imported can be looked into
    "shop/prices": "RATE = {rate}\n",
    "shop/orders": """
        def total(n):
            from .prices import RATE
            import json
            import shop_not_imported_anywhere
            return json.dumps(n * RATE)
    """,
}


def test_a_relative_import_inside_a_function_follows_the_imported_module(load):
    files = {name: source.format(rate=2) if name == "shop/prices" else source for name, source in PACKAGE.items()}
    two = code_fingerprint(load(files, "shop.orders").total)
    assert code_fingerprint(load(files, "shop.orders").total) == two
    files["shop/prices"] = "RATE = 3\n"
    assert code_fingerprint(load(files, "shop.orders").total) != two


def test_an_imported_user_module_used_whole_counts_by_name(load):
    source = "import {name}\ndef run():\n    return {name}\n"
    a = code_fingerprint(load({"mod_a": "", "whole": source.format(name="mod_a")}, "whole").run)
    b = code_fingerprint(load({"mod_b": "", "whole": source.format(name="mod_b")}, "whole").run)
    assert a != b


def test_a_function_typed_at_a_prompt_without_a_module_is_user_code():
    namespace: dict = {}
    exec(compile("def helper(x):\n    return x + 1\ndef run(x):\n    return helper(x)\n", "<stdin>", "exec"),
         namespace)
    assert namespace["run"].__module__ is None
    assert sorted(code_manifest(namespace["run"])) == ["?:helper", "?:run"]


def test_package_versions_come_from_the_distribution_and_not_for_the_standard_library():
    assert _package_version("numpy.linalg") == f"numpy=={np.__version__}"
    assert _package_version("json") == ""
    assert _package_version("no_such_distribution_anywhere") == ""


class Scaler:
    """A callable compared by value, so unhashable: no cache can hold it."""

    def __init__(self, k):
        self.k = k

    def __eq__(self, other):
        return isinstance(other, Scaler) and other.k == self.k

    def __call__(self, x):
        return self.k * x


def test_an_unhashable_callable_is_fingerprinted_each_time_by_its_state():
    assert code_fingerprint(Scaler(2)) == code_fingerprint(Scaler(2))
    assert code_fingerprint(Scaler(2)) != code_fingerprint(Scaler(3))
    assert code_fingerprint(len) != code_fingerprint(abs)


def test_describe_code_change_names_helpers_called_now_and_no_longer(load):
    source = "def helper():\n    return 1\ndef run():\n    return {body}\n"
    alone = code_manifest(load({"calls": source.format(body="1")}, "calls").run)
    calling = code_manifest(load({"calls": source.format(body="helper()")}, "calls").run)
    assert describe_code_change(alone, calling) == "code of 'calls:run' changed; now calls 'calls:helper'"
    assert describe_code_change(calling, alone) == "code of 'calls:run' changed; no longer calls 'calls:helper'"


# ---------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------


class Point:
    """Hashed by identity: two equal points are two dict keys."""

    def __init__(self, x):
        self.x = x


def test_two_keys_or_items_that_fingerprint_alike_both_count():
    one = value_fingerprint({Point(1): "a"})
    both = value_fingerprint({Point(1): "a", Point(1): "b"})
    assert len({one, both, value_fingerprint({Point(1): "b"})}) == 3
    assert value_fingerprint({Point(1), Point(1)}) != value_fingerprint({Point(1)})
    assert value_fingerprint({Point(1), Point(2)}) == value_fingerprint({Point(2), Point(1)})


def test_frozensets_of_structures_do_not_depend_on_order_and_sort_as_dict_keys():
    first = {frozenset({(1, 2), (3, 4)}): "a", frozenset({(5, 6)}): "b"}
    second = {frozenset({(5, 6)}): "b", frozenset({(3, 4), (1, 2)}): "a"}
    assert value_fingerprint(first) == value_fingerprint(second)
    assert value_fingerprint(first) != value_fingerprint({frozenset({(1, 2), (3, 4)}): "b", frozenset({(5, 6)}): "a"})


def test_buffers_count_type_format_shape_and_bytes_whatever_the_memory_layout():
    grid = np.arange(12, dtype=np.int64).reshape(3, 4)
    strided = memoryview(grid[:, ::2])
    assert not strided.c_contiguous
    assert value_fingerprint(strided) == value_fingerprint(memoryview(np.ascontiguousarray(grid[:, ::2])))
    assert value_fingerprint(strided) != value_fingerprint(memoryview(np.ascontiguousarray(grid[:, 1::2])))
    assert value_fingerprint(bytearray(b"ab")) != value_fingerprint(memoryview(b"ab"))
    assert value_fingerprint(bytearray(b"ab")) != value_fingerprint(bytearray(b"ba"))


def test_numpy_dtypes_and_scalars_by_type_and_value():
    assert value_fingerprint(np.dtype("int32")) == value_fingerprint(np.dtype("int32"))
    assert value_fingerprint(np.dtype("int32")) != value_fingerprint(np.dtype("int64"))
    assert value_fingerprint(np.float32(1.5)) != value_fingerprint(np.float64(1.5))


def test_a_value_nested_too_deeply_is_refused_with_the_reason():
    deep: list = []
    for _ in range(sys.getrecursionlimit() * 4):
        deep = [deep, object.__new__(Point)]
    with pytest.raises(UnfingerprintableError, match="nested too deeply"):
        value_fingerprint(deep)


def test_a_hook_answering_with_the_value_itself_is_refused_naming_the_type():
    with pytest.raises(UnfingerprintableError, match=r"returned the .*Point object itself"):
        value_fingerprint(Point(1), hook=lambda obj: obj)


@workflow
def pair(a, b):
    return (a, b)


def test_a_reference_outside_a_workflow_is_refused_naming_fingerprint_nodes():
    with pytest.raises(UnfingerprintableError, match=r"reference to a workflow node; use fingerprint_nodes\(\)"):
        value_fingerprint(pair(1, 2)[0])


@workflow
class Counter:
    def __init__(self, start):
        self.start = start

    def add(self, amount, guard):
        return self.start + amount


def test_an_unfingerprintable_method_argument_is_named_without_counting_the_instance():
    counter = Counter(0).set_name("counter")
    call = counter.add(1, threading.Lock()).set_name("adding")
    with pytest.raises(UnfingerprintableError) as raised:
        fingerprint_nodes([counter, call])
    assert raised.value.node_name == "adding"
    assert raised.value.argument == "guard"


@workflow
def gather(first, *rest):
    return (first, *rest)


def test_excluding_the_star_args_name_leaves_every_extra_positional_argument_out():
    def fps(*extra):
        node = gather(1, *extra).set_name("gather")
        return fingerprint_nodes([node], exclude={node: ["rest"]})[node]

    assert fps(2, 3) == fps(4, 5)
    node = gather(1, 2).set_name("gather")
    other = gather(7, 2).set_name("gather")
    assert fingerprint_nodes([node], exclude={node: ["rest"]})[node] != \
        fingerprint_nodes([other], exclude={other: ["rest"]})[other]


def test_a_user_module_imported_only_inside_the_function_counts_before_anything_imported_it(load):
    """A fresh process has not imported ``rates`` yet: a change to it must still change the fingerprint."""
    files = {
        "rates": "RATE = 2\n",
        "billing": "def total(n):\n    from rates import RATE\n    return n * RATE\n",
    }
    before = load(files, "billing").total
    assert "rates" not in sys.modules  # nothing imported it: only the function's body names it
    two = code_fingerprint(before)
    files["rates"] = "RATE = 3\n"
    after = load(files, "billing").total
    sys.modules.pop("rates", None)  # a fresh process again
    assert code_fingerprint(after) != two
    files["rates"] = "RATE = 2\n"
    again = load(files, "billing").total
    sys.modules.pop("rates", None)
    assert code_fingerprint(again) == two  # the same code gives the same fingerprint
    assert again(5) == 10 and code_fingerprint(again) == two  # and still after the function ran
