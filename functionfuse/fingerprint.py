"""Fingerprints: what a node call is, as a short string, computed in the driver without running anything.

A node's fingerprint is a Merkle combination (:func:`call_fingerprint`) of

- the **code fingerprint** of its function (:func:`code_fingerprint`): the
  function's bytecode, normalised so comments, docstrings, formatting and the
  names of local variables do not count; its closure values, default
  arguments and the module globals it reads; and, transitively, the code of
  the functions and classes of the user's own modules it reaches. The
  standard library and installed packages count by name only (and by
  distribution version with ``include_package_versions=True``);
- the fingerprints of its **literal arguments** in their template positions
  (:func:`value_fingerprint`, type-aware), where a parent node or a reference
  ``node[i]`` contributes the parent's fingerprint (and the keys);
- its **parents' fingerprints** in order (a method call of a stateful object
  also chains through the previous call on the object), and an optional
  manual **version** for what code cannot see.

:func:`fingerprint_nodes` computes them for a whole run order, without recursion.

Fingerprints are 32 hexadecimal digits. They are deterministic across
processes and machines (no ``id()``, no salted ``hash()``), but code
fingerprints come from bytecode, which is specific to the Python version: a
different Python (``sys.implementation.cache_tag``) gives other fingerprints,
so an upgrade recomputes once rather than trusting a result it cannot check.
Value fingerprints of containers and of objects the built-ins do not know go
through ``dask.base.tokenize``; a Dask release that changes its tokens also
recomputes once.

>>> value_fingerprint([1, 2, 3]) == value_fingerprint([1, 2, 3])
True
>>> value_fingerprint(1) == value_fingerprint(1.0)
False
"""

from __future__ import annotations

import builtins
import dis
import functools
import os
import site
import sys
import sysconfig
import types
import weakref
from typing import Any, Callable, Iterable

import xxhash

from .errors import InvalidOptionError, UnfingerprintableError
from .frontend import NoFingerprint, Node, Ref, WorkflowClass

__all__ = [
    "NoFingerprint",
    "SCHEME",
    "args_fingerprint",
    "call_fingerprint",
    "clear_caches",
    "code_fingerprint",
    "code_manifest",
    "describe_code_change",
    "fingerprint_nodes",
    "strip_no_fingerprint",
    "value_fingerprint",
]

#: changes when the fingerprint algorithm changes, so old stored results are recomputed, never trusted
SCHEME = "ff-fp-1"

_hasher = xxhash.xxh3_128
_CODE_SALT = f"{SCHEME}|code|{sys.implementation.cache_tag}|".encode()
_CALL_SALT = f"{SCHEME}|call|".encode()
_ARGS_SALT = f"{SCHEME}|args|".encode()
_ATOM_SALT = f"{SCHEME}|atom|".encode()
_MISSING = object()


def strip_no_fingerprint(args: Iterable, kwargs: dict) -> tuple[list, dict]:
    """The arguments with every top-level :class:`NoFingerprint` replaced by the value it wraps."""
    return (
        [a.value if a.__class__ is NoFingerprint else a for a in args],
        {k: v.value if v.__class__ is NoFingerprint else v for k, v in kwargs.items()},
    )


# ---------------------------------------------------------------------------
# atoms: encoded straight into the hasher, no library call
# ---------------------------------------------------------------------------


def _enc_str(v: str) -> bytes:
    data = v.encode("utf-8", "surrogatepass")
    return b"s%d:" % len(data) + data


def _enc_bytes(v: bytes) -> bytes:
    return b"b%d:" % len(v) + v


# every encoding is tagged and self-delimiting, so a sequence of them is unambiguous
_ATOM_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    int: lambda v: b"i%d;" % v,
    float: lambda v: b"f" + v.hex().encode() + b";",
    str: _enc_str,
    bytes: _enc_bytes,
    bool: lambda v: b"T" if v else b"F",
    type(None): lambda v: b"N",
    complex: lambda v: b"c" + repr(v).encode() + b";",
}
_ATOMS = frozenset(_ATOM_ENCODERS)


# ---------------------------------------------------------------------------
# user code or library code
# ---------------------------------------------------------------------------

# Packages whose code is functionfuse's own: editable installs would otherwise look like user code.
_LIBRARY_PACKAGES = frozenset({"functionfuse", "plugins_builtin"})
_module_kind: dict[str, tuple[Any, bool]] = {}
_library_roots: tuple[str, ...] | None = None


def _roots() -> tuple[str, ...]:
    """Directories holding the standard library and installed packages."""
    global _library_roots
    if _library_roots is None:
        roots = set()
        for scheme_vars in (None, {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}):
            paths = sysconfig.get_paths(vars=scheme_vars) if scheme_vars else sysconfig.get_paths()
            roots.update(paths.get(key) for key in ("stdlib", "platstdlib", "purelib", "platlib"))
        try:
            roots.update(site.getsitepackages())
            roots.add(site.getusersitepackages())
        except AttributeError:  # a virtualenv's old site.py
            pass
        _library_roots = tuple(sorted({os.path.realpath(r) + os.sep for r in roots if r}))
    return _library_roots


def _is_library_path(path: str) -> bool:
    if path.startswith("<"):  # <stdin>, <string>, <ipython-input-...>: typed by the user
        return False
    return os.path.realpath(path).startswith(_roots())


def _import_user_module(name: str) -> types.ModuleType | None:
    """The user's module ``name``, imported now if it is not yet; ``None`` for a library or a missing module.

    A function that imports the user's module inside its body (``from .prices import RATE``)
    depends on that module's code even before anything has imported it. Importing it here,
    in the driver (the function imports it anyway when it runs), lets its names count, so
    a fresh process computes the same fingerprint as one that imported it already, and a
    change to it is seen either way.
    """
    import importlib
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError, AttributeError):
        return None
    if spec is None or not spec.origin or _is_library_path(spec.origin):
        return None
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - it fails again, naming itself, when the function runs
        return None


