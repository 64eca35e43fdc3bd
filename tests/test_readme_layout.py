"""The README's Layout table matches the tree (issue 32): every path it
names exists, and every module of every package is named by a row (a
module's own row, or a folder's)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("rag", "ingest", "team", "core", "api", "cli", "ui", "serving")


def layout_paths() -> set[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert len(rows) > 40
    return {p for row in rows for p in re.findall(r"`([\w./]+)`", row.split(" | ")[0])}


def test_every_path_the_layout_names_exists():
    missing = sorted(p for p in layout_paths() if not (ROOT / p).exists())
    assert not missing, f"the README's Layout names what is not in the tree: {missing}"


def test_every_module_has_a_row():
    named = layout_paths()
    folders = tuple(p for p in named if p.endswith("/"))
    modules = [
        str(p.relative_to(ROOT))
        for package in PACKAGES
        for p in (ROOT / package).glob("**/*.py")
        if p.name != "__init__.py" or p.parent.name == "store"
    ]
    unnamed = sorted(m for m in modules if m not in named and not m.startswith(folders))
    assert not unnamed, f"modules the README's Layout does not name: {unnamed}"
