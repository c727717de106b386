"""The scientist's side: the ``@workflow`` decorator and the lazy nodes it makes.

A node is a description of one call: the function, its arguments (which may
hold other nodes and references ``node[i]``), and a name. Nothing runs until
a backend runs the workflow; results live in the run, never on the nodes, so
the same nodes can be run again, by any backend.

>>> from functionfuse import workflow
>>> @workflow
... def add(a, b):
...     return a + b
>>> n1 = add(1, 1).set_name("node1")
>>> n2 = add(n1, 1)
>>> n2.parents == (n1,)
True
"""

from __future__ import annotations

import functools
from collections import defaultdict
import itertools
import sys
from typing import Any, Callable

from .errors import InvalidNameError, NotANodeError

__all__ = [
    "Node",
    "ObjectNode",
    "MethodNode",
    "Ref",
    "WorkflowClass",
    "workflow",
    "task",
    "validate_name",
    "resolve_args",
]

# Creation order: a node can only take nodes that exist already as arguments,
# so sorting by this number is a topological order, and it breaks ties
# deterministically.
_creation_counter = itertools.count()
# Default names count per qualname, so running a script again gives the same names.
_name_counters: dict[str, itertools.count] = {}

#: how much work resolving a node's arguments is (``Node.argmode``)
ARGS_NONE = 0  # no dependencies: the arguments as given
ARGS_TOP = 1  # dependencies only as top-level positional arguments (at ``Node.slots``)
ARGS_NESTED = 2  # anything else: nested in containers, or keyword arguments

_CONTAINERS = (list, tuple, dict, set, frozenset)
_ATOMS = frozenset({int, float, str, bytes, bool, type(None), complex})
_MAX_NAME_BYTES = 200
# the argument positions (below 64) of top-level dependencies as bits -> Node.slots, one tuple per pattern
_slot_patterns: dict[int, tuple] = {}


def _slot_pattern(mask: int) -> tuple:
    slots = tuple(position for position in range(mask.bit_length()) if mask >> position & 1)
    if len(_slot_patterns) < 4096:
        _slot_patterns[mask] = slots
    return slots
#: ``Node.kwargs`` of every node called without keywords (never changed)
_NO_KWARGS: dict = {}


def validate_name(name: Any, what: str = "node") -> str:
    """Return ``name`` if it is safe as a storage key, else raise :class:`InvalidNameError`.

    Refused: non-strings, the empty string, ``.`` and ``..``, anything holding a
    path separator or NUL, names starting with ``.`` (the storage's own files:
    ``.ff-tmp-*`` temporaries, ``.ffmeta``), names that are not valid Unicode
    (a lone surrogate cannot become a file name), and names longer than 200 bytes.
    """
    if name in _valid_names and name.__class__ is str:  # checked before (every save checks its names)
        return name
    if not isinstance(name, str):
        raise InvalidNameError(f"{what} name must be a string, got {type(name).__name__} {name!r}")
    if name in ("", ".", ".."):
        raise InvalidNameError(f"{what} name {name!r} is not allowed: it would escape the storage root")
    if "/" in name or "\\" in name or "\x00" in name:
        raise InvalidNameError(
            f"{what} name {name!r} is not allowed: names become storage keys and may not hold '/', '\\' or NUL"
        )
    if name[0] == ".":
        raise InvalidNameError(
            f"{what} name {name!r} is not allowed: names starting with '.' are the storage's own files "
            "(temporaries, metadata)"
        )
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidNameError(
            f"{what} name {name!r} is not allowed: it is not valid Unicode ({exc.reason} at position {exc.start})"
        ) from None
    if size > _MAX_NAME_BYTES:
        raise InvalidNameError(f"{what} name {name[:40]!r}... is longer than {_MAX_NAME_BYTES} bytes")
    if len(_valid_names) >= _VALID_NAMES_KEPT:
        _valid_names.clear()
    if name.__class__ is str:  # a str subclass may compare equal to a name it does not behave like
        _valid_names.add(name)
    return name


# Names that passed validate_name (whatever ``what`` was: the rules are the same), bounded.
_valid_names: set[str] = set()
_VALID_NAMES_KEPT = 1 << 17


_INTERNAL_MODULES = ("functionfuse", "plugins_builtin", "pluggy", "contrib")


def _no_value(node_name: str, what: str) -> TypeError:
    return TypeError(
        f"node {node_name} has no value until it runs, so {what} cannot be computed now; "
        "do it inside a @workflow function that takes the node as an argument"
    )


