"""How fast fingerprints are: a large NumPy array, and whole run orders of nodes.

    python benchmarks/fingerprint_speed.py            # 1 GiB array, 1k and 10k nodes
    python benchmarks/fingerprint_speed.py --quick    # 256 MiB array

Prints
  - GB/s of ``value_fingerprint`` on a 1 GiB NumPy array (best of 3), against
    xxh3-128 over the same buffer (the ceiling) and ``dask.base.tokenize``;
  - microseconds per node of ``fingerprint_nodes`` on a chain and a layered
    diamond (width 10) of 1,000 and 10,000 nodes, best of 5, against the cost of
    building the same nodes; a first call (code fingerprints computed) and a
    warm one (code fingerprints cached, the per-run cost);
  - the same for nodes whose literal argument is a small list (a
    ``dask.base.tokenize`` call per node).

Targets (not tests): >= 1 GB/s on the array; a few microseconds per node, so a
fully stored re-run of 1k nodes with fingerprint checks stays within 12 us per node.
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np
import xxhash

from functionfuse import workflow
from functionfuse.fingerprint import clear_caches, fingerprint_nodes, value_fingerprint


def add(a, b):
    return (a + b) & 0xFFFFFFFF


def scaled(a, weights):
    return a * sum(weights)


ff_add = workflow(add)
ff_scaled = workflow(scaled)
WIDTH = 10


def build(shape: str, n: int, list_args: bool = False) -> list:
    """The nodes of one graph, in creation (= run) order."""
    order = []
    if shape == "chain":
        node = ff_add(0, 1)
        order.append(node)
        for i in range(n - 1):
            node = ff_scaled(node, [1, 2, i]) if list_args else ff_add(node, i)
            order.append(node)
        return order
    layer = [ff_add(i, 0) for i in range(WIDTH)]
    order.extend(layer)
    while len(order) < n:
        layer = [
            ff_scaled(layer[j], [layer[(j + 1) % WIDTH], 2]) if list_args else ff_add(layer[j], layer[(j + 1) % WIDTH])
            for j in range(WIDTH)
        ]
        order.extend(layer)
    return order


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def array_speed(size: int) -> None:
    data = np.random.default_rng(0).standard_normal(size // 8)
    nbytes = data.nbytes
    print(f"value_fingerprint on a {nbytes / 2**30:.2f} GiB float64 array (best of 3)")
    rows = [
        ("value_fingerprint", lambda: value_fingerprint(data)),
        ("xxh3_128 over the buffer (ceiling)", lambda: xxhash.xxh3_128(data).hexdigest()),
    ]
    try:
        from dask.base import tokenize

        rows.append(("dask.base.tokenize", lambda: tokenize(data)))
    except ImportError:
        pass
    for label, fn in rows:
        seconds = best(fn, 3)
        print(f"  {label:<36} {nbytes / seconds / 1e9:7.2f} GB/s")
    strided = data[::2]
    seconds = best(lambda: value_fingerprint(strided), 3)
    print(f"  {'value_fingerprint, strided view':<36} {strided.nbytes / seconds / 1e9:7.2f} GB/s  (copied first)")


def node_speed(sizes: list[int]) -> None:
    print("\nfingerprint_nodes, microseconds per node (best of 5)")
    print(f"  {'graph':<22} {'nodes':>6} {'build':>8} {'first':>8} {'warm':>8}")
    for list_args in (False, True):
        for shape in ("chain", "diamond"):
            for n in sizes:
                order = build(shape, n, list_args)
                build_s = best(lambda: build(shape, n, list_args), 5)

                def first():
                    clear_caches()
                    fingerprint_nodes(order)

                first_s = best(first, 5)
                fingerprint_nodes(order)
                warm_s = best(lambda: fingerprint_nodes(order), 5)
                label = f"{shape}{' (list arg)' if list_args else ''}"
                print(
                    f"  {label:<22} {len(order):>6} {build_s / len(order) * 1e6:8.2f} "
                    f"{first_s / len(order) * 1e6:8.2f} {warm_s / len(order) * 1e6:8.2f}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 256 MiB array instead of 1 GiB")
    args = parser.parse_args()
    array_speed(2**28 if args.quick else 2**30)
    node_speed([1000, 10000])


if __name__ == "__main__":
    main()
