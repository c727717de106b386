"""The ``graph`` backend: draws a workflow with graphviz instead of running it.

>>> from functionfuse.backends.builtin.graphback import GraphWorkflow
>>> GraphWorkflow(result, workflow_name="plot_graph", doc_path=".").run()  # doctest: +SKIP
'./plot_graph.svg'

One box per node (its name; the function's qualname too when the name is a
default one), one solid arrow per data dependency (labelled ``[i]`` when the
argument is a reference ``node[i]``), the method-call chain of a stateful node
as dashed purple arrows numbered in call order, and a cluster around each
stateful object and its calls. Given a run record (``run_record=``, or the
latest one in ``storage``), each box is coloured by what happened to it in
that run: computed, read back from storage, failed, not reached. With
``storage``, a box whose stored result a run now would recompute (its code,
an argument, a parent or its version changed: :meth:`Workflow.resume_plan`) is
coloured **stale**, with the reason in the box.

This module imports without graphviz: the package and the ``dot`` program are
needed only when something is drawn.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable, Mapping
from typing import Any

from functionfuse.errors import GraphvizNotFoundError, InvalidOptionError, MissingExtraError, RunRecordNotFoundError
from functionfuse.frontend import Node, Ref
from functionfuse.markers import hookimpl
from functionfuse.base import Workflow

__all__ = ["NOTEBOOK_MAX_NODES", "OUTCOME_STYLES", "STALE", "GraphWorkflow", "build_graph", "notebook_svg"]

#: node attributes per run outcome (see ``plugins_builtin.runrecord.OUTCOMES``)
OUTCOME_STYLES: dict[str, dict[str, str]] = {
    "computed": {"fillcolor": "#c8e6c9", "color": "#2e7d32"},
    "stored": {"fillcolor": "#bbdefb", "color": "#1565c0"},
    "failed": {"fillcolor": "#ffcdd2", "color": "#c62828", "penwidth": "2.5"},
    "not reached": {"fillcolor": "#eeeeee", "color": "#9e9e9e", "fontcolor": "#757575", "style": "rounded,filled,dashed"},
    # not a run outcome: a stored result that a run now would recompute (Workflow.plan: "recompute")
    "stale": {"fillcolor": "#ffe0b2", "color": "#e65100", "penwidth": "2"},
}
#: the outcome name of boxes a run now would recompute
STALE = "stale"
_PLAIN_STYLE = {"fillcolor": "#ffffff", "color": "#424242"}
_CHAIN_COLOR = "#6a1b9a"
_RANKDIRS = ("TB", "LR", "BT", "RL")


def _graphviz() -> Any:
    try:
        import graphviz
    except ImportError as exc:
        raise MissingExtraError(
            'drawing a workflow graph needs the package "graphviz", which is not installed: '
            'run pip install "functionfuse[graph]"'
        ) from exc
    return graphviz


def _dot_not_found() -> GraphvizNotFoundError:
    return GraphvizNotFoundError(
        "the graphviz program 'dot' is not installed (or not on PATH); install it with "
        "'apt install graphviz', 'brew install graphviz' or 'conda install graphviz'"
    )


def _function_text(node: Node) -> str:
    """The function a node calls, as a reader finds it: ``module.name()`` (no ``__main__``, no ``<locals>``)."""
    qualname = node.qualname.rpartition("<locals>.")[2]
    module = getattr(node.func, "__module__", None)
    if module and module != "__main__":
        return f"{module}.{qualname}()"
    return f"{qualname}()"


def _detail(node: Node) -> str | None:
    """The small second line of a box: what the node calls, where the name does not already say it."""
    if node.kind == "method":
        return f".{node.method_name}()"
    if node.kind == "object":
        return None if node.name == node.cls.__name__ else f"{node.cls.__name__}()"
    return _function_text(node) if node.has_default_name else None


def _cluster_label(obj: Node) -> str:
    """The title of a stateful object's cluster: its name, and its class when the name does not show it."""
    cls = obj.cls.__name__
    return obj.name if obj.has_default_name or obj.name == cls else f"{obj.name} ({cls})"


def _seconds(duration: float) -> str:
    if duration < 0.0001:
        return "<0.1 ms"
    if duration < 1:
        return f"{duration * 1000:.1f} ms"
    if duration < 60:
        return f"{duration:.2f} s"
    minutes, seconds = divmod(round(duration), 60)
    return f"{minutes} min {seconds:02d} s"


_ERROR_CHARS = 48
_REASON_CHARS = 60


