"""functionfuse addon: compile a workflow to Kubeflow Pipelines 2 (``backend="kfp"``).

The backend class lives in :mod:`functionfuse_kfp.backend`, imported only
when the backend is used; :mod:`functionfuse_kfp.plugin` is the entry point.
"""

__version__ = "0.1.0"
