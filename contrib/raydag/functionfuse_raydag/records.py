"""Status, output and listing from the run records of ``plugins_builtin.runrecord``, and the run lock.

Storage metadata only (no Ray), so they work from any process that reaches the storage (see the README).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterable
from typing import Any

from functionfuse.errors import InvalidOptionError, RunRecordNotFoundError
from functionfuse.storage import as_storage
from plugins_builtin import runrecord

from .errors import WorkflowNotFinishedError, WorkflowNotFoundError, WorkflowRunningError

RUNNING = "RUNNING"
SUCCESSFUL = "SUCCESSFUL"
FAILED = "FAILED"
RESUMABLE = "RESUMABLE"
STATUSES = (RUNNING, SUCCESSFUL, FAILED, RESUMABLE)
#: the run record's status -> raydag's
_STATUS_OF = {"running": RUNNING, "ok": SUCCESSFUL, "failed": FAILED}

PLAN_KEY = "raydag-plan"
LOCK_KEY = "raydag-lock"
#: seconds a driver keeps trying while other drivers break a stale lock at the same time
LOCK_CONTENTION_WAIT = 10.0
STORAGE_ENV = "FUNCTIONFUSE_RAYDAG_STORAGE"


def default_storage() -> Any:
    """The storage used when none is set: ``$FUNCTIONFUSE_RAYDAG_STORAGE`` or ``~/.functionfuse/raydag``."""
    location = os.environ.get(STORAGE_ENV) or os.path.join(os.path.expanduser("~"), ".functionfuse", "raydag")
    return as_storage(location)


def resolve_storage(storage: Any = None) -> Any:
    """A storage object from a storage, a path/URL, a ``storage_factory`` dict, or ``None`` (the default)."""
    return default_storage() if storage is None else as_storage(storage)


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


def _parse(data: bytes) -> dict:
    try:
        holder = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _create(storage: Any, workflow_name: str, key: str, data: bytes) -> bool:
    create = getattr(storage, "create_meta", None)
    if create is not None:
        return bool(create(workflow_name, key, data))
    # A storage without create-exclusive (a duck-typed one): check, then write; not atomic.
    if storage.read_meta(workflow_name, key) is not None:
        return False
    storage.save_meta(workflow_name, key, data)
    return True


class RunLock:
    """The run lock of one workflow held by this driver (``holder``: what it says); a context manager."""

    def __init__(self, storage: Any, workflow_name: str, holder: dict, data: bytes):
        self.storage = storage
        self.workflow_name = workflow_name
        self.holder = holder
        self._data = data

    def release(self) -> None:
        """Remove the lock if it is still this driver's (its own bytes: the token is unique)."""
        if self.storage.read_meta(self.workflow_name, LOCK_KEY) == self._data:
            self.storage.remove_meta(self.workflow_name, LOCK_KEY)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


def take_lock(storage: Any, workflow_name: str) -> RunLock:
    """Take the run lock of ``workflow_name`` atomically, breaking a stale one; else WorkflowRunningError."""
    holder = dict(driver_identity(), since=time.time(), token=uuid.uuid4().hex)
    data = json.dumps(holder).encode("utf-8")
    deadline = time.monotonic() + LOCK_CONTENTION_WAIT
    while True:
        if time.monotonic() > deadline:
            raise WorkflowRunningError(
                f"raydag: workflow {workflow_name!r}: other drivers kept taking and releasing its lock "
                f"{LOCK_KEY!r} for {LOCK_CONTENTION_WAIT:g} s; try again"
            )
        if _create(storage, workflow_name, LOCK_KEY, data):
            return RunLock(storage, workflow_name, holder, data)
        held = storage.read_meta(workflow_name, LOCK_KEY)
        if held is None:
            continue  # released in between: try again
        other = _parse(held)
        alive = driver_alive(other) if other else None
        if alive is not False:
            since = other.get("since")
            when = time.strftime(", since %Y-%m-%d %H:%M:%S UTC", time.gmtime(since)) if isinstance(since, (int, float)) else ""
            hint = ("wait for it, or kill it and resume" if alive else
                    f"if that driver is gone, remove the lock: storage.remove_meta({workflow_name!r}, {LOCK_KEY!r})")
            raise WorkflowRunningError(
                f"raydag: workflow {workflow_name!r} is being run by another driver (pid {other.get('pid')} on "
                f"{other.get('host')}{when}; its lock {LOCK_KEY!r} in {_where(storage)}); {hint}"
            )
        # Stale. Several drivers may find it at once: only the one that creates the breaker of this
        # very lock removes it, after checking that it is still the lock it found.
        breaker = f"{LOCK_KEY}-broken-{str(other.get('token', 'none'))[:32]}"
        if _create(storage, workflow_name, breaker, data):
            try:
                if storage.read_meta(workflow_name, LOCK_KEY) == held:
                    storage.remove_meta(workflow_name, LOCK_KEY)
            finally:
                storage.remove_meta(workflow_name, breaker)
            continue
        breaking = storage.read_meta(workflow_name, breaker)
        if breaking is not None and driver_alive(_parse(breaking)) is False:
            storage.remove_meta(workflow_name, breaker)  # a breaker that died breaking it
        time.sleep(0.05)


