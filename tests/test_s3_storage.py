"""The ``S3`` storage kind against a real S3 server (moto's server mode on 127.0.0.1, over HTTP via s3fs)."""

import pickle
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from s3_fixtures import CREDENTIALS, running_moto, start_moto_with_auth

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import CorruptResultError, InvalidOptionError, StorageError, TaskNotFoundError
from functionfuse.storage import storage_factory

calls: list = []


@pytest.fixture(scope="module")
def moto_s3():
    with running_moto() as server:
        yield server


@workflow
def add(a, b):
    calls.append(("add", a, b))
    return a + b


@workflow
def multiply(a, b):
    calls.append(("multiply", a, b))
    return a * b


def quickstart():
    a_plus_b = add(1, 1).set_name("node1")
    a_plus_two_b = add(a_plus_b, 1).set_name("node2")
    return multiply(a_plus_b, a_plus_two_b).set_name("node3")


def run_quickstart(opt):
    wf = LocalWorkflow(quickstart(), workflow_name="operations")
    wf.set_storage(storage_factory(opt))
    return wf.run()


def test_quickstart_saved_listed_read_resumed_removed(moto_s3):
    bucket = moto_s3.new_bucket()
    opt = moto_s3.storage_options(f"{bucket}/runs")
    calls.clear()
    assert run_quickstart(opt) == 6 and len(calls) == 3
    storage = storage_factory(opt)
    assert storage.list_workflows() == ["operations"]
    assert storage.list_tasks("operations") == ["node1", "node2", "node3"]
    assert storage.list_tasks("operations", pattern="node[12]") == ["node1", "node2"]
    assert storage.read_task("operations", "node2") == 3
    assert "runrecord-latest.json" in storage.list_meta("operations")  # the run record, beside the results
    storage.save_meta("operations", "note", b"hello")
    assert storage.read_meta("operations", "note") == b"hello" and storage.read_meta("operations", "none") is None
    assert storage.file_exists("operations", "node3") and not storage.file_exists("operations", "node4")
    keys = moto_s3.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert {"runs/operations/node1.ffr", "runs/operations/node3.ffr"} <= {k["Key"] for k in keys}

    # a second run (new nodes, new storage object) reads everything back
    assert run_quickstart(opt) == 6 and len(calls) == 3
    # resumed: only the removed node is computed again
    assert storage.remove_task("operations", task_name="node3") == ["node3"]
    assert run_quickstart(opt) == 6 and calls[3:] == [("multiply", 2, 3)]

    assert storage.remove_task("operations", pattern="node[12]") == ["node1", "node2"]
    assert storage.list_tasks("operations") == ["node3"]
    with pytest.raises(TaskNotFoundError, match="node1.*operations"):
        storage.read_task("operations", "node1")
    storage.remove_workflow("operations")
    assert storage.list_workflows() == [] and storage.list_tasks("operations") == []
    assert "Contents" not in moto_s3.client().list_objects_v2(Bucket=bucket, Prefix="runs/operations/")


def test_corrupt_result_on_s3_is_refused(moto_s3):
    bucket = moto_s3.new_bucket()
    storage = storage_factory(moto_s3.storage_options(f"{bucket}/c"))
    storage.save("wf", "node", list(range(100)))
    blob = moto_s3.client().get_object(Bucket=bucket, Key="c/wf/node.ffr")["Body"].read()
    moto_s3.client().put_object(Bucket=bucket, Key="c/wf/node.ffr", Body=blob[:-5])
    with pytest.raises(CorruptResultError, match="'node'.*truncated"):
        storage.read_task("wf", "node")


def test_s3_storage_is_picklable_and_works_in_another_process(moto_s3, tmp_path):
    bucket = moto_s3.new_bucket()
    storage = storage_factory(moto_s3.storage_options(f"{bucket}/p"))
    storage.save("wf", "from-driver", {"x": 1})
    copy = pickle.loads(pickle.dumps(storage))
    assert copy.read_task("wf", "from-driver") == {"x": 1}
    # a real process boundary, as for a Ray worker: it reads the driver's result and saves its own
    (tmp_path / "storage.pkl").write_bytes(pickle.dumps(storage))
    script = textwrap.dedent(
        """
        import pickle, sys
        storage = pickle.load(open(sys.argv[1], "rb"))
        value = storage.read_task("wf", "from-driver")
        storage.save("wf", "from-worker", value["x"] + 41)
        """
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "storage.pkl")], check=True, timeout=60)
    assert storage.list_tasks("wf") == ["from-driver", "from-worker"]
    assert storage.read_task("wf", "from-worker") == 42


# ---------------------------------------------------------------------------
# bad input and faults: each fails within seconds, naming the storage
# ---------------------------------------------------------------------------


def test_missing_bucket_is_named_and_not_created(moto_s3):
    start = time.monotonic()
    with pytest.raises(StorageError, match=r"S3 storage s3://ff-nosuchbucket/x: the bucket 'ff-nosuchbucket' does not exist"):
        storage_factory(moto_s3.storage_options("ff-nosuchbucket/x"))
    assert time.monotonic() - start < 10
    names = [b["Name"] for b in moto_s3.client().list_buckets()["Buckets"]]
    assert "ff-nosuchbucket" not in names


