"""``from functionfuse.backends.addons.rayworkflowback import RayWorkflow`` (addon ``functionfuse-raydag``)."""

from .. import registered_attribute

__getattr__ = registered_attribute("backend", "raydag", "RayWorkflow", "pip install ./contrib/raydag")