def _label(node: Node, entry: dict | None, stale: str | None = None) -> str:
    """An HTML-like label: the name; smaller lines for what it calls, how long it took, its error, why it is stale."""
    lines = [html.escape(node.name)]
    detail = _detail(node)
    if detail is not None:
        lines.append(f'<FONT POINT-SIZE="9" COLOR="#555555">{html.escape(detail)}</FONT>')
    if stale is not None:
        reason = stale if len(stale) <= _REASON_CHARS else stale[: _REASON_CHARS - 3] + "..."
        lines.append(f'<FONT POINT-SIZE="9" COLOR="#bf360c">stale: {html.escape(reason)}</FONT>')
    elif entry is not None:
        duration = entry.get("duration")
        if isinstance(duration, (int, float)):
            lines.append(f'<FONT POINT-SIZE="9" COLOR="#333333">{html.escape(_seconds(duration))}</FONT>')
        error = entry.get("error")
        if error:
            error = error.splitlines()[0] if error.strip() else error
            if len(error) > _ERROR_CHARS:
                error = error[: _ERROR_CHARS - 3] + "..."
            lines.append(f'<FONT POINT-SIZE="9" COLOR="#b71c1c">{html.escape(error)}</FONT>')
    if len(lines) == 1:
        return f"<{lines[0]}>"
    # A borderless table rather than <BR/>: its cell padding keeps the name's underscores off the next line.
    rows = "".join(f"<TR><TD>{line}</TD></TR>" for line in lines)
    return f'<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">{rows}</TABLE>>'



def _tooltip(node: Node, entry: dict | None, stale: str | None = None) -> str:
    lines = [node.name, f"{node.kind}: {node.qualname}"]
    if stale is not None:
        lines.append(f"stale: a run now recomputes it ({stale})")
    if entry is not None:
        lines.append(f"outcome: {entry.get('outcome')}")
        if isinstance(entry.get("duration"), (int, float)):
            lines.append(f"duration: {entry['duration']:.4f} s")
        for key in ("worker", "host", "error"):
            if entry.get(key):
                lines.append(f"{key}: {entry[key]}")
    return "\n".join(lines)


def _ref_labels(node: Node) -> dict[Node, list[str]]:
    """``[i]`` labels for top-level arguments that are references ``parent[i]``."""
    labels: dict[Node, list[str]] = {}
    values: Iterable[Any] = node.args if not node.kwargs else (*node.args, *node.kwargs.values())
    for value in values:
        if value.__class__ is Ref:
            labels.setdefault(value.node, []).append("".join(f"[{k!r}]" for k in value.keys))
    return labels


