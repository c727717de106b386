"""What runs inside a KFP component: load the parents' values, run the node call, write its value.

:func:`ff_run_node` travels as source text (KFP copies it into every
component, ``additional_funcs``), so it imports what it uses in its body. The
node itself is a :class:`functionfuse.nodecall.NodeCall`, cloudpickled in the
component's ``payload`` parameter, and runs through
:func:`functionfuse.nodecall.run_node_call`: the component needs
``functionfuse`` and ``cloudpickle``. A stateful node's method call also
writes the instance, as the call left it, to its ``state`` artifact, which the
next call on that object reads.
"""

from __future__ import annotations

#: environment variable naming a folder where components report errors and timings (set on local runs)
REPORT_DIR_ENV = "FUNCTIONFUSE_KFP_REPORT_DIR"


def ff_run_node(payload, input_paths, value_path, state_path):
    """Run the node call in ``payload`` on the parents' values stored at ``input_paths``."""
    import base64
    import json
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
    except BaseException as exc:
        if report_dir:
            try:
                blob = cloudpickle.dumps(exc)
                cloudpickle.loads(blob)
            except Exception:  # noqa: BLE001 - an exception that does not survive pickling travels as its text
                blob = cloudpickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))
            with open(os.path.join(report_dir, f"{index}.error"), "wb") as handle:
                handle.write(blob)
        raise
    if report_dir:
        with open(os.path.join(report_dir, f"{index}.info"), "w") as handle:
            json.dump(info_of(start, duration, *worker_location()), handle)
