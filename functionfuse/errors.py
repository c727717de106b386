"""Every error functionfuse raises on purpose.

All of them derive from :class:`FunctionFuseError`, so ``except FunctionFuseError``
catches user errors while real bugs still surface as ordinary exceptions.
Each message names the node, workflow, option or plugin at fault.
"""

from __future__ import annotations


class FunctionFuseError(Exception):
    """Base class of every error functionfuse raises on purpose."""


class InvalidNameError(FunctionFuseError, ValueError):
    """A node or workflow name is not a string or would escape the storage root."""


class DuplicateNameError(FunctionFuseError, ValueError):
    """Two nodes of one stored workflow carry the same name."""


class NotANodeError(FunctionFuseError, TypeError):
    """Something that should be a workflow node is not one."""


class NodeExecutionError(FunctionFuseError):
    """A node raised while running; the original exception is ``__cause__``.

    :ivar node_name: the name of the node that failed.
    :ivar workflow_name: the workflow it belongs to.
    """

    def __init__(self, node_name: str, workflow_name: str, cause: BaseException | None = None, detail: str = ""):
        self.node_name = node_name
        self.workflow_name = workflow_name
        what = detail or (f"{type(cause).__name__}: {cause}" if cause is not None else "failed")
        attempts = getattr(cause, "_ff_attempts", None)  # set by run_node_call when a retry policy ran out
        if attempts is not None and f"after {attempts} attempt" not in what:
            what += f" (after {attempts} attempt{'s' if attempts != 1 else ''})"
        super().__init__(f"node {node_name!r} of workflow {workflow_name!r} failed: {what}")

    def __reduce__(self):  # keep the error picklable across process boundaries (Ray)
        return (type(self), (self.node_name, self.workflow_name, None, self.args[0].split(" failed: ", 1)[-1]))


class NodeTimeoutError(NodeExecutionError, TimeoutError):
    """A node call did not return within its time limit (``query(...).set_timeout(seconds)``).

    The limit is per attempt; with a retry policy that lists it (``Exception`` does), a timed-out
    attempt is tried again. A Python thread cannot be killed: the abandoned call keeps running
    in the background of its process until it returns.

    :ivar seconds: the time limit.
    :ivar attempt: which attempt timed out (1 for the first).
    """

    def __init__(self, node_name: str, workflow_name: str, seconds: float, attempt: int = 1, killed: bool = False):
        self.seconds = seconds
        self.attempt = attempt
        self.killed = killed
        after = f" (after {attempt} attempts)" if attempt > 1 else ""
        fate = "its process was killed" if killed else "the call was abandoned, not killed"
        super().__init__(
            node_name, workflow_name, None,
            f"no result within its time limit of {seconds:g} s (set_timeout){after}; {fate}",
        )

    def __reduce__(self):  # picklable across processes; keeps the node tag run_node_call sets
        return (type(self), (self.node_name, self.workflow_name, self.seconds, self.attempt, self.killed),
                dict(self.__dict__))


class WorkerLostError(FunctionFuseError):
    """The worker process running a node, or holding a stateful node's instance, died or left the cluster.

    The run's error is a :class:`NodeExecutionError` naming the node, with this as its cause.

    :ivar worker: the worker's address, when known.
    """

    def __init__(self, message: str, worker: str | None = None):
        self.worker = worker
        super().__init__(message)

    def __reduce__(self):  # the state too: the name of the node it belongs to travels with it
        return (type(self), (self.args[0], self.worker), dict(self.__dict__))


class SerializationError(FunctionFuseError):
    """A node's result could not be serialised; nothing was written for it."""


class StorageError(FunctionFuseError):
    """Storage could not be reached, or refused an operation."""


class CorruptResultError(StorageError):
    """A stored result is truncated or fails its checksum; it is never returned as a value."""


class TaskNotFoundError(StorageError, KeyError):
    """A stored result that was asked for does not exist."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0])


class UnknownBackendError(FunctionFuseError, ValueError):
    """No plugin registers a backend under the requested name."""


class UnknownStorageKindError(FunctionFuseError, ValueError):
    """No plugin registers a storage kind under the requested name."""


class MissingExtraError(FunctionFuseError, ImportError):
    """A backend, storage kind or serializer needs an optional dependency that is not installed."""


class UnknownQueryAttributeError(FunctionFuseError, ValueError):
    """``Query.set_*`` was given an attribute no plugin accepts for this backend."""


class InvalidOptionError(FunctionFuseError, ValueError):
    """An option value (remote args, task args, storage options, ...) is not valid."""


class PluginError(FunctionFuseError):
    """A plugin could not be loaded or registered."""


class RunRecordNotFoundError(FunctionFuseError, LookupError):
    """A workflow has no saved run record (or none with the requested run id), or it is unreadable."""


class GraphvizNotFoundError(FunctionFuseError):
    """The graphviz ``dot`` program, which draws workflow graphs, is not installed."""


class MissingClassError(SerializationError):
    """A stored result holds an object whose class (or module) cannot be imported by the reader."""


class UnfingerprintableError(FunctionFuseError, TypeError):
    """A node argument has no deterministic fingerprint, so its stored result could not be trusted.

    :ivar reason: why (``cannot pickle '_thread.lock' object``).
    :ivar node_name: the node, when known.
    :ivar argument: the argument's name (``fh``, ``args[2]``), when known.
    :ivar type_name: the ``module:qualname`` of the value at fault, when known.
    """

    def __init__(self, reason: str, node_name: str | None = None, argument: str | None = None,
                 type_name: str | None = None):
        self.reason = reason
        self.node_name = node_name
        self.argument = argument
        self.type_name = type_name
        what = f"a {type_name} value" if type_name else "the value"
        if node_name is not None:
            head = f"cannot fingerprint argument {argument!r} of node {node_name!r}: {what} has no deterministic fingerprint"
        else:
            head = f"cannot fingerprint {what}"
        super().__init__(
            f"{head} ({reason}). "
            f"Either register an ff_fingerprint hook implementation that returns a stable key for "
            f"{type_name or 'its type'}, or leave the argument out of the node's fingerprint by passing "
            "functionfuse.fingerprint.NoFingerprint(value) instead of the value"
        )

    def __reduce__(self):
        return (type(self), (self.reason, self.node_name, self.argument, self.type_name))


class BadReferenceError(FunctionFuseError, LookupError):
    """A reference ``node[k]`` does not fit the value the node returned (an index out of range, a missing key)."""