def build_graph(
    nodes: list[Node],
    name: str = "workflow",
    rankdir: str = "TB",
    record: dict | None = None,
    stored_only: set[str] | None = None,
    stale: dict[str, str] | None = None,
) -> Any:
    """A ``graphviz.Digraph`` of ``nodes`` (a closed graph in run order).

    :param record: a run record (see ``plugins_builtin.runrecord``): boxes are coloured by outcome.
    :param stored_only: without a record, names of stored results: those boxes are coloured as read back.
    :param stale: node name -> why a run now would recompute its stored result: those boxes are
        coloured :data:`STALE` (over the record's outcome), with the reason in the box.
    """
    graphviz = _graphviz()
    if rankdir not in _RANKDIRS:
        raise InvalidOptionError(f"graph of workflow {name!r}: rankdir must be one of {_RANKDIRS}, got {rankdir!r}")
    title = name
    outcomes: dict[str, dict] = {}
    if record is not None:
        outcomes = record.get("nodes") or {}
        title = f"{name} (run {record.get('run_id', '?')}: {record.get('status', '?')})"
    elif stored_only is not None:
        outcomes = {n: {"outcome": "stored"} for n in stored_only}
        title = f"{name} (stored results)"
    stale = stale or {}
    if stale:
        title += f"; {len(stale)} stale"
    dot = graphviz.Digraph(
        name,
        graph_attr={"rankdir": rankdir, "label": title, "labelloc": "t", "fontname": "Helvetica", "fontsize": "14"},
        node_attr={"shape": "box", "style": "rounded,filled", "fontname": "Helvetica", "fontsize": "12",
                   "margin": "0.15,0.08"},
        edge_attr={"color": "#424242", "arrowsize": "0.8", "fontname": "Helvetica", "fontsize": "9"},
    )
    ids = {node: f"n{index}" for index, node in enumerate(nodes)}

    # Stateful objects and their calls, in call order, each group drawn as a cluster.
    clusters: dict[Node, list[Node]] = {}
    call_number: dict[Node, int] = {}
    for node in nodes:
        if node.kind == "object":
            clusters.setdefault(node, [])
        elif node.kind == "method":
            calls = clusters.setdefault(node.obj, [])
            calls.append(node)
            call_number[node] = len(calls)

    seen_outcomes: dict[str, int] = {}

    def add_node(graph: Any, node: Node) -> None:
        entry = outcomes.get(node.name)
        reason = stale.get(node.name)
        outcome = STALE if reason is not None else entry.get("outcome") if entry else None
        style = OUTCOME_STYLES.get(outcome, _PLAIN_STYLE) if outcome else _PLAIN_STYLE
        if outcome:
            seen_outcomes[outcome] = seen_outcomes.get(outcome, 0) + 1
        css = f"ffnode {node.kind} " + (outcome.replace(" ", "-") if outcome else "no-outcome")
        graph.node(
            ids[node],
            label=_label(node, entry, reason),
            tooltip=_tooltip(node, entry, reason),
            **{"class": css},
            **style,
        )

    for index, (obj, calls) in enumerate(clusters.items()):
        with dot.subgraph(name=f"cluster_{index}") as sub:
            sub.attr(
                label=_cluster_label(obj),
                labelloc="b",  # arrows into the object come from above; a title there gets crossed
                labeljust="r",
                style="rounded,dashed",
                color=_CHAIN_COLOR,
                fontcolor=_CHAIN_COLOR,
                fontsize="11",
            )
            if obj in ids:
                add_node(sub, obj)
            for call in calls:
                add_node(sub, call)
    for node in nodes:
        if node.kind == "call":
            add_node(dot, node)

    for node in nodes:
        refs = _ref_labels(node) if node.argmode else {}
        for parent in node.data_parents:
            if parent not in ids:
                continue
            attrs = {"class": "data"}
            if parent in refs:
                attrs["label"] = ", ".join(refs[parent])
            dot.edge(ids[parent], ids[node], **attrs)
        if node.kind == "method" and node.chain_prev in ids:
            dot.edge(
                ids[node.chain_prev], ids[node],
                label=f"call {call_number[node]}", style="dashed", color=_CHAIN_COLOR, fontcolor=_CHAIN_COLOR,
                **{"class": "chain"},
            )

    if seen_outcomes:
        rows = "".join(
            f'<TR><TD BGCOLOR="{OUTCOME_STYLES[o]["fillcolor"]}">{html.escape(o)}</TD>'
            f"<TD>{seen_outcomes[o]}</TD></TR>"
            for o in OUTCOME_STYLES
            if o in seen_outcomes
        )
        dot.node(
            "legend",
            label=f'<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="4">{rows}</TABLE>>',
            shape="plaintext",
            style="",
            **{"class": "legend"},
        )
    return dot


