"""Coverage of Ray workers and kfp components, for .ci/run (which puts this folder on ``PYTHONPATH``).

Coverage's own ``.pth`` hook starts measuring in every Python process when
``COVERAGE_PROCESS_START`` is set, and saves at exit. A Ray worker never
exits through Python (no atexit, no ``os._exit``, no SIGTERM handler: the
raylet ends it), so here a daemon thread saves its data every second (from 5 s after
start); only the lines a worker ran in its last second before the cluster
stopped can be missed. kfp's components run a copy of functionfuse_kfp's runtime code
(see below). Every other process is left as it is.
"""

import os
import sys


def _keep_concurrent_imports() -> None:
    """Stop coverage from removing modules other threads are importing.

    When ``sys.path`` changes (a Ray worker adds paths when it loads a function), coverage's
    trace function re-reads where the measured packages live, inside
    ``coverage.misc.sys_modules_saved()``, which afterwards deletes every module that entered
    ``sys.modules`` meanwhile, from any thread. A module another thread was importing at that
    moment loses its entry mid-import (seen as a Ray worker failing to import
    ``functionfuse.manager``: ``dataclasses`` found ``sys.modules[cls.__module__]`` gone). Our
    ``source_pkgs`` are top-level names, whose lookup imports nothing, so there is nothing to undo.
    """
    try:
        import contextlib

        import coverage.inorout

        coverage.inorout.sys_modules_saved = contextlib.nullcontext
    except Exception:  # noqa: BLE001 - measuring must never break the process
        pass


if os.environ.get("COVERAGE_PROCESS_START"):
    _keep_concurrent_imports()


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


# --- kfp components --------------------------------------------------------------------------
# kfp's local runner starts each component as `python -m kfp.dsl.executor_main --component_module_path
# <tmp>/ephemeral_component.py` with _KFP_RUNTIME=true. The process is measured like any other (the
# environment, COVERAGE_PROCESS_START included, reaches it), but the functions functionfuse_kfp gives
# kfp as `additional_funcs` (runtime.ff_run_node) run there as a copy of their source text inside
# ephemeral_component.py, not from runtime.py: coverage saw runtime.py as never run. pyproject.toml
# measures the module `ephemeral_component` too; at exit each function copied verbatim from
# functionfuse_kfp/runtime.py has its executed lines credited to the lines they were copied from,
# and the copy's own data is dropped (the copy is also omitted from reports, in case this did not run).


def _function_spans(path: str) -> dict:
    """``{name: (first line, source lines)}`` of the top-level functions of the Python file at ``path``."""
    import ast

    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    lines = text.splitlines()
    spans = {}
    for node in ast.parse(text, path).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.decorator_list:
            spans[node.name] = (node.lineno, lines[node.lineno - 1 : node.end_lineno])
    return spans


def credit_copied_functions(data, copy_path: str, original_path: str, original_file: str | None = None) -> set:
    """Credit the executed lines of verbatim copies in ``copy_path`` to ``original_path``; return the lines credited.

    ``data`` is a :class:`coverage.CoverageData`; ``copy_path`` and ``original_path`` are the files as
    ``data`` names them (``original_file``: where to read the original, if not at ``original_path``).
    A function whose copy differs from the original in any character is not credited.
    """
    executed = set(data.lines(copy_path) or ())
    copies = _function_spans(copy_path)
    credited = set()
    for name, (first, lines) in _function_spans(original_file or original_path).items():
        copy = copies.get(name)
        if copy is None or copy[1] != lines:
            continue
        offset = first - copy[0]
        credited |= {line + offset for line in executed if copy[0] <= line < copy[0] + len(lines)}
    if credited:
        data.add_lines({original_path: credited})
    data.purge_files([copy_path])
    return credited


def _credit_kfp_component() -> None:
    try:
        import importlib.util

        import coverage
        from coverage.files import canonical_filename

        cov = coverage.Coverage.current()
        spec = importlib.util.find_spec("functionfuse_kfp.runtime")  # found, not imported: nothing of it runs here
        if cov is None or spec is None or not spec.origin:
            return
        data = cov.get_data()
        original = canonical_filename(spec.origin)
        for path in data.measured_files():
            if os.path.basename(path) == "ephemeral_component.py" and os.path.exists(path):
                credit_copied_functions(data, path, original)
    except Exception:  # noqa: BLE001 - measuring must never break the component
        pass


if (
    os.environ.get("COVERAGE_PROCESS_START")
    and os.environ.get("_KFP_RUNTIME") == "true"
    and "--component_module_path" in sys.argv
):
    import atexit

    # atexit runs last-registered first: this runs before the save coverage's .pth hook registered.
    atexit.register(_credit_kfp_component)
