"""functionfuse addon: run a workflow as a Prefect 3 flow (``backend="prefect"``); see the README."""

__version__ = "0.1.0"
