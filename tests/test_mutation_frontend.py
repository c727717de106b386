"""Tests written against the survivors of tools/mutation.sh in functionfuse/frontend.py.

mutmut runs every mutant in a process forked after the test modules were
imported, so what runs once at import time (the decorations at module level,
``_lazy_operators(Node, ...)``, the per-class argument kinds remembered in
``_ARG_KINDS``) is only reached by a test that does it again. The tests here
decorate, define classes and give a class its lazy operators inside the test,
and check what the user sees: names, parents, the values a function receives,
the messages.
"""

from __future__ import annotations

import functools
import uuid

import pytest

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import NodeExecutionError
from functionfuse.frontend import (
    ARGS_NESTED,
    ARGS_NONE,
    ARGS_TOP,
    Node,
    Ref,
    _lazy_operators,
    resolve_args,
)
from functionfuse.graph import consumers_count


@workflow
def echo(value, extra=None):
    return value


@workflow
def pair():
    return (1, [2, 3])


# ---------------------------------------------------------------------------
# the lazy operators a class is given
# ---------------------------------------------------------------------------

BINARY = [("add", "+"), ("sub", "-"), ("mul", "*"), ("truediv", "/"), ("floordiv", "//"), ("mod", "%"),
          ("pow", "**"), ("matmul", "@"), ("and", "&"), ("or", "|"), ("xor", "^"), ("lshift", "<<"),
          ("rshift", ">>")]
UNARY = [(lambda x: -x, "'-node'"), (lambda x: +x, "'+node'"), (abs, "'abs(node)'"), (lambda x: ~x, "'~node'"),
         (int, "'int(node)'"), (float, "'float(node)'"), (lambda x: [1, 2][x], "an index from it")]


def no_value(described: str, what: str) -> str:
    return (f"node {described} has no value until it runs, so {what} cannot be computed now; "
            "do it inside a @workflow function that takes the node as an argument")


def test_lazy_operators_give_a_class_every_operator_with_its_own_message():
    class Pending:
        def __init__(self, label):
            self.label = label

    _lazy_operators(Pending, lambda thing: f"<{thing.label}>")
    x = Pending("p")
    for op, symbol in BINARY:
        for other in (1, "s", 2.5):
            kind = type(other).__name__
            with pytest.raises(TypeError) as forward:
                getattr(x, f"__{op}__")(other)
            assert str(forward.value) == no_value("<p>", f"'node {symbol} {kind}'"), op
            with pytest.raises(TypeError) as reverse:
                getattr(x, f"__r{op}__")(other)
            assert str(reverse.value) == no_value("<p>", f"'{kind} {symbol} node'"), op
    # and through the operators themselves, where Python picks the method
    with pytest.raises(TypeError) as info:
        x @ 3
    assert str(info.value) == no_value("<p>", "'node @ int'")
    with pytest.raises(TypeError) as info:
        3 ** x
    assert str(info.value) == no_value("<p>", "'int ** node'")
    for expression, shown in UNARY:
        with pytest.raises(TypeError) as info:
            expression(x)
        assert str(info.value) == no_value("<p>", shown)


def test_lazy_truth_is_refused_in_user_code_and_granted_to_functionfuse_its_plugins_and_pluggy():
    class Pending:
        def __init__(self, label):
            self.label = label

    _lazy_operators(Pending, lambda thing: repr(thing.label))  # the message describes the node asked
    x = Pending("pending")
    with pytest.raises(TypeError) as info:
        bool(x)
    assert str(info.value) == no_value("'pending'", "its truth value ('if node:', 'node and x')")
    for module in ("functionfuse.backends", "plugins_builtin.localback", "pluggy._hooks", "contrib.kfp", "contribx"):
        # the module whose code asks (the frame calling bool), not the test's module nor frontend's
        assert eval("bool(x)", {"__name__": module, "x": x}) is True, module
    for module in ("my_pipeline", "tests.functionfuse", ""):
        with pytest.raises(TypeError, match=r"^node 'pending' has no value until it runs, so its truth value"):
            eval("bool(x)", {"__name__": module, "x": x})
    with pytest.raises(TypeError, match="its truth value"):
        eval("bool(x)", {"x": x})  # no __name__ at all: user code


