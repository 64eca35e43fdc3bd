"""The direction of dependencies: `ingest` builds what `rag` reads, so
`ingest` imports `rag` and the `rag` library never imports `ingest`. Only
the edges (the `rag` command, the app and its `ui/` helpers) use both.
Nothing under rag/, ingest/ or serving/ imports the app (`ui/`, Streamlit).

Storage is reached through the seam (`rag.store`): only the store
implementations import their own modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EDGES = {"cli/rag_main.py", "cli/evaluate.py"}
# The store implementations and their private modules.
LOCAL_STORE = {"rag.store.local.store", "rag.store.local.generations", "rag.store.local.writer"}
MILVUS_STORE = {
    "rag.store.milvus.store",
    "rag.store.milvus.schema",
    "rag.store.milvus.reader",
    "rag.store.milvus.writer",
    "rag.store.milvus.lite_files",
}
STORE_MODULES = LOCAL_STORE | MILVUS_STORE
STORE_FILES = {f"{name.replace('.', '/')}.py" for name in STORE_MODULES}


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def modules(path: Path) -> set[str]:
    """Every module `path` imports, by full name (`from rag import store`
    counts as `rag.store.local.generations`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_rag_library_never_imports_ingest():
    library = [p for p in ROOT.glob("rag/**/*.py") if str(p.relative_to(ROOT)) not in EDGES]
    assert len(library) > 15
    offenders = [str(p.relative_to(ROOT)) for p in library if {"ingest", "ui"} & imported(p)]
    assert not offenders


def test_nothing_below_the_app_imports_it():
    """The library, ingestion and the HTTP API (api/ included) stand
    without the web app: what the app and the API share (team/library.py)
    lives below both."""
    below = [*ROOT.glob("rag/**/*.py"), *ROOT.glob("ingest/**/*.py"), *ROOT.glob("serving/**/*.py")]
    assert len(below) > 40 and ROOT / "api/service.py" in below
    offenders = [
        str(p.relative_to(ROOT))
        for p in below
        if {"streamlit_app", "ui", "streamlit"} & imported(p)
    ]
    assert not offenders, f"below the app, yet importing it: {offenders}"


def test_only_the_store_implementations_import_them():
    callers = [
        p
        for pattern in ("rag/**/*.py", "ingest/**/*.py", "serving/*.py", "ui/*.py", "bench/*.py")
        for p in ROOT.glob(pattern)
        if str(p.relative_to(ROOT)) not in STORE_FILES
    ] + [ROOT / "streamlit_app.py"]
    assert len(callers) > 40
    offenders = {
        str(p.relative_to(ROOT)): sorted(STORE_MODULES & modules(p))
        for p in callers
        if STORE_MODULES & modules(p)
    }
    assert not offenders, f"import rag.store instead: {offenders}"


def test_one_store_never_reaches_into_another():
    """What both stores share lives in the seam (rag.store, rag.lexical)."""
    offenders = {
        name: sorted(others & modules(ROOT / f"{name.replace('.', '/')}.py"))
        for own, others in ((LOCAL_STORE, MILVUS_STORE), (MILVUS_STORE, LOCAL_STORE))
        for name in own
    }
    assert not {name: found for name, found in offenders.items() if found}
