"""Trustworthy resume (issue 10) on the local backend: a stored result is reused only for the same call.

Most tests run scripts as a user does, ``python SCRIPT.py`` in a folder of
their own, twice: the first run stores, the second is edited. Each workflow
function appends a line to ``calls.txt`` when it runs, so "only these nodes
computed" is checked by what actually ran, and the run record (its counts
and ``recomputed`` reasons) is checked against it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import UnfingerprintableError
from functionfuse.fingerprint import NoFingerprint

ROOT = Path(__file__).resolve().parent.parent

# What every script prints last: the value, and what its run record says.
REPORT = """
import json as _json
from functionfuse.storage import as_storage as _as_storage
from plugins_builtin.runrecord import read_run_record as _read
_record = _read(_as_storage("st"), "w")
print(_json.dumps({
    "value": value,
    "computed": sorted(n for n, e in _record["nodes"].items() if e["outcome"] == "computed"),
    "recomputed": _record.get("recomputed", {}),
    "summary": _record["summary"],
}))
"""

MARK = """
def mark(what):
    with open("calls.txt", "a") as handle:
        handle.write(what + "\\n")
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}


def run_script(folder: Path, text: str, name: str = "script.py") -> dict:
    """Write ``text`` (plus the report) to ``folder/name``, run it there, return the report and the calls."""
    calls = folder / "calls.txt"
    if calls.exists():
        calls.unlink()
    (folder / name).write_text(textwrap.dedent(text) + REPORT)
    done = subprocess.run([sys.executable, name], cwd=folder, env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["calls"] = calls.read_text().split() if calls.exists() else []
    return report


def cli(folder: Path, *argv: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "functionfuse", *argv], cwd=folder, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def calls_of(folder: Path) -> list:
    calls = folder / "calls.txt"
    return calls.read_text().split() if calls.exists() else []


# ---------------------------------------------------------------------------
# the two scripts: an inserted call shifts every later default name
# ---------------------------------------------------------------------------

V1 = """
import functionfuse
from functionfuse import workflow
""" + MARK + """
@workflow
def load(x):
    mark(f"load({x})")
    return x * 10

@workflow
def collect(*v):
    mark("collect")
    return list(v)

value = functionfuse.run(collect(load(1), load(2)), storage="st", workflow_name="w"{options})
"""

V2 = """
import functionfuse
from functionfuse import workflow
""" + MARK + """
@workflow
def load(x):
    mark(f"load({x})")
    return x * 10

@workflow
def collect(*v):
    mark("collect")
    return list(v)

extra = load(7)
value = functionfuse.run(collect(extra, load(1), load(2)), storage="st", workflow_name="w"{options})
"""


def test_an_inserted_call_computes_only_itself_and_what_uses_it(tmp_path):
    first = run_script(tmp_path, V1.replace("{options}", ""), "v1.py")
    assert first["value"] == [10, 20]
    assert sorted(first["calls"]) == ["collect", "load(1)", "load(2)"]

    second = run_script(tmp_path, V2.replace("{options}", ""), "v2.py")
    assert second["value"] == [70, 10, 20]
    assert sorted(second["calls"]) == ["collect", "load(7)"]  # load(1), load(2): read under their old names
    # load(7) took the name load_0000, where load(1) was stored; that result still serves load(1) (now load_0001)
    assert second["computed"] == ["collect_0000", "load_0000"]
    assert second["recomputed"] == {"load_0000": "argument changed", "collect_0000": "parent recomputed"}
    assert second["summary"] == ("computed 0, read back 2, recomputed 2 "
                                 "(load_0000: argument changed; collect_0000: parent recomputed)")

    third = run_script(tmp_path, V2.replace("{options}", ""), "v2.py")
    assert third["value"] == [70, 10, 20] and third["calls"] == [] and third["computed"] == []


def test_resume_name_keeps_the_originals_unsafe_trust_in_names(tmp_path):
    run_script(tmp_path, V1.replace("{options}", ""), "v1.py")
    second = run_script(tmp_path, V2.replace("{options}", ', resume="name"'), "v2.py")
    # documented as unsafe: collect_0000 is stored under its name, so its old value comes back
    assert second["value"] == [10, 20]
    assert second["calls"] == ["load(2)"]  # load_0002 is the only name not stored; collect_0000 is not rerun


def test_resume_never_recomputes_everything_and_says_so(tmp_path):
    run_script(tmp_path, V1.replace("{options}", ""), "v1.py")
    again = run_script(tmp_path, V1.replace("{options}", ', resume="never"'), "v1.py")
    assert again["value"] == [10, 20]
    assert sorted(again["calls"]) == ["collect", "load(1)", "load(2)"]
    assert again["recomputed"] == dict.fromkeys(["load_0000", "load_0001", "collect_0000"], 'resume="never"')


def test_storage_without_fingerprints_recomputes_once_then_resumes(tmp_path):
    run_script(tmp_path, V1.replace("{options}", ""), "v1.py")
    markers = tmp_path / "st" / "w" / ".fffp"
    assert markers.is_dir()
    shutil.rmtree(markers)  # as written before fingerprints existed
    again = run_script(tmp_path, V1.replace("{options}", ""), "v1.py")
    assert again["value"] == [10, 20]
    assert sorted(again["calls"]) == ["collect", "load(1)", "load(2)"]
    assert again["recomputed"] == dict.fromkeys(["load_0000", "load_0001", "collect_0000"], "no fingerprint")
    third = run_script(tmp_path, V1.replace("{options}", ""), "v1.py")
    assert third["calls"] == [] and third["value"] == [10, 20]


# ---------------------------------------------------------------------------
# what the code fingerprint sees: helpers two calls deep, constants, closures, defaults
# ---------------------------------------------------------------------------

HELPERS = '''
def factor():
    return {factor}


def scale(x):
    return x * factor()
'''

SCRIPT = '''
import functionfuse
import helpers
from functionfuse import workflow
''' + MARK + '''
RATE = {rate}


@workflow
def scaled(x):
    {doc}
    mark("scaled")
    return helpers.scale(x){comment}


@workflow
def rated(x):
    mark("rated")
    return x * RATE


def make(k):
    @workflow
    def closed(x):
        mark("closed")
        return x + k
    return closed


closed = make({k})


@workflow
def shifted(x, by={by}):
    mark("shifted")
    return x + by


@workflow
def total(*parts):
    mark("total")
    return list(parts)


value = functionfuse.run(total(scaled(1), rated(1), closed(1), shifted(1)), storage="st", workflow_name="w")
'''

BASE = {"factor": 3, "rate": 2, "k": 5, "by": 1, "doc": "", "comment": ""}


def _write_helpers(folder: Path, factor: int, extra: str = "") -> None:
    (folder / "helpers.py").write_text(extra + HELPERS.format(factor=factor))
    shutil.rmtree(folder / "__pycache__", ignore_errors=True)  # a same-second edit must not hit a stale .pyc


@pytest.mark.parametrize("change, node, value, reason", [
    ({"factor": 4}, "scaled_0000", [4, 2, 6, 2], "code of 'helpers:factor' changed"),
    ({"rate": 3}, "rated_0000", [3, 3, 6, 2], "code of '__main__:rated' changed"),
    ({"k": 6}, "make.<locals>.closed_0000", [3, 2, 7, 2], "code of '__main__:make.<locals>.closed' changed"),
    ({"by": 2}, "shifted_0000", [3, 2, 6, 3], "code of '__main__:shifted' changed"),
], ids=["helper-two-calls-deep", "module-constant", "closure-value", "default-argument"])
def test_a_change_the_function_depends_on_recomputes_it_and_says_what(tmp_path, change, node, value, reason):
    _write_helpers(tmp_path, BASE["factor"])
    first = run_script(tmp_path, SCRIPT.format(**BASE))
    assert first["value"] == [3, 2, 6, 2]
    assert sorted(first["calls"]) == ["closed", "rated", "scaled", "shifted", "total"]

    settings = {**BASE, **change}
    _write_helpers(tmp_path, settings["factor"])
    second = run_script(tmp_path, SCRIPT.format(**settings))
    assert second["value"] == value
    assert sorted(second["calls"]) == sorted([node.rpartition(".")[2].partition("_")[0], "total"])
    assert second["computed"] == sorted([node, "total_0000"])
    assert second["recomputed"] == {node: reason, "total_0000": "parent recomputed"}


def test_comments_docstrings_and_formatting_recompute_nothing(tmp_path):
    _write_helpers(tmp_path, BASE["factor"])
    first = run_script(tmp_path, SCRIPT.format(**BASE))
    edited = {**BASE, "doc": '"""Scale x by the helper\'s factor."""', "comment": "  # the helper decides"}
    _write_helpers(tmp_path, BASE["factor"], extra="# helpers of the script\n\n\n")
    script = SCRIPT.format(**edited).replace("return x * RATE", "return (x *\n            RATE)  # reformatted")
    second = run_script(tmp_path, script)
    assert second["value"] == first["value"] == [3, 2, 6, 2]
    assert second["calls"] == [] and second["computed"] == [] and second["recomputed"] == {}


# ---------------------------------------------------------------------------
# a notebook: the same cell run again in one process
# ---------------------------------------------------------------------------

RAN: list = []


@workflow
def double(x):
    RAN.append(("double", x))
    return 2 * x


@workflow
def plus(a, b):
    RAN.append(("plus", a, b))
    return a + b


def test_a_notebook_rebuild_of_the_same_graph_reads_everything_back(tmp_path):
    def cell():
        return plus(double(1), double(2))

    RAN.clear()
    first = cell()
    wf = LocalWorkflow(first, workflow_name="nb").set_storage(str(tmp_path / "st"))
    assert wf.run() == 6 and len(RAN) == 3

    RAN.clear()
    again = cell()  # default names move on: the same calls under new names
    assert again.name != first.name
    assert {n.name for n in LocalWorkflow(again).nodes}.isdisjoint({n.name for n in wf.nodes})
    wf2 = LocalWorkflow(again, workflow_name="nb").set_storage(str(tmp_path / "st"))
    assert [e.fate for e in wf2.plan()] == ["read back" if e.name == again.name else "stored" for e in wf2.plan()]
    assert wf2.run() == 6
    assert RAN == []
    assert wf2.run_record["counts"]["computed"] == 0
    assert wf2.run_record["nodes"][again.name]["outcome"] == "stored"


# ---------------------------------------------------------------------------
# the command line: --rerun and plan
# ---------------------------------------------------------------------------

CHAIN_SCRIPT = '''
from functionfuse import workflow
''' + MARK + '''

@workflow
def step(label, x):
    mark(label)
    return x + 1


@workflow
def pair(x, y):
    mark("pair")
    return [x, y]


a = step("a", 0).set_name("a")
b = step("b", a).set_name("b")
c = step("c", b).set_name("c")
d = step("d", 10).set_name("d")
leaf = pair(c, d).set_name("leaf")
'''


def test_cli_rerun_recomputes_the_matching_nodes_and_everything_downstream(tmp_path):
    (tmp_path / "chain.py").write_text(CHAIN_SCRIPT)
    out = cli(tmp_path, "run", "chain.py:leaf", "--storage", "st", "--workflow-name", "w")
    assert "leaf: [3, 11]" in out.stdout
    assert sorted(calls_of(tmp_path)) == ["a", "b", "c", "d", "pair"]
    (tmp_path / "calls.txt").unlink()

    out = cli(tmp_path, "run", "chain.py:leaf", "--storage", "st", "--workflow-name", "w", "--rerun", "b")
    assert "leaf: [3, 11]" in out.stdout
    assert sorted(calls_of(tmp_path)) == ["b", "c", "pair"]  # b and downstream; a and d read back

    from functionfuse.storage import as_storage
    from plugins_builtin.runrecord import read_run_record

    record = read_run_record(as_storage(str(tmp_path / "st")), "w")
    assert record["recomputed"] == {"b": "asked to rerun (--rerun)", "c": "downstream of a node asked to rerun",
                                    "leaf": "downstream of a node asked to rerun"}


def test_cli_plan_shows_each_fate_and_reason_without_running_anything(tmp_path):
    (tmp_path / "chain.py").write_text(CHAIN_SCRIPT)
    out = cli(tmp_path, "plan", "chain.py:leaf", "--storage", "st", "--workflow-name", "w")
    assert calls_of(tmp_path) == []
    lines = out.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:-1]] == [[n, "compute"] for n in ("a", "b", "c", "d", "leaf")]
    assert all(line.endswith("not stored") for line in lines[:-1])
    assert lines[-1] == "compute 5, read back 0, recompute 0, stored 0"

    cli(tmp_path, "run", "chain.py:leaf", "--storage", "st", "--workflow-name", "w")
    (tmp_path / "calls.txt").unlink()
    (tmp_path / "chain.py").write_text(CHAIN_SCRIPT.replace('step("d", 10)', 'step("d", 20)'))
    out = cli(tmp_path, "plan", "chain.py:leaf", "--storage", "st", "--workflow-name", "w")
    assert calls_of(tmp_path) == []  # nothing ran
    fates = {line.split()[0]: line for line in out.stdout.splitlines()[:-1]}
    assert fates["d"].split()[1] == "recompute" and fates["d"].endswith("argument changed")
    assert fates["leaf"].split()[1] == "recompute" and fates["leaf"].endswith("parent recomputed")
    assert fates["c"].split()[1:3] == ["read", "back"]
    assert fates["a"].split()[1] == "stored" and fates["b"].split()[1] == "stored"
    out = cli(tmp_path, "plan", "chain.py:leaf", "--storage", "st", "--workflow-name", "w", "--rerun", "a")
    fates = {line.split()[0]: line for line in out.stdout.splitlines()[:-1]}
    assert fates["a"].endswith("asked to rerun (--rerun)")
    assert fates["c"].endswith("downstream of a node asked to rerun")
    assert calls_of(tmp_path) == []