def _is_user_module_name(name: str | None, fallback_file: str | None = None) -> bool:
    """True when module ``name`` is the user's own code, judged by where its file lives."""
    if not name:
        return fallback_file is not None and not _is_library_path(fallback_file)
    module = sys.modules.get(name)
    cached = _module_kind.get(name)
    if cached is not None and cached[0] is module:
        return cached[1]
    top = name.partition(".")[0]
    if top in _LIBRARY_PACKAGES:
        user = False
    elif module is None:
        user = fallback_file is not None and not _is_library_path(fallback_file)
    else:
        file = getattr(module, "__file__", None)
        if file:
            user = not _is_library_path(file)
        else:  # built-in, frozen, or defined interactively (a notebook's __main__)
            user = top not in sys.stdlib_module_names and top not in sys.builtin_module_names
    _module_kind[name] = (module, user)
    return user


def _is_user_function(func: types.FunctionType) -> bool:
    return _is_user_module_name(func.__module__, func.__code__.co_filename)


def _is_user_class(cls: type) -> bool:
    return _is_user_module_name(getattr(cls, "__module__", None))


#: the module name under which ``functionfuse run|plan SCRIPT.py:VAR`` runs a script (not ``__main__``,
#: so that its ``if __name__ == "__main__":`` block does not run the workflow a second time)
SCRIPT_RUN_NAME = "__functionfuse__"


