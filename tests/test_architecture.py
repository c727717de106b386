"""The layout is the architecture: the core imports no built-in plugin, and has no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "functionfuse"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Modules ``path`` imports (absolute names); ``top_level_only``: not inside functions or TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            for alias in node.names:  # from . import x: x may be a submodule
                found.add(f"{module}.{alias.name}")
    return found


def test_the_core_imports_no_built_in_plugin():
    offenders = []
    for path in CORE.rglob("*.py"):
        for module in _imports(path, top_level_only=False):
            if module == "plugins_builtin" or module.startswith("plugins_builtin."):
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not offenders, offenders


def test_the_core_has_no_import_cycle_at_module_level():
    modules = {_module_name(p): p for p in CORE.rglob("*.py")}
    graph = {
        name: {m for m in _imports(path, top_level_only=True) if m in modules and m != name}
        for name, path in modules.items()
    }
    # ``from . import x`` names the package too; the package __init__ only re-exports: no edge to it
    for name in graph:
        graph[name] = {m for m in graph[name] if m != "functionfuse"}
    state: dict = {}
    cycles = []
    for start in graph:
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
                continue
            if state.get(child) == 1:
                cycles.append(path[path.index(child):] + [child])
            elif state.get(child) is None:
                state[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    assert not cycles, cycles


def test_hook_calls_go_through_the_facade():
    offenders = []
    for folder in (CORE, ROOT / "plugins_builtin", ROOT / "contrib"):
        for path in folder.rglob("*.py"):
            if path.name == "manager.py" and path.parent == CORE:
                continue
            text = path.read_text()
            if ".hook.ff_" in text or "pm.__dict__" in text or "_ff_tracing" in text:
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, offenders