SCRIPT_AND_CLI = '''
from functionfuse import workflow
''' + MARK + '''

class Scale:
    def factor(self):
        return 2


@workflow
def times(x):
    mark("times")
    return x * Scale().factor()


leaf = times(5)
if __name__ == "__main__":
    import functionfuse
    print("value", functionfuse.run(leaf, storage="st", workflow_name="w"))
'''


def test_a_script_and_the_command_line_read_back_each_others_results(tmp_path):
    """`python SCRIPT.py` and `functionfuse run|plan SCRIPT.py:VAR` run the same functions under two
    module names (``__main__``, ``__functionfuse__``); a result stored by one is the same call for the
    other, and a change of code is still seen across them."""
    (tmp_path / "script.py").write_text(SCRIPT_AND_CLI)
    done = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "value 10" in done.stdout and calls_of(tmp_path) == ["times"]
    (tmp_path / "calls.txt").unlink()
    out = cli(tmp_path, "plan", "script.py:leaf", "--storage", "st", "--workflow-name", "w")
    assert out.stdout.splitlines()[-1] == "compute 0, read back 1, recompute 0, stored 0", out.stdout
    out = cli(tmp_path, "run", "script.py:leaf", "--storage", "st", "--workflow-name", "w")
    assert "times_0000: 10" in out.stdout and calls_of(tmp_path) == []  # read back, not recomputed
    # a changed helper class is seen by the command line, and its result read back by the script
    (tmp_path / "script.py").write_text(SCRIPT_AND_CLI.replace("return 2", "return 3"))
    out = cli(tmp_path, "plan", "script.py:leaf", "--storage", "st", "--workflow-name", "w")
    assert "recompute  code of '__main__:Scale.factor' changed" in out.stdout, out.stdout
    out = cli(tmp_path, "run", "script.py:leaf", "--storage", "st", "--workflow-name", "w")
    assert "times_0000: 15" in out.stdout and calls_of(tmp_path) == ["times"]
    (tmp_path / "calls.txt").unlink()
    done = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert "value 15" in done.stdout and calls_of(tmp_path) == []


