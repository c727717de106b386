"""What runs inside a KFP component: unpack one node, call it, write its result.

These functions travel as source text: KFP copies them into every component
(``additional_funcs``), so they import everything they use inside their body
and need only the standard library and ``cloudpickle`` in the container. The
node itself (function, arguments, node plugins' callables, storage) travels
as a base64 cloudpickle payload, a constant parameter of the component.

A node's parents arrive as input artifacts (files holding their pickled
values); its value is written to its ``value`` output artifact, and a stateful
node's instance after the call to its ``state`` artifact, which the next call
on that object reads.
"""

from __future__ import annotations

#: environment variable naming a folder where components report errors and timings (set on local runs)
REPORT_DIR_ENV = "FUNCTIONFUSE_KFP_REPORT_DIR"


def ff_substitute(obj, slot_class, values):
    """``obj`` with every parent placeholder replaced by its value; containers are rebuilt, no recursion."""
    containers = (list, tuple, dict, set, frozenset)

    def leaf(item):
        if item.__class__ is slot_class:
            value = values[item.index]
            for key in item.keys:
                value = value[key]
            return value
        return item

    def children(container):
        if isinstance(container, dict):
            flat = []
            for key, value in container.items():
                flat.append(key)
                flat.append(value)
            return flat
        return list(container)

    def rebuild(container, out):
        cls = type(container)
        if isinstance(container, dict):
            try:
                return cls(zip(out[0::2], out[1::2]))
            except TypeError:  # e.g. defaultdict, whose first argument is a factory
                return dict(zip(out[0::2], out[1::2]))
        if isinstance(container, tuple) and hasattr(container, "_fields"):
            return cls(*out)  # namedtuple
        try:
            return cls(out)
        except TypeError:
            return cls.__mro__[-2](out)

    if not isinstance(obj, containers):
        return leaf(obj)
    stack = [[obj, children(obj), 0, []]]
    while True:
        frame = stack[-1]
        kids, index, out = frame[1], frame[2], frame[3]
        if index < len(kids):
            frame[2] = index + 1
            child = kids[index]
            if isinstance(child, containers):
                stack.append([child, children(child), 0, []])
            else:
                out.append(leaf(child))
            continue
        stack.pop()
        built = rebuild(frame[0], out)
        if not stack:
            return built
        stack[-1][3].append(built)


def ff_run_node(payload, input_paths, value_path, state_path):
    """Run the node ``payload`` describes on the parents' values stored at ``input_paths``."""
    import base64
    import json
    import os
    import pickle
    import socket
    import time

    import cloudpickle

    report_dir = os.environ.get("FUNCTIONFUSE_KFP_REPORT_DIR")
    spec = cloudpickle.loads(base64.b64decode(payload))
    index = spec["index"]
    start = time.time()
    began = time.perf_counter()
    try:
        values = []
        for path in input_paths:
            with open(path, "rb") as handle:
                values.append(pickle.load(handle))
        storage = spec["storage"]
        if spec["mode"] == "read":  # a result stored by an earlier run: read it, compute nothing
            value = storage.read_task(spec["workflow"], spec["name"])
        else:
            slot = spec["slot"]
            args = ff_substitute(spec["args"], slot, values)
            kwargs = ff_substitute(spec["kwargs"], slot, values)
            for call in spec["callables"]:  # node plugins: worker-side initialisation before the function
                call()
            value = spec["func"](*args, **kwargs)
            if spec["save"]:
                storage.save(spec["workflow"], spec["name"], value)
                if spec["always_read"]:
                    value = storage.read_task(spec["workflow"], spec["name"])
        with open(value_path, "wb") as handle:
            cloudpickle.dump(value, handle)
        if state_path is not None:  # a method call: the instance, as the call left it, for the next call
            with open(state_path, "wb") as handle:
                cloudpickle.dump(args[0], handle)
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
        info = {
            "start": start,
            "duration": time.perf_counter() - began,
            "worker": f"pid {os.getpid()}",
            "host": socket.gethostname(),
        }
        with open(os.path.join(report_dir, f"{index}.info"), "w") as handle:
            json.dump(info, handle)
