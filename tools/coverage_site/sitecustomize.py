"""Coverage of Ray workers, for .ci/run (which puts this folder on ``PYTHONPATH``).

Coverage's own ``.pth`` hook starts measuring in every Python process when
``COVERAGE_PROCESS_START`` is set, and saves at exit. A Ray worker never
exits through Python (no atexit, no ``os._exit``, no SIGTERM handler: the
raylet ends it), so here a daemon thread saves its data every second (from 5 s after
start); only the lines a worker ran in its last second before the cluster
stopped can be missed. Every other process is left as it is.
"""

import os
import sys


def _save_periodically(cov, interval: float = 1.0, first: float = 5.0) -> None:
    import time

    # The first save waits until the worker's start-up imports are done: a save while Ray
    # unpickles the first function (and imports its modules) is the one moment it can disturb.
    time.sleep(first)
    while True:
        time.sleep(interval)
        try:
            cov.save()
        except Exception:  # noqa: BLE001 - measuring must never break the worker
            pass


if os.environ.get("COVERAGE_PROCESS_START") and any("default_worker" in arg for arg in sys.argv):
    try:
        import coverage

        _cov = coverage.Coverage.current()
    except Exception:  # noqa: BLE001
        _cov = None
    if _cov is not None:
        import threading

        threading.Thread(target=_save_periodically, args=(_cov,), name="coverage-saver", daemon=True).start()
