"""``functionfuse.run``: one call to run a workflow with a chosen backend and plugin set."""

from __future__ import annotations

from typing import Any, Iterable

from .errors import UnknownBackendError
from .manager import get_plugins, load_target

__all__ = ["run", "backend_class", "backend_names"]


def backend_names(plugins: Iterable[Any] = (), disable: Iterable[str] = ()) -> list[str]:
    """Names of every registered backend."""
    return sorted(get_plugins(plugins, disable).backends())


def backend_class(name: str, plugins: Iterable[Any] = (), disable: Iterable[str] = ()) -> type:
    """The workflow class registered as backend ``name``.

    :raises UnknownBackendError: naming it and the backends that exist.
    :raises MissingExtraError: naming the ``pip install`` its dependencies need.
    """
    found = get_plugins(plugins, disable).backends()
    registration = found.get(name)
    if registration is None:
        from .backends import ADDON_BACKENDS

        hint = f"; it comes with an addon: {ADDON_BACKENDS[name]}" if name in ADDON_BACKENDS else ""
        raise UnknownBackendError(
            f"unknown backend {name!r}{hint}; the backends that exist are: {', '.join(sorted(found))}"
        )
    return load_target(registration, "backend")


def run(
    *leaves: Any,
    backend: str = "local",
    workflow_name: str = "workflow",
    storage: Any = None,
    plugins: Iterable[Any] = (),
    disable: Iterable[str] = (),
    trace: bool | str | None = None,
    resume: str = "fingerprint",
    rerun: str | None = None,
    **backend_options: Any,
) -> Any:
    """Run the workflow given by ``leaves`` on ``backend`` and return the leaf value(s).

    :param storage: a storage object, a ``storage_factory`` dict, or a path or fsspec URL.
    :param plugins: extra plugins (objects, modules or module names) for this run.
    :param disable: plugin names to block for this run.
    :param resume: ``"fingerprint"`` (a stored result is reused only for the same call),
        ``"name"`` (trust the name: unsafe, the original's rule) or ``"never"``.
    :param rerun: a regex (full match) of node names to recompute, with everything downstream.
    :param backend_options: passed to the backend's constructor (``ray_init_args``, ...).

    >>> import functionfuse
    >>> @functionfuse.workflow
    ... def add(a, b):
    ...     return a + b
    >>> functionfuse.run(add(add(1, 2), 3))
    6
    """
    cls = backend_class(backend, plugins, disable)
    wf = cls(*leaves, workflow_name=workflow_name, plugins=plugins, disable=disable, trace=trace, resume=resume,
             **backend_options)
    if rerun is not None:
        wf.set_rerun(rerun)
    if storage is not None:
        wf.set_storage(storage)
    return wf.run()