def _label(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or "?"
    if module == SCRIPT_RUN_NAME:
        # the same script, run by the command line: its calls are those of `python SCRIPT.py`, so
        # that a result stored by one reads back in the other (the code itself is still compared)
        module = "__main__"
    return f"{module}:{getattr(obj, '__qualname__', None) or getattr(obj, '__name__', type(obj).__qualname__)}"


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@functools.lru_cache(maxsize=None)
def _package_version(module: str) -> str:
    """``dist==version`` of the distribution providing top-level module ``module``, or ''."""
    top = module.partition(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return ""
    import importlib.metadata

    dists = _packages_distributions().get(top) or [top]
    for dist in sorted(dists):
        try:
            return f"{dist}=={importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return ""


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> dict:
    import importlib.metadata

    return importlib.metadata.packages_distributions()


def _unwrap(obj: Any) -> Any:
    """The user's function or class behind a ``@workflow`` wrapper."""
    if obj.__class__ is WorkflowClass:
        return obj.cls
    if getattr(obj, "__functionfuse__", False) and hasattr(obj, "func"):
        return obj.func
    return obj


# ---------------------------------------------------------------------------
# static part of a code fingerprint: one per code object, per process
# ---------------------------------------------------------------------------

_HASCONST = frozenset(dis.hasconst)
_HASJUMP = frozenset(dis.hasjrel) | frozenset(dis.hasjabs)
_HASLOCAL = frozenset(dis.haslocal)
_HASNAME = frozenset(dis.hasname)
_HASFREE = frozenset(dis.hasfree)
_SKIPPED_OPS = frozenset(op for op in ("NOP", "EXTENDED_ARG", "CACHE") if op in dis.opmap)
_GLOBAL_OPS = frozenset({"LOAD_GLOBAL", "LOAD_NAME"})
_ATTR_OPS = frozenset({"LOAD_ATTR", "LOAD_METHOD"})


class _Static:
    """What the bytecode alone says: its digest and the global names (with attribute chains) it reads."""

    __slots__ = ("digest", "chains", "imports", "names", "__weakref__")

    def __init__(self, digest: bytes, chains: tuple, imports: tuple, names: frozenset):
        self.digest = digest
        self.chains = chains
        self.imports = imports
        self.names = names


_static_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _const_bytes(c: Any, nested: dict) -> bytes:
    """A deterministic encoding of a compiler constant (bounded nesting: literals of the source)."""
    enc = _ATOM_ENCODERS.get(c.__class__)
    if enc is not None:
        return enc(c)
    if isinstance(c, types.CodeType):
        return b"C" + nested[id(c)]
    if c.__class__ is tuple:
        return b"(" + b"".join(_const_bytes(x, nested) for x in c) + b")"
    if c.__class__ is frozenset:  # iteration order follows the salted str hash: sort
        return b"{" + b"".join(sorted(_const_bytes(x, nested) for x in c)) + b"}"
    return b"?" + repr(c).encode() + b";"  # Ellipsis and the like


def _code_digest(code: types.CodeType, nested: dict, chains: list, imports: list, names: set) -> bytes:
    """Digest of one code object's normalised instruction stream; collects the globals it reads."""
    instructions = [i for i in dis.get_instructions(code) if i.opname not in _SKIPPED_OPS]
    # A class body's docstring is `LOAD_CONST doc; STORE_NAME __doc__`: leave the pair out.
    skip = set()
    for k in range(len(instructions) - 1):
        a, b = instructions[k], instructions[k + 1]
        if a.opname == "LOAD_CONST" and isinstance(a.argval, str) and b.opname == "STORE_NAME" and b.argval == "__doc__":
            skip.update((k, k + 1))
    if skip:
        instructions = [i for k, i in enumerate(instructions) if k not in skip]
    # Jump targets and exception ranges as positions in the kept stream: NOPs that only carry
    # line numbers then do not move anything.
    position = {}
    for k, ins in enumerate(instructions):
        position[ins.offset] = k
    end = len(instructions)

    def where(offset: int) -> int:
        found = position.get(offset)
        if found is not None:
            return found
        later = [k for off, k in position.items() if off > offset]
        return min(later) if later else end

    h = _hasher()
    h.update(b"%d,%d,%d,%d|" % (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags))
    n_args = code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & 0x04) + bool(code.co_flags & 0x08)
    for name in code.co_varnames[:n_args] + ("|",) + code.co_freevars + ("|",) + code.co_cellvars:
        h.update(_enc_str(name))
    const_cache: dict[int, bytes] = {}
    chain: list | None = None
    previous = []
    for ins in instructions:
        op = ins.opcode
        h.update(b"%d:" % op)
        if op in _HASCONST:
            index = ins.arg
            data = const_cache.get(index)
            if data is None:
                data = const_cache[index] = _const_bytes(ins.argval, nested)
            h.update(data)
        elif op in _HASJUMP:
            h.update(b"j%d;" % where(ins.argval))
        elif op in _HASLOCAL:
            h.update(b"l%d;" % ins.arg)
        elif op in _HASNAME:
            h.update(_enc_str(ins.argrepr))
        elif op in _HASFREE:
            h.update(_enc_str(str(ins.argval)))
        elif ins.arg is not None:
            h.update(b"a%d;" % ins.arg)
        # the globals it reads, with the attribute chain after each (helpers.factor)
        opname = ins.opname
        if opname in _GLOBAL_OPS:
            chain = [ins.argval]
            chains.append(chain)
        elif opname in _ATTR_OPS and chain is not None and previous and previous[-1].opname in (
            _GLOBAL_OPS | _ATTR_OPS
        ):
            chain.append(ins.argval)
        else:
            chain = None
        if opname == "IMPORT_NAME":
            level = previous[-2].argval if len(previous) >= 2 and previous[-2].opname == "LOAD_CONST" else 0
            imports.append((ins.argval, level if isinstance(level, int) else 0))
        previous.append(ins)
        if len(previous) > 2:
            del previous[0]
    names.update(code.co_names)
    table = getattr(dis, "_parse_exception_table", None)
    if table is not None:
        for e in table(code):
            h.update(b"e%d,%d,%d,%d,%d;" % (where(e.start), where(e.end), where(e.target), e.depth, e.lasti))
    else:
        h.update(getattr(code, "co_exceptiontable", b""))
    return h.digest()


def _static(code: types.CodeType) -> _Static:
    found = _static_cache.get(code)
    if found is not None:
        return found
    # nested code objects (inner functions, lambdas, comprehensions) first, on an explicit stack
    ordered = []
    stack = [code]
    while stack:
        c = stack.pop()
        ordered.append(c)
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    nested: dict[int, bytes] = {}
    chains: list = []
    imports: list = []
    names: set = set()
    for c in reversed(ordered):
        nested[id(c)] = _code_digest(c, nested, chains, imports, names)
    unique_chains = tuple(sorted({tuple(ch) for ch in chains}))
    result = _Static(nested[id(code)], unique_chains, tuple(sorted(set(imports))), frozenset(names))
    _static_cache[code] = result
    return result


# ---------------------------------------------------------------------------
# dynamic part: what the names a function reads are bound to now
# ---------------------------------------------------------------------------


class _Own:
    """One user function's or class's own part: its code plus what its globals, closure and defaults hold.

    ``refs`` are the user functions and classes it reaches (their own parts
    are combined by :func:`code_fingerprint`); ``checks`` are the bindings it
    was computed from, so a rebound global (a notebook cell run again)
    recomputes it.
    """

    __slots__ = ("label", "digest", "refs", "checks")

    def __init__(self, label: str, digest: bytes, refs: tuple, checks: tuple):
        self.label = label
        self.digest = digest
        self.refs = refs
        self.checks = checks


def _valid(checks: tuple) -> bool:
    for check in checks:
        kind = check[0]
        if kind == "d":
            if check[1].get(check[2], _MISSING) is not check[3]:
                return False
        elif kind == "c":
            try:
                if check[1].cell_contents is not check[2]:
                    return False
            except ValueError:
                if check[2] is not _MISSING:
                    return False
        elif kind == "a":
            if getattr(check[1], check[2], _MISSING) is not check[3]:
                return False
        elif kind == "n":
            if len(check[1]) != check[2]:
                return False
    return True


class _Describer:
    """Turns what a function's names are bound to into bytes, collecting the user code reached."""

    __slots__ = ("refs", "versions")

    def __init__(self, versions: bool):
        self.refs: list = []
        self.versions = versions

    def lib(self, obj: Any, tag: bytes = b"L") -> bytes:
        module = getattr(obj, "__name__", "?") if isinstance(obj, types.ModuleType) else getattr(
            obj, "__module__", None
        ) or "?"
        out = tag + _enc_str(module if tag == b"LM" else _label(obj))
        if self.versions:
            out += _enc_str(_package_version(module))
        return out

    def code_token(self, obj: Any) -> str:
        """A token for a function or class met inside a value (a global dict of handlers, a default)."""
        return self.describe(obj).hex()

    def describe(self, obj: Any) -> bytes:
        obj = _unwrap(obj)
        cls = obj.__class__
        enc = _ATOM_ENCODERS.get(cls)
        if enc is not None:
            return b"V" + enc(obj)
        if cls is types.FunctionType:
            if _is_user_function(obj):
                self.refs.append(obj)
                return b"F" + _enc_str(_label(obj))
            return self.lib(obj)
        if isinstance(obj, type):
            if _is_user_class(obj):
                self.refs.append(obj)
                return b"K" + _enc_str(_label(obj))
            return self.lib(obj)
        if cls is types.ModuleType:
            if _is_user_module_name(obj.__name__):
                return b"M" + _enc_str(obj.__name__)
            return self.lib(obj, b"LM")
        if cls is types.MethodType:
            return b"B" + self.describe(obj.__func__) + self.describe(obj.__self__)
        if isinstance(obj, (staticmethod, classmethod)):
            return b"S" + self.describe(obj.__func__)
        if isinstance(obj, property):
            return b"P" + b"".join(self.describe(f) for f in (obj.fget, obj.fset, obj.fdel))
        if isinstance(obj, functools.cached_property):
            return b"Q" + self.describe(obj.func)
        if isinstance(obj, (types.BuiltinFunctionType, types.MethodDescriptorType, types.WrapperDescriptorType)):
            return self.lib(obj)
        wrapped = getattr(obj, "__wrapped__", None)  # functools.lru_cache and friends
        if wrapped is not None and callable(obj):
            return b"W" + self.lib(cls) + self.describe(wrapped)
        try:
            return b"V" + _value_hex(obj, _Context(None, self)).encode()
        except UnfingerprintableError:
            # a lock, a connection: environment, not data; its type is what can be known
            return b"U" + _enc_str(_label(cls))


def _own_function(func: types.FunctionType, versions: bool) -> _Own:
    code = func.__code__
    static = _static(code)
    d = _Describer(versions)
    checks: list = []
    h = _hasher(_CODE_SALT)
    h.update(b"function")
    h.update(static.digest)
    g = func.__globals__
    builtins_ns = g.get("__builtins__", builtins)
    if isinstance(builtins_ns, types.ModuleType):
        builtins_ns = builtins_ns.__dict__
    for chain in static.chains:
        name = chain[0]
        obj = g.get(name, _MISSING)
        checks.append(("d", g, name, obj))
        if obj is _MISSING:
            obj = builtins_ns.get(name, _MISSING)
        if obj is _MISSING:
            h.update(b"?" + _enc_str(name))  # a class-body local, or a NameError when it runs
            continue
        used = 1
        # follow helpers.factor through the user's modules; a package module counts by name
        while used < len(chain) and isinstance(obj, types.ModuleType) and _is_user_module_name(obj.__name__):
            namespace = obj.__dict__
            nxt = namespace.get(chain[used], _MISSING)
            checks.append(("d", namespace, chain[used], nxt))
            if nxt is _MISSING:
                break
            obj = nxt
            used += 1
        h.update(b"g" + b"".join(_enc_str(part) for part in chain[:used]))
        h.update(d.describe(obj))
    for module_name, level in static.imports:  # `from helpers import factor` inside the function
        if level:
            package = g.get("__package__") or ""
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - level + 1]) if level <= len(parts) else ""
            module_name = f"{base}.{module_name}" if module_name else base
        module = sys.modules.get(module_name)
        h.update(b"I" + _enc_str(module_name))
        if module is None:
            module = _import_user_module(module_name)
            if module is None:
                continue
        if not _is_user_module_name(module_name):
            h.update(d.lib(module, b"LM"))
            continue
        namespace = module.__dict__
        for attr in sorted(static.names):
            value = namespace.get(attr, _MISSING)
            checks.append(("d", namespace, attr, value))
            if value is not _MISSING:
                h.update(b"i" + _enc_str(attr) + d.describe(value))
    for name, cell in zip(code.co_freevars, func.__closure__ or ()):
        try:
            value = cell.cell_contents
        except ValueError:
            value = _MISSING
        checks.append(("c", cell, value))
        h.update(b"c" + _enc_str(name) + (b"-" if value is _MISSING else d.describe(value)))
    defaults = func.__defaults__
    checks.append(("a", func, "__defaults__", defaults))
    for value in defaults or ():
        h.update(b"D" + d.describe(value))
    kwdefaults = func.__kwdefaults__
    checks.append(("a", func, "__kwdefaults__", kwdefaults))
    for key in sorted(kwdefaults or ()):
        h.update(b"K" + _enc_str(key) + d.describe(kwdefaults[key]))
    return _Own(_label(func), h.digest(), tuple(d.refs), tuple(checks))


