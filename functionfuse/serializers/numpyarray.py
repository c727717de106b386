"""``from functionfuse.serializers.numpyarray import NumpyArraySerializer`` (large NumPy arrays to .npy)."""

from ..backends import registered_attribute

__getattr__ = registered_attribute("serializer", "numpy", "NumpyArraySerializer")
