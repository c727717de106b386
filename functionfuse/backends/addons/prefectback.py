"""``from functionfuse.backends.addons.prefectback import PrefectWorkflow`` (addon ``functionfuse-prefect``)."""

from .. import registered_attribute

__getattr__ = registered_attribute("backend", "prefect", "PrefectWorkflow", "pip install ./contrib/prefect")
