"""The plugins shipped with functionfuse and registered in every run.

Each module is one plugin; :data:`DEFAULT_PLUGINS` is the list the plugin
manager loads (block one with ``disable=["plugins_builtin.NAME"]``).
"""

DEFAULT_PLUGINS: tuple[str, ...] = (
    "plugins_builtin.core",
    "plugins_builtin.nodeplugins",
    "plugins_builtin.fsstorage",
    "plugins_builtin.daskarray",
    "plugins_builtin.numpyarray",
    "plugins_builtin.localback",
    "plugins_builtin.rayback",
    "plugins_builtin.raystorage",
    "plugins_builtin.graphback",
)
