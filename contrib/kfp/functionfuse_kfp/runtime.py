"""What runs inside a KFP component: load the parents' values, run the node call, write its value.

KFP copies :func:`ff_run_node` into every component as source text, so it imports what it uses in its body.
"""

from __future__ import annotations

#: environment variable naming a folder where components report their info or error (set on local runs)
REPORT_DIR_ENV = "FUNCTIONFUSE_KFP_REPORT_DIR"


def ff_run_node(payload, input_paths, value_path, state_path):
    """Run the node call in ``payload`` on the parents' values stored at ``input_paths``."""
    import base64
    import os

    import cloudpickle
    from functionfuse.base import info_of
    from functionfuse.nodecall import run_node_call, worker_location

    report_dir = os.environ.get("FUNCTIONFUSE_KFP_REPORT_DIR")
    index, call = cloudpickle.loads(base64.b64decode(payload))
    try:
        values = []
        for path in input_paths:
            with open(path, "rb") as handle:
                values.append(cloudpickle.load(handle))
        value, start, duration = run_node_call(call, tuple(values))
        with open(value_path, "wb") as handle:
            cloudpickle.dump(value, handle)
        if state_path is not None:  # values[0] is the instance the method call ran on
            with open(state_path, "wb") as handle:
                cloudpickle.dump(values[0], handle)
        report = info_of(start, duration, *worker_location())
    except BaseException as exc:
        report = exc
        raise
    finally:
        if report_dir:
            try:
                blob = cloudpickle.dumps(report)
                cloudpickle.loads(blob)
            except Exception:  # noqa: BLE001 - an exception that does not survive pickling travels as its text
                blob = cloudpickle.dumps(RuntimeError(f"{type(report).__name__}: {report}"))
            with open(os.path.join(report_dir, str(index)), "wb") as handle:
                handle.write(blob)
