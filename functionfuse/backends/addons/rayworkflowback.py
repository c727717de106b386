"""``from functionfuse.backends.addons.rayworkflowback import RayWorkflow`` (addon ``functionfuse-raydag``)."""

from .. import ADDON_BACKENDS, registered_attribute

__getattr__ = registered_attribute("backend", "raydag", "RayWorkflow", ADDON_BACKENDS["raydag"])
