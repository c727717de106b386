"""The ``functionfuse`` command.

::

    functionfuse run SCRIPT.py:VAR [VAR ...] [--backend NAME] [--storage PATH_OR_URL]
                     [--workflow-name NAME] [--plugin MODULE] [--disable NAME] [--trace]
    functionfuse plugins
    functionfuse ls STORAGE [WORKFLOW]
    functionfuse show STORAGE WORKFLOW TASK
    functionfuse rm STORAGE WORKFLOW [--pattern GLOB]

A user error exits with status 2 and one line on stderr; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from typing import Any, Sequence

from .errors import FunctionFuseError, NotANodeError

__all__ = ["main", "load_nodes", "build_parser"]


class UsageError(FunctionFuseError):
    """A command-line argument is wrong."""


def load_nodes(spec: str, extra_vars: Sequence[str] = ()) -> list:
    """The nodes named by ``SCRIPT.py:VAR`` (and further variable names) of a script.

    The script runs with ``__name__ == "__functionfuse__"``, so its ``if __name__ == "__main__":``
    block (which usually runs the workflow) does not.
    """
    from .frontend import Node, Ref

    script, sep, first = spec.rpartition(":")
    if not sep or not script or not first:
        raise UsageError(f"expected SCRIPT.py:VARIABLE, got {spec!r}")
    if not os.path.isfile(script):
        raise UsageError(f"script {script!r} does not exist")
    # as `python SCRIPT.py` does: the script's folder first on the path, so its own modules import
    folder = os.path.dirname(os.path.abspath(script))
    if folder not in sys.path:
        sys.path.insert(0, folder)
    from .fingerprint import SCRIPT_RUN_NAME

    namespace = runpy.run_path(script, run_name=SCRIPT_RUN_NAME)
    nodes = []
    for name in (first, *extra_vars):
        if name not in namespace:
            raise UsageError(f"script {script!r} defines no variable {name!r}")
        value = namespace[name]
        if value.__class__ is Ref:
            value = value.node
        if not isinstance(value, Node):
            raise NotANodeError(f"variable {name!r} of {script!r} is {type(value).__name__}, not a workflow node")
        nodes.append(value)
    return nodes


def _storage(text: str) -> Any:
    import json

    from .storage import as_storage

    if text.lstrip().startswith("{"):
        try:
            return as_storage(json.loads(text))
        except json.JSONDecodeError as exc:
            raise UsageError(f"--storage looks like JSON but is not valid: {exc}") from exc
    return as_storage(text)


def _cmd_run(args: argparse.Namespace) -> int:
    from .api import run

    nodes = load_nodes(args.target, args.more)
    plugins: list[Any] = list(args.plugin or [])
    progress = args.progress if args.progress is not None else sys.stderr.isatty()
    storage = _storage(args.storage) if args.storage else None
    result = run(
        *nodes,
        backend=args.backend,
        workflow_name=args.workflow_name,
        storage=storage,
        plugins=plugins,
        disable=args.disable or (),
        trace=(os.environ.get("FUNCTIONFUSE_TRACE") or True) if args.trace else None,
        progress=bool(progress),
        resume=args.resume,
        rerun=args.rerun,
    )
    values = result if len(nodes) > 1 else [result]
    for node, value in zip(nodes, values):
        print(f"{node.name}: {value!r}")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from .api import backend_class

    nodes = load_nodes(args.target, args.more)
    wf = backend_class("local")(*nodes, workflow_name=args.workflow_name, resume=args.resume)
    wf.set_storage(_storage(args.storage)).set_rerun(args.rerun)
    entries = wf.plan()
    width = max(len(e.name) for e in entries)
    for entry in entries:
        print(f"{entry.name:<{width}}  {entry.fate:<9}  {entry.reason}")
    fates = [e.fate for e in entries]
    print(", ".join(f"{fate} {fates.count(fate)}" for fate in ("compute", "read back", "recompute", "stored")))
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    from .manager import get_plugin_manager

    pm = get_plugin_manager(tuple(args.plugin or ()), tuple(args.disable or ()))
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        dist = dists.get(id(plugin))
        where = f"{dist.project_name} {dist.version}" if dist is not None else "functionfuse (built-in)"
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or ())
        rows.append((name, where, ", ".join(hooks)))
    width = max(len(r[0]) for r in rows)
    dwidth = max(len(r[1]) for r in rows)
    for name, where, hooks in rows:
        print(f"{name:<{width}}  {where:<{dwidth}}  {hooks}")
    blocked = [name for name, plugin in pm.list_name_plugin() if plugin is None]
    for name in blocked:
        print(f"{name:<{width}}  (blocked)")
    return 0


def _existing_storage(text: str) -> Any:
    """The storage named on the command line; a storage that does not exist is a one-line error."""
    storage = _storage(text)
    exists = getattr(storage, "storage_exists", None)
    if exists is not None and not exists():
        raise UsageError(f"storage {text!r} does not exist")
    return storage


def _existing_workflow(storage: Any, text: str, workflow: str) -> None:
    exists = getattr(storage, "workflow_exists", None)
    if exists is not None and not exists(workflow):
        known = storage.list_workflows()
        hint = f"; it has: {', '.join(known[:20])}" if known else "; it has none"
        raise UsageError(f"storage {text!r} has no workflow {workflow!r}{hint}")


def _cmd_ls(args: argparse.Namespace) -> int:
    storage = _existing_storage(args.storage)
    if args.workflow:
        _existing_workflow(storage, args.storage, args.workflow)
        names = storage.list_tasks(args.workflow, args.pattern)
    else:
        names = storage.list_workflows()
    for name in names:
        print(name)
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    storage = _existing_storage(args.storage)
    _existing_workflow(storage, args.storage, args.workflow)
    value = storage.read_task(args.workflow, args.task)
    print(repr(value))
    return 0


def _cmd_rm(args: argparse.Namespace) -> int:
    storage = _existing_storage(args.storage)
    _existing_workflow(storage, args.storage, args.workflow)
    if args.pattern is None:
        storage.remove_workflow(args.workflow)
        print(f"removed workflow {args.workflow!r}")
    else:
        removed = storage.remove_task(args.workflow, pattern=args.pattern)
        if not removed:
            raise UsageError(f"no stored task of workflow {args.workflow!r} matches {args.pattern!r}")
        print(f"removed {len(removed)} task(s) of {args.workflow!r}: {', '.join(removed)}")
    return 0


SHOW_HELP = """\
print a stored result (repr of the value).