class GraphWorkflow(Workflow):
    """Draw the workflow's graph with graphviz; ``run()`` writes the picture and returns its path.

    :param nodes: one or more leaf nodes.
    :param workflow_name: the picture's file name (``<doc_path>/<workflow_name>.<format>``), and the
        workflow whose run record colours the boxes when ``storage`` is given.
    :param doc_path: the folder to write to (created when missing).
    :param format: any graphviz output format: ``svg``, ``png``, ``pdf``, ...
    :param view: open the picture in the system's viewer after drawing (never by default).
    :param storage: a storage (object, dict or path): colour the boxes by the run recorded there.
    :param rankdir: graph direction, ``TB`` (top to bottom), ``LR``, ``BT`` or ``RL``.
    :param run_id: with ``storage``, colour by this run (an id or its prefix) instead of the latest.
    :param run_record: colour by this record (for instance ``LocalWorkflow(...).run_record``).
    :param stale: with ``storage`` (and no ``run_id``: the picture of now), colour the boxes whose
        stored result no longer applies as stale, with the reason (:meth:`Workflow.resume_plan`).
        The fingerprints of every node are computed for it; nothing runs.
    """

    backend_name = "graph"

    def __init__(
        self,
        *nodes: Node,
        workflow_name: str = "workflow",
        doc_path: str | os.PathLike = ".",
        format: str = "svg",
        view: bool = False,
        storage: Any = None,
        rankdir: str = "TB",
        run_id: str | None = None,
        run_record: dict | None = None,
        stale: bool = True,
        **options: Any,
    ):
        super().__init__(*nodes, workflow_name=workflow_name, **options)
        if rankdir not in _RANKDIRS:
            raise InvalidOptionError(
                f"GraphWorkflow({workflow_name!r}): rankdir must be one of {', '.join(_RANKDIRS)}, got {rankdir!r}"
            )
        if not isinstance(format, str) or not format:
            raise InvalidOptionError(f"GraphWorkflow({workflow_name!r}): format must be a name like 'svg', got {format!r}")
        if run_record is not None and not isinstance(run_record.get("nodes") if isinstance(run_record, dict) else None,
                                                     Mapping):
            raise InvalidOptionError(
                f"GraphWorkflow({workflow_name!r}): run_record must be a run record dict with a 'nodes' table"
            )
        self.doc_path = os.fspath(doc_path)
        self.format = format
        self.view = bool(view)
        self.rankdir = rankdir
        self.run_id = run_id
        self.run_record = run_record
        self.stale = bool(stale)
        if storage is not None:
            self.set_storage(storage)

    def colours(self) -> tuple[dict | None, set[str] | None]:
        """The run record to colour by, or (without a record in storage) the names of stored results."""
        if self.run_record is not None:
            return self.run_record, None
        if self.storage is None:
            return None, None
        from plugins_builtin.runrecord import read_run_record

        try:
            return read_run_record(self.storage, self.workflow_name, self.run_id), None
        except RunRecordNotFoundError:
            if self.run_id is not None:
                raise
        return None, set(self.storage.list_tasks(self.workflow_name))

    def stale_nodes(self) -> dict[str, str]:
        """Node name -> why its stored result no longer applies, so a run now recomputes it.

        From :meth:`resume_plan`: a node with a reason and no stored result that applies (a call
        replayed only to rebuild a stateful object's state is not stale: its stored result holds).
        Empty without storage, for an older run (``run_id``), or when nothing of the workflow is stored.
        """
        if not self.stale or self.storage is None or self.run_id is not None:
            return {}
        if not self.storage.list_tasks(self.workflow_name):
            return {}  # nothing stored: nothing stale, and no fingerprints to compute
        plan = self.resume_plan()
        return {node.name: why for node, why in plan.reasons.items() if node not in plan.sources}

    def graph(self) -> Any:
        """The ``graphviz.Digraph`` this backend draws."""
        record, stored = self.colours()
        return build_graph(self.nodes, self.workflow_name, self.rankdir, record, stored, self.stale_nodes())

    @property
    def source(self) -> str:
        """The graph in the dot language."""
        return self.graph().source

    def render(self, path: str | os.PathLike | None = None, format: str | None = None) -> str:
        """Draw to ``path`` (default ``<doc_path>/<workflow_name>.<format>``); returns the path written."""
        graphviz = _graphviz()
        fmt = format or self.format
        if fmt not in graphviz.FORMATS:
            raise InvalidOptionError(
                f"GraphWorkflow({self.workflow_name!r}): format {fmt!r} is not a graphviz output format "
                "(svg, png, pdf, dot, ...)"
            )
        if path is None:
            os.makedirs(self.doc_path, exist_ok=True)
            path = os.path.join(self.doc_path, f"{self.workflow_name}.{fmt}")
        path = os.fspath(path)
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        dot = self.graph()
        try:
            dot.render(outfile=path, format=fmt, view=self.view, cleanup=True, quiet=True)
            return path
        except graphviz.ExecutableNotFound as exc:
            raise _dot_not_found() from exc
        except graphviz.CalledProcessError as exc:
            raise InvalidOptionError(
                f"GraphWorkflow({self.workflow_name!r}): dot could not draw {path!r}: "
                f"{(exc.stderr or b'').decode(errors='replace').strip()}"
            ) from exc

    def svg(self) -> str:
        """The graph as SVG text."""
        graphviz = _graphviz()
        try:
            return self.graph().pipe(format="svg", encoding="utf-8")
        except graphviz.ExecutableNotFound as exc:
            raise _dot_not_found() from exc

    def run(self) -> str:
        """Draw the graph into ``doc_path``; returns the path of the picture."""
        return self.render()


#: a notebook draws workflows up to this many nodes; larger ones show their text repr (draw them to a file)
NOTEBOOK_MAX_NODES = 1000


def notebook_svg(workflow: Workflow) -> str | None:
    """SVG for a notebook's display of any workflow, coloured by its last run when recorded.

    ``None`` (the notebook then shows the text repr) when graphviz or dot is missing, or the
    workflow has more than :data:`NOTEBOOK_MAX_NODES` nodes (``dot`` would take minutes and the
    picture would be unreadable in a cell).
    """
    if len(workflow.nodes) > NOTEBOOK_MAX_NODES:
        return None
    try:
        graphviz = _graphviz()
        if isinstance(workflow, GraphWorkflow):
            dot = workflow.graph()
        else:
            dot = build_graph(workflow.nodes, workflow.workflow_name, record=getattr(workflow, "run_record", None))
        return dot.pipe(format="svg", encoding="utf-8")
    except MissingExtraError:
        return None
    except graphviz.ExecutableNotFound:
        return None


@hookimpl
def ff_backends(register) -> None:
    register("graph", "plugins_builtin.graphback:GraphWorkflow", extra="graph")


@hookimpl
def ff_display(workflow: Workflow) -> str | None:
    return notebook_svg(workflow)
