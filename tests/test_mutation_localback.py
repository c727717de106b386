"""Tests written against the survivors of tools/mutation.sh in plugins_builtin/localback.py.

The local backend promises: the nodes run in creation order, each once; ``ff_before_node`` /
``ff_after_node`` fire for computed nodes only (with where and when it ran), ``ff_node_error``
for the one that failed; and a result is released as soon as the last node taking it has run,
leaves aside. Each path is checked: the plain one (no storage, no hook), with storage, and with
only one of the two per-node hooks.
"""

from __future__ import annotations

import gc
import os
import pickle
import socket
import time
import weakref

import pytest

from functionfuse import hookimpl, workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import NodeExecutionError, SerializationError
from functionfuse.storage import storage_factory


class Big:
    """A result that can be watched (weakref) and saved (pickle)."""

    def __init__(self, n):
        self.n = n

    def __reduce__(self):
        return (Big, (self.n,))


ALIVE: dict = {}
RAN: list = []


@workflow
def make(n, name):
    RAN.append(name)
    value = Big(n)
    ALIVE[name] = weakref.ref(value)
    return value


@workflow
def step(prev, n, name):
    RAN.append(name)
    value = Big(prev.n + n)
    ALIVE[name] = weakref.ref(value)
    return value


@workflow
def look(prev, name):
    """The value of ``prev`` and the names of the results still alive while this node runs."""
    RAN.append(name)
    gc.collect()
    return prev.n, sorted(k for k, ref in ALIVE.items() if ref() is not None)


@workflow
def boom(prev, name):
    RAN.append(name)
    raise ValueError(f"{name} cannot")


class Events:
    """Records the four per-node hooks, in the order they fire, and the ``info`` each node got."""

    name = "mutation-localback-events"

    def __init__(self):
        self.events: list = []
        self.infos: dict = {}

    @hookimpl(specname="ff_before_node")
    def _before(self, node):
        self.events.append(("before", node.name))

    @hookimpl(specname="ff_after_node")
    def _after(self, node, result, info):
        self.events.append(("after", node.name))
        self.infos[node.name] = info

    @hookimpl(specname="ff_node_restored")
    def _restored(self, node):
        self.events.append(("restored", node.name))

    @hookimpl(specname="ff_node_error")
    def _error(self, node, error, info):
        self.events.append(("error", node.name, str(error)))
        self.infos[node.name] = info


def before_only():
    class Before:
        name = "mutation-localback-before"

        def __init__(self):
            self.events: list = []

        @hookimpl
        def ff_before_node(self, node):
            self.events.append(("before", node.name))

    return Before()


def after_only():
    class After:
        name = "mutation-localback-after"

        def __init__(self):
            self.events: list = []

        @hookimpl
        def ff_after_node(self, node):
            self.events.append(("after", node.name))

    return After()


def chain():
    """a -> b -> c -> d: d sees which results are alive while it runs."""
    a = make(1, "a").set_name("a")
    b = step(a, 1, "b").set_name("b")
    c = step(b, 1, "c").set_name("c")
    d = look(c, "d").set_name("d")
    return a, b, c, d


PATHS = ["plain", "storage", "before-hook", "after-hook", "both-hooks"]


def local(leaves, path, tmp_path, name="local"):
    plugins = {"before-hook": [before_only()], "after-hook": [after_only()], "both-hooks": [Events()]}.get(path, [])
    wf = LocalWorkflow(*leaves, workflow_name=name, plugins=plugins)
    if path == "storage":
        wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}}))
    return wf, plugins


@pytest.mark.parametrize("path", PATHS)
def test_a_result_is_released_after_its_last_consumer_ran(path, tmp_path):
    ALIVE.clear()
    RAN.clear()
    a, b, c, d = chain()
    wf, _ = local([d], path, tmp_path)
    assert wf.run() == (3, ["c"])  # while d runs, only its own argument is held
    assert RAN == ["a", "b", "c", "d"]


@pytest.mark.parametrize("path", PATHS)
def test_a_leaf_is_kept_to_the_end_and_a_shared_result_until_its_last_consumer(path, tmp_path):
    ALIVE.clear()
    RAN.clear()
    a = make(1, "a").set_name("a")
    b = step(a, 10, "b").set_name("b")
    seen_b = look(b, "seen_b").set_name("seen_b")  # b is still needed by c
    c = step(b, 100, "c").set_name("c")
    seen_c = look(c, "seen_c").set_name("seen_c")
    wf, _ = local([a, seen_b, seen_c], path, tmp_path)
    first, at_b, at_c = wf.run()
    assert first.n == 1 and first is ALIVE["a"]()  # the leaf's own value, never released
    assert at_b == (11, ["a", "b"])
    assert at_c == (111, ["a", "c"])  # b released after c, its last consumer, ran
    assert RAN == ["a", "b", "seen_b", "c", "seen_c"]


