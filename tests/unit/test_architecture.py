"""The rule of the house (docs/architecture.md), checked on the source: which folder may import which,
no import cycles between modules, and the lab kept out of the product."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from conftest import REPO

# package of the installed distribution -> folder of the repository
FOLDERS = {"kubesonar.shared": "shared", "kubesonar.sensor": "sensor", "kubesonar.functions": "functions",
           "kubesonar": "kubesonar"}
# what each folder may import of the project (besides itself)
ALLOWED = {"shared": set(), "sensor": {"shared"}, "functions": {"shared"}, "kubesonar": {"shared", "sensor", "functions"}}


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    top, *rest = rel.parts
    package = next(p for p, f in FOLDERS.items() if f == top)
    parts = [package, *rest]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Project modules imported by ``path``, at any depth (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == "kubesonar" or m.startswith("kubesonar.") or m.startswith("lab")}


def _folder(module: str) -> str:
    if module.startswith("lab"):
        return "lab"
    best = max((p for p in FOLDERS if module == p or module.startswith(p + ".")), key=len)
    return FOLDERS[best]


def _sources() -> list[Path]:
    return [p for top in FOLDERS.values() for p in (REPO / top).rglob("*.py") if "__pycache__" not in p.parts]


def test_each_folder_imports_only_what_the_house_allows():
    wrong = []
    for path in _sources():
        mine = path.relative_to(REPO).parts[0]
        for module in _imports(path):
            theirs = _folder(module)
            if theirs != mine and theirs not in ALLOWED[mine]:
                wrong.append(f"{path.relative_to(REPO)} imports {module} ({mine} may not import {theirs})")
    assert not wrong, "\n".join(wrong)
    assert len(_sources()) > 50  # the walk saw the tree


def test_no_adapter_imports_a_sibling_adapter():
    wrong = []
    for path in (REPO / "functions").rglob("*.py"):
        adapter = path.relative_to(REPO / "functions").parts[0]
        for module in _imports(path):
            if module.startswith("kubesonar.functions."):
                other = module.split(".")[2]
                if other != adapter:
                    wrong.append(f"{path.relative_to(REPO)} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles_at_module_level():
    """Top-level imports only (a lazy import inside a function cannot form a load-time cycle)."""
    graph: dict[str, set[str]] = {}
    names = {_module_name(p): p for p in _sources()}
    for name, path in names.items():
        tree = ast.parse(path.read_text())
        edges = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                candidates = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                edges.update(c for c in candidates if c in names and c != name)
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in names)
        graph[name] = edges
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for nxt in graph[node]:
            # a package importing its own submodule is how packages are built, not a cycle
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                cycle.extend(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, path + [nxt]):
                return True
        state[node] = 2
        return False

    for node in graph:
        if state.get(node) is None and visit(node, [node]):
            break
    assert not cycle, " -> ".join(cycle)


def test_the_lab_is_not_packaged():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert not any(p == "lab" or p.startswith("lab.") for p in config["packages"])
    assert "lab" not in config["package-dir"].values()
    assert (REPO / "lab" / "evaluate.py").exists() and not (REPO / "kubesonar" / "evaluate.py").exists()


def test_every_runtime_freezes_what_its_loading_made():
    """Each long-lived runtime ends its loading with shared/frozen_start.py, at module level (once per
    instance), so the collections scoring sets off skip its modules and clients."""
    runtimes = ["functions/aws/handler.py", "functions/gcp/main.py", "functions/azure/runtime.py"]
    for runtime in runtimes:
        tree = ast.parse((REPO / runtime).read_text())
        calls = [node.value.func.id for node in tree.body if isinstance(node, ast.Expr)
                 and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name)]
        assert "freeze_what_loading_made" in calls, runtime
    assert "freeze_what_loading_made()" in (REPO / "kubesonar" / "backend_runner.py").read_text()
