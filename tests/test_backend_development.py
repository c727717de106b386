"""docs/backend-development.md: the third-party thread-pool backend is the page's code and runs as shown."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from functionfuse import hookimpl, workflow
from functionfuse.errors import NodeExecutionError

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "backend-development.md"
SOURCE = ROOT / "tests" / "plugins" / "ff_threadpool" / "ff_threadpool" / "__init__.py"


def blocks():
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.DOTALL)


def test_the_page_shows_the_distribution_code_in_full_within_60_lines():
    code = SOURCE.read_text()
    assert blocks()[0] == code
    assert len(code.splitlines()) <= 60


def test_the_page_examples_run_in_order(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "backend_development_page"}
    for block in blocks()[1:]:
        exec(compile(block, str(PAGE), "exec"), namespace)  # noqa: S102 - the page's own code
    assert capsys.readouterr().out.split() == ["5", "5"]
    assert sorted(p.name for p in (tmp_path / "storage" / "pool").iterdir() if not p.name.startswith(".")) == [
        "node1.ffr", "pair.ffr", "total.ffr"
    ]


@workflow
def where(_):
    return threading.current_thread().name


@workflow
def fails(x):
    raise ValueError(f"no {x}")


@workflow
class Counter:
    def __init__(self, start):
        self.total = start

    def add(self, n):
        self.total += n
        return self.total


def test_the_thread_pool_backend_runs_stateful_calls_in_order_on_pool_threads():
    import functionfuse

    counter = Counter(0).set_name("counter")
    calls = [counter.add(i).set_name(f"add{i}") for i in range(1, 8)]
    assert functionfuse.run(*calls, backend="threadpool") == [1, 3, 6, 10, 15, 21, 28]
    names = functionfuse.run(*[where(i) for i in range(6)], backend="threadpool", max_workers=3)
    assert all(name.startswith("ThreadPoolExecutor") for name in names)


def test_the_thread_pool_backend_names_the_failed_node_and_fires_hooks():
    import functionfuse

    seen = []

    class Watch:
        @hookimpl
        def ff_node_error(self, node, error):
            seen.append((node.name, type(error).__name__))

    leaf = where(fails(1).set_name("bad")).set_name("after")
    with pytest.raises(NodeExecutionError, match="'bad'"):
        functionfuse.run(leaf, backend="threadpool", plugins=[Watch()])
    assert seen == [("bad", "ValueError")]
