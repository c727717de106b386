"""The fingerprint index beside the results (what each fingerprint was made of, for the reasons): stored as
columns, the earlier per-node form still read; when it is damaged the reasons are lost, results stay right."""

import json
import os

import pytest

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.base import FINGERPRINT_INDEX, read_fingerprint_index, stored_fingerprints
from functionfuse.storage import storage_factory


@workflow
def base(x):
    return x * 2


@workflow
def scaled(a, factor):
    return a * factor


def build(storage, factor):
    parent = base(5).set_name("base")
    return LocalWorkflow(scaled(parent, factor).set_name("scaled"), workflow_name="wf").set_storage(storage)


def damage_as_text(index):
    index.write_bytes(b"{not json")


def damage_as_folder(index):
    os.remove(index)
    os.mkdir(index)  # reading it fails with IsADirectoryError


def test_an_index_with_list_columns_is_still_read(storage):
    """The index before its fingerprint columns were packed: a JSON list per column."""
    assert build(storage, 3).run() == 30
    nodes = read_fingerprint_index(storage, "wf")["nodes"]
    names = list(nodes)
    earlier = {"names": names, "fp": [nodes[n]["fp"] for n in names], "code": [nodes[n]["code"] for n in names],
               "args": [nodes[n]["args"] for n in names], "manifests": {}}
    storage.save_meta("wf", FINGERPRINT_INDEX, json.dumps(earlier).encode())
    assert read_fingerprint_index(storage, "wf")["nodes"] == nodes
    assert reasons(storage, 4)["scaled"] == ("recompute", "argument changed")


@pytest.mark.parametrize("damage", [damage_as_text, damage_as_folder])
def test_a_damaged_fingerprint_index_loses_the_reason_not_the_plan(tmp_path, damage):
    storage = str(tmp_path / "storage")
    assert build(storage, 3).run() == 30
    index = tmp_path / "storage" / "wf" / ".ffmeta" / "fingerprints"
    assert index.is_file()
    intact = {e.name: (e.fate, e.reason) for e in build(storage, 4).plan()}
    assert intact["scaled"] == ("recompute", "argument changed")

    damage(index)
    damaged = {e.name: (e.fate, e.reason) for e in build(storage, 4).plan()}
    assert damaged == {"base": ("read back", "stored, same call"), "scaled": ("recompute", "fingerprint changed")}
    if damage is damage_as_text:  # the next run writes the index anew, and the reasons come back
        assert build(storage, 4).run() == 40
        assert {e.name: e.fate for e in build(storage, 4).plan()} == {"base": "stored", "scaled": "read back"}
        assert {e.name: e.reason for e in build(storage, 5).plan()}["scaled"] == "argument changed"


def reasons(storage, factor):
    return {e.name: (e.fate, e.reason) for e in build(storage, factor).plan()}


@pytest.fixture
def storage(tmp_path):
    return storage_factory({"kind": "file", "options": {"path": str(tmp_path / "st")}})


def test_the_index_is_columns_and_gives_the_reasons(storage):
    assert build(storage, 3).run() == 30
    stored = json.loads(storage.read_meta("wf", FINGERPRINT_INDEX))
    # the fingerprint columns are packed: one string of 32 hex digits per node, in name order
    assert stored["names"] == ["base", "scaled"] and len(stored["fp"]) == len(stored["code"]) == len(stored["args"]) == 64
    index = read_fingerprint_index(storage, "wf")
    assert set(index["nodes"]) == {"base", "scaled"} and index["nodes"]["scaled"]["fp"] == stored["fp"][32:]
    assert index["nodes"]["base"]["code"] == stored["code"][:32] and index["nodes"]["base"]["args"] == stored["args"][:32]
    assert reasons(storage, 4)["scaled"] == ("recompute", "argument changed")


def test_an_index_of_the_earlier_form_is_still_read(storage):
    assert build(storage, 3).run() == 30
    earlier = {"nodes": read_fingerprint_index(storage, "wf")["nodes"], "manifests": {}}
    storage.save_meta("wf", FINGERPRINT_INDEX, json.dumps(earlier).encode())
    assert reasons(storage, 4)["scaled"] == ("recompute", "argument changed")
    assert build(storage, 4).run() == 40  # written anew, as columns
    assert "names" in json.loads(storage.read_meta("wf", FINGERPRINT_INDEX))


@pytest.mark.parametrize("damage", [
    {"names": ["base", "scaled"], "fp": ["x"], "code": [], "args": []},  # columns of other lengths
    {"names": ["base"], "fp": 5, "code": 5, "args": 5},  # not columns at all
    {"names": ["base", "scaled"], "fp": "0" * 63, "code": "0" * 64, "args": "0" * 64},  # a packed column cut short
    ["a", "list"],
])
def test_a_damaged_index_loses_the_reasons_not_the_results(storage, damage):
    assert build(storage, 3).run() == 30
    storage.save_meta("wf", FINGERPRINT_INDEX, json.dumps(damage).encode())
    assert read_fingerprint_index(storage, "wf") == {}
    assert reasons(storage, 4) == {"base": ("read back", "stored, same call"), "scaled": ("recompute", "fingerprint changed")}
    assert build(storage, 4).run() == 40


def test_a_storage_without_header_fingerprints_lists_them_from_the_index(storage):
    assert build(storage, 3).run() == 30
    index = read_fingerprint_index(storage, "wf")["nodes"]

    class Plain:  # a storage that keeps no fingerprints of its own
        def __init__(self, inner):
            self.inner = inner

        def list_tasks(self, workflow_name):
            return self.inner.list_tasks(workflow_name) + ["extra"]

        def read_meta(self, workflow_name, key):
            return self.inner.read_meta(workflow_name, key)

    assert stored_fingerprints(Plain(storage), "wf") == {
        "base": index["base"]["fp"], "scaled": index["scaled"]["fp"], "extra": None}
