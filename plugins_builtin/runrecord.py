"""The run record: what happened to every node of a run, kept with the workflow's results.

For every node the record keeps its outcome (``computed``, ``stored`` = read
back from storage, ``failed``, ``not reached``), start time, duration, the
worker and host that ran it (from the ``info`` dict the backend passes) and
the error text. With storage set it is saved as workflow metadata:
``runrecord-<timestamp>-<run_id>.json`` plus ``runrecord-latest.json``, and
read back with :func:`read_run_record` / :func:`list_run_records`.

This module is not in ``DEFAULT_PLUGINS``: :meth:`functionfuse.workflow.Workflow.new_run`
adds it when storage is set or ``record=True``, so a run without storage
pays nothing per node. Block it with ``disable=["plugins_builtin.runrecord"]``.

>>> from plugins_builtin.runrecord import read_run_record
>>> record = read_run_record(storage, "ops")  # doctest: +SKIP
>>> record["nodes"]["node2"]["outcome"]  # doctest: +SKIP
'computed'
"""

from __future__ import annotations

import json
import time
from typing import Any

from functionfuse.errors import RunRecordNotFoundError
from functionfuse.markers import hookimpl

__all__ = [
    "COMPUTED",
    "FAILED",
    "NOT_REACHED",
    "OUTCOMES",
    "STORED",
    "list_run_records",
    "read_run_record",
    "record_key",
]

COMPUTED = "computed"
STORED = "stored"
FAILED = "failed"
NOT_REACHED = "not reached"
#: every outcome a node can have, in the order tables show them
OUTCOMES = (COMPUTED, STORED, FAILED, NOT_REACHED)

LATEST_KEY = "runrecord-latest.json"
_PREFIX = "runrecord-"
_STATE_KEY = "runrecord"
FORMAT_VERSION = 1


