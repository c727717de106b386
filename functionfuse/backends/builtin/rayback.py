"""``from functionfuse.backends.builtin.rayback import RayWorkflow`` (the ``ray`` backend)."""

from .. import registered_attribute

__getattr__ = registered_attribute("backend", "ray", "RayWorkflow")
