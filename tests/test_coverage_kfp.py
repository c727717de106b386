"""The kfp addon: what a component reports when the node's exception cannot travel back by pickle."""

import pytest

from functionfuse import workflow
from functionfuse.errors import NodeExecutionError


class TwoPartError(Exception):
    """Pickles (its args are the message), but does not unpickle: __init__ wants two arguments."""

    def __init__(self, part, other):
        super().__init__(f"{part}/{other}")


@workflow
def raise_two_part(x):
    raise TwoPartError(x, "second")


def test_an_exception_that_does_not_unpickle_comes_back_as_its_text_naming_the_node(tmp_path):
    from functionfuse.backends.addons.kfpback import KFPWorkflow

    leaf = raise_two_part(7).set_name("two_part")
    wf = KFPWorkflow(leaf, workflow_name="unpicklable-error").set_storage(str(tmp_path / "storage"))
    with pytest.raises(NodeExecutionError, match=r"node 'two_part' of workflow 'unpicklable-error' failed") as info:
        wf.run()
    cause = info.value.__cause__
    assert type(cause) is RuntimeError
    assert str(cause) == "TwoPartError: 7/second"
    assert wf.storage.list_tasks("unpicklable-error") == []
