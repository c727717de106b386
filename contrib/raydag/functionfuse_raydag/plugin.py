"""Entry point of the ``raydag`` backend (imports without Ray) and its ``status`` and ``resume`` subcommands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from functionfuse.errors import InvalidOptionError
from functionfuse.markers import hookimpl


@hookimpl
def ff_backends(register: Callable[..., None]) -> None:
    register("raydag", "functionfuse_raydag.backend:RayWorkflow")


@hookimpl
def ff_query_assign(nodes: list, key: str, value: Any, backend: Any) -> bool | None:
    # Ray itself names a bad option only when a task is submitted; the type is checked here, at query time.
    if key != "remote_args" or getattr(backend, "backend_name", None) != "raydag":
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        names = ", ".join(repr(n.name) for n in nodes[:3])
        raise InvalidOptionError(
            f"raydag: remote_args for nodes {names} must be a dict of ray.remote options "
            f"(e.g. {{'num_cpus': 1}}), got {type(value).__name__} {value!r:.60}"
        )
    return True


def _cmd_status(args: Any) -> int:
    from . import records

    storage = records.resolve_storage(args.storage)
    if args.workflow is None:
        for name, status in records.list_all(storage, args.status):
            print(f"{name}  {status}")
        return 0
    record = records.get_metadata(args.workflow, storage)
    print(record["status"] + (f"  {record['error']}" if record.get("error") else ""))
    return 0


def _cmd_resume(args: Any) -> int:
    from . import backend, records

    ray_init_args = {"address": args.address} if args.address else None
    storage = records.resolve_storage(args.storage)
    if args.all:
        done = backend.resume_all(storage, include_failed=args.include_failed, ray_init_args=ray_init_args)
    elif args.workflow:
        done = [(args.workflow, backend.resume(args.workflow, storage, ray_init_args))]
    else:
        raise InvalidOptionError("functionfuse resume: give a WORKFLOW, or --all")
    for name, value in done:
        print(f"{name}: {value!r}")
    return 0


@hookimpl
def ff_cli_commands(subparsers: Any) -> None:
    storage_help = "storage folder or URL (default: $FUNCTIONFUSE_RAYDAG_STORAGE or ~/.functionfuse/raydag)"
    p = subparsers.add_parser("status", help="raydag: the status of a workflow, or of every raydag workflow")
    p.add_argument("workflow", nargs="?", help="workflow name; without it, list every raydag workflow")
    p.add_argument("--storage", help=storage_help)
    p.add_argument("--status", action="append", metavar="STATUS", help="list only workflows with this status")
    p.set_defaults(handler=_cmd_status)
    p = subparsers.add_parser("resume", help="raydag: finish a workflow from its stored plan, without its script")
    p.add_argument("workflow", nargs="?", help="workflow name")
    p.add_argument("--storage", help=storage_help)
    p.add_argument("--all", action="store_true", help="resume every RESUMABLE workflow")
    p.add_argument("--include-failed", action="store_true", help="with --all: FAILED workflows too")
    p.add_argument("--address", help="Ray cluster to join (ray.init(address=...)), e.g. auto")
    p.set_defaults(handler=_cmd_resume)
