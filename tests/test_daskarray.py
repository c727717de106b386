"""DaskArraySerializer: Dask arrays kept as zarr next to the node's result, on local and S3 storage."""

import json
import os
import subprocess
import sys
import textwrap

import dask.array as da
import numpy as np
import pytest
import zarr
from s3_fixtures import running_moto

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import CorruptResultError, SerializationError
from functionfuse.serializers import Serializer
from functionfuse.serializers.daskarray import DaskArraySerializer
from functionfuse.storage import storage_factory

ran: list = []


@pytest.fixture(scope="module")
def moto_s3():
    with running_moto() as server:
        yield server


@pytest.fixture(params=["file", "S3"])
def storage_opt(request, tmp_path):
    """The storage_factory dict of a fresh local or S3 storage."""
    if request.param == "file":
        return {"kind": "file", "options": {"path": str(tmp_path / "storage")}}
    server = request.getfixturevalue("moto_s3")
    return server.storage_options(f"{server.new_bucket()}/runs")


def zarr_backed(array) -> bool:
    """True when the lazy array reads its chunks from a zarr array."""
    return any(isinstance(getattr(value, "zarr_array", value), zarr.Array)
               for value in dict(array.__dask_graph__()).values())


def data_files(storage, workflow_name, task_name):
    """Every file of the serializer data the node's committed result uses, relative to its folder."""
    folder = storage.data_path(workflow_name, task_name)
    if folder is None:
        return []
    return sorted(path[len(folder) + 1:] for path in storage.fs.find(folder))


# ---------------------------------------------------------------------------
# the seed's Dask-array workflow: an array of 10,000 elements, squared
# ---------------------------------------------------------------------------


@workflow
def dask_array(n):
    ran.append("dask_array")
    return da.arange(n, chunks=1_000)


@workflow
def square(x):
    ran.append(("square", zarr_backed(x)))
    return x ** 2


@workflow
def total(x):
    ran.append(("total", zarr_backed(x)))
    return int(x.sum().compute())


def seed_workflow():
    squared = square(dask_array(10_000).set_name("array")).set_name("squared")
    return total(squared).set_name("total")


def run_seed(opt):
    storage = storage_factory(opt)
    storage.register_persistent_serializers(DaskArraySerializer)
    storage.always_read = True
    wf = LocalWorkflow(seed_workflow(), workflow_name="dask")
    wf.set_storage(storage)
    return wf.run(), storage


EXPECTED = int((np.arange(10_000) ** 2).sum())


def test_seed_dask_workflow_twice_then_removed(storage_opt):
    ran.clear()
    result, storage = run_seed(storage_opt)
    assert result == EXPECTED
    # always_read: each next node got the zarr-backed array, not the in-memory graph
    assert ran == ["dask_array", ("square", True), ("total", True)]
    assert storage.list_tasks("dask") == ["array", "squared", "total"]
    files = data_files(storage, "dask", "squared")
    assert "0/zarr.json" in files and sum(f.startswith("0/c/") for f in files) == 10

    # the second run (new nodes, new storage object) computes nothing
    ran.clear()
    again, _ = run_seed(storage_opt)
    assert again == EXPECTED and ran == []

    # read back as in a notebook: lazy, zarr-backed, chunks preserved
    squared = storage_factory(storage_opt).read_task("dask", "squared")
    assert isinstance(squared, da.Array) and zarr_backed(squared)
    assert squared.chunks == ((1_000,) * 10,)
    np.testing.assert_array_equal(squared[9_990:].compute(), np.arange(9_990, 10_000) ** 2)

    storage.remove_task("dask", task_name="squared")
    assert data_files(storage, "dask", "squared") == [] and data_files(storage, "dask", "array") != []
    assert not storage.fs.exists(storage._data_dir("dask", "squared"))
    storage.remove_workflow("dask")
    assert data_files(storage, "dask", "array") == [] and storage.list_workflows() == []


@workflow
def two_arrays():
    return {"a": da.ones((4, 6), chunks=(2, 3)), "b": da.arange(5, chunks=2), "n": 7, "label": ["x"]}


