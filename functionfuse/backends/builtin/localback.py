"""``from functionfuse.backends.builtin.localback import LocalWorkflow`` (the ``local`` backend)."""

from .. import registered_attribute

__getattr__ = registered_attribute("backend", "local", "LocalWorkflow")
