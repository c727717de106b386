"""Errors of the raydag addon (here because a third-party distribution cannot add to ``functionfuse/errors.py``)."""

from __future__ import annotations

from functionfuse.errors import FunctionFuseError


class WorkflowNotFoundError(FunctionFuseError, KeyError):
    """No raydag workflow of that name was ever run against the storage."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0])


class WorkflowNotFinishedError(FunctionFuseError):
    """The output of a workflow was asked for before it finished successfully."""


class WorkflowRunningError(FunctionFuseError):
    """The workflow is being run by another live driver, so it cannot be run or resumed now."""
