"""Every ``python`` block of docs/ and of the READMEs runs in a test, in page order, or is marked not run.

``RUNNERS`` says which test runs which page; each runs the page with
:func:`doc_examples.run_blocks` (every block not marked not-run, in order, in one
namespace, checking what each ``# value`` comment claims). A block that cannot run
here is marked in the page by ``<!-- not run: REASON -->`` right before it.
"""

from __future__ import annotations

import ast
import atexit
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path

import pytest
from doc_examples import ROOT, Block, claim_of, page_blocks, run_blocks

from functionfuse.manager import get_plugins

# Prefect reads its settings when it is imported: a private home and its ephemeral API server.
if "prefect" not in sys.modules:
    os.environ["PREFECT_HOME"] = _PREFECT_HOME = tempfile.mkdtemp(prefix="ff-prefect-home-")
    atexit.register(shutil.rmtree, _PREFECT_HOME, True)
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.pop("PREFECT_API_URL", None)

#: page -> the test that runs its python blocks
RUNNERS = {
    "README.md": "tests/test_core_docs.py::test_examples_run",
    "docs/quickstart.md": "tests/test_core_docs.py::test_examples_run",
    "docs/graph.md": "tests/test_graph.py::test_examples_of_docs_graph_md_run_as_written",
    "docs/storage.md": "tests/test_daskarray.py::test_storage_docs_examples_run",
    "docs/backends-ray.md": "tests/test_ray_backend.py::test_docs_backends_ray_md_runs_as_written",
    "docs/backends-dask.md": "tests/test_dask_backend.py::test_docs_backends_dask_md_runs_as_written",
    "docs/backend-development.md": "tests/test_backend_development.py::test_the_page_examples_run_in_order",
    "docs/CONTRIBUTING-core.md": "tests/test_docs_examples.py::test_contributing_core_md",
    "docs/backends.md": "tests/test_docs_examples.py::test_backends_md",
    "docs/plugins.md": "tests/test_docs_examples.py::test_plugins_md",
    "docs/hooks.md": "tests/test_docs_examples.py::test_hooks_md",
    "docs/backends-addons.md": "tests/test_docs_examples.py::test_backends_addons_md",
    "docs/concepts.md": "tests/test_resume_fingerprint.py::test_docs_concepts_md_runs_as_written",
    "contrib/kfp/README.md": "tests/test_contrib_kfp.py::test_readme_example_runs",
    "contrib/prefect/README.md": "tests/test_contrib_prefect.py::test_readme_example_runs_as_written",
    "contrib/raydag/README.md": "tests/test_contrib_raydag.py::test_readme_example_runs",
}

#: runners that do not call run_blocks, and how they still run every block in order
OWN_WAY = {
    "docs/backend-development.md": "block 1 is the file tests/plugins/ff_threadpool/ff_threadpool/__init__.py "
    "(test_the_page_shows_the_distribution_code_in_full_within_60_lines); the test runs blocks[1:] in order",
}

MAX_NOT_RUN = 6


def documented_pages() -> list[str]:
    pages = [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "docs").glob("*.md"))]
    pages += [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "contrib").glob("*/README.md"))]
    return ["README.md", *pages]


def all_blocks() -> list[Block]:
    return [block for page in documented_pages() for block in page_blocks(page)]


# ---------------------------------------------------------------------------
# the convention
# ---------------------------------------------------------------------------


def test_every_page_with_a_block_to_run_has_a_test_that_runs_it():
    unrun = [page for page in documented_pages()
             if any(b.not_run is None for b in page_blocks(page)) and page not in RUNNERS]
    assert unrun == [], f"python blocks that no test runs, and not marked <!-- not run: ... -->: {unrun}"
    for page, runner in RUNNERS.items():
        assert page in documented_pages(), f"RUNNERS names {page}, which is not a documented page"
        path, name = runner.split("::")
        source = (ROOT / path).read_text()
        function = next((node for node in ast.walk(ast.parse(source))
                         if isinstance(node, ast.FunctionDef) and node.name == name), None)
        assert function is not None, f"{runner} (the runner of {page}) does not exist"
        body = ast.get_source_segment(source, function)
        # the page is named by the test (or, parametrized, by its module)
        assert page in source or Path(page).name in body, f"{runner} does not name {page}"
        if page in OWN_WAY:
            continue
        assert "run_blocks(" in body, f"{runner} must run {page} with doc_examples.run_blocks (every block, in order)"


def test_at_most_six_blocks_are_not_run_and_each_says_why():
    not_run = [b for b in all_blocks() if b.not_run is not None]
    assert all(b.not_run for b in not_run), "a <!-- not run: --> marker without a reason"
    assert len(not_run) <= MAX_NOT_RUN, [(b.page, b.line, b.not_run) for b in not_run]


def test_a_not_run_marker_is_right_before_a_python_block():
    for page in documented_pages():
        text = (ROOT / page).read_text()
        markers = text.count("<!-- not run:")
        assert markers == sum(b.not_run is not None for b in page_blocks(page)), (
            f"{page}: a <!-- not run: ... --> marker that is not right before a ```python block"
        )


def write_page(tmp_path, text) -> str:
    page = tmp_path / "page.md"
    page.write_text(text)
    return str(page)