# class attributes that are bookkeeping, not behaviour
_CLASS_SKIP = frozenset({
    "__dict__", "__weakref__", "__module__", "__doc__", "__qualname__", "__firstlineno__",
    "__static_attributes__",
    # caches Python adds on first use: pickling a class (copyreg) or an isinstance check (abc)
    "__slotnames__", "_abc_impl",
})


def _own_class(cls: type, versions: bool) -> _Own:
    d = _Describer(versions)
    namespace = cls.__dict__
    checks: list = [("a", cls, "__bases__", cls.__bases__), ("n", namespace, len(namespace))]
    h = _hasher(_CODE_SALT)
    h.update(b"class" + _enc_str(cls.__qualname__))
    for base in cls.__bases__:
        h.update(b"base" + d.describe(base))
    for name in sorted(namespace):
        if name in _CLASS_SKIP:
            continue
        value = namespace[name]
        checks.append(("d", namespace, name, value))
        h.update(b"m" + _enc_str(name) + d.describe(value))
    return _Own(_label(cls), h.digest(), tuple(d.refs), tuple(checks))


_own_caches = (weakref.WeakKeyDictionary(), weakref.WeakKeyDictionary())
_fp_caches = (weakref.WeakKeyDictionary(), weakref.WeakKeyDictionary())


def _own(obj: Any, versions: bool) -> _Own:
    cache = _own_caches[versions]
    own = cache.get(obj)
    if own is not None and _valid(own.checks):
        return own
    own = _own_class(obj, versions) if isinstance(obj, type) else _own_function(obj, versions)
    cache[obj] = own
    return own


def _closure(roots: Iterable, versions: bool) -> dict:
    """Every user function and class reachable from ``roots``, with its own part. No recursion; cycles are fine."""
    owns: dict = {}
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if obj in owns:
            continue
        own = owns[obj] = _own(obj, versions)
        stack.extend(r for r in own.refs if r not in owns)
    return owns


def code_fingerprint(func: Any, *, include_package_versions: bool = False) -> str:
    """The fingerprint of a function's, class's or method's code and of everything it depends on.

    Counted: the normalised bytecode (comments, docstrings, formatting and
    local variable names do not count), closure values, defaults and keyword
    defaults, the module globals it reads (constants by value, a user
    module's attributes through ``module.attr`` chains), and transitively
    the user functions and classes these reach (a class: its bases and every
    attribute in name order). The standard library and installed packages
    count by qualified name (and ``dist==version`` when
    ``include_package_versions``). Computed once per function per process;
    rebinding a global it reads (running a notebook cell again) recomputes it.
    Mutating a global in place (``CONFIG["x"] = 2``) is not seen within one
    process: use ``set_version`` or a fresh process.

    >>> def scale(x):
    ...     return 2 * x
    >>> code_fingerprint(scale) == code_fingerprint(scale)
    True
    """
    obj = _unwrap(func)
    versions = bool(include_package_versions)
    cache = _fp_caches[versions]
    try:
        entry = cache.get(obj)
    except TypeError:  # not weak-referenceable (a builtin) or unhashable
        entry = cache = None
    if entry is not None and all(_valid(own.checks) and _own_caches[versions].get(o) is own for o, own in entry[1]):
        return entry[0]
    d = _Describer(versions)
    root = d.describe(obj)
    owns = _closure(d.refs, versions)
    h = _hasher(_CODE_SALT)
    h.update(b"root" + root)
    for digest in sorted(own.digest for own in owns.values()):
        h.update(digest)
    fingerprint = h.hexdigest()
    if cache is not None:
        try:
            cache[obj] = (fingerprint, tuple(owns.items()))
        except TypeError:
            pass
    return fingerprint


