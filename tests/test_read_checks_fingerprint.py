"""The last guard against a wrong value on resume: reading a stored result back checks its header's fingerprint.

A run reads a result because the storage said (listing, index) that its fingerprint matches the
node call. If the file says otherwise when it is read (a stale or forged index, a result replaced
since), the read refuses it, naming the node, instead of handing another call's value to the run.
"""

from __future__ import annotations

import pickle
import zlib

import pytest

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import CorruptResultError, NodeExecutionError, StorageError
from plugins_builtin import fsstorage
from plugins_builtin.fsstorage import FileStorage


@workflow
def scale(x):
    return x * 10


@workflow
def plus_one(x):
    return x + 1


def _graph(arg: int):
    a = scale(arg).set_name("a")
    return a, plus_one(a).set_name("b")


def _forge_index(root, workflow_name: str, index: dict) -> None:
    """Write a well-formed index (right magic and CRC) holding what ``index`` says: a stale index."""
    body = pickle.dumps(index, protocol=5)
    path = root / workflow_name / ".fffp" / fsstorage.INDEX_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(fsstorage._INDEX_HEADER.pack(fsstorage._INDEX_MAGIC, zlib.crc32(body)) + body)


def test_a_result_whose_header_holds_another_fingerprint_is_refused_not_returned(tmp_path):
    a, b = _graph(1)
    assert LocalWorkflow(b, workflow_name="w").set_storage(str(tmp_path)).run() == 11
    # The script changes: scale(2). A stale index claims the stored 'a' is already scale(2)'s result.
    a2, b2 = _graph(2)
    wf = LocalWorkflow(b2, workflow_name="w").set_storage(str(tmp_path))
    fps = wf.fingerprints()
    _forge_index(tmp_path, "w", {"a": fps[a2], "b": "0" * 32})
    with pytest.raises((NodeExecutionError, StorageError)) as caught:
        wf.run()  # without the check this returns 11: scale(1)'s value read as scale(2)'s
    error = caught.value
    cause = error if isinstance(error, CorruptResultError) else error.__cause__
    assert isinstance(cause, CorruptResultError), repr(error)
    assert "node 'a'" in str(cause) and "replaced after the run looked at the storage" in str(cause)
    # nothing was lost: the stored result is still scale(1)'s, and an honest listing recomputes 'a'
    assert FileStorage(str(tmp_path)).read_task("w", "a") == 10
    (tmp_path / "w" / ".fffp" / fsstorage.INDEX_NAME).unlink()
    wf = LocalWorkflow(_graph(2)[1], workflow_name="w").set_storage(str(tmp_path))
    assert wf.run() == 21
    assert wf.run_record["counts"]["computed"] == 2


def test_read_task_checked_compares_the_header_and_read_task_does_not(tmp_path):
    storage = FileStorage(str(tmp_path))
    storage.new_workflow("w")
    storage.save("w", "n", {"v": 1}, fingerprint="f" * 32)
    assert storage.read_task_checked("w", "n", "f" * 32) == {"v": 1}
    with pytest.raises(CorruptResultError, match=r"node 'n' \(workflow 'w'\) has fingerprint 'ffff"):
        storage.read_task_checked("w", "n", "e" * 32)
    assert storage.read_task("w", "n") == {"v": 1}  # the plain read (read_task, functionfuse show) is unchanged
