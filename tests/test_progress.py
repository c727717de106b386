"""The progress bar: drawn on a terminal (a real pseudo-terminal here), silent without one."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
from graph_fixtures import stateful

import functionfuse
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import InvalidOptionError, NodeExecutionError
from plugins_builtin.progress import ProgressPlugin

SCRIPT = textwrap.dedent('''
    import sys, time
    from functionfuse import workflow
    from functionfuse.backends.builtin.localback import LocalWorkflow
    from plugins_builtin.progress import ProgressPlugin

    @workflow
    def slow(x):
        time.sleep(0.01)
        return x + 1

    node = slow(0).set_name("n0")
    for i in range(1, 12):
        node = slow(node).set_name(f"n{i}")
    how, storage = sys.argv[1], sys.argv[2]
    options = {"progress": True} if how == "argument" else {"plugins": [ProgressPlugin()]}
    wf = LocalWorkflow(node, workflow_name="chain", **options)
    if storage != "-":
        wf.set_storage(storage)
    print("result", wf.run())
''')


def _plain(text: str) -> str:
    """``text`` without terminal control sequences."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def _run_in_pty(args: list[str], cwd: str) -> str:
    """Run a command with stdin, stdout and stderr on a fresh pseudo-terminal; everything it wrote."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, close_fds=True)
    finally:
        os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=60) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode("utf-8", errors="replace")


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "chain.py"
    path.write_text(SCRIPT)
    return path


def test_bar_on_a_terminal_counts_computed_then_read_back(script, tmp_path):
    out = _run_in_pty([sys.executable, str(script), "plugin", str(tmp_path / "storage")], str(tmp_path))
    assert "result 12" in out
    assert "\x1b[" in out and "\r" in out  # drawn and redrawn in place
    assert "12/12 nodes  0 read back  0 failed" in _plain(out)
    assert "━" in out  # the bar itself
    again = _run_in_pty([sys.executable, str(script), "plugin", str(tmp_path / "storage")], str(tmp_path))
    assert "12/12 nodes  12 read back  0 failed" in _plain(again)


def test_one_argument_turns_it_on_from_python(script, tmp_path):
    out = _run_in_pty([sys.executable, str(script), "argument", "-"], str(tmp_path))
    assert "12/12 nodes  0 read back  0 failed" in _plain(out) and "result 12" in out


def test_silent_without_a_terminal(script, tmp_path):
    done = subprocess.run(
        [sys.executable, str(script), "plugin", "-"], capture_output=True, text=True, timeout=60, check=True,
        cwd=str(tmp_path),
    )
    assert done.stdout == "result 12\n"
    assert done.stderr == ""


def test_failures_and_read_back_counts_on_a_forced_console(tmp_path):
    from rich.console import Console

    def console() -> tuple[io.StringIO, ProgressPlugin]:
        buffer = io.StringIO()
        return buffer, ProgressPlugin(console=Console(file=buffer, force_terminal=True, width=160))

    nodes = stateful()
    storage = str(tmp_path / "storage")
    buffer, plugin = console()
    assert functionfuse.run(nodes["result"], workflow_name="ops", storage=storage, progress=plugin) == 4
    assert "7/7 nodes  0 read back  0 failed" in _plain(buffer.getvalue())

    buffer, plugin = console()
    functionfuse.run(nodes["result"], workflow_name="ops", storage=storage, progress=plugin)
    assert "7/7 nodes  7 read back  0 failed" in _plain(buffer.getvalue())

    buffer, plugin = console()
    nodes["fail"][(4, 3)] = True
    with pytest.raises(NodeExecutionError):
        LocalWorkflow(nodes["result"], workflow_name="fresh", progress=plugin).run()
    text = _plain(buffer.getvalue())
    assert "0/7 nodes  0 read back  1 failed" in text and "four_minus_three failed" in text

    # A console that is not a terminal, without force: nothing is drawn.
    quiet = io.StringIO()
    nodes["fail"].clear()
    assert LocalWorkflow(nodes["six"], workflow_name="q", progress=ProgressPlugin(console=Console(file=quiet))).run()
    assert quiet.getvalue() == ""


def test_bad_progress_value_names_the_option():
    with pytest.raises(InvalidOptionError, match="progress must be True, False or a ProgressPlugin, got 'yes'"):
        LocalWorkflow(stateful()["result"], workflow_name="bad", progress="yes").run()


def test_cli_run_draws_the_bar_on_a_terminal_only(tmp_path):
    script = tmp_path / "chain.py"
    script.write_text(SCRIPT.split("how, storage")[0])  # the nodes only; the command runs them
    command = [sys.executable, "-m", "functionfuse", "run", f"{script}:node"]
    out = _run_in_pty(command, str(tmp_path))
    assert "12/12 nodes  0 read back  0 failed" in _plain(out) and "n11: 12" in out
    quiet = _run_in_pty([*command, "--no-progress"], str(tmp_path))
    assert _plain(quiet).strip() == "n11: 12"
    piped = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True, cwd=str(tmp_path))
    assert piped.stdout == "n11: 12\n" and piped.stderr == ""


def test_bar_and_record_on_the_ray_backends(tmp_path):
    """Driver-side hooks only: the same plugins work when nodes run in Ray workers (built-in ray, raydag addon)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from rich.console import Console

    from plugins_builtin.runrecord import list_run_records, read_run_record

    temp_dir = os.path.join("/tmp", f"ffpg{os.getpid()}")  # Ray's socket paths must stay short
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir)
    try:
        address = ray.get_runtime_context().gcs_address
        buffer = io.StringIO()
        plugin = ProgressPlugin(console=Console(file=buffer, force_terminal=True, width=160))
        nodes = stateful()
        storage = str(tmp_path / "storage")
        assert functionfuse.run(nodes["result"], backend="raydag", workflow_name="onray", storage=storage,
                                progress=plugin, ray_init_args={"address": address}) == 4
        builtin = io.StringIO()
        plugin = ProgressPlugin(console=Console(file=builtin, force_terminal=True, width=160))
        assert functionfuse.run(nodes["result"], backend="ray", workflow_name="onbuiltin", storage=storage,
                                progress=plugin, ray_init_args={"address": address}) == 4
        again = io.StringIO()
        plugin = ProgressPlugin(console=Console(file=again, force_terminal=True, width=160))
        assert functionfuse.run(nodes["result"], backend="ray", workflow_name="onbuiltin", storage=storage,
                                progress=plugin, ray_init_args={"address": address}) == 4
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert "7/7 nodes  0 read back  0 failed" in _plain(buffer.getvalue())
    record = read_run_record(functionfuse.storage.as_storage(storage), "onray")
    assert record["backend"] == "raydag" and record["counts"]["computed"] == 7
    workers = {entry["worker"] for entry in record["nodes"].values()}
    assert None not in workers and f"pid {os.getpid()}" not in workers  # computed in Ray workers
    assert "7/7 nodes  0 read back  0 failed" in _plain(builtin.getvalue())
    assert "7/7 nodes  7 read back  0 failed" in _plain(again.getvalue())
    runs = list_run_records(functionfuse.storage.as_storage(storage), "onbuiltin")
    assert [r["backend"] for r in runs] == ["ray", "ray"]
    assert runs[0]["counts"]["computed"] == 7 and runs[1]["counts"]["stored"] == 7