def record_key(record: dict) -> str:
    """The metadata key a record is saved under: ``runrecord-<UTC timestamp>-<run_id>.json``."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(record["start"]))
    millis = int((record["start"] % 1) * 1000)
    return f"{_PREFIX}{stamp}.{millis:03d}Z-{record['run_id']}.json"


# ---------------------------------------------------------------------------
# hooks: per-run state lives in context.state, never on this module
# ---------------------------------------------------------------------------


@hookimpl
def ff_before_run(context: Any) -> None:
    nodes = {}
    for node in context.order:
        nodes[node.name] = {
            "outcome": NOT_REACHED,
            "kind": node.kind,
            "qualname": node.qualname,
            "start": None,
            "duration": None,
            "worker": None,
            "host": None,
            "error": None,
            "attempts": None,  # set for nodes with retries or a time limit (query(...).set_retries)
        }
    context.state[_STATE_KEY] = {
        "version": FORMAT_VERSION,
        "workflow_name": context.workflow_name,
        "run_id": context.run_id,
        "backend": context.backend_name,
        "start": time.time(),
        "end": None,
        "duration": None,
        "status": "running",
        "error": None,
        "nodes": nodes,
    }
    context.state[_NODES_KEY] = nodes


# The per-node hooks are the hot path: one dict lookup for the table, one for the entry.
_NODES_KEY = "runrecord.nodes"


@hookimpl
def ff_after_node(node: Any, context: Any, info: dict) -> None:
    entry = context.state[_NODES_KEY].get(node.name)
    if entry is not None:
        entry["outcome"] = COMPUTED
        if info:
            entry.update(info)  # start, duration, worker, host: what the backend knows


@hookimpl
def ff_node_restored(node: Any, context: Any) -> None:
    entry = context.state[_NODES_KEY].get(node.name)
    if entry is not None:
        entry["outcome"] = STORED


@hookimpl
def ff_node_error(node: Any, error: BaseException, context: Any, info: dict) -> None:
    entry = context.state[_NODES_KEY].get(node.name)
    if entry is not None:
        entry["outcome"] = FAILED
        if info:
            entry.update(info)
        entry["error"] = f"{type(error).__name__}: {error}"


@hookimpl
def ff_after_run(context: Any, error: BaseException | None) -> None:
    record = context.state.get(_STATE_KEY)
    if record is None:
        return
    record["end"] = time.time()
    record["duration"] = record["end"] - record["start"]
    record["status"] = "ok" if error is None else "failed"
    if error is not None:
        record["error"] = f"{type(error).__name__}: {error}"
    counts = dict.fromkeys(OUTCOMES, 0)
    for entry in record["nodes"].values():
        counts[entry["outcome"]] += 1
    record["counts"] = counts
    backend = context.backend
    try:
        backend.run_record = record
    except AttributeError:  # a backend with __slots__: the record still reaches storage
        pass
    storage = context.storage
    if storage is not None and hasattr(storage, "save_meta"):
        data = json.dumps(record, indent=1, default=str).encode("utf-8")
        storage.save_meta(context.workflow_name, record_key(record), data)
        storage.save_meta(context.workflow_name, LATEST_KEY, data)


# ---------------------------------------------------------------------------
# reading records back
# ---------------------------------------------------------------------------


def _decode(data: bytes, workflow_name: str, key: str) -> dict:
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunRecordNotFoundError(f"run record {key!r} of workflow {workflow_name!r} is not valid JSON: {exc}") from exc
    if not isinstance(record, dict) or not isinstance(record.get("nodes"), dict):
        raise RunRecordNotFoundError(f"run record {key!r} of workflow {workflow_name!r} has no node table")
    return record


def list_run_records(storage: Any, workflow_name: str) -> list[dict]:
    """Every saved run record of ``workflow_name``, oldest first (empty when there is none)."""
    keys = [k for k in storage.list_meta(workflow_name, f"{_PREFIX}*.json") if k != LATEST_KEY]
    records = []
    for key in sorted(keys):  # the UTC timestamp in the key sorts chronologically
        data = storage.read_meta(workflow_name, key)
        if data is not None:
            records.append(_decode(data, workflow_name, key))
    records.sort(key=lambda record: record.get("start") or 0)  # keys share a millisecond sometimes
    return records


def read_run_record(storage: Any, workflow_name: str, run_id: str | None = None) -> dict:
    """The latest run record of ``workflow_name`` (or the run ``run_id``, a prefix is enough).

    :raises RunRecordNotFoundError: naming the workflow (and run) when there is no such record.
    """
    if run_id is None:
        data = storage.read_meta(workflow_name, LATEST_KEY)
        if data is None:
            raise RunRecordNotFoundError(
                f"workflow {workflow_name!r} has no run record in this storage: "
                "records are saved by runs with storage set (or record=True)"
            )
        return _decode(data, workflow_name, LATEST_KEY)
    keys = [
        k for k in storage.list_meta(workflow_name, f"{_PREFIX}*.json")
        if k != LATEST_KEY and k.rsplit("-", 1)[-1].startswith(run_id)
    ]
    if len(keys) != 1:
        what = "no run" if not keys else f"{len(keys)} runs"
        raise RunRecordNotFoundError(f"workflow {workflow_name!r} has {what} with id {run_id!r}")
    data = storage.read_meta(workflow_name, keys[0])
    if data is None:
        raise RunRecordNotFoundError(f"run record {keys[0]!r} of workflow {workflow_name!r} disappeared")
    return _decode(data, workflow_name, keys[0])


def format_history(records: list[dict]) -> str:
    """A plain-text table of runs: id, start, duration, status, node counts by outcome, error."""
    header = ("run", "start (UTC)", "duration", "status", "backend", "computed", "stored", "failed", "not reached",
              "error")
    rows = [header]
    for record in records:
        counts = record.get("counts") or {}
        start = record.get("start")
        duration = record.get("duration")
        error = record.get("error") or ""
        rows.append((
            str(record.get("run_id", "?")),
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start)) if isinstance(start, (int, float)) else "?",
            f"{duration:.3f}s" if isinstance(duration, (int, float)) else "?",
            str(record.get("status", "?")),
            str(record.get("backend", "?")),
            *(str(counts.get(outcome, 0)) for outcome in OUTCOMES),
            error if len(error) <= 60 else error[:57] + "...",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