def _lazy_operators(cls: type, describe: Callable[[Any], str]) -> None:
    """Give ``cls`` (Node, Ref) a ``__bool__`` and arithmetic operators that say a node has no value yet."""

    def truth(self: Any) -> bool:
        # Only the user's own code is told: functionfuse's modules (and plugins built on it) may
        # still write `node or default`; a node is an object there, and objects are true.
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith(_INTERNAL_MODULES):
            return True
        raise _no_value(describe(self), "its truth value ('if node:', 'node and x')")

    cls.__bool__ = truth
    for op, symbol in (("add", "+"), ("sub", "-"), ("mul", "*"), ("truediv", "/"), ("floordiv", "//"),
                       ("mod", "%"), ("pow", "**"), ("matmul", "@"), ("and", "&"), ("or", "|"), ("xor", "^"),
                       ("lshift", "<<"), ("rshift", ">>")):
        def forward(self: Any, other: Any, symbol: str = symbol) -> Any:
            raise _no_value(describe(self), f"'node {symbol} {type(other).__name__}'")

        def reverse(self: Any, other: Any, symbol: str = symbol) -> Any:
            raise _no_value(describe(self), f"'{type(other).__name__} {symbol} node'")

        setattr(cls, f"__{op}__", forward)
        setattr(cls, f"__r{op}__", reverse)
    for op, symbol in (("neg", "-node"), ("pos", "+node"), ("abs", "abs(node)"), ("invert", "~node"),
                       ("int", "int(node)"), ("float", "float(node)"), ("index", "an index from it")):
        def unary(self: Any, symbol: str = symbol) -> Any:
            raise _no_value(describe(self), repr(symbol) if "node" in symbol else symbol)

        setattr(cls, f"__{op}__", unary)


class Ref:
    """A reference to part of a node's result: ``node[i]``, ``node["key"]``, ``node[0][1]``.

    The referenced node is the dependency; the keys are applied to its result
    when the consumer runs.
    """

    __slots__ = ("node", "keys")

    def __init__(self, node: Node, keys: tuple):
        self.node = node
        self.keys = keys

    def __getitem__(self, key: Any) -> Ref:
        return Ref(self.node, self.keys + (key,))

    def __iter__(self):
        raise TypeError(f"a reference to node {self.node.name!r} cannot be iterated; index it instead: ref[0]")

    def __repr__(self) -> str:
        return f"Ref({self.node.name!r}{''.join(f'[{k!r}]' for k in self.keys)})"

    def resolve(self, value: Any) -> Any:
        """Apply the keys to the referenced node's result (a key that does not fit names the node)."""
        result = value
        try:
            for key in self.keys:
                result = result[key]
        except (IndexError, KeyError, TypeError):
            from .validate import apply_keys

            apply_keys(value, self.keys, self.node.name)  # raises BadReferenceError, naming the node
            raise
        return result


class NoFingerprint:
    """Wrap a top-level argument to leave its value out of the node's fingerprint.

    For arguments that cannot be fingerprinted (an open connection, a lock)
    or should not count (a progress callback, a logger). The argument's
    position still counts; its value does not, so changing it never
    recomputes the node. The function receives the wrapped value itself (a top-level
    argument is unwrapped before the call).

    >>> from functionfuse.fingerprint import value_fingerprint
    >>> value_fingerprint(NoFingerprint(open)) == value_fingerprint(NoFingerprint(print))
    True
    """

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __repr__(self) -> str:
        return f"NoFingerprint({self.value!r})"


def _scan_nested(obj: Any, parents: list) -> bool:
    """Append the nodes held anywhere inside ``obj`` to ``parents``; True if any. No recursion."""
    found = False
    stack = [obj]
    while stack:
        item = stack.pop()
        cls = item.__class__
        if isinstance(item, Node):
            parents.append(item)
            found = True
        elif cls is Ref:
            parents.append(item.node)
            found = True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, _CONTAINERS):
            stack.extend(item)
    return found


def _children(container: Any) -> list:
    if isinstance(container, dict):
        flat: list = []
        for key, value in container.items():
            flat.append(key)
            flat.append(value)
        return flat
    return list(container)


def _rebuild(container: Any, out: list) -> Any:
    """A container of the same type as ``container`` holding ``out``."""
    cls = type(container)
    if isinstance(container, dict):
        pairs = zip(out[0::2], out[1::2])
        if isinstance(container, defaultdict):
            return cls(container.default_factory, pairs)  # its factory is its first argument
        try:
            return cls(pairs) if cls is not dict else dict(pairs)
        except TypeError:  # e.g. defaultdict, whose first argument is a factory
            return dict(zip(out[0::2], out[1::2]))
    if isinstance(container, tuple) and hasattr(container, "_fields"):
        return cls(*out)  # namedtuple
    try:
        return cls(out)
    except TypeError:
        return cls.__mro__[-2](out)


