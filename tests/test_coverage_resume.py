"""Resume reasons when the fingerprint index beside the results is damaged: reasons are lost, results stay right."""

import os

import pytest

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow


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