@pytest.mark.parametrize("path", ["before-hook", "after-hook"])
def test_one_per_node_hook_alone_fires_for_every_computed_node_in_order(path, tmp_path):
    ALIVE.clear()
    wf, (plugin,) = local(chain()[-1:], path, tmp_path)
    wf.run()
    kind = path.split("-")[0]
    assert plugin.events == [(kind, n) for n in ("a", "b", "c", "d")]


def test_hooks_fire_for_computed_nodes_only_with_where_they_ran(tmp_path):
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}})
    events = Events()
    ALIVE.clear()
    d = chain()[-1]
    LocalWorkflow(d, workflow_name="hooks", plugins=[events]).set_storage(storage).run()
    assert events.events == [(e, n) for n in ("a", "b", "c", "d") for e in ("before", "after")]
    for name, info in events.infos.items():
        assert set(info) == {"start", "duration", "worker", "host"}, name
        assert (info["worker"], info["host"]) == (f"pid {os.getpid()}", socket.gethostname())
        assert isinstance(info["start"], float) and isinstance(info["duration"], float)
    # again, with c's and d's results deleted: c and d are computed, b is read back, a is not needed
    storage.remove_task("hooks", "c")
    storage.remove_task("hooks", "d")
    again = Events()
    RAN.clear()
    ALIVE.clear()
    d = chain()[-1]
    assert LocalWorkflow(d, workflow_name="hooks", plugins=[again]).set_storage(storage).run() == (3, ["c"])
    assert RAN == ["c", "d"]
    assert again.events == [("restored", "a"), ("restored", "b"), ("before", "c"), ("after", "c"),
                            ("before", "d"), ("after", "d")]


@pytest.mark.parametrize("path", PATHS)
def test_a_failing_node_stops_the_run_and_names_itself(path, tmp_path):
    RAN.clear()
    ALIVE.clear()
    a = make(1, "a").set_name("a")
    bad = boom(a, "bad").set_name("bad")
    after = look(bad, "after").set_name("after")
    wf, plugins = local([after], path, tmp_path, name="fails")
    began = time.time()
    with pytest.raises(NodeExecutionError) as info:
        wf.run()
    ended = time.time()
    assert str(info.value) == "node 'bad' of workflow 'fails' failed: ValueError: bad cannot"
    assert str(info.value.__cause__) == "bad cannot"
    assert RAN == ["a", "bad"]
    if path == "both-hooks":
        (events,) = plugins
        assert events.events == [("before", "a"), ("after", "a"), ("before", "bad"), ("error", "bad", "bad cannot")]
        assert set(events.infos["bad"]) == {"start", "duration", "worker", "host"}
        assert began <= events.infos["bad"]["start"] <= ended  # wall-clock time of the failed call
        assert isinstance(events.infos["bad"]["duration"], float)
        assert (events.infos["bad"]["worker"], events.infos["bad"]["host"]) == (f"pid {os.getpid()}",
                                                                                socket.gethostname())


@workflow
def slow_boom(prev):
    time.sleep(0.2)
    raise ValueError("slow and bad")


def test_a_failed_node_is_recorded_with_when_it_began_and_how_long_it_took():
    """The failed call's start is when it began (not when it failed) and its duration spans the call:
    began <= start, start + duration <= ended, duration >= the 0.2 s the call slept."""
    events = Events()
    bad = slow_boom(make(1, "a").set_name("a")).set_name("bad")
    began = time.time()
    with pytest.raises(NodeExecutionError, match="node 'bad'"):
        LocalWorkflow(bad, workflow_name="timed", plugins=[events]).run()
    ended = time.time()
    info = events.infos["bad"]
    assert info["duration"] >= 0.2
    assert began <= info["start"] <= info["start"] + info["duration"] <= ended + 0.001


class Unreadable:
    """Saves fine; reading it back raises."""

    def __reduce__(self):
        return (_refuse, ())


def _refuse():
    raise pickle.UnpicklingError("this result cannot be read back")


@workflow
def unreadable():
    return Unreadable()


@workflow
def takes(value):
    return type(value).__name__


def test_a_stored_result_that_cannot_be_read_names_its_node(tmp_path):
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}})
    source = unreadable().set_name("source")
    user = takes(source).set_name("user")
    assert LocalWorkflow(user, workflow_name="reads").set_storage(storage).run() == "Unreadable"
    storage.remove_task("reads", "user")
    events = Events()
    source = unreadable().set_name("source")
    user = takes(source).set_name("user")
    with pytest.raises(SerializationError) as info:
        LocalWorkflow(user, workflow_name="reads", plugins=[events]).set_storage(storage).run()
    message = str(info.value)
    assert message.endswith("the result of node 'source' (workflow 'reads') cannot be unpickled: "
                            "UnpicklingError: this result cannot be read back")
    # the run stopped at the read, before its consumer started
    assert events.events == [("error", "source", message)]
