"""The stored form of run records: time columns packed exactly, older forms still read, damage named."""

import gzip
import json
import math

import pytest

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import RunRecordNotFoundError
from functionfuse.storage import storage_factory
from plugins_builtin import runrecord
from plugins_builtin.runrecord import read_run_record, save_record


@workflow
def inc(x):
    return x + 1


def _store(tmp_path):
    return storage_factory({"kind": "file", "options": {"path": str(tmp_path / "store")}})


def _stored_body(storage, key):
    return json.loads(gzip.decompress(storage.read_meta("w", key)))


def test_time_columns_are_packed_and_read_back_exactly(tmp_path):
    storage = _store(tmp_path)
    wf = LocalWorkflow(inc(inc(1).set_name("a")).set_name("b"), workflow_name="w").set_storage(storage)
    assert wf.run() == 3
    latest = json.loads(storage.read_meta("w", runrecord.LATEST_KEY))["latest"]
    body = _stored_body(storage, latest)
    assert body["version"] == 4 and set(body["columns"]["start"]) == {"f64", "none"}
    back = read_run_record(storage, "w")
    assert back == wf.run_record  # the very same floats
    assert back["nodes"]["a"]["start"] == wf.run_record["nodes"]["a"]["start"]


def test_none_nan_and_columns_that_are_not_floats_survive(tmp_path):
    storage = _store(tmp_path)
    storage.new_workflow("w")
    nodes = {"a": {"outcome": "computed", "start": 1.5, "duration": math.nan, "kind": "call", "qualname": "f"},
             "b": {"outcome": "not reached", "start": None, "duration": None, "kind": "call", "qualname": "f"},
             "c": {"outcome": "computed", "start": 2, "duration": 0.25, "kind": "call", "qualname": "f"}}
    record = {"workflow_name": "w", "run_id": "abc123", "start": 1.0, "end": 3.0, "status": "ok", "nodes": nodes}
    save_record(storage, "w", record)
    back = read_run_record(storage, "w")["nodes"]
    assert back["a"]["start"] == 1.5 and math.isnan(back["a"]["duration"])
    assert back["b"]["start"] is None and back["b"]["duration"] is None
    assert back["c"]["start"] == 2 and type(back["c"]["start"]) is int  # an int column is kept as it is
    assert back["c"]["duration"] == 0.25


def test_a_version_2_record_with_plain_float_columns_is_still_read(tmp_path):
    storage = _store(tmp_path)
    storage.new_workflow("w")
    table = {"names": ["a"], "kind": ["call"], "qualname": ["f"]}
    storage.save_meta("w", "runnodes-old.json.gz", gzip.compress(json.dumps(table).encode()))
    body = {"version": 2, "workflow_name": "w", "run_id": "old1", "start": 5.0, "table": "runnodes-old.json.gz",
            "columns": {"outcome": ["computed"], "start": [5.25], "duration": [0.5]}}
    storage.save_meta("w", "runrecord-20260101T000000.000Z-old1.json", gzip.compress(json.dumps(body).encode()))
    record = read_run_record(storage, "w", "old1")
    assert record["nodes"]["a"] == {"outcome": "computed", "start": 5.25, "duration": 0.5, "kind": "call",
                                    "qualname": "f"}


@pytest.mark.parametrize("damage", [{"f64": "not base64!"}, {"f64": "AAAA"}, {"none": [0]}, {"f64": "", "none": [3]}])
def test_a_damaged_packed_column_is_an_error_naming_the_record(tmp_path, damage):
    storage = _store(tmp_path)
    storage.new_workflow("w")
    table = {"names": ["a"], "kind": ["call"], "qualname": ["f"]}
    storage.save_meta("w", "runnodes-t.json.gz", gzip.compress(json.dumps(table).encode()))
    body = {"version": 3, "run_id": "bad1", "start": 5.0, "table": "runnodes-t.json.gz",
            "columns": {"outcome": ["computed"], "start": damage}}
    key = "runrecord-20260101T000000.000Z-bad1.json"
    storage.save_meta("w", key, gzip.compress(json.dumps(body).encode()))
    with pytest.raises(RunRecordNotFoundError, match=f"run record '{key}' of workflow 'w'"):
        read_run_record(storage, "w", "bad1")


def test_a_column_of_one_repeated_text_is_stored_once_and_read_back_whole(tmp_path):
    storage = _store(tmp_path)
    node = inc(1).set_name("n0")
    for i in range(1, 5):
        node = inc(node).set_name(f"n{i}")
    wf = LocalWorkflow(node, workflow_name="w").set_storage(storage)
    assert wf.run() == 6
    latest = json.loads(storage.read_meta("w", runrecord.LATEST_KEY))["latest"]
    body = _stored_body(storage, latest)
    assert body["columns"]["outcome"] == {"same": "computed", "n": 5}
    assert body["columns"]["error"] == {"same": None, "n": 5}
    table = _stored_body(storage, body["table"])
    assert table["kind"] == {"same": "call", "n": 5} and table["names"] == [f"n{i}" for i in range(5)]
    assert read_run_record(storage, "w") == wf.run_record


def test_equal_values_of_other_types_are_not_merged(tmp_path):
    """1 == 1.0 == True: such a column is kept as it is, each value with its own type."""
    storage = _store(tmp_path)
    storage.new_workflow("w")
    values = [1, 1.0, True]
    nodes = {name: {"outcome": "computed", "attempts": v, "kind": "call", "qualname": "f"}
             for name, v in zip("abc", values)}
    save_record(storage, "w", {"workflow_name": "w", "run_id": "mix1", "start": 1.0, "nodes": nodes})
    back = read_run_record(storage, "w")["nodes"]
    assert [type(back[name]["attempts"]) for name in "abc"] == [int, float, bool]
    assert back["a"]["outcome"] == back["c"]["outcome"] == "computed"


@pytest.mark.parametrize("count", [-1, "3", None, 2])
def test_a_damaged_repeated_column_is_an_error_naming_the_record(tmp_path, count):
    storage = _store(tmp_path)
    storage.new_workflow("w")
    table = {"names": ["a"], "kind": ["call"], "qualname": ["f"]}
    storage.save_meta("w", "runnodes-s.json.gz", gzip.compress(json.dumps(table).encode()))
    body = {"version": 4, "run_id": "bad2", "start": 5.0, "table": "runnodes-s.json.gz",
            "columns": {"outcome": {"same": "computed", "n": count}}}
    key = "runrecord-20260101T000000.000Z-bad2.json"
    storage.save_meta("w", key, gzip.compress(json.dumps(body).encode()))
    with pytest.raises(RunRecordNotFoundError, match=f"run record '{key}' of workflow 'w'"):
        read_run_record(storage, "w", "bad2")
