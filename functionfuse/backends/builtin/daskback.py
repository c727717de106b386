"""``from functionfuse.backends.builtin.daskback import DaskWorkflow`` (the ``dask`` backend)."""

from .. import registered_attribute

__getattr__ = registered_attribute("backend", "dask", "DaskWorkflow")
