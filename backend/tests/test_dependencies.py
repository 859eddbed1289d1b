"""Every third-party package the code imports is declared in pyproject.toml.

An import that works only because another dependency happens to pull the package in breaks
when that dependency changes its own requirements. Each top-level module imported anywhere
under a directory (``import x.y`` and ``from x.y import z``, function-level and
``TYPE_CHECKING`` imports included; relative imports are the package's own) is mapped to the
distributions that provide it with ``importlib.metadata.packages_distributions()``; one of
them must be declared.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

BACKEND = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((BACKEND / "pyproject.toml").read_text(encoding="utf-8"))["project"]

#: The repository's own top-level modules: its packages, and the scripts that the benchmarks
#: and tests import by putting examples/ or bench/ on sys.path.
LOCAL = {"app", "tests", "bench", "examples"} | {
    path.stem for folder in ("examples", "bench") for path in (BACKEND / folder).glob("*.py")
}


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(requirements: list[str]) -> set[str]:
    """The distribution names of PEP 508 requirement strings."""
    names = set()
    for requirement in requirements:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        assert match, f"cannot read the requirement {requirement!r}"
        names.add(canonical(match.group(1)))
    return names


def imported_modules(folder: Path) -> dict[str, set[str]]:
    """Top-level module name -> files (relative to backend/) under ``folder`` importing it."""
    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.partition(".")[0], set()).add(
                    str(path.relative_to(BACKEND)))
    return found


def undeclared(folder: str, declared: set[str]) -> list[str]:
    """One line per third-party module imported under ``folder`` whose distribution is not
    in ``declared``."""
    providers = packages_distributions()
    problems = []
    for module, files in sorted(imported_modules(BACKEND / folder).items()):
        if module in sys.stdlib_module_names or module in LOCAL:
            continue
        distributions = sorted({canonical(d) for d in providers.get(module, [])})
        where = ", ".join(sorted(files))
        if not distributions:
            problems.append(f"{module} (imported by {where}) is not installed")
        elif not declared & set(distributions):
            problems.append(f"{module} (imported by {where}) comes from "
                            f"{' or '.join(distributions)}, which pyproject.toml does not declare")
    return problems


def test_the_collector_sees_imports_of_every_form():
    found = imported_modules(BACKEND / "app")
    assert "app/main.py" in found["fastapi"]  # from fastapi import ...
    assert "app/llm/prefix_cache.py" in found["diskcache"]  # import diskcache
    assert "app/archive/embeddings.py" in found["transformers"]  # a function-level import
    assert "app/cli.py" in found["pydantic"]  # under TYPE_CHECKING


def test_app_imports_only_declared_dependencies():
    declared = requirement_names(PROJECT["dependencies"])
    assert undeclared("app", declared) == []


@pytest.mark.parametrize("folder", ["tests", "bench", "examples"])
def test_tests_and_benchmarks_import_only_declared_dependencies(folder):
    """They run where ``make install`` put the package with its ``test`` extras."""
    declared = requirement_names(PROJECT["dependencies"]
                                 + PROJECT["optional-dependencies"]["test"])
    assert undeclared(folder, declared) == []