def test_a_wrong_claim_fails_and_a_marked_block_is_skipped(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    good = write_page(tmp_path, "```python\nx = 1 + 1  # 2\nx  # 2\nprint([x])  # [2]\n```\n"
                                "<!-- not run: needs a real cluster -->\n```python\nraise SystemExit\n```\n")
    namespace: dict = {}
    assert run_blocks(good, namespace) == ["x = 1 + 1  # 2\nx  # 2\nprint([x])  # [2]\n"]
    assert capsys.readouterr().out == "[2]\n"
    for wrong in ("x = 1 + 1  # 3\n", "1 + 1  # 3; a wrong claim\n", "print(2)  # 3\n",
                  "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    print(e)  # division by ...one\n"):
        with pytest.raises(AssertionError, match="says"):
            run_blocks(write_page(tmp_path, f"```python\n{wrong}```\n"), {})
    # claims in functions are not checked when the block defines them; prose comments claim nothing
    run_blocks(write_page(tmp_path, "```python\ndef f():\n    print(1)  # 2\n\nf()  # run it\n```\n"), {})
    assert claim_of("5, read back") == (True, 5) and claim_of("here, with a runner: 6") == (False, None)


# ---------------------------------------------------------------------------
# the pages no other test runs
# ---------------------------------------------------------------------------


def test_contributing_core_md(tmp_path, monkeypatch):
    import plugins_builtin.rayback

    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_contributing_core"}
    run_blocks("docs/CONTRIBUTING-core.md", namespace)
    # the page's example is how the built-in Ray plugin registers its backend
    shown, builtin = [], []
    namespace["ff_backends"](lambda *args, **kwargs: shown.append((args, kwargs)))
    plugins_builtin.rayback.ff_backends(lambda *args, **kwargs: builtin.append((args, kwargs)))
    assert shown == builtin


def test_backends_md(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_backends"}
    run_blocks("docs/backends.md", namespace)
    assert capsys.readouterr().out.splitlines()[:2] == ["model is next", "38"]
    leaf = namespace["leaf"]
    assert namespace["ray_wf"].attrs(leaf)["remote_args"] == {"num_cpus": 1, "resources": {"_model": 1}}
    assert [namespace["prefect_wf"].attrs(n).get("task_args") for n in namespace["prefect_wf"].nodes] == [
        {"retries": 3}, None]
    # the table: each class is importable by its documented path and is the backend of that name
    rows = [line.split("|")[1:3] for line in (ROOT / "docs/backends.md").read_text().splitlines()
            if line.startswith("| `")]
    assert len(rows) >= 6
    backends = get_plugins().backends()
    for name, path in rows:
        name, path = name.strip().strip("`"), path.strip().strip("`")
        module, _, attr = path.rpartition(".")
        cls = getattr(__import__(module, fromlist=[attr]), attr)
        assert cls.backend_name == name and name in backends, (path, cls.backend_name)


def test_plugins_md(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_counter", raising=False)
    namespace: dict = {"__name__": "docs_plugins"}
    try:
        run_blocks("docs/plugins.md", namespace)
    finally:
        module = sys.modules.pop("my_counter", None)
    assert module is not None and module.__file__ == str(tmp_path / "my_counter" / "__init__.py")
    assert capsys.readouterr().out.splitlines() == ["[('workflow', 'first'), ('workflow', 'second')]", "2"]
    # the contributed registrations of the last block reach the plugin host
    contributed = types.ModuleType("contributed")
    for hook in ("ff_backends", "ff_storage_kinds", "ff_serializers"):
        setattr(contributed, hook, namespace[hook])
    host = get_plugins([contributed])
    assert "mine" in host.backends() and "mykind" in host.storage_kinds() and "myformat" in host.serializers()


def test_hooks_md(tmp_path, monkeypatch):
    from functionfuse.fingerprint import value_fingerprint

    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_hooks"}
    run_blocks("docs/hooks.md", namespace)
    assert "mybackend" in get_plugins([types.SimpleNamespace(ff_backends=namespace["ff_backends"])]).backends()
    # the fingerprint plugin: equal exactly when two datasets mean the same input
    dataset, hook = namespace["Dataset"], namespace["ff_fingerprint"]
    first, same, newer = dataset("data.csv", 2), dataset("data.csv", 2), dataset("data.csv", 3)
    same.loaded = list(range(100))
    assert value_fingerprint(first, hook) == value_fingerprint(same, hook) != value_fingerprint(newer, hook)
    assert value_fingerprint(first) != value_fingerprint(same)  # without it: by what pickle would save


def test_backends_addons_md(tmp_path, monkeypatch):
    from ray_fixtures import start_local_cluster, stop_local_cluster

    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_backends_addons"}  # not importable: Ray pickles its functions by value
    ray, temp_dir = start_local_cluster(__name__)
    try:
        run_blocks("docs/backends-addons.md", namespace, {"file:/data/ff": f"file:{tmp_path / 'ff'}"})
    finally:
        stop_local_cluster(ray, temp_dir)
        from prefect.logging.handlers import APILogHandler
        from prefect.server.api.server import SubprocessASGIServer

        APILogHandler().flush()  # the pending run logs, while Prefect's ephemeral server is still up
        SubprocessASGIServer().stop()
    assert namespace["flow"].name == "operations"
    assert sorted(p.name for p in (tmp_path / "storage" / "operations").glob("*.ffr")) == [
        "node1.ffr", "node2.ffr", "node3.ffr"]
    assert sorted(p.name for p in (tmp_path / "ff" / "ops").glob("*.ffr")) == ["node1.ffr", "node2.ffr", "node3.ffr"]
    assert (tmp_path / "operations.yaml").exists()
    skipped = [b for b in page_blocks("docs/backends-addons.md") if b.not_run]
    assert [b.code.count("kfp_host=") for b in skipped] == [1]
