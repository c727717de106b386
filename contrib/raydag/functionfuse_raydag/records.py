"""Workflow records kept beside the results: status, driver, leaves.

Everything here reads and writes storage metadata only (no Ray), so status,
listing and output work from any process that can reach the storage.

Metadata keys under ``<workflow>/.ffmeta/``:

``raydag-status``  JSON: status, driver pid/host/process start, run id, times, error, leaf names
``raydag-plan``    cloudpickle of the workflow's task plan, so :func:`resume` needs no script
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable
from typing import Any

from functionfuse.storage import as_storage

from .errors import WorkflowNotFinishedError, WorkflowNotFoundError

__all__ = [
    "FAILED",
    "RESUMABLE",
    "RUNNING",
    "SUCCESSFUL",
    "default_storage",
    "delete",
    "get_metadata",
    "get_output",
    "get_status",
    "list_all",
]

RUNNING = "RUNNING"
SUCCESSFUL = "SUCCESSFUL"
FAILED = "FAILED"
RESUMABLE = "RESUMABLE"
STATUSES = (RUNNING, SUCCESSFUL, FAILED, RESUMABLE)

STATUS_KEY = "raydag-status"
PLAN_KEY = "raydag-plan"
STORAGE_ENV = "FUNCTIONFUSE_RAYDAG_STORAGE"


def default_storage() -> Any:
    """The storage used when none is set: ``$FUNCTIONFUSE_RAYDAG_STORAGE`` or ``~/.functionfuse/raydag``."""
    location = os.environ.get(STORAGE_ENV) or os.path.join(os.path.expanduser("~"), ".functionfuse", "raydag")
    return as_storage(location)


def resolve_storage(storage: Any = None) -> Any:
    """A storage object from a storage, a path/URL, a ``storage_factory`` dict, or ``None`` (the default)."""
    return default_storage() if storage is None else as_storage(storage)


# ---------------------------------------------------------------------------
# the driver: who runs the workflow, and is it still alive
# ---------------------------------------------------------------------------


def _proc_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name, or ``None`` (no such process, or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after its closing one.
    return stat.rsplit(")", 1)[-1].split()


def _process_start(pid: int) -> str | None:
    """The start time of a process in clock ticks (Linux), so a reused pid is not taken for the driver."""
    fields = _proc_fields(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def driver_identity() -> dict:
    """What identifies this process as a workflow's driver."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "proc_start": _process_start(pid)}


def driver_alive(record: dict) -> bool | None:
    """True/False when the recorded driver runs on this host, ``None`` when it cannot be told (another host)."""
    if record.get("host") != socket.gethostname():
        return None
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user
    if not os.path.isdir("/proc"):
        return True
    fields = _proc_fields(pid)
    if fields is None or fields[0] == "Z":
        return False  # gone, or killed and not yet reaped by its parent
    recorded = record.get("proc_start")
    # Another process that got the same pid later is not the driver.
    return recorded is None or len(fields) <= 19 or fields[19] == recorded


# ---------------------------------------------------------------------------
# reading and writing the status record
# ---------------------------------------------------------------------------


def read_record(storage: Any, workflow_name: str) -> dict | None:
    """The status record of a workflow, or ``None`` when raydag never ran it there."""
    data = storage.read_meta(workflow_name, STATUS_KEY)
    if data is None:
        return None
    return json.loads(data.decode("utf-8"))


def write_record(storage: Any, workflow_name: str, record: dict) -> None:
    """Replace the status record (``save_meta`` writes it whole or not at all)."""
    storage.save_meta(workflow_name, STATUS_KEY, json.dumps(record, sort_keys=True).encode("utf-8"))


def start_record(storage: Any, workflow_name: str, run_id: str, leaves: list[str], node_count: int) -> dict:
    """Mark the workflow RUNNING by this process."""
    previous = read_record(storage, workflow_name) or {}
    record = {
        "status": RUNNING,
        "backend": "raydag",
        "run_id": run_id,
        "started": time.time(),
        "ended": None,
        "error": None,
        "leaves": leaves,
        "nodes": node_count,
        "runs": int(previous.get("runs", 0)) + 1,
        **driver_identity(),
    }
    write_record(storage, workflow_name, record)
    return record


