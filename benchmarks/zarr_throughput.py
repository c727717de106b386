"""Storing a Dask array through DaskArraySerializer against ``dask.array.to_zarr``.

    python benchmarks/zarr_throughput.py [--size-gb 1] [--chunk-mb 64] [--repeat 3] [--source persisted|random] [--s3]

Both write the same array to the same kind of place in the same run, turn
about: a folder on local disk (default), or a bucket on moto's S3 server on
127.0.0.1 with ``--s3`` (moto is slow and keeps everything in memory: use a
small ``--size-gb`` there). ``persisted`` (default) holds the array in memory
first so only storing is timed; ``random`` generates it lazily while storing.

Prints MB/s of each (best and median of ``--repeat``) and serializer/to_zarr.
Target: at least 0.9x the throughput of ``dask.array.to_zarr``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

import dask.array as da

from functionfuse.serializers.daskarray import DaskArraySerializer
from functionfuse.storage import storage_factory


def make_array(size_gb: float, chunk_mb: int, source: str):
    elements = int(size_gb * 1024**3) // 8
    chunk = max(1, chunk_mb * 1024**2 // 8)
    array = da.random.default_rng(0).random((elements,), chunks=chunk)
    return array.persist() if source == "persisted" else array


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--chunk-mb", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--source", choices=["persisted", "random"], default="persisted")
    parser.add_argument("--s3", action="store_true", help="store on moto's S3 server on 127.0.0.1")
    args = parser.parse_args()

    server = None
    folder = tempfile.mkdtemp(prefix="ff-zarr-bench-")
    try:
        if args.s3:
            import boto3
            from moto.server import ThreadedMotoServer

            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            host, port = server.get_host_and_port()
            s3fs_options = {"endpoint_url": f"http://{host}:{port}", "key": "bench", "secret": "bench"}
            boto3.client(
                "s3", endpoint_url=s3fs_options["endpoint_url"], aws_access_key_id="bench",
                aws_secret_access_key="bench", region_name="us-east-1",
            ).create_bucket(Bucket="bench")
            storage = storage_factory({"kind": "S3", "options": {"path": "bench/ff", "s3fs": s3fs_options}})
            plain_url, plain_options = "s3://bench/plain", dict(storage.fs.storage_options)
            where = f"moto S3 at {s3fs_options['endpoint_url']}"
        else:
            storage = storage_factory({"kind": "file", "options": {"path": f"{folder}/ff"}})
            plain_url, plain_options = f"{folder}/plain", None
            where = f"local disk ({folder})"
        storage.register_persistent_serializers(DaskArraySerializer)

        array = make_array(args.size_gb, args.chunk_mb, args.source)
        megabytes = array.nbytes / 1024**2
        print(f"{megabytes:.0f} MB float64 in {array.numblocks[0]} chunks of {args.chunk_mb} MB, "
              f"source {args.source}, to {where}")

        times: dict[str, list[float]] = {"serializer": [], "to_zarr": []}
        for attempt in range(args.repeat):
            for name in (("serializer", "to_zarr") if attempt % 2 == 0 else ("to_zarr", "serializer")):
                start = time.perf_counter()
                if name == "serializer":
                    storage.save("bench", "array", array)
                else:
                    # "w-": a fresh array, written without a lock ("w" would lock every chunk write)
                    da.to_zarr(array, plain_url, storage_options=plain_options, mode="w-")
                times[name].append(time.perf_counter() - start)
            storage.remove_workflow("bench")  # not timed: both start from an empty place
            storage.fs.rm(plain_url, recursive=True)

        rates = {name: megabytes / min(values) for name, values in times.items()}
        medians = {name: megabytes / statistics.median(values) for name, values in times.items()}
        for name, values in times.items():
            print(f"{name:>10}: best {min(values):6.2f} s  {rates[name]:8.1f} MB/s   median {medians[name]:8.1f} MB/s   "
                  f"(all: {', '.join(f'{v:.2f}' for v in values)} s)")
        print(f"serializer / to_zarr throughput: {rates['serializer'] / rates['to_zarr']:.2f}x best, "
              f"{medians['serializer'] / medians['to_zarr']:.2f}x median  (target >= 0.9x)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
