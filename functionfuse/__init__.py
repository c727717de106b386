"""functionfuse: write a workflow once as plain functions, run it on any backend.

>>> from functionfuse import workflow
>>> @workflow
... def add(a, b):
...     return a + b
>>> from functionfuse.backends.builtin.localback import LocalWorkflow
>>> LocalWorkflow(add(add(1, 1).set_name("node1"), 1).set_name("node2"), workflow_name="ops").run()
3
"""

from .api import backend_class, run
from .errors import FunctionFuseError
from .frontend import NoFingerprint, Node, Ref, task, workflow
from .markers import hookimpl, hookspec

__all__ = [
    "workflow", "task", "run", "backend_class", "hookimpl", "hookspec", "Node", "Ref", "NoFingerprint",
    "FunctionFuseError",
]
__version__ = "0.1.0"