# ---------------------------------------------------------------------------
# the decorator: names per function, the wrapper looks like the function
# ---------------------------------------------------------------------------


def _step_in_a():
    def step(x):
        return x + 1

    return step


def _step_in_b():
    def step(x):
        return x * 2

    return step


def number(node) -> int:
    """The counter part of a default name (``<qualname>_<NNNN>``)."""
    stem, _, digits = node.name.rpartition("_")
    assert stem == node.qualname and len(digits) == 4, node.name
    return int(digits)


def test_default_names_count_per_qualified_name():
    step_a, step_b = workflow(_step_in_a()), workflow(_step_in_b())  # two functions named `step`
    first_a, first_b, second_a, second_b = step_a(1), step_b(1), step_a(2), step_b(2)
    assert first_a.name.startswith(f"{_step_in_a.__qualname__}.<locals>.step_")
    assert first_b.name.startswith(f"{_step_in_b.__qualname__}.<locals>.step_")
    # interleaved, each counts on its own
    assert number(second_a) == number(first_a) + 1 and number(second_b) == number(first_b) + 1
    assert LocalWorkflow(first_a, second_a, first_b, workflow_name="steps").run() == [2, 3, 2]


def test_a_function_never_seen_before_starts_at_0000():
    def fresh(x):
        return x

    # a qualified name no earlier node in this process has (mutmut reruns the tests in one process)
    fresh.__qualname__ = f"fresh_{uuid.uuid4().hex}"
    node = workflow(fresh)(1)
    assert node.name == f"{fresh.__qualname__}_0000" and node.has_default_name
    assert workflow(fresh)(2).name == f"{fresh.__qualname__}_0001"  # decorated again: the same counter


def test_set_name_refuses_a_bad_name_as_a_node_name():
    from functionfuse.errors import InvalidNameError
    from functionfuse.frontend import validate_name

    node = echo(1)
    with pytest.raises(InvalidNameError) as info:
        node.set_name("a/b")
    assert str(info.value) == f"node name 'a/b' is not allowed: {SEPARATORS}"
    with pytest.raises(InvalidNameError) as info:
        node.set_name(None)
    assert str(info.value) == "node name must be a string, got NoneType None"
    assert node.has_default_name  # a refused name leaves the default
    with pytest.raises(InvalidNameError) as info:
        validate_name(".tmp")  # what is named: a node unless told
    assert str(info.value).startswith("node name '.tmp' is not allowed")


def test_the_decorated_function_looks_like_the_function_and_keeps_it():
    def scale(x, by=2):
        """Multiply."""
        return x * by

    decorated = workflow(scale)
    assert (decorated.__name__, decorated.__qualname__, decorated.__doc__) == (
        "scale", scale.__qualname__, "Multiply.")
    assert decorated.__wrapped__ is scale and decorated.func is scale  # fingerprints read the code from .func
    assert workflow(decorated) is decorated  # decorating twice changes nothing
    assert decorated(3).func is scale


def test_a_callable_without_a_qualified_name_can_be_decorated_and_run():
    def add(a, b):
        return a + b

    plus_one = workflow(functools.partial(add, 1))
    node = plus_one(2).set_name("plus_one")
    assert LocalWorkflow(node, workflow_name="partial").run() == 3


def test_a_decorated_class_looks_like_the_class_and_hides_its_members():
    class Meter:
        """Counts."""

        unit = "m"

        def __init__(self, start):
            self.total = start

        @classmethod
        def zero(cls):
            return cls(0)

        def add(self, n):
            self.total += n
            return self.total

    decorated = workflow(Meter)
    assert (decorated.__name__, decorated.__qualname__, decorated.__doc__, decorated.__module__) == (
        "Meter", Meter.__qualname__, "Counts.", __name__)
    assert decorated.__wrapped__ is Meter and decorated.cls is Meter
    assert workflow(decorated) is decorated
    # members are reached through a node: the class's own classmethod would build a plain instance
    for member in ("zero", "add", "unit"):
        assert not hasattr(decorated, member), member
    assert repr(decorated) == f"<workflow class {Meter.__qualname__}>"


# ---------------------------------------------------------------------------
# stateful nodes: names, the chain of calls, what is not a method
# ---------------------------------------------------------------------------


