"""Node plugins: ``InitializerPlugin``, ``RandomStatePlugin``, ``PluginCollection``, ``NodePlugin``.

A documented import path: the classes live in the built-in plugin module
named below and are looked up on first use, so the core imports no built-in.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["InitializerPlugin", "RandomStatePlugin", "PluginCollection", "NodePlugin"]  # noqa: F822 - module __getattr__

_MODULE = "plugins_builtin.nodeplugins"


def __getattr__(attr: str) -> Any:
    if attr not in __all__:
        raise AttributeError(attr)
    return getattr(importlib.import_module(_MODULE), attr)
