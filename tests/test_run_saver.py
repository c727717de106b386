"""``FileStorage.run_saver``: the saves of a local run without their per-save lookups.

The in-process loop saves through it; what it writes must be what ``save`` writes, it must
keep the run's bookkeeping (the fingerprint index of the run), and whenever it cannot take
its shortcut (no run writing, serializers to consult, a folder removed meanwhile) the result
must still be saved the ordinary way.
"""

from __future__ import annotations

import os
import shutil

import dask.array as da
import pytest

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.storage import storage_factory
from functionfuse.serializers.daskarray import DaskArraySerializer

SEEN: list = []


@workflow
def make(x):
    return {"x": x, "payload": list(range(x))}


@workflow
def grow(d, k):
    return {"x": d["x"] + k, "payload": d["payload"] + [k]}


@workflow
def hook(d, action):
    action()
    return d["x"]


def chain(n=5):
    node = make(3).set_name("make")
    for k in range(n):
        node = grow(node, k).set_name(f"grow{k}")
    return node


def storage_at(path):
    return storage_factory({"kind": "file", "options": {"path": str(path)}})


def test_the_run_saves_the_bytes_save_writes(tmp_path):
    storage = storage_at(tmp_path / "run")
    wf = LocalWorkflow(chain(), workflow_name="wf").set_storage(storage)
    assert wf.run()["x"] == 3 + sum(range(5))
    fps = wf.resume_plan().fingerprints
    other = storage_at(tmp_path / "direct")
    other.new_workflow("wf")
    for node, fp in fps.items():  # the ordinary save, outside any run, with the same fingerprints
        other.save("wf", node.name, storage.read_task("wf", node.name), fingerprint=fp)
    for node in fps:
        ours = (tmp_path / "run" / "wf" / f"{node.name}.ffr").read_bytes()
        assert ours == (tmp_path / "direct" / "wf" / f"{node.name}.ffr").read_bytes(), node.name
    assert not [f for f in os.listdir(tmp_path / "run" / "wf") if f.startswith(".ff-tmp-")]


def test_the_run_index_holds_what_the_run_saved_and_the_next_run_reads_all(tmp_path):
    storage = storage_at(tmp_path / "st")
    wf = LocalWorkflow(chain(), workflow_name="wf").set_storage(storage)
    wf.run()
    fps = {node.name: fp for node, fp in wf.resume_plan().fingerprints.items()}
    assert storage._read_index("wf") == fps  # written by end_run from what the run saved
    again = LocalWorkflow(chain(), workflow_name="wf").set_storage(storage_at(tmp_path / "st"))
    again.run()
    assert again.run_record["counts"]["computed"] == 0 and again.run_record["counts"]["stored"] == len(fps)


def test_no_run_writing_no_shortcut(tmp_path):
    storage = storage_at(tmp_path / "st")
    storage.new_workflow("wf")
    assert storage.run_saver("wf") is None


def test_a_serializer_registered_during_the_run_is_consulted(tmp_path):
    """The shortcut writes plain pickles only: from the save after a serializer appears, save() does it."""
    storage = storage_at(tmp_path / "st")

    @workflow
    def array():
        storage.register_persistent_serializers(DaskArraySerializer)  # while the run is on
        return da.arange(6, chunks=3)

    @workflow
    def total(a, b):
        return a.sum().compute() + b

    first = make(2).set_name("first")
    leaf = total(array().set_name("arr"), hook(first, lambda: None).set_name("first_x")).set_name("total")
    wf = LocalWorkflow(leaf, workflow_name="wf").set_storage(storage)
    assert wf.run() == 15 + 2
    stored = storage.read_task("wf", "arr")
    assert isinstance(stored, da.Array) and stored.compute().tolist() == list(range(6))
    assert os.path.isdir(tmp_path / "st" / "wf" / "arr.ffd")  # the serializer's chunks, not a pickle of them


