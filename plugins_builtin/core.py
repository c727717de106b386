"""Built-in behaviour behind the per-node and storage hooks.

Backends inline these when no other plugin implements the hook (see
:mod:`functionfuse.context`), so they are the reference of what a hook does.
"""

from __future__ import annotations

from typing import Any

from functionfuse.markers import builtin, hookimpl


@hookimpl(trylast=True)
@builtin
def ff_execute_node(node: Any, args: tuple, kwargs: dict) -> Any:
    return node.func(*args, **kwargs)


@hookimpl(trylast=True)
@builtin
def ff_storage_save(storage: Any, workflow_name: str, task_name: str, obj: Any, fingerprint: Any,
                    replaces: Any) -> bool:
    if fingerprint is not None:
        storage.save(workflow_name, task_name, obj, fingerprint=fingerprint, replaces=replaces)
    else:
        storage.save(workflow_name, task_name, obj)
    return True


@hookimpl(trylast=True)
@builtin
def ff_storage_read(storage: Any, workflow_name: str, task_name: str) -> Any:
    return storage.read_task(workflow_name, task_name)


@hookimpl(trylast=True)
@builtin
def ff_select_serializer(obj: Any, storage: Any) -> Any:
    for serializer in storage.serializers:
        if serializer.match(obj):
            return serializer
    return None


@hookimpl
def ff_query_assign(key: str, value: Any, backend: Any) -> bool:
    if key == "retries" or key == "timeout" or key == "timeout_kill":
        # Every backend runs nodes through run_node_call, which applies both: accepted everywhere.
        from functionfuse.nodecall import RetryPolicy, check_timeout

        if key == "retries":
            RetryPolicy.of(value)
        elif key == "timeout":
            check_timeout(value)
        elif not isinstance(value, bool):
            from functionfuse.errors import InvalidOptionError

            raise InvalidOptionError(f"set_timeout: kill must be True or False, got {value!r:.60}")
        return True
    if key == "version":
        # a manual version, part of the fingerprint, for what code cannot see (an input file changed)
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            from functionfuse.errors import InvalidOptionError

            raise InvalidOptionError(f"set_version: a version is a string (or an int), got {value!r:.60}")
        return True
    if key == "fingerprint_exclude":
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            from functionfuse.errors import InvalidOptionError

            raise InvalidOptionError(
                f"set_fingerprint_exclude: give a list of argument names, got {value!r:.60}"
            )
        return True
    # Keys a backend declares itself; values are validated by the plugin owning the key.
    return key in getattr(backend, "query_keys", ())
