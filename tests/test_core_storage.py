"""File storage on fsspec: saving, resuming, names, atomicity, checksums, bad input."""

import os
import pickle
import threading

import pytest

import functionfuse
from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import (
    CorruptResultError,
    DuplicateNameError,
    InvalidNameError,
    SerializationError,
    TaskNotFoundError,
    UnknownStorageKindError,
)
from functionfuse.storage import storage_factory

calls: list = []


@workflow
def add(a, b):
    calls.append((a, b))
    return a + b


@workflow
def multiply(a, b):
    calls.append((a, b))
    return a * b


def visible(folder):
    """Result files in a workflow folder; dot-folders hold run records and serializer data."""
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


def quickstart():
    a_plus_b = add(1, 1).set_name("node1")
    a_plus_two_b = add(a_plus_b, 1).set_name("node2")
    return multiply(a_plus_b, a_plus_two_b).set_name("node3")


def test_second_run_reads_everything_back(tmp_path):
    calls.clear()
    leaf = quickstart()
    opt = {"kind": "file", "options": {"path": str(tmp_path / "storage")}}
    first = LocalWorkflow(leaf, workflow_name="operations")
    first.set_storage(storage_factory(opt))
    assert first.run() == 6 and len(calls) == 3
    # a new process would rebuild the nodes: do the same, with a new storage object
    second = LocalWorkflow(quickstart(), workflow_name="operations")
    second.set_storage(storage_factory(opt))
    assert second.run() == 6
    assert len(calls) == 3, "nothing may be recomputed"


def test_resume_recomputes_only_missing(file_storage):
    calls.clear()
    wf = LocalWorkflow(quickstart(), workflow_name="resume")
    wf.set_storage(file_storage)
    wf.run()
    file_storage.remove_task("resume", task_name="node3")
    calls.clear()
    assert wf.run() == 6
    assert calls == [(2, 3)]


def test_resumed_run_lists_once_and_reads_only_what_it_needs(file_storage):
    wf = LocalWorkflow(quickstart(), workflow_name="count")
    wf.set_storage(file_storage)
    wf.run()
    seen = {"list": 0, "exists": 0, "read": []}
    original_list, original_exists, original_read = (
        file_storage.list_tasks, file_storage.file_exists, file_storage.read_task,
    )

    def counting_list(*a, **k):
        seen["list"] += 1
        return original_list(*a, **k)

    def counting_exists(*a, **k):
        seen["exists"] += 1
        return original_exists(*a, **k)

    def recording_read(workflow_name, task_name):
        seen["read"].append(task_name)
        return original_read(workflow_name, task_name)

    original_checked = file_storage.read_task_checked

    def recording_checked_read(workflow_name, task_name, fingerprint):  # a read-back checks the fingerprint
        seen["read"].append(task_name)
        return original_checked(workflow_name, task_name, fingerprint)

    file_storage.list_tasks, file_storage.file_exists, file_storage.read_task = (
        counting_list, counting_exists, recording_read,
    )
    file_storage.read_task_checked = recording_checked_read
    assert wf.run() == 6
    assert seen == {"list": 1, "exists": 0, "read": ["node3"]}


def test_memory_url_and_plain_path_storage(tmp_path):
    leaf = quickstart()
    assert functionfuse.run(leaf, workflow_name="m", storage="memory://ffmem/root") == 6
    st = storage_factory({"kind": "file", "options": {"path": "memory://ffmem/root"}})
    assert st.list_tasks("m") == ["node1", "node2", "node3"]
    assert st.read_task("m", "node3") == 6
    assert functionfuse.run(leaf, workflow_name="p", storage=str(tmp_path / "plain")) == 6
    assert visible(tmp_path / "plain" / "p") == ["node1.ffr", "node2.ffr", "node3.ffr"]


def test_storage_methods(file_storage):
    file_storage.new_workflow("wf")
    assert file_storage.list_tasks("wf") == []
    file_storage.save("wf", "alpha", {"x": 1})
    file_storage.save("wf", "beta", [1, 2])
    file_storage.save("wf", "gamma", None)
    assert file_storage.file_exists("wf", "alpha") and not file_storage.file_exists("wf", "zeta")
    assert file_storage.list_tasks("wf", pattern="*a") == ["alpha", "beta", "gamma"]
    assert file_storage.list_tasks("wf", pattern="b*") == ["beta"]
    assert file_storage.read_task("wf", "gamma") is None
    assert file_storage.list_workflows() == ["wf"]
    assert file_storage.remove_task("wf", task_name="alpha") == ["alpha"]
    assert file_storage.remove_task("wf", pattern="*") == ["beta", "gamma"]
    file_storage.remove_workflow("wf")
    assert file_storage.list_workflows() == []
    with pytest.raises(TaskNotFoundError, match="'alpha'.*'wf'"):
        file_storage.read_task("wf", "alpha")


