"""Third-party plugins: a throw-away distribution installed with pip, found by its entry point."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

PLUGIN_PYPROJECT = """
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "ffplug-counter"
version = "0.3.1"

[project.entry-points.functionfuse]
counter = "ffplug_counter"
"""

PLUGIN_MODULE = '''
"""Counts the nodes functionfuse executes, in a file named by FFPLUG_LOG."""
import os
from functionfuse import hookimpl

@hookimpl
def ff_before_node(node):
    with open(os.environ["FFPLUG_LOG"], "a") as handle:
        handle.write(node.name + "\\n")
'''

SCRIPT = """
import json, sys
import functionfuse
from functionfuse import workflow

@workflow
def inc(x):
    return x + 1

node = inc(0).set_name("first")
for i in range(4):
    node = inc(node).set_name(f"n{i}")
disable = sys.argv[1:]
print(json.dumps(functionfuse.run(node, disable=disable)))
"""


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin")
    src = root / "src"
    (src / "ffplug_counter").mkdir(parents=True)
    (src / "pyproject.toml").write_text(PLUGIN_PYPROJECT)
    (src / "ffplug_counter" / "__init__.py").write_text(PLUGIN_MODULE)
    target = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--target", str(target), str(src)],
        check=True,
    )
    return target


def run_script(tmp_path, site, *args, env_extra=None):
    log = tmp_path / "calls.log"
    script = tmp_path / "wf.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), FFPLUG_LOG=str(log))
    env.update(env_extra or {})
    out = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True, check=True)
    calls = log.read_text().split() if log.exists() else []
    return json.loads(out.stdout), calls


def test_entry_point_plugin_called_for_every_node(installed_plugin, tmp_path):
    result, calls = run_script(tmp_path, installed_plugin)
    assert result == 5
    assert calls == ["first", "n0", "n1", "n2", "n3"]


def test_blocking_the_plugin_by_name_stops_it(installed_plugin, tmp_path):
    result, calls = run_script(tmp_path, installed_plugin, "counter")
    assert result == 5 and calls == []


def test_autoload_can_be_switched_off(installed_plugin, tmp_path):
    result, calls = run_script(
        tmp_path, installed_plugin, env_extra={"FUNCTIONFUSE_DISABLE_PLUGIN_AUTOLOAD": "1"}
    )
    assert result == 5 and calls == []


def test_plugins_command_lists_distribution_and_hooks(installed_plugin, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(installed_plugin))
    out = subprocess.run(
        [sys.executable, "-m", "functionfuse", "plugins"], env=env, capture_output=True, text=True, check=True
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("counter"))
    assert "ffplug-counter 0.3.1" in line and "ff_before_node" in line
    assert "plugins_builtin.localback" in out and "ff_backends" in out


def test_plugin_given_as_module_name_and_bad_module():
    import functionfuse
    from functionfuse.errors import PluginError
    from functionfuse.frontend import workflow

    @workflow
    def one():
        return 1

    assert functionfuse.run(one(), plugins=["functionfuse.tracing"]) == 1
    with pytest.raises(PluginError, match="'no_such_plugin_module'"):
        functionfuse.run(one(), plugins=["no_such_plugin_module"])


def test_plugin_with_unknown_hook_is_refused():
    import functionfuse
    from functionfuse import hookimpl
    from functionfuse.errors import PluginError
    from functionfuse.frontend import workflow

    class Typo:
        @hookimpl
        def ff_befor_node(self, node):
            pass

    @workflow
    def one():
        return 1

    with pytest.raises(PluginError, match="ff_befor_node"):
        functionfuse.run(one(), plugins=[Typo()])
