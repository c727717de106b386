"""The plugins shipped with functionfuse and registered in every run.

Each module is one plugin; :data:`functionfuse.manager.DEFAULT_PLUGINS` lists
them by module name (block one with ``disable=["plugins_builtin.NAME"]``).
"""

from functionfuse.manager import DEFAULT_PLUGINS

__all__ = ["DEFAULT_PLUGINS"]
