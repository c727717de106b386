"""Node plugins: ``InitializerPlugin``, ``RandomStatePlugin``, ``PluginCollection``."""

from plugins_builtin.nodeplugins import InitializerPlugin, NodePlugin, PluginCollection, RandomStatePlugin

__all__ = ["InitializerPlugin", "RandomStatePlugin", "PluginCollection", "NodePlugin"]