def _substitute(obj: Any, results: dict) -> Any:
    """Return ``obj`` with every node and reference replaced by its value.

    Containers are rebuilt with their own type, bottom-up, on an explicit
    stack (no recursion, whatever the nesting depth).
    """
    if isinstance(obj, Node):
        return results[obj]
    if obj.__class__ is Ref:
        return obj.resolve(results[obj.node])
    if obj.__class__ is NoFingerprint:  # a top-level argument left out of the fingerprint: the function gets its value
        return obj.value
    if not isinstance(obj, _CONTAINERS):
        return obj
    stack = [[obj, _children(obj), 0, []]]  # frames: container, its children, next index, values
    while True:
        frame = stack[-1]
        kids, index, out = frame[1], frame[2], frame[3]
        if index < len(kids):
            frame[2] = index + 1
            child = kids[index]
            if isinstance(child, Node):
                out.append(results[child])
            elif child.__class__ is Ref:
                out.append(child.resolve(results[child.node]))
            elif isinstance(child, _CONTAINERS):
                stack.append([child, _children(child), 0, []])
            else:
                out.append(child)
            continue
        stack.pop()
        built = _rebuild(frame[0], out)
        if not stack:
            return built
        stack[-1][3].append(built)


def resolve_args(node: Node, results: dict) -> tuple[tuple, dict]:
    """The positional and keyword arguments of ``node`` with dependencies replaced by values.

    ``results`` maps each parent node to its value. ``node.slots`` says how
    much work that is (:attr:`Node.argmode`): none (``()``), the top-level positional
    dependencies at those positions, or anything else (``None``).
    """
    slots = node.slots  # the mode: () none, the positions of top-level ones, None nested (see Node.argmode)
    if slots:
        args = list(node.args)
        for position in slots:
            a = args[position]
            args[position] = a.resolve(results[a.node]) if a.__class__ is Ref else results[a]
        return args, node.kwargs
    if slots is not None:
        return node.args, node.kwargs
    return tuple(_substitute(a, results) for a in node.args), {
        k: _substitute(v, results) for k, v in node.kwargs.items()
    }