def test_stateful_nodes_are_named_per_class_and_method_and_chained():
    class Left:
        def __init__(self, start):
            self.total = start

        def push(self, n):
            self.total += n
            return self.total

        def pop(self):
            return self.total

    class Right(Left):
        pass

    Lw, Rw = workflow(Left), workflow(Right)
    left, right = Lw(0), Rw(10)
    p1 = left.push(1)
    p2 = left.push(p1)
    q1 = left.pop()
    r1 = right.push(5)
    # objects count per class, methods per method's qualified name (Right.push is Left.push)
    assert left.name.startswith(f"{Left.__qualname__}_") and right.name.startswith(f"{Right.__qualname__}_")
    assert number(Lw(1)) == number(left) + 1 and number(Rw(1)) == number(right) + 1
    push = number(p1)
    assert p1.name.startswith(f"{Left.__qualname__}.push_") and q1.name.startswith(f"{Left.__qualname__}.pop_")
    assert (number(p2), number(r1)) == (push + 1, push + 2)
    assert number(left.pop()) == number(q1) + 1
    assert repr(left) == f"<ObjectNode '{left.name}'>" and repr(p1) == f"<MethodNode '{p1.name}'>"
    assert repr(echo(1).set_name("e")) == "<Node 'e'>"
    # the first call follows the object; each later call follows the previous one
    assert (p1.chain_prev, p2.chain_prev, q1.chain_prev, r1.chain_prev) == (left, p1, p2, right)
    assert p1.parents == (left,) and r1.parents == (right,)
    assert p2.parents == (p1, left) and q1.parents == (p2, left)
    assert p1.data_parents == () and p2.data_parents == () and q1.data_parents == ()
    counts = {n.name: k for n, k in consumers_count([left, p1, p2, q1]).items()}
    assert counts == {left.name: 3, p1.name: 1, p2.name: 1, q1.name: 0}
    assert LocalWorkflow(q1, r1, workflow_name="chain").run() == [2, 15]


def test_a_stateful_node_gives_only_methods_and_no_protocols():
    class Box:
        size = 3

        def __init__(self):
            self.items = []

        def __enter__(self):
            return self

        def put(self, x):
            self.items.append(x)
            return len(self.items)

    box = workflow(Box)().set_name("box")
    with pytest.raises(AttributeError) as info:
        box.size
    assert str(info.value) == f"stateful node 'box' ({Box.__qualname__}) has no method 'size'"
    with pytest.raises(AttributeError) as info:
        box.missing
    assert str(info.value) == f"stateful node 'box' ({Box.__qualname__}) has no method 'missing'"
    # dunder names are protocol probes (copy, pickle, context managers), never method calls
    for dunder in ("__enter__", "__getstate__x", "__array__"):
        with pytest.raises(AttributeError) as info:
            getattr(box, dunder)
        assert str(info.value) == dunder
    assert box.put(1).method_name == "put"


# ---------------------------------------------------------------------------
# arguments: what is a dependency, what arrives
# ---------------------------------------------------------------------------


def test_argument_kinds_of_classes_seen_for_the_first_time():
    class Bag(list):
        pass

    class Opaque:
        def __init__(self, value):
            self.value = value

    class Marked(Node):
        __slots__ = ()

    class Part(Ref):
        __slots__ = ()

    source = echo(5).set_name("source")
    in_bag = echo(Bag([source, 1])).set_name("in_bag")
    assert in_bag.parents == (source,) and in_bag.argmode == ARGS_NESTED
    opaque = Opaque(7)
    plain = echo(opaque).set_name("plain")
    assert plain.parents == () and plain.argmode == ARGS_NONE
    assert resolve_args(plain, {})[0][0] is opaque
    marked = Marked(lambda: 9, "marked", (), {}).set_name("marked")
    takes_marked = echo(marked).set_name("takes_marked")
    assert takes_marked.parents == (marked,) and takes_marked.argmode == ARGS_TOP and takes_marked.slots == (0,)
    elsewhere = echo((8, 9)).set_name("elsewhere")  # not run: only Ref itself is resolved today
    assert echo(Part(elsewhere, (0,))).parents == (elsewhere,)
    assert echo(1, extra=Opaque(1)).parents == ()
    assert echo(1, extra=Bag([marked])).parents == (marked,)
    result = LocalWorkflow(in_bag, plain, takes_marked, workflow_name="kinds").run()
    assert result[0] == [5, 1] and type(result[0]) is Bag
    assert result[1] is opaque and result[2] == 9


