"""Errors of the kfp addon (here because a third-party distribution cannot add to ``functionfuse/errors.py``)."""

from __future__ import annotations

from functionfuse.errors import FunctionFuseError


class KFPConnectionError(FunctionFuseError, ConnectionError):
    """The Kubeflow Pipelines server named by ``kfp_host`` could not be reached, or refused the run."""


class KFPCompileError(FunctionFuseError):
    """The workflow could not be turned into a KFP pipeline (a node that cannot be pickled, a bad path, ...)."""
