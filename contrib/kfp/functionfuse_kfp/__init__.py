"""functionfuse addon: compile a workflow to Kubeflow Pipelines 2 (``backend="kfp"``); see the README."""

__version__ = "0.1.0"
