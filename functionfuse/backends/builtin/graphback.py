"""``from functionfuse.backends.builtin.graphback import GraphWorkflow`` (the ``graph`` backend)."""

from .. import registered_attribute

__getattr__ = registered_attribute("backend", "graph", "GraphWorkflow")
