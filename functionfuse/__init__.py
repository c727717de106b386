"""functionfuse: write a workflow once as plain functions, run it on any backend.

>>> from functionfuse import workflow
>>> @workflow
... def add(a, b):
...     return a + b
>>> from functionfuse.backends.builtin.localback import LocalWorkflow
>>> LocalWorkflow(add(add(1, 1).set_name("node1"), 1).set_name("node2"), workflow_name="ops").run()
3
"""

# The submodule functionfuse.workflow (the Workflow base class) must be loaded before the
# decorator is bound to the name ``workflow``: loading a submodule later would overwrite it.
from . import workflow as _workflow_module  # noqa: F401
from .api import backend_class, run
from .errors import FunctionFuseError
from .frontend import Node, Ref, task, workflow  # noqa: E402  (after the submodule, see above)
from .markers import hookimpl, hookspec

__all__ = ["workflow", "task", "run", "backend_class", "hookimpl", "hookspec", "Node", "Ref", "FunctionFuseError"]
__version__ = "0.1.0"
