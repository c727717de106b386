"""The pluggy markers of the ``functionfuse`` project, in a module of their own."""

import pluggy

PROJECT = "functionfuse"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
