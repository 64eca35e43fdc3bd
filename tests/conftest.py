"""Shared fixtures: the real embedding model (loaded once), a fixture corpus,
and an index built from it once per session (tests that change an index
work on their own copy)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from builders import write_corpus

from ingest.pipeline import ingest_paths
from rag.embedding import Embedder, load_embedder
from rag.settings import Settings


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