def code_manifest(func: Any, *, include_package_versions: bool = False) -> dict[str, str]:
    """``module:qualname`` -> own digest, for every user function and class ``func`` reaches.

    Small enough to store with a result; :func:`describe_code_change`
    compares two of them to say which helper changed.
    """
    d = _Describer(bool(include_package_versions))
    d.describe(_unwrap(func))
    owns = _closure(d.refs, bool(include_package_versions))
    return {own.label: own.digest.hex() for own in sorted(owns.values(), key=lambda o: (o.label, o.digest))}


def describe_code_change(old: dict[str, str], new: dict[str, str]) -> str:
    """Why two code manifests differ, in a phrase: ``code of helper 'helpers:factor' changed``."""
    changed = sorted(k for k in new.keys() & old.keys() if new[k] != old[k])
    added = sorted(new.keys() - old.keys())
    removed = sorted(old.keys() - new.keys())
    parts = []
    if changed:
        parts.append("code of " + ", ".join(repr(k) for k in changed) + " changed")
    if added:
        parts.append("now calls " + ", ".join(repr(k) for k in added))
    if removed:
        parts.append("no longer calls " + ", ".join(repr(k) for k in removed))
    return "; ".join(parts) or "code unchanged"


def clear_caches() -> None:
    """Forget every cached code fingerprint (tests; code reloaded with ``importlib.reload``)."""
    for cache in _own_caches + _fp_caches:
        cache.clear()
    _static_cache.clear()
    _module_kind.clear()


# ---------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------


class _Token:
    """A fingerprint standing in for a value inside a structure handed to ``dask.base.tokenize``."""

    __slots__ = ("hex",)

    def __init__(self, hex_: str):
        self.hex = hex_

    def __dask_tokenize__(self) -> tuple:
        return ("ff", self.hex)

    def __repr__(self) -> str:  # dask sorts dict keys and set items by str()
        return f"ff:{self.hex}"

    def __hash__(self) -> int:
        return hash(self.hex)

    def __eq__(self, other: object) -> bool:
        return other.__class__ is _Token and other.hex == self.hex  # type: ignore[attr-defined]


_EXCLUDED = _Token("excluded")
_dask_tokenize: Callable | None = None


def _tokenize(obj: Any) -> str:
    global _dask_tokenize
    if _dask_tokenize is None:
        from dask.base import tokenize

        _dask_tokenize = tokenize
    try:
        return _dask_tokenize(obj, ensure_deterministic=True)
    except RecursionError:
        raise UnfingerprintableError("the value is nested too deeply to fingerprint") from None
    except Exception as error:  # dask.tokenize.TokenizationError and pickling errors
        raise UnfingerprintableError(f"{type(error).__name__}: {error}") from None


def _xxh(*parts: bytes) -> str:
    h = _hasher()
    for part in parts:
        h.update(part)
    return h.hexdigest()


class _Context:
    """How one value is fingerprinted: the user's hook, what code becomes, what nodes become."""

    __slots__ = ("hook", "describer", "placeholders", "versions")

    def __init__(self, hook: Callable | None, describer: _Describer | None = None, placeholders: dict | None = None,
                 versions: bool = False):
        self.hook = hook
        self.describer = describer
        self.placeholders = placeholders
        self.versions = versions

    def code(self, obj: Any) -> str:
        if self.describer is not None:  # inside a code fingerprint: a reference, combined there
            return self.describer.code_token(obj)
        return code_fingerprint(obj, include_package_versions=self.versions)


class _Frame:
    """A container being walked: its children, and how to rebuild it from their prepared forms."""

    __slots__ = ("obj", "items", "index", "out", "build")

    def __init__(self, obj: Any, items: list, build: Callable):
        self.obj = obj
        self.items = items
        self.index = 0
        self.out: list = []
        self.build = build


def _all_atoms(items: Iterable) -> bool:
    atoms = _ATOMS
    for x in items:
        if x.__class__ not in atoms:
            return False
    return True


def _build_dict(out: list) -> Any:
    pairs = list(zip(out[0::2], out[1::2]))
    built = dict(pairs)
    if len(built) == len(pairs):
        return built
    # two keys that fingerprint alike (objects compared by identity): keep both
    return ("dict*", tuple(sorted(pairs, key=str)))


def _set_builder(kind: type) -> Callable:
    def build(out: list) -> Any:
        built = kind(out)
        return built if len(built) == len(out) else (kind.__name__ + "*", tuple(sorted(out, key=str)))

    return build


def _h_list(obj: list, ctx: _Context) -> Any:
    return obj if _all_atoms(obj) else _Frame(obj, list(obj), list)


def _h_tuple(obj: tuple, ctx: _Context) -> Any:
    return obj if _all_atoms(obj) else _Frame(obj, list(obj), tuple)


def _h_dict(obj: dict, ctx: _Context) -> Any:
    if _all_atoms(obj) and _all_atoms(obj.values()):
        return obj
    flat: list = []
    for key, value in obj.items():
        flat.append(key)
        flat.append(value)
    return _Frame(obj, flat, _build_dict)


def _h_set(obj: set, ctx: _Context) -> Any:
    return obj if _all_atoms(obj) else _Frame(obj, list(obj), _set_builder(set))


def _h_frozenset(obj: frozenset, ctx: _Context) -> Any:
    # dask sorts sets but pickles frozensets, in salted-hash order: hand it a set. A token, so
    # it stays hashable inside a set or a dict key.
    if _all_atoms(obj):
        return _Token(_xxh(b"frozenset|", _tokenize(set(obj)).encode()))
    build = _set_builder(set)
    return _Frame(obj, list(obj), lambda out: _Token(_xxh(b"frozenset|", _tokenize(build(out)).encode())))


def _h_identity(obj: Any, ctx: _Context) -> Any:
    return obj  # dask tokenizes these by their str(): datetime, Decimal, paths, slices


def _h_buffer(obj: Any, ctx: _Context) -> _Token:
    data = memoryview(obj)
    head = _enc_str(type(obj).__qualname__) + _enc_str(data.format) + _enc_str(repr(data.shape))
    if not data.c_contiguous:
        data = memoryview(data.tobytes())
    return _Token(_xxh(b"buffer|", head, data.cast("B") if data.ndim > 1 or data.format != "B" else data))


