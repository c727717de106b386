"""The ``graph`` and ``history`` subcommands of the ``functionfuse`` command.

::

    functionfuse graph SCRIPT.py:VAR [VAR ...] -o out.svg [--storage S --workflow-name W] [--run ID] [--rankdir LR]
    functionfuse history STORAGE WORKFLOW

Registered through ``ff_cli_commands``: ``functionfuse.cli`` knows no subcommand of it.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from functionfuse.markers import hookimpl

__all__ = ["add_commands"]


def _storage(text: str) -> Any:
    from functionfuse.storage import as_storage

    return as_storage(text)


def _cmd_graph(args: argparse.Namespace) -> int:
    from functionfuse.cli import load_nodes
    from functionfuse.errors import InvalidOptionError
    from plugins_builtin.graphback import GraphWorkflow

    fmt = args.format or os.path.splitext(args.output)[1].lstrip(".").lower()
    if not fmt:
        raise InvalidOptionError(f"-o {args.output!r}: give the file an extension (.svg, .png, .pdf) or use --format")
    if args.run and not args.storage:
        raise InvalidOptionError("--run needs --storage: run records are read from the storage")
    nodes = load_nodes(args.target, args.more)
    storage = _storage(args.storage) if args.storage else None
    graph = GraphWorkflow(
        *nodes,
        workflow_name=args.workflow_name,
        doc_path=os.path.dirname(args.output) or ".",
        format=fmt,
        storage=storage,
        rankdir=args.rankdir,
        run_id=args.run,
    )
    print(graph.render(args.output, fmt))
    return 0


def _cmd_history(args: argparse.Namespace) -> int:
    from functionfuse.errors import RunRecordNotFoundError
    from plugins_builtin.runrecord import format_history, list_run_records

    storage = _storage(args.storage)
    records = list_run_records(storage, args.workflow)
    if not records:
        raise RunRecordNotFoundError(
            f"workflow {args.workflow!r} has no run records in {args.storage!r} "
            "(records are saved by runs with storage set)"
        )
    if args.last:
        records = records[-args.last:]
    print(format_history(records))
    return 0


def add_commands(subparsers: Any) -> None:
    """Add ``graph`` and ``history`` to the ``functionfuse`` command's subparsers."""
    p = subparsers.add_parser(
        "graph",
        help="draw a workflow's graph (coloured by a recorded run with --storage)",
        description="Draw the graph of the workflow whose leaves are the given variables of a script.",
    )
    p.add_argument("target", metavar="SCRIPT.py:VAR", help="script and the variable holding a leaf node")
    p.add_argument("more", nargs="*", metavar="VAR", help="further leaf variables of the same script")
    p.add_argument("-o", "--output", required=True, help="picture to write; its extension picks the format")
    p.add_argument("--format", help="graphviz output format (default: the extension of -o)")
    p.add_argument("--storage", help="storage folder or URL: colour the boxes by the latest recorded run")
    p.add_argument("--workflow-name", default="workflow", help="workflow whose run record to use (default: workflow)")
    p.add_argument("--run", metavar="RUN_ID", help="colour by this recorded run (an id or its prefix) instead")
    p.add_argument("--rankdir", default="TB", choices=["TB", "LR", "BT", "RL"], help="graph direction")
    p.set_defaults(handler=_cmd_graph)

    p = subparsers.add_parser("history", help="list the recorded runs of a workflow")
    p.add_argument("storage", help="storage folder or URL")
    p.add_argument("workflow", help="workflow name")
    p.add_argument("--last", type=int, metavar="N", help="show only the last N runs")
    p.set_defaults(handler=_cmd_history)


@hookimpl
def ff_cli_commands(subparsers: Any) -> None:
    add_commands(subparsers)
