"""The import graph of the project's packages, drawn with grimp: which
package imports which (with how many module-level imports), any circle
between packages, and each package's share of the code's lines.

    .venv/bin/python tools/import_graph.py            # the packages in the tree
    .venv/bin/python tools/import_graph.py rag ingest  # only these
    .venv/bin/python tools/import_graph.py --root /other/checkout

Run from the repository root. It exits 1 when the packages import each
other in a circle.
"""

from __future__ import annotations

import argparse
import sys
from itertools import permutations
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
SKIP = {"tests", "bench", "tools", "docs"}


def packages(root: Path) -> list[str]:
    return sorted(p.parent.name for p in root.glob("*/__init__.py") if p.parent.name not in SKIP)


def lines(root: Path, package: str) -> int:
    return sum(
        len(p.read_text(encoding="utf-8").splitlines()) for p in (root / package).glob("**/*.py")
    )


def edges(graph: grimp.ImportGraph, names: list[str]) -> dict[tuple[str, str], int]:
    """(importer, imported) package pairs, with how many module imports."""
    found = {}
    for importer, imported in permutations(names, 2):
        count = len(
            graph.find_matching_direct_imports(import_expression=f"{importer}.** -> {imported}.**")
        ) + len(
            graph.find_matching_direct_imports(import_expression=f"{importer}.** -> {imported}")
        )
        if count:
            found[(importer, imported)] = count
    return found


def circles(names: list[str], found: dict[tuple[str, str], int]) -> list[list[str]]:
    """Every elementary circle between packages (a small graph: plain DFS)."""
    out: list[list[str]] = []

    def walk(path: list[str]) -> None:
        for a, b in found:
            if a != path[-1]:
                continue
            if b == path[0]:
                out.append([*path, b])
            elif b not in path and b > path[0]:
                walk([*path, b])

    for start in names:
        walk([start])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("packages", nargs="*", help="packages to draw (default: all in the tree)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to draw")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    names = args.packages or packages(root)
    sys.path.insert(0, str(root))
    graph = grimp.build_graph(*names, include_external_packages=False)
    found = edges(graph, names)
    size = {n: lines(root, n) for n in names}
    total = sum(size.values())
    print("| package | lines | share | imports (package: module imports) |")
    print("|---|---|---|---|")
    for name in sorted(names, key=size.__getitem__, reverse=True):
        targets = ", ".join(f"{b}: {c}" for (a, b), c in sorted(found.items()) if a == name)
        print(f"| {name} | {size[name]} | {size[name] / total:.0%} | {targets or '-'} |")
    loops = circles(names, found)
    print()
    print("circles: " + ("; ".join(" -> ".join(c) for c in loops) if loops else "none"))
    return 1 if loops else 0


if __name__ == "__main__":
    sys.exit(main())
