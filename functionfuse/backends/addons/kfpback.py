"""``from functionfuse.backends.addons.kfpback import KFPWorkflow`` (addon ``functionfuse-kfp``)."""

from .. import registered_attribute

__getattr__ = registered_attribute("backend", "kfp", "KFPWorkflow", "pip install ./contrib/kfp")