class Node:
    """A lazy call of a decorated function.

    :ivar func: the function (or class, or unbound method) to call.
    :ivar args: positional arguments as given (may hold nodes and references).
    :ivar kwargs: keyword arguments as given.
    :ivar parents: the distinct nodes this node depends on, in argument order.
    :ivar seq: creation number; sorting by it gives a topological order.
    """

    # Ten slots: 112 bytes with the collector's header. Every byte counts at a million nodes, where
    # CPython's full collections visit each live node several times during the build (a node of
    # 128 bytes cost the 1M-node diamond 40% more in those collections). So no __weakref__, and
    # the argument mode lives in ``slots`` (see :attr:`argmode`).
    __slots__ = ("func", "args", "kwargs", "_parents", "_kids", "_more_kids", "seq", "slots", "_name", "_number")

    kind = "call"

    def __init__(self, func: Callable, qualname: str, args: tuple, kwargs: dict, extra_parents: tuple = ()):
        self.func = func
        self.args = args
        # no keywords: one shared empty dict (each new one counts towards the GC's next collection)
        self.kwargs = kwargs if kwargs else _NO_KWARGS
        self.seq = next(_creation_counter)
        # numbered from 0 per function, as the original numbered them, so its storage resumes
        counter = _name_counters.get(qualname)
        if counter is None:
            counter = _name_counters[qualname] = itertools.count()
        self._number = next(counter)
        self._name = None
        # The children, without a list per node (one object less for the GC to scan): the first in
        # _kids, the second in _more_kids, and from the third on _more_kids is a list of all but the first.
        self._kids = self._more_kids = None
        # The hot path of building: one pass over the arguments, then link parents and children.
        parents = list(extra_parents) if extra_parents else []
        mode = 0  # ARGS_NONE; ARGS_TOP = 1 and ARGS_NESTED = 2 as in resolve_args
        mask = 0  # the positions (below 64) of top-level dependencies, as bits
        wide = None  # and those from 64 on, in a call with that many arguments
        kinds = _ARG_KINDS
        position = -1
        for a in args:
            position += 1
            kind = kinds.get(a.__class__)
            if kind is None:
                kind = _classify(a.__class__)
            if not kind:
                continue
            if kind == 1:
                parents.append(a)
            elif kind == 2:
                parents.append(a.node)
            else:
                if kind == 4 or _scan_nested(a, parents):
                    mode = 2
                continue
            mode |= 1
            if position < 64:
                mask |= 1 << position
            elif wide is None:
                wide = [position]
            else:
                wide.append(position)
        if mask:
            # one tuple per pattern, shared: a tuple per node is one more object for the GC to count
            slots = _slot_patterns.get(mask)
            if slots is None:
                slots = _slot_pattern(mask)
            if wide is not None:
                slots = slots + tuple(wide)
        else:
            slots = () if wide is None else tuple(wide)
        if kwargs:
            for a in kwargs.values():
                kind = kinds.get(a.__class__)
                if kind is None:
                    kind = _classify(a.__class__)
                if not kind:
                    continue
                if kind == 1:
                    parents.append(a)
                    mode = 2  # top-level keyword dependencies take the general path
                elif kind == 2:
                    parents.append(a.node)
                    mode = 2
                elif kind == 4 or _scan_nested(a, parents):
                    mode = 2
        # the mode, in ``slots``: () no dependency, the positions for top-level ones, None for the rest
        self.slots = slots if mode < 2 else None
        count = len(parents)
        if not count:
            self._parents = ()
            return
        if count == 1:
            parent = parents[0]
            # one parent: the node itself, not a tuple of it (one object less per node for the GC)
            self._parents = args if mode == 1 and len(args) == 1 and args[0] is parent else parent
        else:
            if count == 2:
                first, second = parents
                if first is second:  # one parent taken twice: as a single parent
                    parents = [first]
                    self._parents = first
                elif mode == 1 and len(args) == 2 and args[0] is first and args[1] is second \
                        and not extra_parents:
                    parents = self._parents = args  # both arguments, whole: share the tuple (fewer GC objects)
                else:
                    parents = self._parents = (first, second)
            else:
                parents = self._parents = tuple(dict.fromkeys(parents))
                if mode == 1 and len(parents) == len(args) and parents == args and not extra_parents:
                    self._parents = args  # every argument a distinct whole node: share the tuple
        for p in parents:
            if p._kids is None:
                p._kids = self
            else:
                more = p._more_kids
                if more is None:
                    p._more_kids = self
                elif more.__class__ is list:
                    more.append(self)
                else:
                    p._more_kids = [more, self]

    @property
    def argmode(self) -> int:
        """How much work resolving the arguments is: :data:`ARGS_NONE` (no dependency),
        :data:`ARGS_TOP` (top-level positional dependencies only, at :attr:`slots`) or
        :data:`ARGS_NESTED` (anything else; then :attr:`slots` is ``None``)."""
        slots = self.slots
        return ARGS_NESTED if slots is None else ARGS_TOP if slots else ARGS_NONE

    @property
    def parents(self) -> tuple:
        """The distinct nodes this node takes values from, in argument order."""
        parents = self._parents
        return parents if parents.__class__ is tuple else (parents,)

    @parents.setter
    def parents(self, parents: tuple) -> None:
        self._parents = tuple(parents)

    @property
    def children(self) -> list:
        """The nodes that take this node's value, in creation order (a new list)."""
        first = self._kids
        if first is None:
            return []
        more = self._more_kids
        if more is None:
            return [first]
        return [first, *more] if more.__class__ is list else [first, more]

    @property
    def last_child(self) -> Node | None:
        """The most recently created node that takes this node's value (``None`` if there is none)."""
        more = self._more_kids
        if more is None:
            return self._kids
        return more[-1] if more.__class__ is list else more

    # -- naming -----------------------------------------------------------
    @property
    def qualname(self) -> str:
        """The qualified name of the function the node calls (for a callable without one, as ``workflow`` names it)."""
        return callable_qualname(self.func)

    @property
    def name(self) -> str:
        """The node's name: the one given to :meth:`set_name`, else ``<qualname>_<NNNN>``."""
        name = self._name
        if name is None:
            name = self._name = f"{self.qualname}_{self._number:04d}"
        return name

    @property
    def has_default_name(self) -> bool:
        """True when no name was given with :meth:`set_name`."""
        return self._name is None or self._name == f"{self.qualname}_{self._number:04d}"

    def set_name(self, name: str) -> Node:
        """Name the node (the name is its storage key); returns the node, for chaining."""
        self._name = validate_name(name, "node")
        return self

    # -- references -------------------------------------------------------
    def __getitem__(self, key: Any) -> Ref:
        return Ref(self, (key,))

    def __iter__(self):
        raise TypeError(
            f"node {self.name!r} cannot be iterated or unpacked before it runs; index it instead: node[0], node[1]"
        )

    @property
    def data_parents(self) -> tuple:
        """The parents this node takes values from (for a method call: not the chain)."""
        return self.parents

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class ObjectNode(Node):
    """A stateful node: the instance of a decorated class.

    Attribute access gives its methods; each call makes a :class:`MethodNode`
    chained after the previous call on the same object.
    """

    __slots__ = ("cls", "last_call")

    kind = "object"

    def __init__(self, cls: type, args: tuple, kwargs: dict):
        super().__init__(cls, cls.__qualname__, args, kwargs)
        self.cls = cls
        self.last_call = None

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        cls = object.__getattribute__(self, "cls")
        member = getattr(cls, attr, None)
        if member is None or not callable(member):
            raise AttributeError(f"stateful node {self.name!r} ({cls.__qualname__}) has no method {attr!r}")
        return functools.partial(MethodNode, self, attr)