def _h_node(obj: Node, ctx: _Context) -> _Token:
    if ctx.placeholders is None:
        raise UnfingerprintableError(f"{obj!r} is a workflow node; fingerprint nodes with fingerprint_nodes()")
    return _Token("P" + ctx.placeholders[obj])


def _h_ref(obj: Ref, ctx: _Context) -> _Token:
    if ctx.placeholders is None:
        raise UnfingerprintableError(f"{obj!r} is a reference to a workflow node; use fingerprint_nodes()")
    return _Token(_xxh(b"ref|", ctx.placeholders[obj.node].encode(), _value_hex(obj.keys, ctx).encode()))


def _h_no_fingerprint(obj: NoFingerprint, ctx: _Context) -> _Token:
    return _EXCLUDED


def _h_code(obj: Any, ctx: _Context) -> _Token:
    return _Token(ctx.code(obj))


def _h_ndarray(x: Any, ctx: _Context) -> _Token:
    import numpy as np

    dtype = x.dtype
    head = b"ndarray|" + _enc_str(str(dtype.descr)) + _enc_str(dtype.str) + _enc_str(repr(x.shape))
    if dtype.hasobject:  # Python objects: by value, element by element
        return _Token(_xxh(head, _value_hex(x.tolist(), ctx).encode()))
    if not x.flags.c_contiguous:  # equal arrays give equal fingerprints, whatever their memory layout
        x = np.ascontiguousarray(x)
    h = _hasher(head)
    h.update(memoryview(x.reshape(-1).view(np.uint8)))
    return _Token(h.hexdigest())


def _h_numpy_scalar(x: Any, ctx: _Context) -> _Token:
    if x.dtype.hasobject:
        return _Token(_xxh(b"npobject|", _value_hex(x.item(), ctx).encode()))
    return _Token(_xxh(b"npscalar|", _enc_str(str(x.dtype.descr)), x.tobytes()))


def _h_numpy_dtype(x: Any, ctx: _Context) -> _Token:
    return _Token(_xxh(b"dtype|", _enc_str(str(x.descr)), _enc_str(x.str)))


def _h_dask(x: Any, ctx: _Context) -> _Token:
    # a Dask collection's token is its graph's name: nothing is computed
    return _Token(_xxh(b"dask|", _enc_str(_label(type(x))), _tokenize(x).encode()))


def _h_pandas(x: Any, ctx: _Context) -> _Token:
    # dask's normalisers cover values, dtypes, columns and index
    return _Token(_xxh(b"pandas|", _enc_str(_label(type(x))), _tokenize(x).encode()))


def _h_default(obj: Any, ctx: _Context) -> Any:
    """A type the built-ins do not know: the user's hook, ``__dask_tokenize__``, else its pickle reduction."""
    cls = obj.__class__
    if ctx.hook is not None:
        answer = ctx.hook(obj=obj)
        if answer is not None:
            if isinstance(answer, str):
                answer = answer.encode("utf-8", "surrogatepass")
            if isinstance(answer, bytes):
                return _Token(_xxh(b"hook|", _enc_str(_label(cls)), answer))
            if answer is obj:
                raise UnfingerprintableError(f"the ff_fingerprint hook returned the {_label(cls)} object itself")
            return _Token(_xxh(b"hook|", _enc_str(_label(cls)), _value_hex(answer, ctx).encode()))
    if getattr(cls, "__dask_tokenize__", None) is not None:
        return _Token(_xxh(b"dasktoken|", _enc_str(_label(cls)), _tokenize(obj).encode()))
    # What pickle would save, walked like any value: sets sorted, classes by their code, no
    # object identities. Open files, locks, sockets and generators refuse here.
    label = _label(cls)
    try:
        reduced = obj.__reduce_ex__(4)
    except Exception as error:
        raise UnfingerprintableError(f"{type(error).__name__}: {error}", type_name=_dotted(cls)) from None
    if isinstance(reduced, str):  # a module-level singleton, pickled by name
        return _Token(_xxh(b"global|", _enc_str(label), _enc_str(reduced)))
    parts = list(reduced[:5]) + [None] * (5 - len(reduced[:5]))
    parts[3] = None if parts[3] is None else tuple(parts[3])
    parts[4] = None if parts[4] is None else tuple(parts[4])

    def build(out: list) -> _Token:
        return _Token(_tokenize(("reduce", label, *out)))

    return _Frame(obj, parts, build)


_IDENTITY_TYPES: tuple = ()


def _identity_types() -> tuple:
    global _IDENTITY_TYPES
    if not _IDENTITY_TYPES:
        import datetime
        import decimal
        import pathlib

        _IDENTITY_TYPES = (
            datetime.date, datetime.time, datetime.timedelta, decimal.Decimal, pathlib.PurePath, slice,
            type(Ellipsis),
        )
    return _IDENTITY_TYPES


_CODE_TYPES = (
    types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.ModuleType, type, WorkflowClass,
    types.MethodDescriptorType, types.WrapperDescriptorType,
)

_HANDLERS: dict[type, Callable] = {
    list: _h_list, tuple: _h_tuple, dict: _h_dict, set: _h_set, frozenset: _h_frozenset,
    Ref: _h_ref, NoFingerprint: _h_no_fingerprint, bytearray: _h_buffer, memoryview: _h_buffer,
}


def _handler(cls: type) -> Callable:
    """How values of ``cls`` are fingerprinted, decided once per class."""
    found = _HANDLERS.get(cls)
    if found is not None:
        return found
    top = (getattr(cls, "__module__", None) or "").partition(".")[0]
    if issubclass(cls, Node):
        found = _h_node
    elif issubclass(cls, _CODE_TYPES):
        found = _h_code
    elif top == "numpy" and "numpy" in sys.modules:
        import numpy as np

        if cls is np.ndarray or cls is np.memmap:  # not MaskedArray & co: their reduction keeps the mask
            found = _h_ndarray
        elif issubclass(cls, np.generic):
            found = _h_numpy_scalar
        elif issubclass(cls, np.dtype):
            found = _h_numpy_dtype
    elif getattr(cls, "__dask_graph__", None) is not None:
        found = _h_dask
    elif top == "pandas":
        found = _h_pandas
    elif issubclass(cls, _identity_types()) and cls.__module__ in ("datetime", "decimal", "pathlib", "builtins"):
        found = _h_identity
    if found is None:
        found = _h_default
    _HANDLERS[cls] = found
    return found