# ---------------------------------------------------------------------------
# set_version, arguments that cannot be fingerprinted
# ---------------------------------------------------------------------------


@workflow
def take(label, x):
    RAN.append(label)
    return x + 1


def _chain():
    a = take("a", 0).set_name("a")
    b = take("b", a).set_name("b")
    return take("c", b).set_name("c")


def test_set_version_recomputes_that_node_and_downstream(tmp_path):
    RAN.clear()
    wf = LocalWorkflow(_chain(), workflow_name="v").set_storage(str(tmp_path / "st"))
    assert wf.run() == 3 and RAN == ["a", "b", "c"]
    RAN.clear()
    wf = LocalWorkflow(_chain(), workflow_name="v").set_storage(str(tmp_path / "st"))
    wf.query("^b$").set_version("2")
    assert wf.run() == 3
    assert RAN == ["b", "c"]
    assert wf.run_record["recomputed"] == {"b": "version changed", "c": "parent recomputed"}
    RAN.clear()
    wf = LocalWorkflow(_chain(), workflow_name="v").set_storage(str(tmp_path / "st"))
    wf.query("^b$").set_version("2")
    assert wf.run() == 3 and RAN == []


SEEN: list = []


@workflow
def use(resource, x):
    SEEN.append(resource)
    return x * 2