def test_containers_without_nodes_arrive_as_given():
    given = [1, [2, 3], {"k": (4,)}]
    node = echo(given, extra={"a": [5]})
    assert node.argmode == ARGS_NONE and node.parents == ()
    args, kwargs = resolve_args(node, {})
    assert args[0] is given and kwargs["extra"] is node.kwargs["extra"]


class Labelled(dict):
    """A dict whose constructor needs a label first: rebuilt as a plain dict."""

    def __init__(self, label, items):
        super().__init__(items)
        self.label = label


class Couple(list):
    """A list whose constructor needs two values: rebuilt as a plain list."""

    def __init__(self, first, second):
        super().__init__([first, second])


class Trio(tuple):
    """A tuple (not a namedtuple) whose constructor needs three values: rebuilt as a plain tuple."""

    def __new__(cls, a, b, c):
        return super().__new__(cls, (a, b, c))


def test_containers_that_cannot_be_rebuilt_with_their_own_type_arrive_as_their_base_type():
    one, two = echo(1).set_name("one"), echo(2).set_name("two")
    argument = {"labelled": Labelled("x", {"a": one, "b": 3, two: "key"}), "couple": Couple(one, two),
                "trio": Trio(two, 0, one)}
    got = LocalWorkflow(echo(argument).set_name("got"), workflow_name="rebuild").run()
    assert got == {"labelled": {"a": 1, "b": 3, 2: "key"}, "couple": [1, 2], "trio": (2, 0, 1)}
    assert type(got["labelled"]) is dict and list(got["labelled"]) == ["a", "b", 2]
    assert type(got["couple"]) is list and type(got["trio"]) is tuple


# ---------------------------------------------------------------------------
# references: repr, and a key that does not fit names the reference
# ---------------------------------------------------------------------------


def test_a_reference_shows_every_key():
    p = pair().set_name("pair")
    assert repr(p[1]) == "Ref('pair'[1])"
    assert repr(p[1][0]["k"]) == "Ref('pair'[1][0]['k'])"
    with pytest.raises(TypeError, match=r"^a reference to node 'pair' cannot be iterated; index it instead"):
        iter(p[1])


@pytest.mark.parametrize("where", ["top", "keyword", "nested"])
@pytest.mark.parametrize("keys,message", [
    ((5,), "reference pair[5]: the value of node 'pair' is a tuple of 2 items, and [5] does not fit it: "
           "IndexError: tuple index out of range"),
    ((1, 7), "reference pair[1][7]: the value of node 'pair'[1] is a list of 2 items, and [7] does not fit it: "
             "IndexError: list index out of range"),
    (("k",), "reference pair['k']: the value of node 'pair' is a tuple of 2 items, and ['k'] does not fit it: "
             "TypeError: tuple indices must be integers or slices, not str"),
])
def test_a_key_that_does_not_fit_names_the_reference_and_the_value(where, keys, message):
    p = pair().set_name("pair")
    ref = p
    for key in keys:
        ref = ref[key]
    consumer = {"top": lambda: echo(ref), "keyword": lambda: echo(0, extra=ref), "nested": lambda: echo([ref])}[where]
    with pytest.raises(NodeExecutionError) as info:
        LocalWorkflow(consumer().set_name("consumer"), workflow_name="badref").run()
    assert str(info.value) == f"node 'consumer' of workflow 'badref' failed: BadReferenceError: {message}"
    assert type(info.value.__cause__).__name__ == "BadReferenceError"


# ---------------------------------------------------------------------------
# an argument left out of the fingerprint still arrives
# ---------------------------------------------------------------------------


def test_an_argument_left_out_of_the_fingerprint_arrives_unwrapped(tmp_path):
    from functionfuse import NoFingerprint
    from functionfuse.storage import storage_factory

    log: list = []
    wrapped = NoFingerprint(log)
    assert wrapped.value is log and repr(wrapped) == "NoFingerprint([])"

    @workflow
    def report(x, sink):
        sink.append(x)
        return (x, sink is log)

    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}})
    node = report(4, wrapped).set_name("report")
    assert node.argmode == ARGS_NESTED  # unwrapped when the arguments are resolved
    by_keyword = report(5, sink=NoFingerprint(log)).set_name("by_keyword")
    assert by_keyword.argmode == ARGS_NESTED
    assert LocalWorkflow(node, by_keyword, workflow_name="nofp").set_storage(storage).run() == [(4, True), (5, True)]
    assert log == [4, 5]


