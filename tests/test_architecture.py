"""House rules that import-linter (run by .ci/run) does not cover: no module imports another
module's private (underscore) name, and no Python file of the package grows past ~500 lines."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "asvp_fast"
MAX_LINES = 520  # "about 500": kernels live in csrc/, not here


def _sources():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _private_imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                # `from .. import _C` names the compiled module, not a private name of a Python module
                if alias.name.startswith("_") and not alias.name.startswith("__") and alias.name != "_C":
                    yield node.lineno, f"from {'.' * node.level}{node.module or ''} import {alias.name}"


def test_the_package_sources_are_found():
    names = {p.name for p in _sources()}
    assert {"__init__.py", "cli.py", "checks.py", "runner.py"} <= names


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_name_crosses_modules(path):
    found = list(_private_imports(path))
    assert not found, f"{path.relative_to(PACKAGE)} imports private names: {found}"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_file_over_about_500_lines(path):
    lines = path.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines; split it by responsibility"


def test_the_private_import_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from .other import _helper\nfrom . import _C\n")
    assert [text for _, text in _private_imports(bad)] == ["from .other import _helper"]
