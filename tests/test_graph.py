"""The graph backend, drawn with the real ``dot`` program, and the ``functionfuse graph`` command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from graph_fixtures import QUICKSTART_SCRIPT, quickstart, read_svg, stateful

import functionfuse
from functionfuse import workflow
from functionfuse.backends.builtin.graphback import GraphWorkflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.cli import main
from functionfuse.errors import InvalidOptionError


def test_quickstart_as_in_the_docs(tmp_path):
    nodes = quickstart()
    graph_workflow = GraphWorkflow(nodes["result"], workflow_name="plot_graph", doc_path=str(tmp_path))
    path = graph_workflow.run()
    assert path == os.path.join(str(tmp_path), "plot_graph.svg")
    svg = read_svg(Path(path).read_text(encoding="utf-8"))
    assert sorted(svg.nodes) == ["node1", "node2", "node3"]
    assert sorted((e["from"], e["to"]) for e in svg.edges) == [("node1", "node2"), ("node1", "node3"),
                                                                ("node2", "node3")]
    assert all("data" in e["classes"] and not e["dashed"] for e in svg.edges)
    assert svg.clusters == [] and svg.legend == []  # no run record: no colours, no legend
    assert {n.fill for n in svg.nodes.values()} == {"#ffffff"}


def test_stateful_chain_is_dashed_and_numbered_inside_a_cluster(tmp_path):
    nodes = stateful()
    path = GraphWorkflow(nodes["result"], workflow_name="stateful", doc_path=tmp_path).run()
    svg = read_svg(Path(path).read_text(encoding="utf-8"))
    assert sorted(svg.nodes) == sorted([
        "four_minus_three", "IncrementalSum", "three_minus_one", "one_plus_two", "three_plus_two",
        "five_plus_one", "six_minus_two",
    ])
    assert len(svg.edges) == 9  # the seed's digraph
    chain = [e for e in svg.edges if "chain" in e["classes"]]
    assert [(e["from"], e["to"], e["label"]) for e in chain] == [
        ("IncrementalSum", "one_plus_two", "call 1"),
        ("one_plus_two", "three_plus_two", "call 2"),
        ("three_plus_two", "five_plus_one", "call 3"),
    ]
    assert all(e["dashed"] and e["stroke"] == "#6a1b9a" for e in chain)
    data = [e for e in svg.edges if "data" in e["classes"]]
    assert not any(e["dashed"] for e in data)
    assert ("five_plus_one", "six_minus_two") in {(e["from"], e["to"]) for e in data}
    assert svg.clusters == ["IncrementalSum"]
    assert svg.nodes["one_plus_two"].texts == ["one_plus_two", ".add()"]


def test_default_names_show_the_qualname_and_references_label_edges(tmp_path):
    @workflow
    def split(x):
        return x, x + 1

    @workflow
    def join(a, b):
        return a + b

    pair = split(1)
    leaf = join(pair[0], b=pair[1]).set_name("joined")
    svg = read_svg(GraphWorkflow(leaf, workflow_name="refs", doc_path=tmp_path, rankdir="LR").svg())
    default = next(n for n in svg.nodes.values() if n.name == pair.name)
    assert default.texts[1] == "test_graph.split()"  # a default name: the function, by module, on a second line
    assert svg.nodes["joined"].texts == ["joined"]
    assert [e["label"] for e in svg.edges] == ["[0], [1]"]
    assert "rankdir=LR" in GraphWorkflow(leaf, workflow_name="refs", rankdir="LR").source


def test_each_stateful_object_gets_its_own_cluster_and_chain(tmp_path):
    @workflow
    class Model:
        def __init__(self, seed):
            self.seed = seed

        def fit(self, x):
            self.seed += x
            return self.seed

    @workflow
    class Logger:
        def __init__(self):
            self.lines = 0

        def log(self, x):
            self.lines += 1
            return self.lines

    @workflow
    def load(i):
        return i

    model = Model(load(0)).set_name("model")
    fits = [model.fit(load(i)).set_name(f"fit_{i}") for i in range(1, 4)]
    logger = Logger()
    logs = [logger.log(fit) for fit in fits]
    svg = read_svg(GraphWorkflow(*logs, workflow_name="two", rankdir="LR").svg())
    assert sorted(svg.clusters) == sorted([logger.name, "model (Model)"])  # the class, when the name hides it
    assert svg.nodes["model"].texts == ["model", "Model()"]
    assert svg.nodes[logger.name].texts == [logger.name, "Logger()"]
    assert svg.nodes[logs[0].name].texts == [logs[0].name, ".log()"]
    chain = [(e["from"], e["to"], e["label"]) for e in svg.edges if "chain" in e["classes"]]
    assert chain == [
        ("model", "fit_1", "call 1"), ("fit_1", "fit_2", "call 2"), ("fit_2", "fit_3", "call 3"),
        (logger.name, logs[0].name, "call 1"), (logs[0].name, logs[1].name, "call 2"),
        (logs[1].name, logs[2].name, "call 3"),
    ]
    data = {(e["from"], e["to"]) for e in svg.edges if "data" in e["classes"]}
    assert {(f"fit_{i}", logs[i - 1].name) for i in range(1, 4)} <= data
    assert len(svg.nodes) == 12 and len(svg.edges) == 6 + 4 + 3  # chains, loads, fit -> log


def test_graph_backend_is_registered_and_imports_by_documented_path():
    from plugins_builtin.graphback import GraphWorkflow as Builtin

    assert GraphWorkflow is Builtin
    assert functionfuse.backend_class("graph") is Builtin
    assert "graph" in functionfuse.api.backend_names()


def test_bad_options_name_the_workflow_and_option(tmp_path):
    leaf = quickstart()["result"]
    with pytest.raises(InvalidOptionError, match=r"GraphWorkflow\('g'\): rankdir must be one of .*'sideways'"):
        GraphWorkflow(leaf, workflow_name="g", rankdir="sideways")
    with pytest.raises(InvalidOptionError, match=r"GraphWorkflow\('g'\): format 'xyz' is not a graphviz output"):
        GraphWorkflow(leaf, workflow_name="g", doc_path=tmp_path, format="xyz").run()
    with pytest.raises(InvalidOptionError, match=r"GraphWorkflow\('g'\): run_record must be a run record dict"):
        GraphWorkflow(leaf, workflow_name="g", run_record={"no": "nodes"})


def test_missing_dot_program_says_how_to_install_it(tmp_path):
    # Real runs with a PATH that has Python but no graphviz: the lookup of 'dot' fails for real.
    path = os.pathsep.join([str(tmp_path), os.path.dirname(sys.executable)])
    assert shutil.which("dot", path=path) is None
    env = {**os.environ, "PATH": path}
    script = tmp_path / "quick.py"
    script.write_text(QUICKSTART_SCRIPT)
    command = [sys.executable, "-m", "functionfuse", "graph", f"{script}:result_of_mult", "-o", str(tmp_path / "q.svg")]
    cli = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert cli.returncode == 2 and cli.stdout == ""
    assert cli.stderr.count("\n") == 1  # one line, no traceback
    assert "'dot' is not installed" in cli.stderr and "apt install graphviz" in cli.stderr

    code = (
        "import sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from graph_fixtures import quickstart\n"
        "from functionfuse.backends.builtin.graphback import GraphWorkflow\n"
        "from functionfuse.errors import GraphvizNotFoundError\n"
        "wf = GraphWorkflow(quickstart()['result'], workflow_name='nodot', doc_path=sys.argv[2])\n"
        "assert wf._repr_svg_() is None  # a notebook falls back to the text repr\n"
        "assert set(wf._repr_mimebundle_()) == {'text/plain'}\n"
        "try:\n"
        "    wf.run()\n"
        "except GraphvizNotFoundError as exc:\n"
        "    print(exc)\n"
    )
    api = subprocess.run([sys.executable, "-c", code, os.path.dirname(__file__), str(tmp_path)],
                         capture_output=True, text=True, timeout=60, env=env, check=False)
    assert api.returncode == 0, api.stderr
    assert api.stdout.count("\n") == 1 and "'dot' is not installed" in api.stdout
    assert "apt install graphviz" in api.stdout


def test_module_imports_and_runs_without_the_graphviz_package(tmp_path):
    # A fresh interpreter where importing graphviz fails: the default plugins still load and run.
    code = (
        "import sys; sys.modules['graphviz'] = None\n"
        "import functionfuse\n"
        "from functionfuse.backends.builtin.graphback import GraphWorkflow\n"
        "from functionfuse.errors import MissingExtraError\n"
        "@functionfuse.workflow\n"
        "def add(a, b): return a + b\n"
        "assert functionfuse.run(add(add(1, 2), 3)) == 6\n"
        "try:\n"
        "    GraphWorkflow(add(1, 2), workflow_name='x', doc_path=sys.argv[1]).run()\n"
        "except MissingExtraError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("MissingExtraError ") and 'pip install "functionfuse[graph]"' in out.stdout


def test_workflow_displays_as_svg_in_a_notebook():
    nodes = stateful()
    wf = LocalWorkflow(nodes["result"], workflow_name="nb", record=True)
    svg = read_svg(wf._repr_svg_())
    assert len(svg.nodes) == 7 and {n.fill for n in svg.nodes.values()} == {"#ffffff"}
    assert wf.run() == 4
    bundle = wf._repr_mimebundle_()
    assert bundle["text/plain"] == repr(wf)
    after = read_svg(bundle["image/svg+xml"])  # coloured by the run just made
    assert {n.fill for n in after.nodes.values()} == {"#c8e6c9"}
    assert "nb (run " in after.title and after.title.endswith(": ok)")


def test_a_notebook_shows_a_huge_workflow_as_text():
    from plugins_builtin.graphback import NOTEBOOK_MAX_NODES

    @workflow
    def step(x):
        return x + 1

    node = step(0)
    for _ in range(NOTEBOOK_MAX_NODES):
        node = step(node)
    wf = LocalWorkflow(node, workflow_name="long")
    assert wf._repr_svg_() is None  # dot is not started on it
    assert wf._repr_mimebundle_() == {"text/plain": f"<LocalWorkflow 'long': {NOTEBOOK_MAX_NODES + 1} nodes>"}


def test_cli_graph_writes_the_picture_and_reports_bad_input(tmp_path, capsys):
    script = tmp_path / "quick.py"
    script.write_text(QUICKSTART_SCRIPT)
    out = tmp_path / "pics" / "quick.svg"
    assert main(["graph", f"{script}:result_of_mult", "-o", str(out), "--rankdir", "LR"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    svg = read_svg(out.read_text())
    assert sorted(svg.nodes) == ["node1", "node2", "node3"] and len(svg.edges) == 3
    assert main(["graph", f"{script}:result_of_mult", "-o", str(tmp_path / "quick.png")]) == 0
    assert (tmp_path / "quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(["graph", f"{script}:result_of_mult", "-o", str(tmp_path / "noext")]) == 2
    assert "give the file an extension" in capsys.readouterr().err
    assert main(["graph", f"{script}:result_of_mult", "-o", str(out), "--run", "abc"]) == 2
    assert "--run needs --storage" in capsys.readouterr().err
    assert main(["graph", f"{script}:nothing", "-o", str(out)]) == 2
    assert "defines no variable 'nothing'" in capsys.readouterr().err


def test_examples_of_docs_graph_md_run_as_written(tmp_path, monkeypatch):
    from doc_examples import run_blocks

    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    assert len(run_blocks("docs/graph.md", namespace)) == 4  # every block, in order, its claims checked
    assert namespace["path"] == "./plot_graph.svg" and (tmp_path / "plot_graph.svg").exists()
    coloured = read_svg((tmp_path / "pictures" / "operations.svg").read_text())
    assert {n.fill for n in coloured.nodes.values()} == {"#bbdefb"}
    assert (tmp_path / "pictures" / "operations.png").read_bytes()[:4] == b"\x89PNG"


GRAPH_CALLS: list = []


@workflow
def weigh(x, factor):
    GRAPH_CALLS.append("weigh")
    return x * factor


@workflow
def combine(a, b):
    GRAPH_CALLS.append("combine")
    return a + b


def _weighed(factor):
    a = weigh(1, factor).set_name("weighed")
    b = weigh(2, 10).set_name("fixed")
    return combine(a, b).set_name("combined")


def test_nodes_a_run_now_would_recompute_are_stale_with_the_reason(tmp_path):
    storage = str(tmp_path / "storage")
    LocalWorkflow(_weighed(2), workflow_name="ops").set_storage(storage).run()
    fresh = read_svg(GraphWorkflow(_weighed(2), workflow_name="ops", storage=storage).svg())
    assert not any("stale" in n.classes for n in fresh.nodes.values())  # all still applies

    GRAPH_CALLS.clear()
    graph = GraphWorkflow(_weighed(3), workflow_name="ops", storage=storage)  # weighed's argument changed
    source = graph.source
    svg = read_svg(graph.svg())
    assert GRAPH_CALLS == []  # drawing runs nothing
    assert sorted(n for n, box in svg.nodes.items() if "stale" in box.classes) == ["combined", "weighed"]
    assert svg.nodes["weighed"].texts == ["weighed", "stale: argument changed"]
    assert svg.nodes["combined"].texts == ["combined", "stale: parent recomputed"]
    assert svg.nodes["weighed"].fill == "#ffe0b2" and svg.nodes["weighed"].stroke == "#e65100"
    assert "stale" not in svg.nodes["fixed"].classes and svg.nodes["fixed"].fill == "#c8e6c9"  # as last run
    assert "stale: a run now recomputes it (argument changed)" in svg.nodes["weighed"].tooltip
    assert svg.legend == ["computed", "1", "stale", "2"]
    assert "; 2 stale" in svg.title
    assert 'class="ffnode call stale"' in source and "stale: parent recomputed" in source
    # an older run, or stale=False: the record's colours alone
    assert "stale" not in GraphWorkflow(_weighed(3), workflow_name="ops", storage=storage, stale=False).source
