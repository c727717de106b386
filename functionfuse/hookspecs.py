"""Every hook a functionfuse plugin can implement.

A plugin is any object or module with functions decorated by
:data:`functionfuse.hookimpl` and named like a spec below. Implementations
may take only the arguments they need (pluggy's opt-in arguments), so specs
can grow without breaking plugins.

Where hooks fire: the run hooks, ``ff_prepare_node`` (its local part) and
the before/after/error hooks of a node fire in the driver (the process
that calls ``run()``). ``ff_execute_node``, ``ff_storage_save`` and
``ff_storage_read`` fire wherever the node runs, on every backend: a worker
rebuilds the run's plugin set from its description (module names, entry
points, plugin objects that pickle) once per process, and calls them
there (:mod:`functionfuse.nodecall`). ``docs/hooks.md`` has the table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from .markers import hookspec

if TYPE_CHECKING:  # pragma: no cover
    import argparse

    from .base import Workflow
    from .context import RunContext
    from .frontend import Node
    from .storage import Storage

# ---------------------------------------------------------------------------
# registration: what a plugin contributes, by name
# ---------------------------------------------------------------------------


@hookspec
def ff_backends(register: Callable[..., None]) -> None:
    """Register backends (workflow classes) by name.

    Call ``register(name, target, extra=None)`` once per backend. ``target``
    is the class or a lazy ``"module:attribute"`` string, so optional
    dependencies are imported only when the backend is used; ``extra`` names
    the ``functionfuse[extra]`` to install when that import fails.

    :param register: the callback that records one backend.
    """


@hookspec
def ff_storage_kinds(register: Callable[..., None]) -> None:
    """Register storage kinds for :func:`functionfuse.storage.storage_factory`.

    Call ``register(kind, target, extra=None)``; ``target`` is a class or
    ``"module:attribute"`` whose call with the ``options`` dict returns the storage.

    :param register: the callback that records one storage kind.
    """


@hookspec
def ff_serializers(register: Callable[..., None]) -> None:
    """Register serializers by name.

    Call ``register(name, target, extra=None, active=False)``; ``target`` is a
    serializer class or ``"module:attribute"``. ``active=True`` applies the
    serializer to every run's storage; otherwise it is used where a storage
    asks for it with ``register_persistent_serializers``.

    :param register: the callback that records one serializer.
    """


# ---------------------------------------------------------------------------
# around a run
# ---------------------------------------------------------------------------


@hookspec
def ff_before_run(context: RunContext) -> None:
    """Called in the driver before the first node of a run.

    :param context: the :class:`functionfuse.context.RunContext` of the run
        (workflow name, backend, storage, run order, a ``state`` dict for plugins).
    """


@hookspec
def ff_after_run(context: RunContext, error: BaseException | None) -> None:
    """Called in the driver when a run ends, whether it succeeded or not.

    :param context: the run's context.
    :param error: the exception that stopped the run, or ``None`` on success.
    """


# ---------------------------------------------------------------------------
# around a node
# ---------------------------------------------------------------------------


@hookspec
def ff_prepare_node(node: Node, context: RunContext) -> Any:
    """Pre-node initialisation: the local part runs here, in the driver, in run order.

    Return a callable, a list of callables, or ``None``. The callables must be
    picklable; the backend calls them in the worker right before the node's
    function (that is how ``InitializerPlugin`` and ``RandomStatePlugin`` reach
    Ray workers). Collecting: every implementation's callables run, in order.

    :param node: the node about to be submitted.
    :param context: the run's context.
    """


@hookspec
def ff_before_node(node: Node, context: RunContext) -> None:
    """Called before a node is computed (not for nodes read back from storage).

    :param node: the node.
    :param context: the run's context.
    """


@hookspec(firstresult=True)
def ff_execute_node(node: Node, args: tuple, kwargs: dict, context: RunContext) -> Any:
    """Make the call itself: ``node.func(*args, **kwargs)``.

    firstresult: stops at the first non-None result. The built-in
    implementation is ``trylast`` and always answers; a ``wrapper=True``
    implementation can time, retry or trace the call (``result = yield``).

    Fires wherever the node runs: in a worker, ``node`` is the node's
    :class:`functionfuse.nodecall.NodeCall` (``name``, ``func``, ``kind``) and
    ``context`` a :class:`functionfuse.nodecall.WorkerContext`.

    :param node: the node to run.
    :param args: positional arguments, dependencies already replaced by values.
    :param kwargs: keyword arguments, likewise.
    :param context: the run's context.
    """


@hookspec
def ff_after_node(node: Node, result: Any, context: RunContext, info: dict) -> None:
    """Called after a node was computed (and saved, when storage is set).

    :param node: the node.
    :param result: its value (on distributed backends, ``None`` unless the driver holds it).
    :param context: the run's context.
    :param info: what the backend knows: ``duration`` (seconds), ``start``, ``worker``, ``host``.
    """


@hookspec
def ff_node_restored(node: Node, context: RunContext) -> None:
    """Called for a node whose result was found in storage, so it was not computed.

    :param node: the node.
    :param context: the run's context.
    """


@hookspec
def ff_node_error(node: Node, error: BaseException, context: RunContext, info: dict) -> None:
    """Called when a node raised; the run stops after this hook.

    :param node: the node that failed.
    :param error: the original exception.
    :param context: the run's context.
    :param info: what the backend knows (``duration``, ``start``, ``worker``, ``host``).
    """


# ---------------------------------------------------------------------------
# storage and serialisation
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def ff_storage_save(
    storage: Storage, workflow_name: str, task_name: str, obj: Any, context: RunContext,
    fingerprint: str | None, replaces: str | None,
) -> Any:
    """Save a node's result; the built-in ``trylast`` implementation calls ``storage.save``.

    firstresult: stops at the first non-None result. Wrappers see every save, on
    every backend (in a worker, ``context`` is a ``WorkerContext``).

    :param storage: the storage object of the run.
    :param workflow_name: the workflow's name.
    :param task_name: the node's name (its storage key).
    :param obj: the value to save.
    :param context: the run's context.
    :param fingerprint: the node call's fingerprint to keep with the result (``None``: none;
        pass it on as ``storage.save(..., fingerprint=..., replaces=...)``).
    :param replaces: the fingerprint stored under this name before, or ``None``.
    """


@hookspec(firstresult=True)
def ff_storage_read(storage: Storage, workflow_name: str, task_name: str, context: RunContext) -> Any:
    """Read a stored result; the built-in ``trylast`` implementation calls ``storage.read_task``.

    firstresult: stops at the first non-None result. Wrappers see every read, on
    every backend (in a worker, ``context`` is a ``WorkerContext``).

    :param storage: the storage object of the run.
    :param workflow_name: the workflow's name.
    :param task_name: the node's name.
    :param context: the run's context.
    """


@hookspec(firstresult=True)
def ff_select_serializer(obj: Any, storage: Storage) -> Any:
    """Choose who writes ``obj`` (a result, or any object nested in it).

    Return a serializer instance, or ``None`` to let pickle write it.
    firstresult: stops at the first non-None result. The built-in
    implementation tries the storage's persistent serializers, then the
    active registered ones.

    :param obj: the object about to be written.
    :param storage: the storage writing it.
    """


# ---------------------------------------------------------------------------
# query attributes
# ---------------------------------------------------------------------------


@hookspec
def ff_query_assign(nodes: list[Node], key: str, value: Any, backend: Workflow) -> Any:
    """Validate and accept an attribute set by ``Query.set_<key>(value)``.

    Return ``True`` when this plugin accepts ``key`` for ``backend`` (raise
    :class:`functionfuse.errors.InvalidOptionError` for a bad value). When no
    implementation accepts the key, the query fails naming it. Accepted
    values are stored in ``backend.node_attrs[node][key]``.

    :param nodes: the nodes the query matched.
    :param key: the attribute name (``remote_args``, ``plugins``, ``task_args``, ...).
    :param value: the value given.
    :param backend: the workflow object (its ``backend_name`` says which backend).
    """


# ---------------------------------------------------------------------------
# command line and display
# ---------------------------------------------------------------------------


@hookspec
def ff_cli_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add subcommands to the ``functionfuse`` command.

    Call ``subparsers.add_parser(name, help=...)`` and set ``handler`` with
    ``parser.set_defaults(handler=function)``; the function takes the parsed
    arguments and returns the exit status. The core keeps no list of them.

    :param subparsers: the ``argparse`` subparsers of the ``functionfuse`` command.
    """


@hookspec(firstresult=True)
def ff_display(workflow: Workflow) -> str | None:
    """The notebook display of a workflow: an SVG string, or ``None``.

    firstresult: stops at the first non-None result. ``Workflow._repr_svg_``
    asks it, so a notebook shows a workflow as its graph when a plugin draws it.

    :param workflow: the workflow object to show.
    """


# ---------------------------------------------------------------------------
# fingerprints
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def ff_fingerprint(obj: Any) -> Any:
    """A stable key for ``obj``, a value of a type the built-in fingerprints do not know.

    Asked in the driver while node fingerprints are computed, for every
    argument value (or value nested in one) that is not an atom, a container,
    a NumPy array, a pandas object, a Dask collection, a function or a class.
    Return a ``str`` or ``bytes`` that is equal exactly when two values
    should count as the same input (for a file handle: its path and
    modification time), or any value the built-ins can fingerprint (a tuple
    of the fields that define the object); the key is combined with the
    type's name. Return ``None`` for objects you do not handle.
    firstresult: stops at the first non-None result.

    :param obj: the value to fingerprint.
    """