def finish_record(storage: Any, workflow_name: str, record: dict, error: BaseException | None) -> None:
    """Mark the run SUCCESSFUL, or FAILED with the error's text."""
    record = dict(record, ended=time.time(), status=SUCCESSFUL if error is None else FAILED)
    if error is not None:
        record["error"] = f"{type(error).__name__}: {error}"[:2000]
    write_record(storage, workflow_name, record)


def effective_status(record: dict) -> str:
    """The record's status, RUNNING turned RESUMABLE when its driver is known to be dead."""
    status = record.get("status", RESUMABLE)
    if status == RUNNING and driver_alive(record) is False:
        return RESUMABLE
    return status


def _record_or_raise(storage: Any, workflow_name: str) -> dict:
    record = read_record(storage, workflow_name)
    if record is None:
        known = ", ".join(repr(name) for name, _ in list_all(storage)) or "none"
        raise WorkflowNotFoundError(
            f"raydag: no workflow {workflow_name!r} in {_describe(storage)} (workflows there: {known})"
        )
    return record


def _describe(storage: Any) -> str:
    describe = getattr(storage, "describe", None)
    return describe() if callable(describe) else repr(storage)


# ---------------------------------------------------------------------------
# the public API, as Ray Workflows had it
# ---------------------------------------------------------------------------


def get_status(workflow_name: str, storage: Any = None) -> str:
    """``RUNNING``, ``SUCCESSFUL``, ``FAILED`` or ``RESUMABLE`` (a RUNNING workflow whose driver died).

    :param storage: a storage object, path or URL; default: :func:`default_storage`.
    :raises WorkflowNotFoundError: when raydag never ran ``workflow_name`` on that storage.
    """
    storage = resolve_storage(storage)
    return effective_status(_record_or_raise(storage, workflow_name))


def get_metadata(workflow_name: str, storage: Any = None) -> dict:
    """The whole status record: ``status`` (effective), driver ``pid``/``host``, ``started``, ``ended``,
    ``error``, ``leaves``, ``nodes``, ``runs`` (how many times it was started or resumed)."""
    storage = resolve_storage(storage)
    record = _record_or_raise(storage, workflow_name)
    return dict(record, status=effective_status(record))


def get_output(workflow_name: str, storage: Any = None) -> Any:
    """The value of a finished workflow's leaf (a list for several leaves), read from storage.

    :raises WorkflowNotFinishedError: when the workflow is not SUCCESSFUL (resume it first).
    """
    storage = resolve_storage(storage)
    record = _record_or_raise(storage, workflow_name)
    status = effective_status(record)
    if status != SUCCESSFUL:
        hint = f"; it failed with {record.get('error')}" if status == FAILED else ""
        raise WorkflowNotFinishedError(
            f"raydag: workflow {workflow_name!r} is {status}, so it has no output yet{hint}; "
            f"run functionfuse_raydag.resume({workflow_name!r}) to finish it"
        )
    values = [storage.read_task(workflow_name, name) for name in record["leaves"]]
    return values[0] if len(values) == 1 else values


def list_all(storage: Any = None, status_filter: str | Iterable[str] | None = None) -> list[tuple[str, str]]:
    """Every raydag workflow in the storage as ``(workflow_name, status)``, sorted by name.

    :param status_filter: a status or several; only workflows with one of them are listed.
    """
    storage = resolve_storage(storage)
    if isinstance(status_filter, str):
        status_filter = {status_filter}
    wanted = None if status_filter is None else set(status_filter)
    if wanted is not None and not wanted <= set(STATUSES):
        from functionfuse.errors import InvalidOptionError

        raise InvalidOptionError(
            f"raydag: list_all(status_filter=...) got {sorted(wanted - set(STATUSES))}; "
            f"the statuses are {', '.join(STATUSES)}"
        )
    found = []
    for name in storage.list_workflows():
        record = read_record(storage, name)
        if record is None:
            continue  # a workflow another backend stored
        status = effective_status(record)
        if wanted is None or status in wanted:
            found.append((name, status))
    return found


def delete(workflow_name: str, storage: Any = None) -> None:
    """Remove a workflow: its results, its plan and its status record."""
    storage = resolve_storage(storage)
    _record_or_raise(storage, workflow_name)
    storage.remove_workflow(workflow_name)
