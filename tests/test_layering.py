"""The direction of dependencies, with no exemptions (issue 32). Packages
stand on floors, and a module imports only from its own package or from a
lower floor:

    rag       the retrieval library (store/ and answering/ inside it)
    ingest    files -> chunks -> vectors -> an index generation
    team      accounts, access, audit, conversations, knowledge-base management
    core      the one service every entry point calls
    api       `rag serve`: HTTP and MCP
    cli, ui, serving   the entry points (ui with streamlit_app.py, the app's
              script) and the LLM launcher

Inside the library, the store is reached through its seam (`rag.store`):
only the store implementations import their own modules, and neither
reaches into the other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FLOORS = {
    "rag": 0,
    "ingest": 1,
    "team": 2,
    "core": 3,
    "api": 4,
    "cli": 5,
    "ui": 5,
    "serving": 5,
}
# The web app's own libraries: nothing below the edges may import them.
APP_ONLY = {"streamlit"}
LOCAL_STORE = {"rag.store.local.store", "rag.store.local.generations", "rag.store.local.writer"}
MILVUS_STORE = {
    "rag.store.milvus.store",
    "rag.store.milvus.schema",
    "rag.store.milvus.reader",
    "rag.store.milvus.writer",
    "rag.store.milvus.lite_files",
}
# What both implementations share, and nothing else imports.
STORE_SHARED = {"rag.store.shared"}
STORE_MODULES = LOCAL_STORE | MILVUS_STORE | STORE_SHARED


def sources() -> list[Path]:
    """Every module of every package on a floor, and the app's script."""
    found = [ROOT / "streamlit_app.py"]
    for package in FLOORS:
        found += sorted((ROOT / package).glob("**/*.py"))
    return found


def package_of(path: Path) -> str:
    """The package a module belongs to: the app's script is the app's."""
    top = path.relative_to(ROOT).parts[0]
    return "ui" if top == "streamlit_app.py" else top


def modules(path: Path) -> set[str]:
    """Every module `path` imports, by full name (`from rag import store`
    counts as `rag.store`), wherever the import stands (in a function too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            assert node.module is not None
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_every_package_is_on_a_floor():
    """A new top-level package must be placed before it can be imported."""
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages - {"tests", "bench", "tools", "docs"} <= set(FLOORS)
    assert {"rag", "ingest", "team", "core", "api", "cli", "ui", "serving"} <= packages


def test_no_import_runs_upwards_or_sideways():
    offenders = {}
    for path in sources():
        own = package_of(path)
        for name in modules(path):
            top = name.split(".")[0]
            if top in FLOORS and top != own and FLOORS[top] >= FLOORS[own]:
                offenders.setdefault(str(path.relative_to(ROOT)), set()).add(name)
    assert len(sources()) > 100
    assert not offenders, f"imports that run upwards or sideways: {offenders}"


@pytest.mark.parametrize("package", ["rag", "ingest", "team", "core", "api"])
def test_nothing_below_the_edges_imports_the_web_app(package):
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / package).glob("**/*.py")
        if {n.split(".")[0] for n in modules(p)} & APP_ONLY
    ]
    assert not offenders


def test_answering_and_the_store_stand_apart():
    """The store knows nothing of answering, and answering reaches the
    store only through the seam."""
    store = list((ROOT / "rag/store").glob("**/*.py"))
    answering = list((ROOT / "rag/answering").glob("*.py"))
    assert len(store) > 8 and len(answering) > 8
    assert not [p for p in store if any(n.startswith("rag.answering") for n in modules(p))]
    assert not [p for p in answering if STORE_MODULES & modules(p)]


def test_only_the_store_implementations_import_them():
    own = {ROOT / f"{name.replace('.', '/')}.py" for name in STORE_MODULES}
    callers = [p for p in [*sources(), *ROOT.glob("bench/*.py")] if p not in own]
    offenders = {
        str(p.relative_to(ROOT)): sorted(STORE_MODULES & modules(p))
        for p in callers
        if STORE_MODULES & modules(p)
    }
    assert not offenders, f"import rag.store instead: {offenders}"


def test_one_store_never_reaches_into_another():
    """What both stores share lives in the seam (rag.store, rag.store.shared,
    rag.lexical)."""
    offenders = {
        name: sorted(others & modules(ROOT / f"{name.replace('.', '/')}.py"))
        for own, others in ((LOCAL_STORE, MILVUS_STORE), (MILVUS_STORE, LOCAL_STORE))
        for name in own
    }
    assert not {name: found for name, found in offenders.items() if found}


def test_the_packages_import_each_other_in_no_circle():
    """The same, drawn by grimp over the imported modules (tools/import_graph.py)."""
    import runpy

    tool = runpy.run_path(str(ROOT / "tools/import_graph.py"))
    names = tool["packages"](ROOT)
    found = tool["edges"](tool["grimp"].build_graph(*names), names)
    assert ("ingest", "rag") in found and ("rag", "ingest") not in found
    assert tool["circles"](names, found) == []
