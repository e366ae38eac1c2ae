"""The packages import like a house of floors: no module imports (at load time or lazily) one that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("client", "python_backends")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path, module: str, known: set[str]) -> set[str]:
    """Modules of ours that `module` imports, at load time or lazily in a function (not for type checking)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    checking_only = {id(n) for top in tree.body if isinstance(top, ast.If) and "TYPE_CHECKING" in ast.unparse(top.test)
                     for n in ast.walk(top)}
    load_time = {id(n) for top in tree.body if not isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                    ast.ClassDef)) for n in ast.walk(top)}
    for node in ast.walk(tree):
        if id(node) in checking_only:
            continue
        # A lazy import (in a function) counts across packages: that is how client/cli.py -> cli_gateway -> gateway/app
        # -> gateway/worker -> cli.py closed. Within one package a lazy import is a dispatcher reaching its own
        # kernel module (fp8_attention -> fp8_attention_triton), loaded after both.
        lazy_same_package = id(node) not in load_time
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            # A module's own packages are being loaded already when it imports them: not an edge.
            if lazy_same_package and name.rpartition(".")[0] == package:
                continue
            if name and name != module and not module.startswith(name + "."):
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    files = {(_module_name(p)): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    return {module: _top_level_imports(path, module, set(files)) for module, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_package_imports_itself_back():
    graph = _graph()
    assert "client.gateway.worker" in graph and "client.cli" in graph
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
