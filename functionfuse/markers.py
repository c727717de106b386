"""The pluggy markers of the ``functionfuse`` project, in a module of their own."""

import pluggy

PROJECT = "functionfuse"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


def builtin(function):
    """Mark a hook implementation as the built-in behaviour that backends may inline.

    When every implementation of a per-node hook is marked so (and tracing is
    off), the core calls the behaviour directly instead of going through pluggy.
    """
    function.ff_builtin = True
    return function
