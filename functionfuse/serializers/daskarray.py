"""``from functionfuse.serializers.daskarray import DaskArraySerializer`` (Dask arrays to zarr)."""

from ..backends import registered_attribute

__getattr__ = registered_attribute("serializer", "daskarray", "DaskArraySerializer")
