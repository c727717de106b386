"""The run record: what happened to every node of a run, kept with the workflow's results.

For every node the record keeps its outcome (``computed``, ``stored`` = read
back from storage, ``failed``, ``not reached``), start time, duration, the
worker and host that ran it (from the ``info`` dict the backend passes) and
the error text. With storage set it is saved as workflow metadata:
``runrecord-<timestamp>-<run_id>.json`` (gzip-compressed JSON, one column per
field; the node names, kinds and qualnames in a ``runnodes-<digest>.json.gz``
table shared by every run of the same graph), ``runrecord-latest.json``
naming the latest one, and read back with :func:`read_run_record` /
:func:`list_run_records`. Only the last ``keep_runs`` runs are kept (the
storage option ``keep_runs``, 20 by default): a no-op re-run of a large graph
adds a few hundred bytes, not a copy of its node table.

This module is not in ``DEFAULT_PLUGINS``: :meth:`functionfuse.workflow.Workflow.new_run`
adds it when storage is set or ``record=True``, so a run without storage
pays nothing per node. Block it with ``disable=["plugins_builtin.runrecord"]``.

>>> from plugins_builtin.runrecord import read_run_record
>>> record = read_run_record(storage, "ops")  # doctest: +SKIP
>>> record["nodes"]["node2"]["outcome"]  # doctest: +SKIP
'computed'
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import json
import sys
import time
from array import array
from collections.abc import Mapping
from typing import Any

from functionfuse.context import COMPUTED, FAILED, NOT_REACHED, OUTCOMES, STORED
from functionfuse.errors import RunRecordNotFoundError
from functionfuse.frontend import callable_qualname
from functionfuse.markers import hookimpl

__all__ = [
    "COMPUTED",
    "FAILED",
    "NOT_REACHED",
    "OUTCOMES",
    "STORED",
    "DEFAULT_KEEP_RUNS",
    "encode_record",
    "list_run_records",
    "prune_records",
    "save_record",
    "read_run_record",
    "record_key",
]

# the outcomes are the core's (functionfuse.context), which records them on every backend

LATEST_KEY = "runrecord-latest.json"
_PREFIX = "runrecord-"
_STATE_KEY = "runrecord"
# 2: compact (gzip, columns, a shared node table); 3: time columns as packed doubles; 4: a column of one
# repeated text (or None) stored once. 1, 2 and 3 are still read
FORMAT_VERSION = 4


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
    # Per node the core fills context.outcomes (a dict entry, not a hook call); the record's
    # "nodes" is a live view joining it with the run order.
    context.outcomes = outcomes = {}
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
        "nodes": NodeTable(context.order, outcomes),
    }


#: the fields of every node's entry, and their value before the node is reached
_ENTRY_FIELDS = {"outcome": NOT_REACHED, "start": None, "duration": None, "worker": None, "host": None,
                 "error": None, "attempts": None}  # attempts: for nodes with retries or a time limit
_NO_OUTCOME: dict = {}


class NodeTable(Mapping):
    """A run's node entries by name, read from the run order and the outcomes the core keeps.

    ``table[name]`` is a fresh dict: ``outcome``, ``kind``, ``qualname``, ``start``,
    ``duration``, ``worker``, ``host``, ``error``, ``attempts`` and whatever else the backend
    reported for the node. Nothing is built per node until it is asked for.
    """

    __slots__ = ("order", "outcomes", "_by_name")

    def __init__(self, order: list, outcomes: dict):
        self.order = order
        self.outcomes = outcomes
        self._by_name: dict | None = None

    def __getitem__(self, name: str) -> dict:
        if self._by_name is None:
            self._by_name = {node.name: node for node in self.order}
        node = self._by_name[name]
        return {**_ENTRY_FIELDS, "kind": node.kind, "qualname": node.qualname,
                **self.outcomes.get(name, _NO_OUTCOME)}

    def __iter__(self):
        return (node.name for node in self.order)

    def __len__(self) -> int:
        return len(self.order)

    def columns(self) -> tuple[dict, dict]:
        """``(node table, columns)`` as :func:`encode_record` stores them, straight from the outcomes."""
        order, outcomes = self.order, self.outcomes
        names = [node.name for node in order]
        funcs = [node.func for node in order]
        try:  # a qualname per distinct function, not per node
            qualname_of = {func: callable_qualname(func) for func in set(funcs)}
            qualnames = [qualname_of[func] for func in funcs]
        except TypeError:  # an unhashable callable
            qualnames = [node.qualname for node in order]
        table = {"names": names, "kind": [node.kind for node in order], "qualname": qualnames}
        entries = [outcomes.get(name, _NO_OUTCOME) for name in names]
        present = set().union(*outcomes.values())  # the fields some entry has
        columns = {}
        for field in sorted((present | _ENTRY_FIELDS.keys()) - set(_TABLE_FIELDS)):
            default = _ENTRY_FIELDS.get(field)
            columns[field] = [entry.get(field, default) for entry in entries] if field in present else \
                [default] * len(entries)
        return table, columns


@hookimpl(tryfirst=True)  # before the progress bar, which shows the record's summary
def ff_after_run(context: Any, error: BaseException | None) -> None:
    record = context.state.get(_STATE_KEY)
    if record is None:
        return
    record["end"] = time.time()
    record["duration"] = record["end"] - record["start"]
    record["status"] = "ok" if error is None else "failed"
    if error is not None:
        record["error"] = f"{type(error).__name__}: {error}"
    outcomes = context.outcomes or {}
    counts = dict.fromkeys(OUTCOMES, 0)
    for entry in outcomes.values():
        counts[entry["outcome"]] += 1
    counts[NOT_REACHED] = len(record["nodes"]) - len(outcomes)
    record["counts"] = counts
    plan = getattr(context, "plan", None)
    reasons = getattr(plan, "reasons", None)
    if reasons:
        record["recomputed"] = {node.name: why for node, why in reasons.items()
                                if outcomes.get(node.name, _NO_OUTCOME).get("outcome") == COMPUTED}
    record["summary"] = summary(record)
    backend = context.backend
    try:
        backend.run_record = record
    except AttributeError:  # a backend with __slots__: the record still reaches storage
        pass
    storage = context.storage
    if storage is not None and hasattr(storage, "save_meta"):
        save_record(storage, context.workflow_name, record)


def summary(record: dict) -> str:
    """One line: ``computed 3, read back 5, recomputed 2 (scale_0000: code of helper 'factor' changed; ...)``."""
    counts = record.get("counts") or {}
    recomputed = record.get("recomputed") or {}
    computed = counts.get(COMPUTED, 0) - len(recomputed)
    text = f"computed {computed}, read back {counts.get(STORED, 0)}, recomputed {len(recomputed)}"
    if recomputed:
        shown = list(recomputed.items())[:10]
        text += " (" + "; ".join(f"{name}: {why}" for name, why in shown)
        text += f"; and {len(recomputed) - 10} more)" if len(recomputed) > 10 else ")"
    if counts.get(FAILED):
        text += f", failed {counts[FAILED]}"
    return text


# ---------------------------------------------------------------------------
# saving records compactly, keeping the last ``keep_runs``
# ---------------------------------------------------------------------------

#: runs whose records a storage keeps when it sets no ``keep_runs`` of its own
DEFAULT_KEEP_RUNS = 20
_TABLE_PREFIX = "runnodes-"
_GZIP_MAGIC = b"\x1f\x8b"
# What is the same in every run of one graph goes to a node table written once;
# a record holds only the columns that change from run to run.
_TABLE_FIELDS = ("kind", "qualname")


def _compress(obj: Any) -> bytes:
    # level 1: a third the time of 6 on a 1,000-node record, a fifth larger (records are small and pruned)
    return gzip.compress(json.dumps(obj, separators=(",", ":"), default=str).encode("utf-8"), 1, mtime=0)


def encode_record(record: dict) -> tuple[bytes, str, bytes]:
    """A record as stored: ``(record bytes, node table key, node table bytes)``.

    The record is gzip-compressed compact JSON holding one column per node field
    (outcomes, starts, durations, ...); the node names, kinds and qualnames are in
    a table shared by every run of the same graph, saved once under its digest.
    """
    nodes = record["nodes"]
    if isinstance(nodes, NodeTable):
        table, columns = nodes.columns()
    else:
        entries = list(nodes.values())
        table = {"names": list(nodes), **{field: [entry.get(field) for entry in entries] for field in _TABLE_FIELDS}}
        fields = sorted({field for entry in entries for field in entry} - set(_TABLE_FIELDS))
        columns = {field: [entry.get(field) for entry in entries] for field in fields}
    for field, values in columns.items():
        columns[field] = _pack_floats(values) if field in _TIME_FIELDS else _pack_same(values)
    for field in _TABLE_FIELDS:
        if field in table:
            table[field] = _pack_same(table[field])
    table_bytes = _compress(table)
    table_key = f"{_TABLE_PREFIX}{hashlib.sha256(table_bytes).hexdigest()[:24]}.json.gz"
    body = {key: value for key, value in record.items() if key != "nodes"}
    body.update(version=FORMAT_VERSION, table=table_key, columns=columns)
    return _compress(body), table_key, table_bytes


# Columns of floats: written as JSON numbers they cost more than the rest of the record together
# (the shortest repr of each); as packed doubles they are exact and a fraction of the work.
_TIME_FIELDS = ("start", "duration")


_NONE_TYPE = type(None)
_FLOAT_OR_NONE = {float, _NONE_TYPE}


def _pack_floats(values: list) -> Any:
    """A column of floats and ``None`` as ``{"f64": base64 of little-endian doubles, "none": [i, ...]}``;
    any other column as it is."""
    kinds = set(map(type, values))
    if not kinds <= _FLOAT_OR_NONE:
        return values
    missing = [i for i, value in enumerate(values) if value is None] if _NONE_TYPE in kinds else []
    packed = array("d", [0.0 if value is None else value for value in values] if missing else values)
    if sys.byteorder != "little":
        packed.byteswap()
    return {"f64": base64.b64encode(packed.tobytes()).decode("ascii"), "none": missing}


def _pack_same(values: list) -> Any:
    """A column holding one text (or ``None``) for every node as ``{"same": value, "n": count}``
    (most columns of most runs: outcome, worker, host, error, kind); any other column as it is.
    Only texts and ``None``: ``count`` compares with ``==``, and ``1 == 1.0 == True``."""
    if len(values) > 1:
        first = values[0]
        if (first is None or first.__class__ is str) and values.count(first) == len(values):
            return {"same": first, "n": len(values)}
    return values


def _unpack_floats(column: Any, where: str) -> Any:
    """The list :func:`_pack_floats` or :func:`_pack_same` packed (a plain list stays as it is)."""
    if not isinstance(column, dict):
        return column
    if "same" in column:
        count = column.get("n")
        if count.__class__ is not int or count < 0:
            raise RunRecordNotFoundError(f"{where}: a packed column is damaged: its count is {count!r}")
        return [column["same"]] * count
    try:
        packed = array("d")
        packed.frombytes(base64.b64decode(column["f64"], validate=True))
        if sys.byteorder != "little":
            packed.byteswap()
        values: list = packed.tolist()
        for i in column.get("none") or ():
            values[i] = None
    except (KeyError, TypeError, ValueError, IndexError, binascii.Error) as exc:
        raise RunRecordNotFoundError(f"{where}: a packed column is damaged: {type(exc).__name__}: {exc}") from exc
    return values


def save_record(storage: Any, workflow_name: str, record: dict, keep_runs: int | None = None) -> str:
    """Save ``record`` (compactly), point ``runrecord-latest.json`` at it, and remove the records
    of all but the last ``keep_runs`` runs (the storage's ``keep_runs``, else 20). Returns its key."""
    data, table_key, table_bytes = encode_record(record)
    if storage.read_meta(workflow_name, table_key) is None:
        storage.save_meta(workflow_name, table_key, table_bytes)
    key = record_key(record)
    storage.save_meta(workflow_name, key, data)
    storage.save_meta(workflow_name, LATEST_KEY, json.dumps({"latest": key}).encode("utf-8"))
    if keep_runs is None:
        keep_runs = getattr(storage, "keep_runs", None) or DEFAULT_KEEP_RUNS
    prune_records(storage, workflow_name, keep_runs)
    return key


def prune_records(storage: Any, workflow_name: str, keep_runs: int) -> list[str]:
    """Remove the records of all but the newest ``keep_runs`` runs, and node tables no kept record uses."""
    remover = getattr(storage, "remove_meta", None)
    if remover is None:  # a storage that cannot remove metadata keeps every record
        return []
    keys = sorted(_record_keys(storage, workflow_name))  # the UTC timestamp in the key sorts chronologically
    removed = keys[: max(len(keys) - max(int(keep_runs), 1), 0)]
    if not removed:
        return []
    for key in removed:
        remover(workflow_name, key)
    used = set()
    for key in keys[len(removed):]:
        used.add(_header(storage.read_meta(workflow_name, key) or b"", workflow_name, key).get("table"))
    for table_key in storage.list_meta(workflow_name, f"{_TABLE_PREFIX}*"):
        if table_key not in used:
            remover(workflow_name, table_key)
            removed.append(table_key)
    return removed


def _record_keys(storage: Any, workflow_name: str) -> list[str]:
    return [k for k in storage.list_meta(workflow_name, f"{_PREFIX}*.json") if k != LATEST_KEY]


def _header(data: bytes, workflow_name: str, key: str) -> dict:
    """A stored record as JSON, not yet joined with its node table."""
    try:
        if data[:2] == _GZIP_MAGIC:
            data = gzip.decompress(data)
        record = json.loads(data.decode("utf-8"))
    except (OSError, EOFError, UnicodeDecodeError, ValueError) as exc:
        raise RunRecordNotFoundError(f"run record {key!r} of workflow {workflow_name!r} is not valid JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise RunRecordNotFoundError(f"run record {key!r} of workflow {workflow_name!r} has no node table")
    return record


# ---------------------------------------------------------------------------
# reading records back
# ---------------------------------------------------------------------------


def _decode(data: bytes, workflow_name: str, key: str, storage: Any = None) -> dict:
    record = _header(data, workflow_name, key)
    if "columns" in record and "table" in record:  # the compact form: join the columns with the node table
        table_data = storage.read_meta(workflow_name, record["table"]) if storage is not None else None
        if table_data is None:
            raise RunRecordNotFoundError(
                f"run record {key!r} of workflow {workflow_name!r}: its node table {record['table']!r} is missing"
            )
        table = _header(table_data, workflow_name, record["table"])
        where = f"run record {key!r} of workflow {workflow_name!r}"
        columns = {field: _unpack_floats(column, where) for field, column in record.pop("columns").items()}
        columns.update({field: _unpack_floats(table.get(field) or [], where) for field in _TABLE_FIELDS})
        record.pop("table")
        names = table.get("names") or []
        if any(len(column) != len(names) for column in columns.values()):
            raise RunRecordNotFoundError(f"run record {key!r} of workflow {workflow_name!r} does not match its node table")
        fields = list(columns)
        record["nodes"] = {
            name: dict(zip(fields, values)) for name, values in zip(names, zip(*columns.values()))
        } if fields else dict.fromkeys(names, {})
    if not isinstance(record.get("nodes"), dict):
        raise RunRecordNotFoundError(f"run record {key!r} of workflow {workflow_name!r} has no node table")
    return record


def list_run_records(storage: Any, workflow_name: str) -> list[dict]:
    """Every saved run record of ``workflow_name``, oldest first (empty when there is none)."""
    records = []
    for key in sorted(_record_keys(storage, workflow_name)):  # the UTC timestamp in the key sorts chronologically
        data = storage.read_meta(workflow_name, key)
        if data is not None:
            records.append(_decode(data, workflow_name, key, storage))
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
        pointer = _header(data, workflow_name, LATEST_KEY)
        if "latest" not in pointer:  # written by an older version: the record itself
            return _decode(data, workflow_name, LATEST_KEY, storage)
        key = pointer["latest"]
        data = storage.read_meta(workflow_name, key)
        if data is None:
            raise RunRecordNotFoundError(f"the latest run record {key!r} of workflow {workflow_name!r} is missing")
        return _decode(data, workflow_name, key, storage)
    keys = [k for k in _record_keys(storage, workflow_name) if k.rsplit("-", 1)[-1].startswith(run_id)]
    if len(keys) != 1:
        what = "no run" if not keys else f"{len(keys)} runs"
        raise RunRecordNotFoundError(f"workflow {workflow_name!r} has {what} with id {run_id!r}")
    data = storage.read_meta(workflow_name, keys[0])
    if data is None:
        raise RunRecordNotFoundError(f"run record {keys[0]!r} of workflow {workflow_name!r} disappeared")
    return _decode(data, workflow_name, keys[0], storage)


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