def test_nested_arrays_each_written_by_the_serializer(file_storage):
    file_storage.register_persistent_serializers(DaskArraySerializer)
    wf = LocalWorkflow(two_arrays().set_name("pair"), workflow_name="nested")
    wf.set_storage(file_storage)
    wf.run()
    files = data_files(file_storage, "nested", "pair")
    assert [f for f in files if f.endswith("zarr.json")] == ["0/zarr.json", "1/zarr.json"]
    value = file_storage.read_task("nested", "pair")
    assert value["n"] == 7 and value["label"] == ["x"]
    assert value["a"].chunks == ((2, 2), (3, 3)) and value["b"].chunks == ((2, 2, 1),)
    assert zarr_backed(value["a"]) and zarr_backed(value["b"])
    assert value["a"].sum().compute() == 24 and list(value["b"].compute()) == [0, 1, 2, 3, 4]


def test_irregular_and_empty_chunks_preserved(file_storage):
    file_storage.register_persistent_serializers(DaskArraySerializer)
    irregular = da.from_array(np.arange(10), chunks=((3, 3, 4),))
    empty = da.zeros((0, 3), chunks=(5, 3))
    file_storage.save("wf", "shapes", [irregular, empty])
    back, back_empty = file_storage.read_task("wf", "shapes")
    assert back.chunks == ((3, 3, 4),) and list(back.compute()) == list(range(10))
    assert back_empty.shape == (0, 3) and back_empty.compute().shape == (0, 3)


def test_object_arrays_are_left_to_pickle(file_storage):
    file_storage.register_persistent_serializers(DaskArraySerializer)
    objects = da.from_array(np.array([{"a": 1}, None], dtype=object), chunks=1)
    file_storage.save("wf", "objects", objects)
    assert data_files(file_storage, "wf", "objects") == []
    assert file_storage.read_task("wf", "objects").compute()[0] == {"a": 1}


def test_the_serializer_is_registered_under_its_name():
    from functionfuse.manager import get_plugin_manager, load_target, registrations

    registration = registrations(get_plugin_manager(), "ff_serializers")["daskarray"]
    assert registration.extra == "dask" and not registration.active
    assert load_target(registration, "serializer") is DaskArraySerializer


# ---------------------------------------------------------------------------
# faults: a store deleted behind the storage's back; a serializer that raises
# ---------------------------------------------------------------------------


def test_deleted_zarr_store_is_a_clear_error(storage_opt):
    storage = storage_factory(storage_opt)
    storage.register_persistent_serializers(DaskArraySerializer)
    storage.save("wf", "gone", {"x": da.arange(100, chunks=10)})
    storage.save("wf", "holed", da.arange(100, chunks=10))
    storage.fs.rm(storage.data_path("wf", "gone") + "/0", recursive=True)
    with pytest.raises(CorruptResultError, match=r"node 'gone' \(workflow 'wf'\) written by serializer 'daskarray'"):
        storage.read_task("wf", "gone")
    # one chunk removed: zarr alone would read it back as zeros
    storage.fs.rm(storage.data_path("wf", "holed") + "/0/c/3")
    with pytest.raises(CorruptResultError, match="'holed'.*missing 1 of its 10 chunks"):
        storage.read_task("wf", "holed")


def test_resumed_run_over_a_deleted_store_names_the_node(file_storage):
    file_storage.register_persistent_serializers(DaskArraySerializer)
    wf = LocalWorkflow(seed_workflow(), workflow_name="dask")
    wf.set_storage(file_storage)
    wf.run()
    file_storage.remove_task("dask", task_name="total")
    file_storage.fs.rm(file_storage.data_path("dask", "squared"), recursive=True)
    again = LocalWorkflow(seed_workflow(), workflow_name="dask")
    again.set_storage(file_storage)
    with pytest.raises(CorruptResultError, match="'squared'.*'daskarray'"):
        again.run()


def test_unknown_chunk_sizes_name_serializer_and_node(file_storage):
    file_storage.register_persistent_serializers(DaskArraySerializer)
    x = da.arange(10, chunks=5)

    @workflow
    def filtered():
        return x[x > 3]

    wf = LocalWorkflow(filtered().set_name("filtered"), workflow_name="wf")
    wf.set_storage(file_storage)
    with pytest.raises(SerializationError, match="'daskarray'.*'filtered'.*compute_chunk_sizes"):
        wf.run()
    assert file_storage.list_tasks("wf") == []


