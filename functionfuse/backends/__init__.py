"""Documented import paths of the backends; each resolves through the plugin registry."""

from __future__ import annotations

from typing import Any, Callable

#: backends that addon distributions of this repository provide, and how to install each
ADDON_BACKENDS: dict[str, str] = {
    "prefect": "pip install ./contrib/prefect",
    "kfp": "pip install ./contrib/kfp",
    "raydag": "pip install ./contrib/raydag",
}


def registered_attribute(kind: str, name: str, attribute: str, install_hint: str | None = None) -> Callable[[str], Any]:
    """A module ``__getattr__`` that returns what a plugin registered as ``name``.

    :param kind: ``"backend"`` or ``"serializer"``.
    :param install_hint: what to install when no plugin registers it (addons).
    """

    def __getattr__(attr: str) -> Any:
        if attr != attribute:
            raise AttributeError(attr)
        from ..manager import get_plugins, load_target

        hook = {"backend": "ff_backends", "serializer": "ff_serializers"}[kind]
        registration = get_plugins().registrations(hook).get(name)
        if registration is None:
            hint = f": install it with {install_hint}" if install_hint else ""
            raise ImportError(f"no installed plugin provides the {kind} {name!r} ({attribute}){hint}")
        return load_target(registration, kind)

    return __getattr__