def test_an_argument_without_a_fingerprint_is_refused_before_anything_runs(tmp_path):
    RAN.clear()
    first = take("first", 1).set_name("first")
    with open(tmp_path / "input.txt", "w") as handle:
        leaf = use(handle, first).set_name("uses_file")
        wf = LocalWorkflow(leaf, workflow_name="u").set_storage(str(tmp_path / "st"))
        with pytest.raises(UnfingerprintableError) as caught:
            wf.run()
    message = str(caught.value)
    assert "'resource'" in message and "'uses_file'" in message
    assert "ff_fingerprint" in message and "NoFingerprint" in message  # the ways out
    assert RAN == []  # nothing ran, not even the parent

    lock = threading.Lock()
    wf = LocalWorkflow(use(lock, 1).set_name("uses_lock"), workflow_name="u").set_storage(str(tmp_path / "st"))
    with pytest.raises(UnfingerprintableError, match="argument 'resource' of node 'uses_lock'"):
        wf.plan()


def test_set_fingerprint_exclude_leaves_the_argument_out(tmp_path):
    SEEN.clear()

    def build(lock):
        wf = LocalWorkflow(use(lock, 1).set_name("uses_lock"), workflow_name="x").set_storage(str(tmp_path / "st"))
        wf.query("^uses_lock$").set_fingerprint_exclude(["resource"])
        return wf

    lock = threading.Lock()
    assert build(lock).run() == 2
    assert SEEN == [lock]
    assert build(threading.Lock()).run() == 2  # another lock: the same call as far as the key goes
    assert SEEN == [lock]