class Reading:
    def __init__(self, value):
        self.value = value


class Exploding(Serializer):
    name = "exploding"

    def match(self, obj):
        return isinstance(obj, Reading)

    def write(self, obj, fs, path):
        if obj.value < 0:
            raise RuntimeError("cannot write this one")
        fs.pipe_file(path, str(obj.value).encode())
        return "text"

    def read(self, token, fs, path):
        raise RuntimeError("cannot read it back")


@workflow
def make_reading(value):
    return {"r": Reading(value)}


def test_serializer_that_raises_names_itself_and_the_node(file_storage):
    file_storage.register_persistent_serializers(Exploding)
    wf = LocalWorkflow(make_reading(-1).set_name("negative"), workflow_name="wf")
    wf.set_storage(file_storage)
    with pytest.raises(SerializationError, match="serializer 'exploding' failed to write the result of node 'negative'"):
        wf.run()
    assert file_storage.list_tasks("wf") == []
    assert not os.path.exists(file_storage._data_dir("wf", "negative"))

    file_storage.save("wf", "positive", {"r": Reading(2)})
    with pytest.raises(SerializationError, match="'exploding'.*'positive'.*cannot read it back"):
        file_storage.read_task("wf", "positive")


# ---------------------------------------------------------------------------
# larger than memory: 2 GiB stored and read back chunk by chunk
# ---------------------------------------------------------------------------

