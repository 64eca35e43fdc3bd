"""Shared fixtures: the real embedding model (loaded once), a fixture corpus,
and an index built from it once per session (tests that change an index
work on their own copy)."""

from __future__ import annotations

import multiprocessing
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from builders import write_corpus, write_field_notes

from ingest.pipeline import ingest_paths
from rag.answering.profiles import small_model
from rag.embedding import Embedder, load_embedder
from rag.settings import Settings

# A test that takes one of these fixtures needs what its marker names, marked
# or not: `make test-fast` (-m "not llm and not browser and not postgres ...")
# relies on it.
_NEEDS = {
    "llm_server": "llm",
    "tiny_gpt_oss_server": "llm",
    "llm_settings": "llm",
    "pg_server": "postgres",
}


# Every ingest starts its parser workers from the forkserver (ingest/workers.py),
# and the suite ingests hundreds of times: the forkserver imports the parsing
# code once, so each worker starts with it instead of importing it again.
# Modules that are missing are skipped by multiprocessing.
FORKSERVER_PRELOAD = [
    "__main__",  # multiprocessing's default
    "ingest.workers",
    "ingest.tables",
    "ingest.sections",
    "ingest.mail",
    "tokenizers",
    "lxml.html",
    "pypdfium2",
    "pdfplumber",
    "pdfminer.high_level",
]


def pytest_configure(config: pytest.Config) -> None:
    multiprocessing.set_forkserver_preload(FORKSERVER_PRELOAD)
    _share_the_cores()


def _share_the_cores() -> None:
    """Under pytest-xdist, each worker's torch (and the ingests, embedding
    processes and CLIs it starts, which inherit the variable) gets its share
    of the cores, not all of them: OpenMP threads that outnumber the cores
    spin against each other, and on a 2-core box two workers embedding with
    2 threads each were slower than with 1 each. Runs before any test module
    imports torch; one process (-n 0) keeps torch's default, and a value the
    caller set is kept."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for name in set(getattr(item, "fixturenames", ())) & _NEEDS.keys():
            item.add_marker(_NEEDS[name])


@pytest.fixture(scope="session", autouse=True)
def cheap_password_hashes() -> Iterator[object]:
    """argon2id at its lowest cost for the session, instead of the
    product's 64 MiB, three-pass hash (seconds each on a loaded 2-core
    machine, and the suite creates and logs in hundreds of accounts). The
    same library and code path: hashes stay `$argon2id$`, verify and
    needs-rehash as before. Yields the product's hasher, whose parameters
    test_appdb.py checks."""
    from argon2 import PasswordHasher

    from team.appdb import accounts

    product = accounts._hasher
    patch = pytest.MonkeyPatch()
    patch.setattr(accounts, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    accounts._dummy_hash.cache_clear()
    yield product
    patch.undo()
    accounts._dummy_hash.cache_clear()


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return load_embedder("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "kb")


@pytest.fixture(scope="session")
def built_index(
    tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path, embedder: Embedder
) -> Path:
    root = tmp_path_factory.mktemp("built") / "index"
    report = ingest_paths([str(corpus_dir)], Settings(index=root), embedder=embedder)
    assert not report.failed, report.failed
    return root


@pytest.fixture
def index_copy(built_index: Path, tmp_path: Path) -> Path:
    """A private copy of the session index that a test may change."""
    target = tmp_path / "index"
    shutil.copytree(built_index, target)
    return target


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(index=tmp_path / "index")


@pytest.fixture(scope="session")
def llm_server():
    """The real vLLM CPU server with SmolLM2-135M, started once per session.

    Skips (loudly) only when the LLM environment is absent; `make test`
    creates it, so CI never skips.
    """

    yield from _serve("cpu")


@pytest.fixture(scope="session")
def tiny_gpt_oss_server():
    """A tiny random-weight gpt-oss on the real vLLM CPU server, whose output
    each request scripts (serving/scripted_logits.py): the real harmony
    parsing, reasoning/content split and structured-output checks run on it."""
    yield from _serve("tiny-gpt-oss")


def _serve(device: str):
    from serving import launch

    try:
        config = launch.build_config(device=device, port=launch.free_port())
        # Requests that script nothing (the app's own) get deterministic
        # gpt-oss output: see serving/scripted_logits.py.
        config.env["KBQA_SCRIPT_DEFAULT"] = "1"
        server = launch.start(config)
    except launch.NotSetUpError as exc:  # a server that fails to start fails the run
        pytest.skip(f"LLM ENVIRONMENT NOT SET UP — real-server tests skipped: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def llm_settings(llm_server) -> Settings:
    """The small CPU model's profile (rag/answering/profiles.py), but generative: the
    tests that want the profile's extractive answers ask for them. Fewer
    passages and answer tokens keep the session short."""
    return small_model(
        llm_url=llm_server.base_url,
        llm_model=llm_server.served_model_name,
        llm_timeout=120,
        answer_style="generative",
        screen_k=4,
        read_max_tokens=200,
    )


@pytest.fixture(scope="session")
def notes_index(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Path:
    """The field notes (builders.write_field_notes, holding KNOWN_ANSWERS), indexed."""
    folder = write_field_notes(tmp_path_factory.mktemp("notes") / "kb")
    index = tmp_path_factory.mktemp("notes-index") / "index"
    report = ingest_paths([str(folder)], Settings(index=index), embedder=embedder)
    assert not report.failed, report.failed
    return index


@pytest.fixture(scope="session")
def docs_index(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Path:
    """The sample knowledge base (docs/), as `make run` builds it, in an
    indexes root of its own."""
    root = tmp_path_factory.mktemp("indexes")
    docs = Path(__file__).resolve().parent.parent / "docs"
    report = ingest_paths([str(docs)], Settings(index=root / "default"), embedder=embedder)
    assert not report.failed, report.failed
    return root / "default"


@pytest.fixture
def kb_root(tmp_path: Path, docs_index: Path) -> Path:
    """An indexes root holding a private copy of the sample knowledge base."""
    root = tmp_path / "indexes"
    shutil.copytree(docs_index, root / "default")
    return root


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch, kb_root: Path) -> pytest.MonkeyPatch:
    """The app's environment: `kb_root` as its indexes, no LLM retries."""
    monkeypatch.setenv("RAG_INDEXES_ROOT", str(kb_root))
    monkeypatch.setenv("RAG_INDEX", str(kb_root / "default"))
    monkeypatch.setenv("RAG_LLM_RETRIES", "0")
    return monkeypatch


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL server (tests/postgres_server.py), started once per
    session. Skips (loudly) only when Debian's `postgresql` is not
    installed; `make test` installs it."""
    from postgres_server import NotInstalled, binaries, postgres_server

    try:
        binaries()
    except NotInstalled as exc:
        pytest.skip(f"POSTGRESQL NOT INSTALLED — PostgreSQL app-database tests skipped: {exc}")
    with postgres_server() as server:
        yield server
