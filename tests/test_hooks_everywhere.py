"""The storage and execute hooks fire for every node on the local and Ray backends.

The counting plugin is a third-party distribution, ``tests/plugins/ff_hookcounter``,
installed through the ``functionfuse`` entry point (``.ci/run`` installs it). It is
active only when ``FF_HOOKCOUNTER_FILE`` is set before the plugin manager is built
and, for Ray, before the cluster's workers start (they inherit the environment).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from functionfuse import manager, workflow

COUNTER_ENV = "FF_HOOKCOUNTER_FILE"


@workflow
def add(a, b):
    return a + b


@workflow
def pair(x):
    return (x, x + 1)


@workflow
class Tally:
    def __init__(self, start):
        self.total = start

    def add(self, n):
        self.total += n
        return self.total


def graph():
    one = add(1, 2).set_name("one")
    both = pair(one).set_name("both")
    tally = Tally(one).set_name("tally")
    first = tally.add(both[0]).set_name("first")
    return add(first, both[1]).set_name("last")


COMPUTED = ["one", "both", "first", "last"]  # "tally" (an object) is built, never saved


@pytest.fixture
def counter_log(tmp_path, monkeypatch):
    path = str(tmp_path / "hooks.log")
    monkeypatch.setenv(COUNTER_ENV, path)
    manager.clear_cache()
    sys.modules.pop("ff_hookcounter", None)  # re-evaluated with the variable set
    yield path
    monkeypatch.delenv(COUNTER_ENV)
    sys.modules.pop("ff_hookcounter", None)
    manager.clear_cache()


def check_counts(path, first_run_pids_exclude=None):
    from ff_hookcounter import counts

    found = counts(path)
    calls = found["calls"]
    for name in COMPUTED:
        assert calls.get(("ff_execute_node", name)) == 1, (name, calls)
        assert calls.get(("ff_storage_save", name)) == 1, (name, calls)
    assert calls.get(("ff_execute_node", "tally")) == 1
    return found


def test_local_hooks_fire_for_every_node_from_an_entry_point_plugin(counter_log, tmp_path):
    from functionfuse.backends.builtin.localback import LocalWorkflow

    wf = LocalWorkflow(graph(), workflow_name="counted")
    wf.set_storage(str(tmp_path / "st"))
    assert "hookcounter" in {name for name, _ in wf.plugin_manager.list_name_plugin()}
    assert wf.run() == (3 + 3) + 4
    check_counts(counter_log)
    os.remove(counter_log)
    assert wf.run() == 10  # the second run reads the leaf back
    from ff_hookcounter import counts

    calls = counts(counter_log)["calls"]
    assert calls == {("ff_storage_read", "last"): 1}


def test_a_replacing_execute_plugin_and_a_failing_wrapper_on_the_local_backend(tmp_path):
    from functionfuse import hookimpl
    from functionfuse.backends.builtin.localback import LocalWorkflow
    from functionfuse.errors import NodeExecutionError, PluginError

    class Doubler:
        """Replaces the built-in call: every function's result doubled."""

        @hookimpl(tryfirst=True)
        def ff_execute_node(self, node, args, kwargs):
            return 2 * node.func(*args, **kwargs)

    leaf = add(add(1, 2).set_name("inner"), 1).set_name("outer")
    assert LocalWorkflow(leaf, workflow_name="doubled", plugins=[Doubler()]).run() == 2 * (2 * 3 + 1)

    class BrokenSave:
        name = "broken-save"

        @hookimpl(wrapper=True)
        def ff_storage_save(self, task_name):
            if task_name == "outer":
                raise KeyError("no key")
            return (yield)

    wf = LocalWorkflow(leaf, workflow_name="broken", plugins=[BrokenSave()])
    wf.set_storage(str(tmp_path / "st"))
    with pytest.raises(NodeExecutionError, match="'outer'") as info:
        wf.run()
    assert isinstance(info.value.__cause__, PluginError)
    assert "broken-save" in str(info.value.__cause__) and "ff_storage_save" in str(info.value.__cause__)
    assert wf.storage.list_tasks("broken") == ["inner"]  # what was saved before stays saved


RAY_SCRIPT = textwrap.dedent(
    """
    import os, sys, tempfile
    sys.path.insert(0, sys.argv[2])
    from ray_fixtures import start_local_cluster, stop_local_cluster
    import test_hooks_everywhere as t
    ray, temp = start_local_cluster("test_hooks_everywhere")
    try:
        from functionfuse.backends.builtin.rayback import RayWorkflow
        wf = RayWorkflow(t.graph(), workflow_name="counted")
        wf.set_storage(sys.argv[1])
        print("first", wf.run())
        print("second", wf.run())
    finally:
        stop_local_cluster(ray, temp)
    """
)


@pytest.mark.timeout(300)
def test_ray_hooks_fire_for_every_node_from_an_entry_point_plugin(tmp_path):
    # A fresh process: the variable must be set before ray.init starts the workers.
    log = str(tmp_path / "hooks.log")
    env = {**os.environ, COUNTER_ENV: log, "RAY_AUTH_MODE": "disabled"}
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [tests_dir, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", RAY_SCRIPT, str(tmp_path / "st"), tests_dir],
        env=env, capture_output=True, text=True, timeout=280,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "first 10" in done.stdout and "second 10" in done.stdout
    sys.path.insert(0, os.path.join(tests_dir, "plugins", "ff_hookcounter"))
    from ff_hookcounter import counts

    found = counts(log)
    calls = found["calls"]
    for name in COMPUTED:
        assert calls.get(("ff_execute_node", name)) == 1, (name, calls)
        assert calls.get(("ff_storage_save", name)) == 1, (name, calls)
    assert calls.get(("ff_storage_read", "last")) == 1  # the second run's read-back, in a Ray task
    assert len(found["pids"]) >= 2  # worker processes, not only one


MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, numpy as np
    from functionfuse import workflow
    from functionfuse.backends.builtin.localback import LocalWorkflow

    @workflow
    def start():
        return np.ones(25_000_000)  # 200 MB

    @workflow
    def step(a):
        return a + 1.0

    node = start()
    for _ in range(29):
        node = step(node)
    value = LocalWorkflow(node, workflow_name="big").run()
    assert float(value[0]) == 30.0, value[0]
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """
)


@pytest.mark.timeout(300)
def test_local_backend_releases_results_no_later_node_needs():
    # through sh, so the child's peak RSS is its own, not this process's carried across exec
    done = subprocess.run(
        ["sh", "-c", '"$0" -c "$1"; exit $?', sys.executable, MEMORY_SCRIPT],
        capture_output=True, text=True, timeout=280,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    peak_mb = int(done.stdout.split()[-1])
    assert peak_mb < 1000, f"a 30-node chain of 200 MB arrays peaked at {peak_mb} MB (6 GB if nothing is released)"
