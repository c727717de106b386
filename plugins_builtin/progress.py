"""A progress bar for runs: nodes done / total, results read back from storage, failures.

>>> LocalWorkflow(leaf, workflow_name="ops", progress=True).run()  # doctest: +SKIP
>>> functionfuse.run(leaf, progress=True)  # doctest: +SKIP

It draws with ``rich`` on stderr, and only when stderr is a terminal (or a
notebook): piped or captured output stays clean. It uses driver-side hooks
only (``ff_after_node``, ``ff_node_restored``, ``ff_node_error`` and the run
hooks), so it works the same for local and distributed backends. Per-run
state lives in ``context.state``, so one instance can serve many runs.
"""

from __future__ import annotations

from typing import Any

from functionfuse.errors import MissingExtraError
from functionfuse.markers import hookimpl

__all__ = ["ProgressPlugin", "as_progress_plugin"]

_STATE_KEY = "progress"


class ProgressPlugin:
    """Show a rich progress bar while a workflow runs.

    :param console: the ``rich.console.Console`` to draw on; default: a new one on stderr for each run.
    :param force: draw even when the console is not a terminal (default: only on a terminal or in Jupyter).
    :param transient: remove the bar when the run ends (default: leave the final state on screen).
    """

    def __init__(self, console: Any = None, force: bool = False, transient: bool = False):
        self.console = console
        self.force = force
        self.transient = transient

    # -- hooks ------------------------------------------------------------------
    @hookimpl
    def ff_before_run(self, context: Any) -> None:
        try:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        except ImportError as exc:
            raise MissingExtraError(
                'the progress bar needs the package "rich": run pip install "functionfuse[graph]"'
            ) from exc
        console = self.console if self.console is not None else Console(stderr=True)
        if not (self.force or console.is_terminal or console.is_jupyter):
            return  # silent when nobody watches: logs and captured output get no control codes
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("nodes  {task.fields[restored]} read back  {task.fields[failed]} failed"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[last]}", style="dim"),
            console=console,
            transient=self.transient,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        task = progress.add_task(context.workflow_name, total=len(context.order), restored=0, failed=0, last="")
        context.state[_STATE_KEY] = {"progress": progress, "task": task, "restored": 0, "failed": 0}
        progress.start()

    @hookimpl
    def ff_after_node(self, node: Any, context: Any) -> None:
        state = context.state.get(_STATE_KEY)
        if state is not None:
            state["progress"].update(state["task"], advance=1, last=node.name)

    @hookimpl
    def ff_node_restored(self, node: Any, context: Any) -> None:
        state = context.state.get(_STATE_KEY)
        if state is not None:
            state["restored"] += 1
            state["progress"].update(state["task"], advance=1, restored=state["restored"])

    @hookimpl
    def ff_node_error(self, node: Any, context: Any) -> None:
        state = context.state.get(_STATE_KEY)
        if state is not None:
            state["failed"] += 1
            state["progress"].update(state["task"], failed=state["failed"], last=f"{node.name} failed")

    @hookimpl
    def ff_after_run(self, context: Any, error: BaseException | None) -> None:
        state = context.state.pop(_STATE_KEY, None)
        if state is None:
            return
        progress = state["progress"]
        if error is not None and not state["failed"]:
            progress.update(state["task"], last=f"stopped: {type(error).__name__}")
        elif error is None:
            progress.update(state["task"], last="done")
        progress.stop()
        record = context.state.get("runrecord")
        summary = record.get("summary") if isinstance(record, dict) else None
        if error is None and summary and record.get("recomputed"):
            progress.console.print(summary)  # which nodes were computed again, and why

    def __repr__(self) -> str:
        return f"<ProgressPlugin force={self.force}>"


# One shared instance for ``progress=True``: the plugin manager cache then keeps one manager for it.
_DEFAULT = ProgressPlugin()
#: the plugin of ``progress=True``, by name: ``plugins_builtin.progress:DEFAULT_PROGRESS``
DEFAULT_PROGRESS = _DEFAULT


def as_progress_plugin(progress: Any) -> Any:
    """The plugin for a workflow's ``progress=`` argument: ``True`` gives the shared default instance."""
    if progress is True:
        return _DEFAULT
    if isinstance(progress, ProgressPlugin) or hasattr(progress, "ff_before_run"):
        return progress
    from functionfuse.errors import InvalidOptionError

    raise InvalidOptionError(f"progress must be True, False or a ProgressPlugin, got {progress!r:.60}")
