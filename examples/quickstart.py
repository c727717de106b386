"""The quick start: three nodes, results saved to disk, a second run reads them back.

Run it twice::

    python examples/quickstart.py            # computes node1, node2, node3
    python examples/quickstart.py            # reads all three back

or through the command line: ``functionfuse run examples/quickstart.py:result_of_mult --storage storage``.
"""

import sys

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.storage import storage_factory

computed = []


@workflow
def sum(a, b):
    computed.append("sum")
    return a + b


@workflow
def multiply(a, b):
    computed.append("multiply")
    return a * b


a, b = 1, 1

a_plus_b = sum(a, b).set_name("node1")
a_plus_two_b = sum(a_plus_b, b).set_name("node2")
result_of_mult = multiply(a_plus_b, a_plus_two_b).set_name("node3")


if __name__ == "__main__":
    storage_path = sys.argv[1] if len(sys.argv) > 1 else "storage"
    local_workflow = LocalWorkflow(result_of_mult, workflow_name="operations")
    opt = {"kind": "file", "options": {"path": storage_path}}
    storage = storage_factory(opt)
    local_workflow.set_storage(storage)
    for entry in local_workflow.plan():  # what the run will do, and why, before it runs
        print(f"{entry.name}: {entry.fate} ({entry.reason})")
    result = local_workflow.run()
    print(f"result: {result}")
    print("run:", local_workflow.run_record["summary"])
    print("stored:", storage.list_tasks(workflow_name="operations", pattern="*"))
    print("node2 =", storage.read_task(workflow_name="operations", task_name="node2"))
