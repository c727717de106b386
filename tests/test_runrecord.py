"""The run record: per-node outcomes saved with the results, read back, listed, and drawn in colour."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from graph_fixtures import QUICKSTART_SCRIPT, quickstart, read_svg, stateful

import functionfuse
from functionfuse.backends.builtin.graphback import GraphWorkflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.cli import main
from functionfuse.errors import NodeExecutionError, RunRecordNotFoundError
from functionfuse.storage import storage_factory
from plugins_builtin.runrecord import LATEST_KEY, list_run_records, read_run_record

COLOURS = {"computed": "#c8e6c9", "stored": "#bbdefb", "failed": "#ffcdd2", "not reached": "#eeeeee"}


@pytest.fixture
def storage(tmp_path):
    return storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}})


def _plugin_names(wf) -> set[str]:
    return {name for name, _ in wf._run_plugins().pm.list_name_plugin()}


def test_record_is_saved_with_the_results_and_read_back(storage):
    nodes = stateful()
    wf = LocalWorkflow(nodes["result"], workflow_name="ops")
    wf.set_storage(storage)
    assert wf.run() == 4
    first = read_run_record(storage, "ops")
    assert first == wf.run_record
    assert first["status"] == "ok" and first["backend"] == "local" and first["error"] is None
    assert first["counts"] == {"computed": 7, "stored": 0, "failed": 0, "not reached": 0}
    entry = first["nodes"]["three_minus_one"]
    assert entry["outcome"] == "computed" and entry["qualname"].endswith("minus")
    assert 0 <= entry["duration"] <= first["duration"] and first["start"] <= entry["start"] <= first["end"]
    assert entry["worker"].startswith("pid ") and entry["host"]

    assert wf.run() == 4  # everything read back from storage
    second = read_run_record(storage, "ops")
    assert second["run_id"] != first["run_id"]
    assert second["counts"] == {"computed": 0, "stored": 7, "failed": 0, "not reached": 0}
    history = list_run_records(storage, "ops")
    assert [r["run_id"] for r in history] == [first["run_id"], second["run_id"]]
    assert read_run_record(storage, "ops", first["run_id"][:6]) == first
    keys = storage.list_meta("ops")
    assert LATEST_KEY in keys and sum(k.endswith(f"-{first['run_id']}.json") for k in keys) == 1
    assert storage.list_tasks("ops") == sorted(
        ["four_minus_three", "three_minus_one", "one_plus_two", "three_plus_two", "five_plus_one", "six_minus_two"]
    )  # the record is metadata, not a task


def test_failed_and_stored_nodes_are_coloured_by_outcome(storage, tmp_path):
    nodes = stateful()
    wf = LocalWorkflow(nodes["result"], workflow_name="ops")
    wf.set_storage(storage)
    wf.run()
    # three_plus_two gone: the object is rebuilt and its calls replayed; four_minus_three is read back.
    for name in ("three_minus_one", "three_plus_two"):
        storage.remove_task("ops", name)
    nodes["fail"][(3, 1)] = True  # three_minus_one raises now
    with pytest.raises(NodeExecutionError, match="'three_minus_one'"):
        wf.run()
    record = read_run_record(storage, "ops")
    assert record["status"] == "failed" and "three_minus_one" in record["error"]
    outcomes = {name: entry["outcome"] for name, entry in record["nodes"].items()}
    assert outcomes == {
        "four_minus_three": "stored",
        "IncrementalSum": "computed",
        "three_minus_one": "failed",
        "one_plus_two": "not reached",
        "three_plus_two": "not reached",
        "five_plus_one": "not reached",  # stored, but the run stopped before it
        "six_minus_two": "not reached",
    }
    assert record["nodes"]["three_minus_one"]["error"] == "ValueError: minus refuses 3 - 1"

    path = GraphWorkflow(nodes["result"], workflow_name="ops", doc_path=tmp_path, storage=storage).run()
    svg = read_svg(Path(path).read_text(encoding="utf-8"))
    for name, outcome in outcomes.items():
        assert svg.nodes[name].fill == COLOURS[outcome], name
        assert outcome.replace(" ", "-") in svg.nodes[name].classes
    assert "error: ValueError: minus refuses 3 - 1" in svg.nodes["three_minus_one"].tooltip
    # What a still picture (PNG, PDF) shows without tooltips: how long each node took, and the error.
    failed = svg.nodes["three_minus_one"].texts
    assert failed[0] == "three_minus_one" and failed[-1] == "ValueError: minus refuses 3 - 1"
    assert re.fullmatch(r"<0\.1 ms|\d+\.\d ms|\d+\.\d\d s", failed[1])
    assert re.fullmatch(r"<0\.1 ms|\d+\.\d ms|\d+\.\d\d s", svg.nodes["IncrementalSum"].texts[1])
    assert svg.nodes["four_minus_three"].texts == ["four_minus_three"]  # read back: no time of its own
    assert svg.nodes["one_plus_two"].texts == ["one_plus_two", ".add()"]  # not reached
    assert svg.legend == ["computed", "1", "stored", "1", "failed", "1", "not reached", "4"]
    assert svg.title == f"ops (run {record['run_id']}: failed)"
    assert len(svg.edges) == 9

    # An older run, by id: everything computed.
    first = list_run_records(storage, "ops")[0]
    older = read_svg(GraphWorkflow(nodes["result"], workflow_name="ops", storage=storage, run_id=first["run_id"]).svg())
    assert {n.fill for n in older.nodes.values()} == {COLOURS["computed"]}


def test_no_storage_no_record_no_per_node_hooks():
    leaf = quickstart()["result"]
    wf = LocalWorkflow(leaf, workflow_name="plain")
    assert "plugins_builtin.runrecord" not in _plugin_names(wf)
    run = wf.new_run()
    assert run.after_node is None and run.node_restored is None and run.node_error is None and run.plain
    assert wf.run() == 6 and wf.run_record is None


def test_record_on_request_without_storage_and_off_on_request(storage):
    leaf = quickstart()["result"]
    wf = LocalWorkflow(leaf, workflow_name="asked", record=True)
    assert wf.run() == 6
    assert wf.run_record["counts"]["computed"] == 3 and wf.run_record["status"] == "ok"

    off = LocalWorkflow(leaf, workflow_name="off", record=False).set_storage(storage)
    assert "plugins_builtin.runrecord" not in _plugin_names(off)
    off.run()
    # no run record; the fingerprint index is storage bookkeeping, not a record
    assert storage.list_meta("off") == ["fingerprints"] and off.run_record is None

    blocked = LocalWorkflow(leaf, workflow_name="blocked", disable=["plugins_builtin.runrecord"]).set_storage(storage)
    blocked.run()
    assert storage.list_meta("blocked") == ["fingerprints"]

    assert functionfuse.run(leaf, workflow_name="api", storage=storage) == 6
    assert read_run_record(storage, "api")["counts"]["computed"] == 3


def test_reading_missing_or_broken_records_names_the_workflow(storage):
    with pytest.raises(RunRecordNotFoundError, match="workflow 'nothing' has no run record"):
        read_run_record(storage, "nothing")
    LocalWorkflow(quickstart()["result"], workflow_name="ops").set_storage(storage).run()
    with pytest.raises(RunRecordNotFoundError, match="workflow 'ops' has no run with id 'zzz'"):
        read_run_record(storage, "ops", "zzz")
    storage.save_meta("ops", LATEST_KEY, b"{not json")
    with pytest.raises(RunRecordNotFoundError, match="'runrecord-latest.json' of workflow 'ops' is not valid JSON"):
        read_run_record(storage, "ops")
    storage.save_meta("ops", LATEST_KEY, json.dumps({"run_id": "x"}).encode())
    with pytest.raises(RunRecordNotFoundError, match="of workflow 'ops' has no node table"):
        read_run_record(storage, "ops")


def test_history_and_coloured_graph_commands(storage, tmp_path, capsys):
    script = tmp_path / "quick.py"
    script.write_text(QUICKSTART_SCRIPT)
    root = str(tmp_path / "storage")
    assert main(["run", f"{script}:result_of_mult", "--storage", root, "--workflow-name", "operations",
                 "--no-progress"]) == 0
    assert main(["run", f"{script}:result_of_mult", "--storage", root, "--workflow-name", "operations",
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["history", root, "operations"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["run", "start", "(UTC)", "duration"]
    runs = [line.split() for line in lines[2:]]
    assert len(runs) == 2
    assert [r[4:10] for r in runs] == [["ok", "local", "3", "0", "0", "0"], ["ok", "local", "0", "3", "0", "0"]]
    assert main(["history", root, "operations", "--last", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3

    out = tmp_path / "ops.svg"
    assert main(["graph", f"{script}:result_of_mult", "-o", str(out), "--storage", root,
                 "--workflow-name", "operations"]) == 0
    svg = read_svg(out.read_text())
    assert {n.fill for n in svg.nodes.values()} == {COLOURS["stored"]}
    assert main(["graph", f"{script}:result_of_mult", "-o", str(out), "--storage", root,
                 "--workflow-name", "operations", "--run", runs[0][0]]) == 0
    assert {n.fill for n in read_svg(out.read_text()).nodes.values()} == {COLOURS["computed"]}

    capsys.readouterr()
    assert main(["history", root, "never_ran"]) == 2
    assert "workflow 'never_ran' has no run records" in capsys.readouterr().err


def test_durations_read_well_in_a_picture():
    from plugins_builtin.graphback import _seconds

    assert [_seconds(d) for d in (0.00001, 0.0123, 0.5, 1.5, 59.994, 61, 3725)] == [
        "<0.1 ms", "12.3 ms", "500.0 ms", "1.50 s", "59.99 s", "1 min 01 s", "62 min 05 s",
    ]


# ---------------------------------------------------------------------------
# bounded growth: the last keep_runs runs, written compactly
# ---------------------------------------------------------------------------


@functionfuse.workflow
def piece(i):
    return i


@functionfuse.workflow
def gather(*values):
    return len(values)


def _meta_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in (folder / ".ffmeta").iterdir())


def test_only_the_last_keep_runs_records_are_kept(tmp_path):
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "st"), "keep_runs": 3}})
    run_ids = []
    for _ in range(5):
        wf = LocalWorkflow(quickstart()["result"], workflow_name="ops").set_storage(storage)
        wf.run()
        run_ids.append(wf.run_record["run_id"])
    records = list_run_records(storage, "ops")
    assert [record["run_id"] for record in records] == run_ids[-3:]
    assert read_run_record(storage, "ops")["run_id"] == run_ids[-1]
    assert read_run_record(storage, "ops", run_ids[-2])["nodes"]["node3"]["outcome"] == "stored"
    with pytest.raises(RunRecordNotFoundError, match=f"no run with id '{run_ids[0]}'"):
        read_run_record(storage, "ops", run_ids[0])
    assert len(list((tmp_path / "st" / "ops" / ".ffmeta").iterdir())) <= 3 + 1 + 1 + 1  # records, latest, table, index
    default = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "st2")}})
    for _ in range(22):
        LocalWorkflow(quickstart()["result"], workflow_name="ops").set_storage(default).run()
    assert len(list_run_records(default, "ops")) == 20


def test_noop_reruns_of_20000_nodes_grow_records_less_than_the_results(tmp_path):
    root = tmp_path / "st"
    nodes = [piece(i).set_name(f"piece{i}") for i in range(20_000)]
    leaf = gather(*nodes).set_name("gather")
    LocalWorkflow(leaf, workflow_name="big").set_storage(str(root)).run()
    results = sum(path.stat().st_size for path in (root / "big").glob("*.ffr"))
    before = _meta_bytes(root / "big")
    for _ in range(5):
        wf = LocalWorkflow(leaf, workflow_name="big").set_storage(str(root))
        assert wf.run() == 20_000
    growth = _meta_bytes(root / "big") - before
    print(f"results {results} bytes; 5 no-op re-runs grew the records by {growth} bytes")
    assert growth < results, (growth, results)
    record = read_run_record(storage_factory({"kind": "file", "options": {"path": str(root)}}), "big")
    assert len(record["nodes"]) == 20_001 and record["nodes"]["piece7"]["qualname"] == "piece"
