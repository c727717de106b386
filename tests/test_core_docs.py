"""The Python examples of README.md and docs/quickstart.md run as written."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.DOTALL)


@pytest.mark.parametrize("doc", ["README.md", "docs/quickstart.md"])
def test_examples_run(doc, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(ROOT / doc)
    assert blocks
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, f"{doc} example", "exec"), namespace)
    if doc == "README.md":
        assert capsys.readouterr().out.strip() == "6"
        # run again: every node read back
        second: dict = {}
        exec(compile(blocks[0], doc, "exec"), second)
        assert capsys.readouterr().out.strip() == "6"
        assert second["local_workflow"].run_record["counts"] == {"computed": 0, "stored": 3, "failed": 0,
                                                                 "not reached": 0}
