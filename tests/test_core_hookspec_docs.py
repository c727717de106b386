"""Every hook spec is documented in docs/hooks.md and has a test of its own."""

import inspect
import re
from pathlib import Path

from functionfuse import hookspecs

ROOT = Path(__file__).resolve().parents[1]


def spec_names():
    return sorted(
        name for name, fn in vars(hookspecs).items()
        if name.startswith("ff_") and callable(fn) and hasattr(fn, "functionfuse_spec")
    )


def test_there_are_hook_specs():
    assert len(spec_names()) >= 15


def test_every_hook_spec_is_in_the_docs_with_its_arguments():
    doc = (ROOT / "docs" / "hooks.md").read_text()
    for name in spec_names():
        row = re.search(rf"^\| `{name}` \|([^|]*)\|", doc, re.MULTILINE)
        assert row, f"{name} has no row in docs/hooks.md"
        documented = re.findall(r"`(\w+)`", row.group(1))
        params = list(inspect.signature(getattr(hookspecs, name)).parameters)
        assert documented == params, f"docs/hooks.md lists {documented} for {name}, the spec has {params}"


def test_every_hook_spec_has_a_docstring():
    for name in spec_names():
        assert (getattr(hookspecs, name).__doc__ or "").strip(), name


def test_every_hook_spec_has_a_test_of_its_own():
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    missing = [name for name in spec_names() if f"def test_hook_{name}(" not in tests]
    assert not missing, f"hook specs without a test_hook_<name>: {missing}"