def test_always_read_passes_the_stored_copy(file_storage):
    made_here = []

    @workflow
    def make():
        made_here.append([1, 2])
        return made_here[-1]

    @workflow
    def same(x, y):
        return x is y and x is not made_here[0]  # one copy, and not the object make() returned

    made = make().set_name("made")
    wf = LocalWorkflow(same(made, made), workflow_name="ar")
    wf.set_storage(file_storage)
    file_storage.always_read = True
    assert wf.run() is True  # both arguments are the one stored copy
    assert file_storage.read_task("ar", "made") == [1, 2]


def test_corrupt_and_truncated_results_are_never_returned(file_storage, tmp_path):
    file_storage.save("wf", "good", list(range(1000)))
    path = tmp_path / "storage" / "wf" / "good.ffr"
    blob = path.read_bytes()
    path.write_bytes(blob[:-10])
    with pytest.raises(CorruptResultError, match="'good'.*truncated"):
        file_storage.read_task("wf", "good")
    flipped = bytearray(blob)
    flipped[-5] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(CorruptResultError, match="checksum"):
        file_storage.read_task("wf", "good")
    path.write_bytes(b"garbage")
    with pytest.raises(CorruptResultError):
        file_storage.read_task("wf", "good")
    path.write_bytes(pickle.dumps([1]))
    with pytest.raises(CorruptResultError, match="bad header"):
        file_storage.read_task("wf", "good")


def test_corrupt_result_stops_a_resumed_run_with_its_name(file_storage, tmp_path):
    wf = LocalWorkflow(quickstart(), workflow_name="corrupt")
    wf.set_storage(file_storage)
    wf.run()
    (tmp_path / "storage" / "corrupt" / "node3.ffr").write_bytes(b"FFR1 broken")
    with pytest.raises(CorruptResultError, match="node3"):
        wf.run()


def test_unpicklable_result_names_node_and_writes_nothing(file_storage, tmp_path):
    @workflow
    def make_lock():
        return threading.Lock()

    first = add(1, 2).set_name("first")
    bad = make_lock().set_name("lock_node")
    wf = LocalWorkflow(first, bad, workflow_name="unpicklable")
    wf.set_storage(file_storage)
    with pytest.raises(SerializationError, match="'lock_node'.*nothing was written"):
        wf.run()
    assert file_storage.list_tasks("unpicklable") == ["first"]
    assert visible(tmp_path / "storage" / "unpicklable") == ["first.ffr"]


def test_duplicate_names_refused_before_anything_runs(file_storage):
    calls.clear()
    a = add(1, 1).set_name("same")
    b = add(a, 1).set_name("same")
    wf = LocalWorkflow(b, workflow_name="dups")
    wf.set_storage(file_storage)
    with pytest.raises(DuplicateNameError, match="'dups'.*'same'"):
        wf.run()
    assert calls == [] and file_storage.list_tasks("dups") == []


def test_unsafe_names_refused_by_storage(file_storage):
    for bad in ["..", "a/b", "", "x\x00"]:
        with pytest.raises(InvalidNameError):
            file_storage.save("wf", bad, 1)
        with pytest.raises(InvalidNameError):
            file_storage.list_tasks(bad)


def test_unknown_storage_kind_lists_kinds():
    with pytest.raises(UnknownStorageKindError, match="'nosuch'.*S3, file"):
        storage_factory({"kind": "nosuch", "options": {}})
    with pytest.raises(functionfuse.FunctionFuseError, match="kind"):
        storage_factory({"options": {}})


def test_save_is_atomic_no_temporary_files_left(file_storage, tmp_path):
    for i in range(20):
        file_storage.save("wf", f"t{i}", b"x" * 10000)
    assert not [f for f in os.listdir(tmp_path / "storage" / "wf") if f.startswith(".ff-tmp")]