def _prepare(root: Any, ctx: _Context) -> Any:
    """``root`` as a structure of atoms, plain containers and tokens, walked on an explicit stack."""
    cls = root.__class__
    if cls in _ATOMS:
        return root
    first = _handler(cls)(root, ctx)
    if first.__class__ is not _Frame:
        return first
    stack = [first]
    walking = {id(root)}
    atoms = _ATOMS
    handlers = _HANDLERS
    while True:
        frame = stack[-1]
        items = frame.items
        index = frame.index
        if index < len(items):
            frame.index = index + 1
            child = items[index]
            child_cls = child.__class__
            if child_cls in atoms:
                frame.out.append(child)
                continue
            handler = handlers.get(child_cls) or _handler(child_cls)
            result = handler(child, ctx)
            if result.__class__ is _Frame:
                if id(child) in walking:  # a cycle: refer to the level it closes on
                    depth = next(k for k, f in enumerate(stack) if f.obj is child)
                    frame.out.append(_Token(f"cycle{depth}"))
                    continue
                walking.add(id(child))
                stack.append(result)
                continue
            frame.out.append(result)
            continue
        stack.pop()
        walking.discard(id(frame.obj))
        built = frame.build(frame.out)
        if not stack:
            return built
        stack[-1].out.append(built)


def _value_hex(obj: Any, ctx: _Context) -> str:
    enc = _ATOM_ENCODERS.get(obj.__class__)
    if enc is not None:
        return _xxh(_ATOM_SALT, enc(obj))
    prepared = _prepare(obj, ctx)
    if prepared.__class__ is _Token:
        return prepared.hex
    return _tokenize(prepared)


def value_fingerprint(obj: Any, hook: Callable | None = None, *, include_package_versions: bool = False) -> str:
    """A deterministic, type-aware fingerprint of a value.

    Atoms (int, float, str, bytes, bool, None, complex) are hashed directly
    with xxh3-128; NumPy arrays by dtype, shape and bytes (xxh3-128 over the
    buffer, at memory speed); Dask collections by their graph token, without
    computing them; pandas objects through ``dask.base.tokenize`` (values,
    dtypes, columns, index); functions and classes by their
    :func:`code_fingerprint`; containers (nested lists, tuples, dicts, sets)
    by ``dask.base.tokenize`` over their structure. For any other type,
    ``hook(obj=value)`` is asked first (the ``ff_fingerprint`` hook caller):
    a ``str``/``bytes`` answer is the key, any other answer is fingerprinted
    in the value's place. Without an answer: the object's
    ``__dask_tokenize__``, else what pickle's ``__reduce_ex__`` saves, walked
    like any value (so a user class's instances count its code and state).

    :raises UnfingerprintableError: when nothing can fingerprint the value
        deterministically (an open file, a lock, a generator): register an
        ``ff_fingerprint`` implementation, or wrap the argument in
        :class:`NoFingerprint`.

    >>> import numpy as np
    >>> value_fingerprint(np.zeros(4, "int32")) == value_fingerprint(np.zeros(2, "int64"))
    False
    """
    return _value_hex(obj, _Context(hook, None, None, bool(include_package_versions)))


# ---------------------------------------------------------------------------
# node calls
# ---------------------------------------------------------------------------


def call_fingerprint(code_fp: str, literal_args_fp: str, parent_fps: Iterable[str], version: str | None = None) -> str:
    """The Merkle combination of one node call: H(code, literal arguments, parents in order, version).

    >>> a = call_fingerprint("c" * 32, "a" * 32, [])
    >>> a == call_fingerprint("c" * 32, "a" * 32, [], version="2")
    False
    """
    h = _hasher(_CALL_SALT)
    h.update(code_fp.encode())
    h.update(literal_args_fp.encode())
    count = 0
    for fp in parent_fps:
        h.update(fp.encode())
        count += 1
    h.update(b"|%d|" % count)
    if version is not None:
        h.update(b"v" + _enc_str(str(version)))
    return h.hexdigest()


def _argument_names(node: Node) -> tuple[list, str | None, set, str | None]:
    """Positional parameter names, the ``*args`` name, keyword names, the ``**kwargs`` name."""
    import inspect

    try:
        parameters = list(inspect.signature(node.func).parameters.values())
    except (TypeError, ValueError):
        return [], None, set(), None
    positional = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    star = next((p.name for p in parameters if p.kind == p.VAR_POSITIONAL), None)
    keywords = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    star_star = next((p.name for p in parameters if p.kind == p.VAR_KEYWORD), None)
    return positional, star, keywords, star_star


def _argument_label(node: Node, position: int | None, key: str | None) -> str:
    if key is not None:
        return key
    positional, star, _, _ = _argument_names(node)
    if node.kind == "method":
        position -= 1  # args[0] is the instance
        positional = positional[1:]
    if position < len(positional):
        return positional[position]
    return f"{star or 'args'}[{position - len(positional)}]"


def _excluded(node: Node, names: Iterable[str]) -> tuple[set, set]:
    """Positions and keywords of ``node``'s arguments named in ``names``."""
    names = set(names)
    positional, star, keywords, star_star = _argument_names(node)
    unknown = names - set(positional) - keywords - {star, star_star}
    if unknown:
        raise InvalidOptionError(
            f"node {node.name!r}: cannot exclude {sorted(unknown)} from the fingerprint: "
            f"{node.qualname} takes {positional + sorted(keywords - set(positional))}"
        )
    positions = {k for k, name in enumerate(positional) if name in names}
    if star in names:
        positions.update(range(len(positional), len(node.args)))
    keys = {k for k in node.kwargs if k in names or (star_star in names and k not in keywords)}
    return positions, keys


def args_fingerprint(node: Node, fps: dict, hook: Callable | None = None, *, exclude: Iterable[str] = (),
                     include_package_versions: bool = False) -> str:
    """The fingerprint of ``node``'s argument template: literal values, and ``fps[parent]`` where a parent stands.

    A parent contributes its fingerprint, a reference ``node[i]`` the
    parent's fingerprint and the keys, a :class:`NoFingerprint` a fixed
    marker; containers contribute their structure. Keyword arguments count
    by name, in name order. ``exclude`` names arguments to leave out.

    :raises UnfingerprintableError: naming the node and the argument.
    """
    excluded = _excluded(node, exclude) if exclude else None
    return _args_digest(node, fps, _Context(hook, None, fps, include_package_versions), excluded)


