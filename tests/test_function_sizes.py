"""No function over 60 lines in the packages (STYLE.md: functions under
~60 lines), counted from its `def` line to its last line, as `ast` gives
them (decorators not counted, nested functions counted in their parent
and on their own)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 60
# Every top-level package (a folder with __init__.py) but the tests and bench.
PACKAGES = sorted(
    p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name not in {"tests", "bench"}
)
# Longer ones still waiting to be split, each "path:qualified name" (none
# now; keep it short, with a comment saying why each one waits).
ALLOWED: set[str] = set()


def long_functions() -> dict[str, int]:
    found: dict[str, int] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            _visit(tree, [], str(path.relative_to(ROOT)), found)
    return found


def _visit(node: ast.AST, names: list[str], where: str, found: dict[str, int]) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            qualified = [*names, child.name]
            if not isinstance(child, ast.ClassDef):
                lines = (child.end_lineno or child.lineno) - child.lineno + 1
                if lines > MAX_LINES:
                    found[f"{where}:{'.'.join(qualified)}"] = lines
            _visit(child, qualified, where, found)
        else:
            _visit(child, names, where, found)


def test_the_packages_are_found():
    assert {"rag", "ingest", "serving", "ui"} <= set(PACKAGES)


def test_no_function_is_over_60_lines():
    found = long_functions()
    offenders = {name: lines for name, lines in found.items() if name not in ALLOWED}
    assert not offenders, "over 60 lines (split them): " + ", ".join(
        f"{name} ({lines})" for name, lines in sorted(offenders.items())
    )


def test_the_allow_list_names_only_long_functions():
    assert not ALLOWED - set(long_functions()), "split already: remove from ALLOWED"
