"""The layering holds: schemas <- pipeline <- stages <- tools, cli. The library (pipeline/) imports no
stage, tool or the CLI; schemas/ imports nothing of the project but itself. Read from the source,
every import statement, at any depth (a function's lazy import counts too)."""

import ast
from pathlib import Path

import pytest

from conftest import REPO

PROJECT = ("pipeline", "stages", "schemas", "tools", "cli")
ALLOWED = {"schemas": {"schemas"}, "pipeline": {"schemas", "pipeline"}, "stages": {"schemas", "pipeline", "stages"}}


def project_imports(path: Path) -> set[tuple[str, int]]:
    """(top-level project package, line) of every import in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {(name.split(".")[0], node.lineno) for name in names if name.split(".")[0] in PROJECT}
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below(layer):
    wrong = [f"{path.relative_to(REPO)}:{line} imports {package}" for path in sorted((REPO / layer).rglob("*.py"))
             for package, line in sorted(project_imports(path)) if package not in ALLOWED[layer]]  # fmt: skip
    assert not wrong, wrong


def test_the_check_sees_a_wrong_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from stages.common import Summary\n    import cli\n")
    assert project_imports(bad) == {("stages", 2), ("cli", 3)}