@workflow
def gather(*args, **kwargs):
    return args, kwargs


def test_top_level_dependencies_are_found_at_their_positions_once_each():
    a, b = pair().set_name("a"), echo(7).set_name("b")
    node = gather(0, b, "x", a[1], b, None).set_name("gather")
    assert node.parents == (b, a) and node.argmode == ARGS_TOP and node.slots == (1, 3, 4)
    assert b.children == [node] and a.children == [node]  # a consumer counted once per parent
    keyword = gather(b, k=a[1][0], plain=3).set_name("keyword")
    assert keyword.parents == (b, a) and keyword.argmode == ARGS_NESTED
    whole = gather(1, key=b).set_name("whole")
    assert whole.parents == (b,) and whole.argmode == ARGS_NESTED
    first, second, third = LocalWorkflow(node, keyword, whole, workflow_name="positions").run()
    assert first == ((0, 7, "x", [2, 3], 7, None), {})
    assert second == ((7,), {"k": 2, "plain": 3}) and third == ((1,), {"key": 7})


# ---------------------------------------------------------------------------
# names: each refusal says why, in the words of what is named
# ---------------------------------------------------------------------------

ESCAPES = "it would escape the storage root"
SEPARATORS = "names become storage keys and may not hold '/', '\\' or NUL"


@pytest.mark.parametrize("what", ["node", "workflow"])
def test_a_refused_name_is_quoted_with_its_reason(what):
    from functionfuse.errors import InvalidNameError
    from functionfuse.frontend import validate_name

    refused = {
        5: f"{what} name must be a string, got int 5",
        b"raw": f"{what} name must be a string, got bytes b'raw'",
        "": f"{what} name '' is not allowed: {ESCAPES}",
        ".": f"{what} name '.' is not allowed: {ESCAPES}",
        "..": f"{what} name '..' is not allowed: {ESCAPES}",
        "a/b": f"{what} name 'a/b' is not allowed: {SEPARATORS}",
        "a\\b": f"{what} name 'a\\\\b' is not allowed: {SEPARATORS}",
        "nul\x00": f"{what} name 'nul\\x00' is not allowed: {SEPARATORS}",
        ".ffmeta": f"{what} name '.ffmeta' is not allowed: names starting with '.' are the storage's own files "
                   "(temporaries, metadata)",
        "bad\udcff": f"{what} name 'bad\\udcff' is not allowed: it is not valid Unicode "
                     "(surrogates not allowed at position 3)",
        "x" * 201: f"{what} name {'x' * 40!r}... is longer than 200 bytes",
        "é" * 101: f"{what} name {'é' * 40!r}... is longer than 200 bytes",  # 202 bytes in UTF-8
    }
    for name, message in refused.items():
        with pytest.raises(InvalidNameError) as info:
            validate_name(name, what)
        assert str(info.value) == message, name
    for name in ("x" * 200, "é" * 100, "a.b", "a..", "node_0001", "ü"):  # 200 bytes is the most allowed
        assert validate_name(name, what) is name
    # names met for the first time in this process (a passed name is remembered and not checked again)
    fresh = uuid.uuid4().hex
    for name in ("x" * 168 + fresh, "é" * 84 + fresh):  # 200 bytes each
        assert validate_name(name, what) is name
    assert echo(1).set_name("é" * 100).name == "é" * 100


def test_a_container_before_a_node_and_a_class_first_seen_as_a_keyword():
    class KeywordBag(list):  # new to this process, and met first as a keyword argument
        pass

    a, b = echo(1).set_name("a"), echo(2).set_name("b")
    mixed = gather([a], b).set_name("mixed")  # nested, then top-level: the general path
    assert mixed.parents == (a, b) and mixed.argmode == ARGS_NESTED
    after_plain = gather([1, 2], b).set_name("after_plain")  # a container without nodes, then a node
    assert after_plain.parents == (b,) and after_plain.argmode == ARGS_TOP and after_plain.slots == (1,)
    by_keyword = gather(k=KeywordBag([a])).set_name("by_keyword")
    assert by_keyword.parents == (a,) and by_keyword.argmode == ARGS_NESTED
    got = LocalWorkflow(mixed, after_plain, by_keyword, workflow_name="mixed").run()
    assert got == [(([1], 2), {}), (([1, 2], 2), {}), ((), {"k": [1]})]
    assert type(got[2][1]["k"]) is KeywordBag


