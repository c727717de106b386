"""Checks of what callers hand to functionfuse, each failing with an error that names the culprit.

The core calls these where the values come in (``Workflow(..., plugins=, disable=)``,
``query(pattern)``, applying ``node[k]`` to a result), so the rules live in one place.

>>> check_plugin_args("mymodule", (), "LocalWorkflow('ops')")
Traceback (most recent call last):
...
functionfuse.errors.InvalidOptionError: LocalWorkflow('ops'): plugins must be a list of plugins (modules, module names or objects), got the str 'mymodule'; write plugins=['mymodule']
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from .errors import BadReferenceError, InvalidOptionError

__all__ = ["apply_keys", "check_plugin_args", "compile_pattern"]


def check_plugin_args(plugins: Any, disable: Any, where: str) -> tuple[tuple, tuple[str, ...]]:
    """``plugins`` and ``disable`` as tuples, or an :class:`InvalidOptionError` naming ``where``.

    ``plugins``: a list or tuple of plugin objects, modules or module names (``None``: none).
    ``disable``: a list or tuple of plugin names (``None``: none). A lone string, a
    number or any other single value is refused rather than read letter by letter.
    """
    return (_sequence(plugins, "plugins", where, "plugins (modules, module names or objects)", None),
            _sequence(disable, "disable", where, "plugin names", str))


def _sequence(value: Any, option: str, where: str, what: str, item_type: type | None) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (str, bytes)):
        raise InvalidOptionError(
            f"{where}: {option} must be a list of {what}, got the {type(value).__name__} {value!r}; "
            f"write {option}=[{value!r}]"
        )
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise InvalidOptionError(f"{where}: {option} must be a list of {what}, got {type(value).__name__} {value!r:.60}")
    items = tuple(value)
    for item in items:
        if item is None or isinstance(item, (int, float, bool)) or (item_type is not None and not isinstance(item, item_type)):
            raise InvalidOptionError(f"{where}: {option} holds {type(item).__name__} {item!r:.60}, not one of {what}")
    return items


def compile_pattern(pattern: Any, where: str = "query") -> re.Pattern:
    """``re.compile(pattern)``; a pattern that is not a valid regular expression names itself."""
    if isinstance(pattern, re.Pattern):
        return pattern
    if not isinstance(pattern, str):
        raise InvalidOptionError(f"{where}: the pattern must be a regular expression string, got {type(pattern).__name__} {pattern!r:.60}")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise InvalidOptionError(f"{where}: {pattern!r} is not a valid regular expression: {exc}") from exc


def apply_keys(value: Any, keys: Iterable[Any], node_name: str, consumer: str | None = None) -> Any:
    """``value[k1][k2]...`` for a reference ``node[k1][k2]``; a key that does not fit names the nodes.

    :raises BadReferenceError: naming the referenced node, the key, what the value is, and the consumer.
    """
    path = ""
    for key in keys:
        try:
            value = value[key]
        except (IndexError, KeyError, TypeError) as exc:
            size = f" of {len(value)} items" if hasattr(value, "__len__") and not isinstance(value, (str, bytes)) else ""
            used = f" (an argument of node {consumer!r})" if consumer else ""
            raise BadReferenceError(
                f"reference {node_name}{path}[{key!r}]{used}: the value of node {node_name!r}{path} is a "
                f"{type(value).__name__}{size}, and [{key!r}] does not fit it: {type(exc).__name__}: {exc}"
            ) from exc
        path += f"[{key!r}]"
    return value
