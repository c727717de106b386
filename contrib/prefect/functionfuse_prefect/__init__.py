"""functionfuse addon: run a workflow as a Prefect 3 flow (``backend="prefect"``).

The backend class lives in :mod:`functionfuse_prefect.backend`, imported only
when the backend is used; :mod:`functionfuse_prefect.plugin` is the entry point.
"""

__version__ = "0.1.0"
