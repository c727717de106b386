"""Node plugins on the local backend: InitializerPlugin, RandomStatePlugin, PluginCollection."""

import random

import pytest

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.backends.plugins import InitializerPlugin, PluginCollection, RandomStatePlugin
from functionfuse.errors import InvalidOptionError

settings = {}


@workflow
def draw(_):
    return random.random()


@workflow
def read_setting(x):
    return settings.get("dtype"), x


def test_random_state_seeds_each_node_and_advances_in_run_order():
    seeds = []

    def set_seed(seed):
        seeds.append(seed)
        random.seed(seed)

    n1 = draw(0).set_name("node1")
    n2 = draw(n1).set_name("node2")
    n3 = draw(n2).set_name("other")
    wf = LocalWorkflow(n3, workflow_name="rs")
    plugin = RandomStatePlugin(min=0, max=100, seed=7, seed_func=set_seed)
    wf.query("^node.*$").set_plugins(plugin)
    wf.run()
    # the original's sequence: local_initialize advances before each node, so the first gets seed + 1
    assert seeds == [8, 9]
    assert plugin.seed == 9  # advanced once per node it prepared, in the driver


def test_random_state_wraps_from_max_to_min():
    seeds = []
    nodes = [draw(i).set_name(f"d{i}") for i in range(4)]
    wf = LocalWorkflow(*nodes, workflow_name="wrap")
    wf.set_plugin(None, RandomStatePlugin(min=-0x8000_0000_0000_0000, max=-0x8000_0000_0000_0000 + 1,
                                          seed=-0x8000_0000_0000_0000, seed_func=seeds.append))
    wf.run()
    low = -0x8000_0000_0000_0000
    assert seeds == [low + 1, low, low + 1, low]


def test_same_seed_gives_same_draws():
    def run_once():
        leaf = draw(draw(0).set_name("a")).set_name("b")
        wf = LocalWorkflow(leaf, workflow_name="same")
        wf.set_plugin("^.*$", RandomStatePlugin(min=0, max=2**32, seed=42, seed_func=random.seed))
        return wf.run()

    assert run_once() == run_once()


def test_initializer_and_collection():
    order = []
    init = InitializerPlugin(lambda: settings.update(dtype="float64"))
    collection = PluginCollection([
        InitializerPlugin(lambda: order.append("init")),
        RandomStatePlugin(min=0, max=10, seed=3, seed_func=lambda s: order.append(("seed", s))),
    ])
    first = read_setting(1).set_name("first")
    second = read_setting(first).set_name("second")
    wf = LocalWorkflow(second, workflow_name="init")
    settings.clear()
    wf.query("^first$").set_plugins(init)
    wf.query("^second$").set_plugins(collection)
    assert wf.run() == ("float64", ("float64", 1))
    assert order == ["init", ("seed", 4)]


def test_bad_plugin_arguments():
    with pytest.raises(InvalidOptionError, match="outside"):
        RandomStatePlugin(min=0, max=10, seed=11, seed_func=print)
    with pytest.raises(InvalidOptionError, match="callable"):
        InitializerPlugin("not callable")
    with pytest.raises(InvalidOptionError, match="not a node plugin"):
        PluginCollection([object()])


class OriginalProtocolPlugin:
    """A third-party node plugin written to the seed guide: no prepare(), remote_initialize returns a closure."""

    def __init__(self, log):
        self.log = log
        self.count = 0

    def local_initialize(self):
        self.count += 1
        self.log.append(("local", self.count))

    def remote_initialize(self):
        count, log = self.count, self.log

        def in_worker():
            log.append(("remote", count))

        return in_worker


def test_original_protocol_plugin_runs_its_returned_callable_before_each_node(tmp_path):
    log = []
    first = read_setting(1).set_name("first")
    second = read_setting(first).set_name("second")
    wf = LocalWorkflow(second, workflow_name="original")
    wf.set_storage(str(tmp_path / "st"))  # the storage path runs node plugins too
    wf.set_plugin(None, OriginalProtocolPlugin(log))
    wf.run()
    assert log == [("local", 1), ("remote", 1), ("local", 2), ("remote", 2)]