def test_no_fingerprint_is_unwrapped_before_the_function_sees_it(tmp_path):
    SEEN.clear()
    lock = threading.Lock()
    wf = LocalWorkflow(use(NoFingerprint(lock), 1).set_name("wrapped"), workflow_name="n")
    wf.set_storage(str(tmp_path / "st"))
    assert wf.run() == 2
    assert SEEN == [lock]


def test_no_fingerprint_keeps_the_value_out_of_the_key(tmp_path):
    SEEN.clear()

    def build(lock):
        wf = LocalWorkflow(use(NoFingerprint(lock), 1).set_name("wrapped"), workflow_name="k")
        return wf.set_storage(str(tmp_path / "st"))

    assert build(threading.Lock()).run() == 2
    assert len(SEEN) == 1
    assert [e.fate for e in build(threading.Lock()).plan()] == ["read back"]
    assert build(threading.Lock()).run() == 2 and len(SEEN) == 1


# ---------------------------------------------------------------------------
# stateful objects
# ---------------------------------------------------------------------------


@workflow
class Tally:
    def __init__(self, start):
        RAN.append(("init", start))
        self.total = start

    def add(self, n):
        RAN.append(("add", n))
        self.total += n
        return self.total


def _tally(start, last=3):
    tally = Tally(start).set_name("tally")
    first = tally.add(2).set_name("first")
    second = tally.add(last).set_name("second")
    return first, second