_KIND_TAGS = {"call": _enc_str("call"), "object": _enc_str("object"), "method": _enc_str("method")}


def _argument_bytes(a: Any, excluded: bool, encoders: dict, fps: dict, ctx: _Context) -> bytes:
    """One argument's part of the digest: left out, an atom, a parent's fingerprint, or a value's."""
    if excluded:
        return b"X"
    enc = encoders.get(a.__class__)
    if enc is not None:
        return enc(a)
    if isinstance(a, Node):
        return b"P" + fps[a].encode()
    return b"V" + _value_hex(a, ctx).encode()


def _args_digest(node: Node, fps: dict, ctx: _Context, excluded: tuple | None) -> str:
    encoders = _ATOM_ENCODERS
    kind = node.kind
    h = _hasher(_ARGS_SALT)
    h.update(_KIND_TAGS.get(kind) or _enc_str(kind))
    if kind == "method":
        h.update(b"M" + _enc_str(node.method_name) + fps[node.chain_prev].encode())
    positions, keys = excluded or ((), ())
    position = key = None
    try:
        for position, a in enumerate(node.args):
            h.update(_argument_bytes(a, position in positions, encoders, fps, ctx))
        position = None
        kwargs = node.kwargs
        if kwargs:
            h.update(b"|kw|")
            for key in sorted(kwargs):
                h.update(_enc_str(key))
                h.update(_argument_bytes(kwargs[key], key in keys, encoders, fps, ctx))
    except UnfingerprintableError as error:
        if error.node_name is not None:
            raise
        raise UnfingerprintableError(
            error.reason, node_name=node.name, argument=_argument_label(node, position, key), type_name=error.type_name
        ) from error.__cause__
    return h.hexdigest()


def fingerprint_nodes(order: Iterable[Node], versions: dict | None = None, hook: Callable | None = None, *,
                      exclude: dict | None = None, include_package_versions: bool = False,
                      details: dict | None = None) -> dict[Node, str]:
    """The fingerprint of every node of a run order (parents before children), without recursion.

    Each is ``call_fingerprint(code_fingerprint(node.func),
    args_fingerprint(node, fps), [fps[p] for p in node.parents],
    versions.get(node))``; code fingerprints are looked up once per distinct
    function per call, so a global rebound since the last run is seen.

    :param order: the nodes, every parent before its children (a run order).
    :param versions: node -> manual version (``set_version``), for what code cannot see.
    :param hook: the ``ff_fingerprint`` hook caller, called as ``hook(obj=value)``.
    :param exclude: node -> argument names to leave out of its fingerprint.
    :param details: when given, filled with node -> ``(code_fp, args_fp)``, the parts to store
        beside the fingerprint so a later mismatch can say what changed.
    :raises UnfingerprintableError: naming the node and the argument.

    >>> from functionfuse import workflow
    >>> @workflow
    ... def add(a, b):
    ...     return a + b
    >>> one = add(1, 1)
    >>> two = add(one, 1)
    >>> fps = fingerprint_nodes([one, two])
    >>> fps[two] != fps[one]
    True
    """
    fps: dict = {}
    code_fps: dict = {}
    versions = versions or {}
    exclude = exclude or {}
    ctx = _Context(hook, None, fps, include_package_versions)
    # The common call (a plain function, arguments that are atoms or whole parents, no keyword, no
    # exclusion, no version) is hashed in one go: xxh3 of the concatenated parts is what the
    # hasher fed part by part gives (_args_digest, call_fingerprint), so the digests are the same.
    encoders = _ATOM_ENCODERS
    one_shot = xxhash.xxh3_128_hexdigest
    call_tag = _ARGS_SALT + _KIND_TAGS["call"]
    as_bytes: dict = {}  # node -> its fingerprint, encoded (each is hashed into its children)
    code_bytes: dict = {}  # code fingerprint -> encoded
    for node in order:
        func = node.func
        try:
            code_fp = code_fps.get(func)
        except TypeError:  # an unhashable callable
            code_fp = None
        if code_fp is None:
            code_fp = code_fingerprint(func, include_package_versions=include_package_versions)
            code_bytes[code_fp] = code_fp.encode()
            try:
                code_fps[func] = code_fp
            except TypeError:
                pass
        if node.kind == "call" and not node.kwargs and not (exclude and node in exclude) \
                and not (versions and node in versions):
            parts = [call_tag]
            for a in node.args:
                enc = encoders.get(a.__class__)
                if enc is not None:
                    parts.append(enc(a))
                elif a.__class__ is Node and a in as_bytes:
                    parts.append(b"P" + as_bytes[a])
                else:
                    break
            else:
                args_fp = one_shot(b"".join(parts))
                parents = node._parents
                if parents.__class__ is tuple:
                    parts = [_CALL_SALT, code_bytes[code_fp], args_fp.encode()]
                    parts.extend([as_bytes[p] for p in parents])
                    parts.append(b"|%d|" % len(parents))
                    fp = one_shot(b"".join(parts))
                else:  # one parent: the node itself
                    fp = one_shot(b"".join((_CALL_SALT, code_bytes[code_fp], args_fp.encode(), as_bytes[parents],
                                            b"|1|")))
                fps[node] = fp
                as_bytes[node] = fp.encode()
                if details is not None:
                    details[node] = (code_fp, args_fp)
                continue
        names = exclude.get(node) if exclude else None
        try:
            args_fp = _args_digest(node, fps, ctx, _excluded(node, names) if names else None)
            fp = fps[node] = call_fingerprint(code_fp, args_fp, [fps[p] for p in node.parents], versions.get(node))
            as_bytes[node] = fp.encode()
            if details is not None:
                details[node] = (code_fp, args_fp)
        except KeyError as missing:
            raise ValueError(
                f"fingerprint_nodes: a parent of node {node.name!r} ({missing.args[0]!r}) comes after it "
                "or is not in the order; pass a run order"
            ) from None
    return fps
