"""What each function's build script ships covers what its code imports: every third-party module that
shared/ or functions/<cloud>/ imports (lazily too; type-only imports aside) comes from a distribution in
the build's REQUIREMENTS or one they depend on. A module missing there is an ImportError at cold start
in the cloud, which no test with the project's full environment would see."""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import sys

import pytest
from packaging.requirements import Requirement

from conftest import REPO

BUILDS = {"aws": "kubesonar.functions.aws.build", "gcp": "kubesonar.functions.gcp.build",
          "azure": "kubesonar.functions.azure.build"}


def _imports(path) -> set[str]:
    tree = ast.parse(path.read_text())
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
                 for n in ast.walk(node)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("kubesonar", "__future__")}


def _name(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _closure(requirements: list[str]) -> set[str]:
    """The distributions the requirements install, as this environment resolves them (no extras)."""
    seen, todo = set(), [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if _name(req.name) in seen or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(_name(req.name))
        todo += [Requirement(r) for r in metadata.requires(req.name) or []]
    return seen


@pytest.mark.parametrize("cloud", BUILDS)
def test_the_package_holds_every_module_the_function_imports(cloud):
    build = __import__(BUILDS[cloud], fromlist=["REQUIREMENTS"])
    shipped = _closure(build.REQUIREMENTS)
    providers = metadata.packages_distributions()
    code = [*(REPO / "shared").rglob("*.py"), *(p for p in (REPO / "functions" / cloud).glob("*.py") if p.name != "build.py")]
    for module in sorted(set().union(*map(_imports, code))):
        from_ = {_name(d) for d in providers.get(module, [])}
        assert from_ & shipped, f"functions/{cloud}: `import {module}` ({sorted(from_)}) is in no REQUIREMENTS of build.py"