def test_the_folder_removed_during_the_run_is_made_again(tmp_path):
    storage = storage_at(tmp_path / "st")
    folder = tmp_path / "st" / "wf"

    def remove_folder():
        shutil.rmtree(folder)
        SEEN.append("removed")

    node = make(4).set_name("make")
    node = hook(node, remove_folder).set_name("remover")
    leaf = grow(make(5).set_name("after"), 1).set_name("last")
    wf = LocalWorkflow(node, leaf, workflow_name="wf").set_storage(storage)
    assert wf.run() == [4, {"x": 6, "payload": [0, 1, 2, 3, 4, 1]}]
    assert SEEN == ["removed"]
    for name in ("remover", "after", "last"):  # saved after the folder was gone
        assert (folder / f"{name}.ffr").is_file(), name
    assert storage.read_task("wf", "last")["x"] == 6


@pytest.mark.parametrize("bad", ["x" * 300, "é" * 200])
def test_a_fingerprint_too_long_is_refused_by_save_naming_the_node(tmp_path, bad):
    storage = storage_at(tmp_path / "st")
    wf = LocalWorkflow(make(1).set_name("one"), workflow_name="wf").set_storage(storage)
    run = storage.begin_run("wf")
    try:
        saver = storage.run_saver("wf")
        assert saver is not None
        with pytest.raises(Exception, match="'one'"):
            saver("one", 1, bad)
    finally:
        storage.end_run("wf", run, ok=False)
    assert not (tmp_path / "st" / "wf" / "one.ffr").exists()
    del wf


def test_the_storage_still_pickles_after_a_run_and_the_copy_saves(tmp_path):
    """Its writers are closures over it: a copy (a worker's) must not carry them, and makes its own."""
    import pickle

    storage = storage_at(tmp_path / "st")
    LocalWorkflow(chain(2), workflow_name="wf").set_storage(storage).run()
    storage.save("wf", "outside", {"x": 0})  # a save outside a run keeps its writer
    assert storage._writers_made
    copy = pickle.loads(pickle.dumps(storage))
    assert copy._writers_made == {}
    copy.save("wf", "extra", {"x": 1})
    assert storage.read_task("wf", "extra") == {"x": 1}


def _open_folders(folder) -> int:
    """How many descriptors of this process point at ``folder``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(folder):
                count += 1
        except OSError:
            pass
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="descriptors are counted through /proc")
@pytest.mark.parametrize("fails", [False, True])
def test_the_run_writes_through_one_open_folder_closed_when_the_run_ends(tmp_path, fails):
    """Plain results are written relative to a descriptor of the workflow folder (no path walk per
    file): one is open while the nodes run, none after, whether the run succeeded or not."""
    storage = storage_at(tmp_path / "st")
    folder = tmp_path / "st" / "wf"
    during = []

    def look():
        during.append(_open_folders(folder))
        if fails:
            raise RuntimeError("the node fails")

    leaf = hook(grow(make(2).set_name("make"), 1).set_name("grow"), look).set_name("look")
    wf = LocalWorkflow(leaf, workflow_name="wf").set_storage(storage)
    if fails:
        with pytest.raises(Exception, match="the node fails"):
            wf.run()
    else:
        assert wf.run() == 3
    assert during == [1]
    assert _open_folders(folder) == 0
    assert storage.read_task("wf", "grow")["x"] == 3


def test_the_folder_replaced_during_the_run_gets_the_later_results(tmp_path):
    """Removed and made again by someone else: the open descriptor is of the old folder, so the
    saver opens the new one; every result ends up where a reader looks."""
    storage = storage_at(tmp_path / "st")
    folder = tmp_path / "st" / "wf"

    def replace_folder():
        shutil.rmtree(folder)
        folder.mkdir()

    node = hook(make(4).set_name("make"), replace_folder).set_name("replacer")
    leaf = grow(make(5).set_name("after"), 1).set_name("last")
    wf = LocalWorkflow(node, leaf, workflow_name="wf").set_storage(storage)
    assert wf.run() == [4, {"x": 6, "payload": [0, 1, 2, 3, 4, 1]}]
    for name in ("replacer", "after", "last"):
        assert (folder / f"{name}.ffr").is_file(), name
    assert storage_at(tmp_path / "st").read_task("wf", "last")["x"] == 6
