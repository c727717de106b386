"""``from functionfuse.backends.addons.prefectback import PrefectWorkflow`` (addon ``functionfuse-prefect``)."""

from .. import ADDON_BACKENDS, registered_attribute

__getattr__ = registered_attribute("backend", "prefect", "PrefectWorkflow", ADDON_BACKENDS["prefect"])