def test_a_changed_constructor_argument_replays_every_call(tmp_path):
    RAN.clear()
    wf = LocalWorkflow(*_tally(1), workflow_name="t").set_storage(str(tmp_path / "st"))
    assert wf.run() == [3, 6]
    RAN.clear()
    assert LocalWorkflow(*_tally(1), workflow_name="t").set_storage(str(tmp_path / "st")).run() == [3, 6]
    assert RAN == []  # unchanged: nothing rebuilt

    RAN.clear()
    wf = LocalWorkflow(*_tally(10), workflow_name="t").set_storage(str(tmp_path / "st"))
    assert wf.run() == [12, 15]
    assert RAN == [("init", 10), ("add", 2), ("add", 3)]
    # the object is a parent of each call: its argument changed, so each call is recomputed
    assert wf.run_record["recomputed"] == {"first": "parent recomputed", "second": "parents recomputed"}
    assert {e.name: e.fate for e in LocalWorkflow(*_tally(10), workflow_name="t").set_storage(
        str(tmp_path / "st")).plan()} == {"tally": "stored", "first": "read back", "second": "read back"}


def test_a_changed_later_call_rebuilds_the_object_and_replays_the_calls_before_it(tmp_path):
    RAN.clear()
    assert LocalWorkflow(*_tally(1), workflow_name="t").set_storage(str(tmp_path / "st")).run() == [3, 6]
    RAN.clear()
    wf = LocalWorkflow(*_tally(1, last=4), workflow_name="t").set_storage(str(tmp_path / "st"))
    assert wf.run() == [3, 7]  # 7, not 4: the object's state after the first call is rebuilt
    assert RAN == [("init", 1), ("add", 2), ("add", 4)]
    assert wf.run_record["recomputed"]["first"] == "replayed: stateful object 'tally' is rebuilt"
    assert set(wf.run_record["recomputed"]) == {"first", "second"}


def test_a_changed_method_argument_is_the_reason_not_its_replayed_parents(tmp_path):
    LocalWorkflow(*_tally(1), workflow_name="t").set_storage(str(tmp_path / "st")).run()
    wf = LocalWorkflow(*_tally(1, last=4), workflow_name="t").set_storage(str(tmp_path / "st"))
    wf.run()
    assert wf.run_record["recomputed"]["second"] == "argument changed"


def test_docs_concepts_md_runs_as_written(tmp_path, monkeypatch):
    from doc_examples import run_blocks

    import types

    monkeypatch.chdir(tmp_path)
    # the page's code is a user's script or notebook: its module is __main__ (here, not pytest's own)
    main = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", main)
    namespace = main.__dict__
    assert len(run_blocks("docs/concepts.md", namespace)) == 3
    assert namespace["wf"].run_record["counts"]["computed"] == 1  # the last block's node, with its lock