def test_a_callable_without_a_qualname_gets_a_default_name_and_runs():
    """functools.partial and callable objects have no __qualname__: the node is named as workflow() names them."""
    import functools

    from functionfuse import workflow
    from functionfuse.backends.builtin.localback import LocalWorkflow

    def power(x, p):
        return x ** p

    class Tripler:
        def __call__(self, x):
            return 3 * x

    square = workflow(functools.partial(power, p=2))
    triple = workflow(Tripler())
    a, b = square(4), triple(5)
    assert a.qualname == "partial" and a.name.startswith("partial_") and a.has_default_name
    assert b.qualname == "Tripler" and b.name.startswith("Tripler_")
    assert LocalWorkflow(a, b, workflow_name="callables").run() == [16, 15]


def test_a_new_pattern_of_dependency_positions_puts_each_value_in_its_place():
    from functionfuse import frontend

    @workflow
    def tens(i):
        return i * 10

    @workflow
    def gather(*xs):
        return xs

    positions = (5, 17, 33, 62)
    # a pattern no node of this process had before (the positions tuple of each pattern is shared)
    frontend._slot_patterns.pop(sum(1 << p for p in positions), None)
    node = gather(*[tens(p) if p in positions else p for p in range(64)])
    assert node.slots == positions
    assert LocalWorkflow(node).run() == tuple(p * 10 if p in positions else p for p in range(64))


def test_a_callable_object_with_a_name_but_no_qualname_names_its_nodes_by_that_name():
    class Scaler:
        def __init__(self):
            self.__name__ = "scale_by_two"  # as functools.wraps would give a wrapper object

        def __call__(self, x):
            return 2 * x

    scaler = Scaler()
    assert not hasattr(scaler, "__qualname__")
    node = workflow(scaler)(21)
    assert node.name.startswith("scale_by_two_") and LocalWorkflow(node).run() == 42


def test_the_argument_mode_is_read_off_slots_and_survives_a_template():
    """``Node.argmode`` has no slot of its own (a smaller node for the collector): ``slots`` is ``()``
    for no dependency, the positions of top-level ones, or ``None`` for anything else; the hot loops,
    ``resolve_args`` and the shipped template read it from there."""
    import pickle

    from functionfuse.nodecall import make_template

    source = echo(3).set_name("mode_source")
    none = echo(4).set_name("mode_none")
    top = echo(source, extra=None).set_name("mode_top_kw_plain")  # a plain keyword keeps ARGS_TOP
    nested = echo([source, 1]).set_name("mode_nested")
    by_keyword = echo(1, extra=source).set_name("mode_keyword")
    assert (none.slots, none.argmode) == ((), ARGS_NONE)
    assert (top.slots, top.argmode) == ((0,), ARGS_TOP)
    assert (nested.slots, nested.argmode) == (None, ARGS_NESTED)
    assert (by_keyword.slots, by_keyword.argmode) == (None, ARGS_NESTED)
    assert not hasattr(source, "__dict__") and not hasattr(source, "__weakref__")
    results = {source: 30}
    assert resolve_args(nested, results) == ((([30, 1]),), {})
    assert resolve_args(by_keyword, results) == ((1,), {"extra": 30})
    assert list(resolve_args(top, results)[0]) == [30]
    for node, want in ((nested, ([30, 1],)), (by_keyword, (1,)), (none, (4,))):
        template, deps = make_template(node)
        template = pickle.loads(pickle.dumps(template))  # as a worker gets it
        assert template.slots == node.slots
        args, _ = resolve_args(template, [results[dep] for dep in deps])  # values by placeholder index
        assert tuple(args) == want
    assert LocalWorkflow(none, top, nested, by_keyword, workflow_name="modes").run() == [4, 3, [3, 1], 1]