class MethodNode(Node):
    """A call of a method of a stateful node; runs after the object's previous call.

    :ivar obj: the :class:`ObjectNode` whose method is called.
    :ivar method_name: the method's name.
    :ivar chain_prev: the previous call on the object, or the object itself.
    """

    __slots__ = ("obj", "method_name", "chain_prev")

    kind = "method"

    def __init__(self, obj: ObjectNode, method_name: str, *args: Any, **kwargs: Any):
        func = getattr(obj.cls, method_name)
        prev = obj.last_call if obj.last_call is not None else obj  # a node has no truth value
        self.obj = obj
        self.method_name = method_name
        self.chain_prev = prev
        # The instance is the first argument, so every backend calls ``func(*args)``.
        super().__init__(func, func.__qualname__, (obj, *args), kwargs, (prev,) if prev is not obj else ())
        obj.last_call = self

    @property
    def data_parents(self) -> tuple:
        chain = {self.obj, self.chain_prev}
        return tuple(p for p in self.parents if p not in chain)


class WorkflowClass:
    """A decorated class: calling it makes an :class:`ObjectNode` (a stateful node)."""

    def __init__(self, cls: type):
        functools.update_wrapper(self, cls, updated=())
        self.cls = cls

    def __call__(self, *args: Any, **kwargs: Any) -> ObjectNode:
        return ObjectNode(self.cls, args, kwargs)

    def __repr__(self) -> str:
        return f"<workflow class {self.cls.__qualname__}>"


def callable_qualname(func: Any) -> str:
    """``func.__qualname__``, else its ``__name__``, else its type's name (``functools.partial``, callable objects)."""
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or type(func).__name__


def workflow(func: Callable) -> Any:
    """Make ``func`` (a function or a class) build workflow nodes when called.

    >>> @workflow
    ... def double(x):
    ...     return 2 * x
    >>> node = double(3).set_name("six")
    >>> node.name
    'six'
    """
    if isinstance(func, WorkflowClass) or getattr(func, "__functionfuse__", False):
        return func
    if isinstance(func, type):
        return WorkflowClass(func)
    if not callable(func):
        raise NotANodeError(f"@workflow decorates functions and classes, not {type(func).__name__}")
    qualname = callable_qualname(func)

    # A plain closure: the cheapest call there is, and node creation is the hot path of building.
    def make_node(*args: Any, **kwargs: Any) -> Node:
        return Node(func, qualname, args, kwargs)

    functools.update_wrapper(make_node, func)
    make_node.func = func  # type: ignore[attr-defined]
    make_node.__functionfuse__ = True  # type: ignore[attr-defined]
    return make_node


task = workflow

# argument class -> 0 plain value, 1 node, 2 reference, 3 container that may hold nodes
_ARG_KINDS: dict = {Node: 1, ObjectNode: 1, MethodNode: 1, Ref: 2, list: 3, tuple: 3, dict: 3, set: 3, frozenset: 3}
_ARG_KINDS.update(dict.fromkeys(_ATOMS, 0))
_ARG_KINDS[NoFingerprint] = 4  # unwrapped when the arguments are resolved


def _classify(cls: type) -> int:
    """The argument kind of instances of ``cls``, remembered per class."""
    kind = 1 if issubclass(cls, Node) else 2 if issubclass(cls, Ref) else 3 if issubclass(cls, _CONTAINERS) else 0
    _ARG_KINDS[cls] = kind
    return kind


_lazy_operators(Node, lambda node: repr(node.name))
_lazy_operators(Ref, lambda ref: repr(ref)[4:-1])
