"""A third-party plugin installed through the ``functionfuse`` entry point, for the tests.

With ``FF_HOOKCOUNTER_FILE`` set (in the driver and so in every worker it
starts), it wraps ``ff_execute_node``, ``ff_storage_save`` and
``ff_storage_read`` and appends one line per call to that file:
``<hook> <node or task name> <pid>``. Without it, the entry point loads an
object with no hooks, so other runs keep their fast paths.
"""

from __future__ import annotations

import os

from functionfuse import hookimpl

ENV = "FF_HOOKCOUNTER_FILE"


def _log(hook: str, name: str) -> None:
    path = os.environ.get(ENV)
    if path:
        with open(path, "a") as out:  # one short append per call: atomic on POSIX
            out.write(f"{hook} {name} {os.getpid()}\n")


class HookCounter:
    """Counts every call of the three hooks that fire where the node runs."""

    name = "ff_hookcounter"

    @hookimpl(wrapper=True)
    def ff_execute_node(self, node):
        _log("ff_execute_node", node.name)
        return (yield)

    @hookimpl(wrapper=True)
    def ff_storage_save(self, task_name):
        _log("ff_storage_save", task_name)
        return (yield)

    @hookimpl(wrapper=True)
    def ff_storage_read(self, task_name):
        _log("ff_storage_read", task_name)
        return (yield)


class Inactive:
    name = "ff_hookcounter"


plugin = HookCounter() if os.environ.get(ENV) else Inactive()


def counts(path: str) -> dict:
    """``{(hook, name): number of calls}`` and the pids, read from the log file."""
    found: dict = {}
    pids: set = set()
    if os.path.exists(path):
        with open(path) as log:
            for line in log:
                hook, name, pid = line.split()
                found[(hook, name)] = found.get((hook, name), 0) + 1
                pids.add(int(pid))
    return {"calls": found, "pids": pids}
