"""The package layout's promises: imports point one way, and no module of a package imports in a loop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("indexer", "search", "classify", "pixdex")
# what each library package may import from the project (pixdex composes them all)
ALLOWED = {"indexer": set(), "search": {"indexer"}, "classify": {"indexer"},
           "pixdex": {"indexer", "search", "classify"}}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_imports(path: Path) -> set[str]:
    """Every project module a file imports, at top level or inside a function (resolved relative imports)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] in PACKAGES}


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_downward(package):
    wrong = []
    for name, path in all_modules().items():
        if name.split(".")[0] != package:
            continue
        for target in project_imports(path):
            top = target.split(".")[0]
            if top != package and top not in ALLOWED[package]:
                wrong.append(f"{name} imports {target}")
    assert not wrong, (f"{package} may import only {sorted(ALLOWED[package]) or 'nothing of the project'}: "
                       f"{wrong}")



def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop in graph (module -> modules it imports), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (loop := visit(nxt)):
                return loop
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (loop := visit(node)):
            return loop
    return None


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_loops_within_a_package(package):
    """Imports inside functions count too: a loop hidden in a function is still a loop."""
    modules = {n: p for n, p in all_modules().items() if n.split(".")[0] == package}
    graph = {n: {t for t in project_imports(p) if t in modules and t != n} for n, p in modules.items()}
    for n in graph:  # `from package import module` names the module, `import package.x` its parents too
        graph[n] = {t for t in graph[n] if t != package or n == package}
    assert find_cycle(graph) is None, f"import loop: {' -> '.join(find_cycle(graph))}"


def test_the_loop_finder_finds_loops():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
