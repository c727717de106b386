"""The command line and tracing, run as a user runs them: in a subprocess."""

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.py"


def cli(*args, cwd=None, env_extra=None, check=True):
    env = dict(os.environ)
    env.pop("FUNCTIONFUSE_TRACE", None)
    env.update(env_extra or {})
    proc = subprocess.run(
        [sys.executable, "-m", "functionfuse", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


def test_quickstart_example_computes_then_reads_back(tmp_path):
    store = tmp_path / "storage"
    first = subprocess.run([sys.executable, str(QUICKSTART), str(store)], capture_output=True, text=True, check=True)
    assert "node1: compute (not stored)" in first.stdout and "result: 6" in first.stdout
    assert "run: computed 3, read back 0, recomputed 0" in first.stdout
    second = subprocess.run([sys.executable, str(QUICKSTART), str(store)], capture_output=True, text=True, check=True)
    assert "run: computed 0, read back 3, recomputed 0" in second.stdout and "result: 6" in second.stdout
    assert "node3: read back (stored, same call)" in second.stdout


def test_run_ls_show_rm(tmp_path):
    store = str(tmp_path / "st")
    out = cli("run", f"{QUICKSTART}:result_of_mult", "a_plus_b", "--storage", store, "--workflow-name", "ops").stdout
    assert out.splitlines() == ["node3: 6", "node1: 2"]
    assert cli("ls", store).stdout.split() == ["ops"]
    assert cli("ls", store, "ops").stdout.split() == ["node1", "node2", "node3"]
    assert cli("ls", store, "ops", "--pattern", "*3").stdout.split() == ["node3"]
    assert cli("show", store, "ops", "node2").stdout.strip() == "3"
    assert "removed 2 task(s)" in cli("rm", store, "ops", "--pattern", "node[12]").stdout
    assert cli("ls", store, "ops").stdout.split() == ["node3"]
    cli("rm", store, "ops")
    assert cli("ls", store).stdout.split() == []


def test_user_errors_are_one_line_without_traceback(tmp_path):
    cases = [
        ("run", f"{QUICKSTART}:nothing_here"),
        ("run", f"{QUICKSTART}:result_of_mult", "--backend", "nosuch"),
        ("run", "missing.py:x"),
        ("run", f"{QUICKSTART}:sum"),
        ("show", str(tmp_path), "wf", "task"),
        ("run", f"{QUICKSTART}:result_of_mult", "--plugin", "no_such_module_xyz"),
    ]
    for args in cases:
        proc = cli(*args, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("functionfuse: error:"), (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    unknown = cli("run", f"{QUICKSTART}:result_of_mult", "--backend", "nosuch", check=False).stderr
    assert "'nosuch'" in unknown and "local" in unknown
    debug = cli("--debug", "show", str(tmp_path), "wf", "task", check=False)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_node_failure_from_cli_names_the_node(tmp_path):
    script = tmp_path / "bad.py"
    script.write_text(
        "from functionfuse import workflow\n"
        "@workflow\ndef boom(x):\n    raise KeyError(x)\n"
        "leaf = boom(1).set_name('exploding')\n"
    )
    proc = cli("run", f"{script}:leaf", check=False)
    assert proc.returncode == 2 and "'exploding'" in proc.stderr and "KeyError" in proc.stderr


@pytest.mark.parametrize("mode", ["json", "1"])
def test_tracing_logs_every_hook_call(tmp_path, mode):
    proc = cli(
        "run", f"{QUICKSTART}:result_of_mult", "--storage", str(tmp_path / "s"),
        env_extra={"FUNCTIONFUSE_TRACE": mode},
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    if mode == "json":
        events = [json.loads(line) for line in lines]
        executes = [e for e in events if e["hook"] == "ff_execute_node"]
        assert [e["node"] for e in executes] == ["node1", "node2", "node3"]
        began = datetime.fromisoformat(next(e for e in events if e["hook"] == "ff_before_run")["timestamp"])
        for event in executes:
            assert event["workflow"] == "workflow" and event["outcome"] == "ok"
            # the hook ran after ff_before_run was logged and before its own line: its duration fits in between
            since_run_began_ms = (datetime.fromisoformat(event["timestamp"]) - began).total_seconds() * 1000
            assert event["plugins"] == ["plugins_builtin.core"] and 0 <= event["duration_ms"] <= since_run_began_ms + 1
        hooks = {e["hook"] for e in events}
        assert {"ff_before_run", "ff_after_run", "ff_prepare_node", "ff_storage_save"} <= hooks
    else:
        assert any("hook=ff_execute_node" in line and "node=node2" in line for line in lines)


def test_trace_flag_and_error_outcome(tmp_path):
    script = tmp_path / "bad.py"
    script.write_text(
        "from functionfuse import workflow\n"
        "@workflow\ndef boom(x):\n    raise KeyError(x)\n"
        "leaf = boom(1).set_name('exploding')\n"
    )
    proc = cli("run", f"{script}:leaf", "--trace", check=False, env_extra={"FUNCTIONFUSE_TRACE": "json"})
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    failed = [e for e in events if e["hook"] == "ff_execute_node"]
    assert failed and failed[0]["outcome"].startswith("error: KeyError")


def test_tracing_is_off_by_default(tmp_path):
    proc = cli("run", f"{QUICKSTART}:result_of_mult")
    assert proc.stderr == ""


def test_python_dash_m_and_console_script_agree():
    via_module = cli("plugins").stdout
    script = subprocess.run(["functionfuse", "plugins"], capture_output=True, text=True, check=True).stdout
    assert via_module == script
