"""The Python examples of README.md and docs/quickstart.md run as written."""

from pathlib import Path

import pytest
from doc_examples import run_blocks

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("doc", ["README.md", "docs/quickstart.md"])
def test_examples_run(doc, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    run_blocks(doc, namespace)  # every block, in order, each "# 6" claim checked
    if doc == "README.md":
        assert capsys.readouterr().out.strip() == "6"
        # run again: every node read back
        second: dict = {}
        run_blocks(doc, second)
        assert capsys.readouterr().out.strip() == "6"
        assert second["local_workflow"].run_record["counts"] == {"computed": 0, "stored": 3, "failed": 0,
                                                                 "not reached": 0}