Stored results are pickles: reading one runs whatever code its writer chose.
Show only results from storage you trust (your own, or a colleague's you would
run code from), never one from an unknown source."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="functionfuse", description="Run and inspect functionfuse workflows.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("run", help="run a workflow defined in a script")
    p.add_argument("target", metavar="SCRIPT.py:VAR", help="script and the variable holding a leaf node")
    p.add_argument("more", nargs="*", metavar="VAR", help="further leaf variables of the same script")
    p.add_argument("--backend", default="local", help="backend name (default: local)")
    p.add_argument("--storage", help="storage folder, fsspec URL, or storage_factory JSON")
    p.add_argument("--workflow-name", default="workflow", help="name results are stored under")
    p.add_argument("--plugin", action="append", metavar="MODULE", help="import MODULE and register it as a plugin")
    p.add_argument("--disable", action="append", metavar="NAME", help="block the plugin NAME")
    p.add_argument("--trace", action="store_true", help="log every hook call (FUNCTIONFUSE_TRACE=1)")
    p.add_argument("--progress", dest="progress", action="store_true", default=None, help="show a progress bar")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="never show a progress bar")
    p.add_argument("--rerun", metavar="PATTERN", help="recompute nodes matching PATTERN (regex) and all downstream")
    p.add_argument("--resume", choices=("fingerprint", "name", "never"), default="fingerprint",
                   help="reuse a stored result only for the same call (default), trust names (unsafe), or never")
    p.set_defaults(handler=_cmd_run)

    p = sub.add_parser("plan", help="show, without running, what a run would compute, read back or recompute, and why")
    p.add_argument("target", metavar="SCRIPT.py:VAR", help="script and the variable holding a leaf node")
    p.add_argument("more", nargs="*", metavar="VAR", help="further leaf variables of the same script")
    p.add_argument("--storage", required=True, help="storage folder, fsspec URL, or storage_factory JSON")
    p.add_argument("--workflow-name", default="workflow", help="name results are stored under")
    p.add_argument("--rerun", metavar="PATTERN", help="as for run")
    p.add_argument("--resume", choices=("fingerprint", "name", "never"), default="fingerprint")
    p.set_defaults(handler=_cmd_plan)

    p = sub.add_parser("plugins", help="list registered plugins and the hooks they implement")
    p.add_argument("--plugin", action="append", metavar="MODULE")
    p.add_argument("--disable", action="append", metavar="NAME")
    p.set_defaults(handler=_cmd_plugins)

    p = sub.add_parser("ls", help="list workflows of a storage, or the stored tasks of a workflow")
    p.add_argument("storage")
    p.add_argument("workflow", nargs="?")
    p.add_argument("--pattern", default="*", help="glob over task names")
    p.set_defaults(handler=_cmd_ls)

    p = sub.add_parser("show", help="print a stored result (a pickle: only from storage you trust)",
                       description=SHOW_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("storage")
    p.add_argument("workflow")
    p.add_argument("task")
    p.set_defaults(handler=_cmd_show)

    p = sub.add_parser("rm", help="remove a workflow's stored results (all, or those matching --pattern)")
    p.add_argument("storage")
    p.add_argument("workflow")
    p.add_argument("--pattern", help="glob over task names; without it the whole workflow is removed")
    p.set_defaults(handler=_cmd_rm)

    from .manager import get_plugins

    get_plugins().cli_commands(sub)  # subcommands of plugins (graph, history, raydag's resume, ...)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``functionfuse`` command; returns the exit status."""
    try:
        parser = build_parser()  # builds the plugin manager: a broken plugin fails here
    except FunctionFuseError as exc:
        if "--debug" in (sys.argv[1:] if argv is None else argv):
            raise
        print(f"functionfuse: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (FunctionFuseError, FileNotFoundError, PermissionError) as exc:
        if args.debug:
            raise
        print(f"functionfuse: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("functionfuse: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
