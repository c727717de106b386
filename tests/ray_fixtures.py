"""Shared helpers of the Ray tests: a local cluster per module, and picklable test code."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def start_local_cluster(module_name: str, **resources: float):
    """``ray.init`` a local cluster of 2 CPUs with the ``_disk`` and ``custom_resource`` resources.

    Returns ``(ray, temp_dir)``. The test module's functions are pickled by value, so Ray
    workers (which cannot import test modules) can run them.
    """
    import ray

    # Ray's socket paths must stay short: a temp dir under /tmp, not pytest's deep tmp_path.
    temp_dir = tempfile.mkdtemp(prefix="ffray", dir="/tmp")
    register_by_value(module_name)
    ray.init(
        num_cpus=2,
        resources={"_disk": 1, "custom_resource": 1, **resources},
        include_dashboard=False,
        _temp_dir=temp_dir,
        log_to_driver=False,
        # workers import this helper module (plain pickle, as storage uses, pickles its classes by reference);
        # the driver's PYTHONPATH stays after it (.ci/run's coverage hook for workers lives there)
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
            p for p in (os.path.dirname(os.path.abspath(__file__)), os.environ.get("PYTHONPATH")) if p)}},
    )
    return ray, temp_dir


def register_by_value(module_name: str) -> None:
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[module_name])


def stop_local_cluster(ray, temp_dir: str) -> None:
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


class DriverOnly:
    """A value that cannot be unpickled in the driver process: proof that the driver never fetched it."""

    def __init__(self, driver_pid: int, payload: int):
        self.driver_pid = driver_pid
        self.payload = payload

    def __reduce__(self):
        return (_rebuild_driver_only, (self.driver_pid, self.payload))


def _rebuild_driver_only(driver_pid: int, payload: int) -> DriverOnly:
    if os.getpid() == driver_pid:
        raise RuntimeError("this value was shipped to the driver")
    return DriverOnly(driver_pid, payload)
