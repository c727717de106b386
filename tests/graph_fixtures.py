"""Shared by test_graph.py, test_runrecord.py and test_progress.py: the seed examples and an SVG reader."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from functionfuse import workflow

SVG = "{http://www.w3.org/2000/svg}"

# The quick start of the user docs (seeds/000_*.txt), as a script for the CLI tests.
QUICKSTART_SCRIPT = '''
from functionfuse import workflow

@workflow
def sum(a, b):
    return a + b


@workflow
def multiply(a, b):
    return a * b


a, b = 1, 1

a_plus_b = sum(a, b).set_name("node1")
a_plus_two_b = sum(a_plus_b, b).set_name("node2")
result_of_mult = multiply(a_plus_b, a_plus_two_b).set_name("node3")
'''


def quickstart() -> dict:
    """The seed's quick-start graph: node1 -> node2 -> node3, node1 -> node3."""

    @workflow
    def sum(a, b):  # the seed's own name
        return a + b

    @workflow
    def multiply(a, b):
        return a * b

    a, b = 1, 1
    a_plus_b = sum(a, b).set_name("node1")
    a_plus_two_b = sum(a_plus_b, b).set_name("node2")
    result_of_mult = multiply(a_plus_b, a_plus_two_b).set_name("node3")
    return {"node1": a_plus_b, "node2": a_plus_two_b, "result": result_of_mult}


def stateful(fail: dict | None = None) -> dict:
    """The seed's stateful example (7 nodes, 9 edges of which 3 are the method chain).

    ``fail`` is a dict read when ``minus`` runs: ``{"six_minus_two": True}`` makes the last node raise.
    """
    fail = {} if fail is None else fail

    @workflow
    class IncrementalSum:
        def __init__(self, start):
            self.start = start

        def add(self, n):
            self.start += n
            return self.start

    @workflow
    def minus(a, b):
        if fail.get((a, b)):
            raise ValueError(f"minus refuses {a} - {b}")
        return a - b

    one = minus(4, 3).set_name("four_minus_three")
    incremental_sum = IncrementalSum(start=one).set_name("IncrementalSum")
    two = minus(3, one).set_name("three_minus_one")
    incremental_sum.add(two).set_name("one_plus_two")
    incremental_sum.add(two).set_name("three_plus_two")
    six = incremental_sum.add(one).set_name("five_plus_one")
    result = minus(six, 2).set_name("six_minus_two")
    return {"one": one, "two": two, "six": six, "result": result, "fail": fail}


@dataclass
class SvgNode:
    name: str
    classes: list[str]
    fill: str
    stroke: str
    texts: list[str]
    tooltip: str


@dataclass
class SvgGraph:
    title: str
    nodes: dict[str, SvgNode] = field(default_factory=dict)
    edges: list[dict] = field(default_factory=list)
    clusters: list[str] = field(default_factory=list)
    legend: list[str] = field(default_factory=list)


def read_svg(text: str) -> SvgGraph:
    """What graphviz drew: boxes by their first label line, edges with class/style/label, cluster titles."""
    root = ET.fromstring(text)
    graph_g = root.find(f"{SVG}g")
    title = "".join(t.text or "" for t in graph_g.findall(f"{SVG}text"))
    out = SvgGraph(title=title)
    ids: dict[str, str] = {}
    for g in graph_g.iter(f"{SVG}g"):
        if "node" in (g.get("class") or "").split():
            texts = [t.text or "" for t in g.iter(f"{SVG}text")]
            ids[g.find(f"{SVG}title").text] = texts[0] if texts else ""
    for g in graph_g.iter(f"{SVG}g"):
        classes = (g.get("class") or "").split()
        if "node" in classes and "ffnode" in classes:
            shape = next(el for el in g.iter() if el.tag in (f"{SVG}path", f"{SVG}polygon"))
            texts = [t.text or "" for t in g.iter(f"{SVG}text")]
            link = next((el for el in g.iter(f"{SVG}a")), None)
            tooltip = link.get("{http://www.w3.org/1999/xlink}title", "") if link is not None else ""
            out.nodes[texts[0]] = SvgNode(texts[0], classes, shape.get("fill"), shape.get("stroke"), texts, tooltip)
        elif "node" in classes and "legend" in classes:
            out.legend = [t.text or "" for t in g.iter(f"{SVG}text")]
        elif "edge" in classes:
            path = g.find(f".//{SVG}path")
            label = [t.text or "" for t in g.iter(f"{SVG}text")]
            tail, _, head = g.find(f"{SVG}title").text.partition("->")
            out.edges.append({
                "from": ids.get(tail),
                "to": ids.get(head),
                "classes": classes,
                "dashed": path.get("stroke-dasharray") is not None,
                "stroke": path.get("stroke"),
                "label": " ".join(label),
            })
        elif "cluster" in classes:
            out.clusters.append("".join(t.text or "" for t in g.findall(f"{SVG}text")))
    return out