BIG_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np, dask.array as da
    from functionfuse import workflow
    from functionfuse.backends.builtin.localback import LocalWorkflow
    from functionfuse.storage import storage_factory
    from functionfuse.serializers.daskarray import DaskArraySerializer

    CHUNKS = 256  # 8 MiB each: a few in flight per thread cannot add up to the array
    SIZE = 2 * 1024**3 // 8  # float64 elements in 2 GiB
    STEP = SIZE // CHUNKS

    def fill(block_info=None):
        # every chunk holds its own index: order and placement are checked on the way back
        return np.full(STEP, float(block_info[None]["chunk-location"][0]))

    @workflow
    def big():
        return da.map_blocks(fill, chunks=((STEP,) * CHUNKS,), dtype=float, meta=np.array((), dtype=float))

    @workflow
    def chunk_means(x):
        return x.map_blocks(lambda b: np.array([b.mean()]), chunks=(1,)).compute().tolist()

    storage = storage_factory({"kind": "file", "options": {"path": sys.argv[1]}})
    storage.register_persistent_serializers(DaskArraySerializer)
    storage.always_read = True
    wf = LocalWorkflow(chunk_means(big().set_name("big")).set_name("means"), workflow_name="big")
    wf.set_storage(storage)
    means = wf.run()
    back = storage.read_task("big", "big")
    print(json.dumps({
        "means": means,
        "nbytes": back.nbytes,
        "chunks": len(back.chunks[0]),
        "last": float(back[-1].compute()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))
    """
)


def test_two_gib_array_stored_and_read_in_chunks(tmp_path):
    # Linux carries a process's peak RSS across exec, so a child forked straight from this (large) test
    # process would report ours. A shell in between forks the child from its own small image instead.
    out = subprocess.run(
        ["sh", "-c", '"$0" -c "$1" "$2"; exit $?', sys.executable, BIG_SCRIPT, str(tmp_path / "storage")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["nbytes"] == 2 * 1024**3 and report["chunks"] == 256
    assert report["means"] == [float(i) for i in range(256)] and report["last"] == 255.0
    # far below the array's 2048 MiB: only a few 8 MiB chunks are ever in memory
    assert report["peak_rss_mb"] < 512, report


# ---------------------------------------------------------------------------
# on Ray: workers write the zarr data to S3 and the next node reads it there
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    from ray_fixtures import start_local_cluster, stop_local_cluster

    ray, temp_dir = start_local_cluster(__name__)
    yield ray
    stop_local_cluster(ray, temp_dir)


@workflow
def square_on_worker(x):
    return {"squared": x ** 2, "got_zarr": zarr_backed(x), "pid": os.getpid()}


@workflow
def total_on_worker(result):
    return int(result["squared"].sum().compute()), result["got_zarr"], zarr_backed(result["squared"]), result["pid"]


@pytest.mark.timeout(180)
def test_seed_dask_workflow_on_ray_with_s3(ray_cluster, moto_s3):
    from functionfuse.backends.builtin.rayback import RayWorkflow

    storage = storage_factory(moto_s3.storage_options(f"{moto_s3.new_bucket()}/ray"))
    storage.register_persistent_serializers(DaskArraySerializer)
    storage.always_read = True
    squared = square_on_worker(dask_array(10_000).set_name("array")).set_name("squared")
    wf = RayWorkflow(total_on_worker(squared).set_name("total"), workflow_name="dask")
    wf.set_storage(storage)
    value, got_zarr, next_got_zarr, worker_pid = wf.run()
    assert value == EXPECTED and got_zarr and next_got_zarr and worker_pid != os.getpid()
    assert storage.list_tasks("dask") == ["array", "squared", "total"]
    assert sum(f.startswith("0/c/") for f in data_files(storage, "dask", "squared")) == 10
    back = storage.read_task("dask", "squared")
    assert zarr_backed(back["squared"]) and back["squared"].chunks == ((1_000,) * 10,)


# ---------------------------------------------------------------------------
# the examples of docs/storage.md run as written
# ---------------------------------------------------------------------------


def test_storage_docs_examples_run(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from doc_examples import run_blocks

    import functionfuse

    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    assert len(run_blocks("docs/storage.md", namespace)) == 4  # every block, in order, its claims checked
    assert capsys.readouterr().out.split() == ["333283335000", "True"]
    storage = namespace["storage"]
    assert storage.list_tasks("dask") == ["array", "total"]
    assert not (tmp_path / "storage" / "dask" / "squared.ffd").exists()

    # the plugin of the example writes Celsius objects for every run
    @workflow
    def reading():
        return {"t": namespace["Celsius"](21.5)}

    functionfuse.run(reading().set_name("reading"), workflow_name="temps", storage=storage,
                     plugins=[namespace["CelsiusPlugin"]()])
    assert (Path(storage.data_path("temps", "reading")) / "0").read_text() == "21.5"
    assert storage.read_task("temps", "reading")["t"].degrees == 21.5


# ---------------------------------------------------------------------------
# the numpy serializer: large arrays as .npy files
# ---------------------------------------------------------------------------


def test_large_numpy_arrays_to_npy_small_ones_pickled(storage_opt):
    from functionfuse.serializers.numpyarray import NumpyArraySerializer

    storage = storage_factory(storage_opt)
    storage.register_persistent_serializers(NumpyArraySerializer(min_bytes=1024))
    big = np.arange(1_000, dtype="float64").reshape(10, 100)
    value = {"big": big, "fortran": np.asfortranarray(big), "small": np.arange(3), "dask": da.arange(4, chunks=2)}
    storage.save("wf", "arrays", value)
    assert data_files(storage, "wf", "arrays") == ["0", "1"]  # dask arrays are pickled: no serializer for them here
    back = storage.read_task("wf", "arrays")
    np.testing.assert_array_equal(back["big"], big)
    np.testing.assert_array_equal(back["fortran"], big)
    assert list(back["small"]) == [0, 1, 2] and list(back["dask"].compute()) == [0, 1, 2, 3]

    # a truncated or altered .npy file is refused, naming the node
    path = storage.data_path("wf", "arrays") + "/0"
    blob = storage.fs.cat_file(path)
    storage.fs.pipe_file(path, blob[:-8])
    with pytest.raises(CorruptResultError, match="'arrays'.*'numpy'.*truncated"):
        storage.read_task("wf", "arrays")
    storage.fs.pipe_file(path, blob[:-8] + b"\0" * 8)
    with pytest.raises(CorruptResultError, match="'arrays'.*'numpy'.*checksum"):
        storage.read_task("wf", "arrays")
    storage.remove_task("wf", task_name="arrays")
    assert data_files(storage, "wf", "arrays") == [] and not storage.fs.exists(storage._data_dir("wf", "arrays"))
