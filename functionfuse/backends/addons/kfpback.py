"""``from functionfuse.backends.addons.kfpback import KFPWorkflow`` (addon ``functionfuse-kfp``)."""

from .. import ADDON_BACKENDS, registered_attribute

__getattr__ = registered_attribute("backend", "kfp", "KFPWorkflow", ADDON_BACKENDS["kfp"])
