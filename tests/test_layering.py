"""The packages import one way (docs/architecture.md): a test keeps it so."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vqa_core", "pipeline", "feature_store", "regressors", "flows")
# package -> project packages it may import
ALLOWED = {
    "vqa_core": set(),
    "pipeline": {"vqa_core"},
    "feature_store": {"vqa_core"},
    "regressors": {"vqa_core"},
    "flows": {"vqa_core", "pipeline", "feature_store", "regressors"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level project packages imported anywhere in ``path`` (lazy imports inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(name.split(".")[0] for name in names if name.split(".")[0] in PACKAGES)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_it_may(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(bad)
        for path in sorted((ROOT / package).rglob("*.py"))
        if (bad := imported_packages(path) - ALLOWED[package] - {package})
    }
    assert not offenders, f"{package} must not import {offenders}"


def test_checker_sees_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from regressors.metrics import srcc\n    import flows.cli\n")
    assert imported_packages(bad) == {"regressors", "flows"}