def test_unreachable_endpoint_fails_within_seconds():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens here once the socket is closed
    opt = {"kind": "S3", "options": {"path": "bucket/x", "s3fs": {"endpoint_url": f"http://127.0.0.1:{port}", **CREDENTIALS}}}
    start = time.monotonic()
    with pytest.raises(StorageError, match=rf"S3 storage s3://bucket/x: cannot reach the S3 endpoint http://127.0.0.1:{port}"):
        storage_factory(opt)
    assert time.monotonic() - start < 10


def test_silent_endpoint_times_out_within_seconds():
    """A server that accepts connections and never answers: a timeout, not a hang."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        opt = {"kind": "S3", "options": {"path": "bucket/x", "s3fs": {"endpoint_url": f"http://127.0.0.1:{port}", **CREDENTIALS}}}
        start = time.monotonic()
        with pytest.raises(StorageError, match="S3 storage s3://bucket/x: cannot reach the S3 endpoint"):
            storage_factory(opt)
        assert time.monotonic() - start < 12


def test_missing_credentials_are_named(moto_s3, monkeypatch, tmp_path):
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    opt = {"kind": "S3", "options": {"path": "bucket/x", "s3fs": {"endpoint_url": moto_s3.endpoint}}}
    with pytest.raises(StorageError, match="S3 storage s3://bucket/x: no S3 credentials were found"):
        storage_factory(opt)


def test_wrong_credentials_are_named():
    process, server = start_moto_with_auth()
    try:
        bucket = server.new_bucket()
        good = storage_factory(server.storage_options(f"{bucket}/a"))
        good.save("wf", "n", 1)
        assert good.read_task("wf", "n") == 1
        for key, secret in [(server.key, "wrong-secret"), ("AKIAUNKNOWNKEY000000", "x")]:
            opt = {"kind": "S3", "options": {"path": f"{bucket}/a", "s3fs": {**server.s3fs_options(), "key": key, "secret": secret}}}
            start = time.monotonic()
            with pytest.raises(StorageError, match=rf"S3 storage s3://{bucket}/a: access to the bucket '{bucket}' was refused.*wrong credentials"):
                storage_factory(opt)
            assert time.monotonic() - start < 10
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_endpoint_lost_mid_run_fails_within_seconds():
    with running_moto() as server:
        bucket = server.new_bucket()
        storage = storage_factory(server.storage_options(f"{bucket}/lost"))
        storage.save("wf", "before", 1)
    # the server is gone now
    for call, match in [
        (lambda: storage.save("wf", "after", 2), "saving node 'after' of workflow 'wf' failed"),
        (lambda: storage.read_task("wf", "before"), "reading node 'before' of workflow 'wf' failed"),
        (lambda: storage.list_tasks("wf"), r"list_tasks \(workflow 'wf'\) failed"),
    ]:
        start = time.monotonic()
        with pytest.raises(StorageError, match=rf"S3 storage s3://{bucket}/lost: {match}"):
            call()
        assert time.monotonic() - start < 15


def test_check_false_skips_the_bucket_check():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    options = {"path": "bucket/x", "check": False, "s3fs": {"endpoint_url": f"http://127.0.0.1:{port}", **CREDENTIALS}}
    storage = storage_factory({"kind": "S3", "options": options})  # nothing is contacted yet
    with pytest.raises(StorageError, match=r"S3 storage s3://bucket/x: list_tasks \(workflow 'wf'\) failed"):
        storage.list_tasks("wf")


@pytest.mark.parametrize(
    "options, message",
    [
        ({}, 'storage kind "S3" needs the option "path"'),
        ({"path": ""}, 'storage kind "S3" needs the option "path"'),
        ({"path": "b/x", "s3fs": ["not", "a", "dict"]}, '"s3fs" must be a dict'),
    ],
)
def test_bad_s3_options(options, message):
    with pytest.raises(InvalidOptionError, match=message):
        storage_factory({"kind": "S3", "options": options})


def test_no_stale_listings_between_storage_objects(moto_s3):
    """Two storage objects (two processes, in effect) see each other's writes at once."""
    bucket = moto_s3.new_bucket()
    first = storage_factory(moto_s3.storage_options(f"{bucket}/l"))
    second = storage_factory(moto_s3.storage_options(f"{bucket}/l"))
    assert second.list_tasks("wf") == []
    first.save("wf", "a", 1)
    assert second.list_tasks("wf") == ["a"] and second.file_exists("wf", "a")
    first.remove_task("wf", "a")
    assert second.list_tasks("wf") == []


def test_a_leading_slash_names_the_same_bucket_and_prefix(moto_s3):
    bucket = moto_s3.new_bucket()
    plain = storage_factory(moto_s3.storage_options(f"{bucket}/p"))
    slashed = storage_factory(moto_s3.storage_options(f"/{bucket}/p"))
    assert slashed.describe() == plain.describe() == f"S3 storage s3://{bucket}/p"
    slashed.save("wf", "a", 41)
    assert plain.read_task("wf", "a") == 41 and plain.list_tasks("wf") == ["a"]


def test_concurrent_saves_from_threads(moto_s3):
    bucket = moto_s3.new_bucket()
    storage = storage_factory(moto_s3.storage_options(f"{bucket}/t"))
    threads = [threading.Thread(target=storage.save, args=("wf", f"n{i}", i)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [storage.read_task("wf", f"n{i}") for i in range(8)] == list(range(8))