def refuse_if_running(storage: Any, workflow_name: str) -> None:
    """Refuse a workflow whose record says a live driver on this host runs it (a driver that took no lock)."""
    record = read_record(storage, workflow_name) or {}
    # driver_alive is True on this host only, where this process's own pid ran it before and was interrupted
    running = record.get("status") == "running" and not record.get("interrupted") and record.get("pid") != os.getpid()
    if running and driver_alive(record):
        raise WorkflowRunningError(
            f"raydag: workflow {workflow_name!r} is being run by another driver (pid {record.get('pid')} on "
            f"{record.get('host')}); wait for it, or kill it and resume"
        )


def read_lock(storage: Any, workflow_name: str) -> dict | None:
    """Who holds the run lock of ``workflow_name`` (the lock's fields), or ``None`` when nobody does."""
    data = storage.read_meta(workflow_name, LOCK_KEY)
    return None if data is None else _parse(data)


def read_record(storage: Any, workflow_name: str) -> dict | None:
    """The latest run record of a workflow raydag ran last, or ``None``."""
    try:
        record = runrecord.read_run_record(storage, workflow_name)
    except RunRecordNotFoundError:
        return None
    return record if record.get("backend") == "raydag" else None


#: save a run record as every run does (under its own key, and as the latest)
write_record = runrecord.save_record


def mark_started(context: Any, leaves: list[str]) -> dict:
    """Add the driver and the leaves to this run's record and save it now, status ``running``."""
    record = context.state.get(runrecord._STATE_KEY)
    if record is None:
        raise InvalidOptionError(
            f"raydag workflow {context.workflow_name!r}: its status is the run record, so the run-record "
            "plugin (plugins_builtin.runrecord) cannot be disabled nor record=False given"
        )
    previous = read_record(context.storage, context.workflow_name) or {}
    record.update(driver_identity(), leaves=leaves, runs=int(previous.get("runs", 0)) + 1)
    write_record(context.storage, context.workflow_name, record)
    return record


def effective_status(record: dict) -> str:
    """raydag's status of a run record: a run whose driver is known to be dead, or was interrupted, is RESUMABLE."""
    status = _STATUS_OF.get(record.get("status"), RESUMABLE)
    if record.get("interrupted") or (status == RUNNING and driver_alive(record) is False):
        return RESUMABLE
    return status


def _record_or_raise(storage: Any, workflow_name: str) -> dict:
    record = read_record(storage, workflow_name)
    if record is None:
        known = ", ".join(repr(name) for name, _ in list_all(storage)) or "none"
        raise WorkflowNotFoundError(f"raydag: no workflow {workflow_name!r} in {_where(storage)} (workflows there: {known})")
    return record


def _where(storage: Any) -> str:
    return storage.describe() if callable(getattr(storage, "describe", None)) else repr(storage)


def get_status(workflow_name: str, storage: Any = None) -> str:
    """``RUNNING``, ``SUCCESSFUL``, ``FAILED`` or ``RESUMABLE`` (a RUNNING workflow whose driver died)."""
    return effective_status(_record_or_raise(resolve_storage(storage), workflow_name))


def get_metadata(workflow_name: str, storage: Any = None) -> dict:
    """The latest run record with raydag's ``status``, the driver's ``pid`` and ``host``, ``leaves`` and ``runs``."""
    record = _record_or_raise(resolve_storage(storage), workflow_name)
    return dict(record, status=effective_status(record))


def get_output(workflow_name: str, storage: Any = None) -> Any:
    """The value of a SUCCESSFUL workflow's leaf (a list for several leaves), read from storage."""
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
    """Every workflow raydag ran last in the storage as ``(workflow_name, status)``, optionally filtered."""
    storage = resolve_storage(storage)
    wanted = {status_filter} if isinstance(status_filter, str) else status_filter
    if wanted is not None and not set(wanted) <= set(STATUSES):
        raise InvalidOptionError(
            f"raydag: list_all(status_filter=...) got {sorted(set(wanted) - set(STATUSES))}; "
            f"the statuses are {', '.join(STATUSES)}"
        )
    found = ((name, read_record(storage, name)) for name in storage.list_workflows())
    statuses = [(name, effective_status(record)) for name, record in found if record is not None]
    return [(name, status) for name, status in statuses if wanted is None or status in wanted]


def delete(workflow_name: str, storage: Any = None) -> None:
    """Remove a workflow: its results, its plan and its run records."""
    storage = resolve_storage(storage)
    _record_or_raise(storage, workflow_name)
    storage.remove_workflow(workflow_name)
