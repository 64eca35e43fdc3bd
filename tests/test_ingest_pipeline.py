"""Ingestion as a pipeline: files parsed, split and tokenized in parser
processes, passages embedded from those token ids in batches of like
lengths. The same chunks as splitting here, the same vectors as the
model's own `encode`, a crashed parser still reported by name, and no more
files in flight than the pool's bound."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
from builders import decompression_bomb_pdf, make_pdf

from ingest import loaders, workers
from ingest.chunking import Chunker
from ingest.discovery import FileTask, discover
from ingest.pipeline import ingest_paths
from rag.embedding import load_embedder, load_token_counter, token_batches
from rag.knowledge_base import KnowledgeBase
from rag.settings import Settings

REPO_DOCS = Path(__file__).resolve().parent.parent / "docs"


def _stored(index: Path) -> dict[str, list[tuple[int, int, int | None, str, str]]]:
    kb = KnowledgeBase.open(index)
    snap = kb.snapshot()
    return {
        d.path: [(c.start, c.end, c.page, c.locator, c.text) for c in snap.document_chunks(d.path)]
        for d in kb.documents()
    }


def test_chunks_split_in_the_workers_are_those_split_here(tmp_path, corpus_dir, embedder):
    folder = tmp_path / "docs"
    shutil.copytree(REPO_DOCS, folder)
    shutil.copytree(corpus_dir, folder / "corpus")
    settings = Settings(index=tmp_path / "index", parse_workers=2)
    report = ingest_paths([str(folder)], settings, embedder=embedder)
    assert not report.failed and report.added >= 10
    chunker = Chunker(
        embedder.count_tokens, settings.chunk_tokens, settings.chunk_overlap, embedder.max_tokens
    )
    expected = {}
    for task in discover([str(folder)]).files:
        document = loaders.load(task.path, task.kind, "digest", False, None)
        expected[task.path] = [
            (c.start, c.end, c.page, c.locator, c.text) for c in chunker.split(document)
        ]
    assert _stored(tmp_path / "index") == expected


def test_the_token_counter_counts_as_the_model_does(embedder):
    counter = load_token_counter(embedder.model_id)
    texts = ["", "  spaced  ", "Ünïcode café 東京 naïve", "x" * 3000, "word " * 600, "a\n\nb"]
    assert [counter.count_tokens(t) for t in texts] == [embedder.count_tokens(t) for t in texts]
    assert counter.max_tokens == embedder.max_tokens


@pytest.mark.parametrize("precision", ["float32", "auto"])
def test_vectors_from_token_ids_are_the_models_own(precision):
    embedder = load_embedder("all-MiniLM-L6-v2", precision, "cpu")
    counter = load_token_counter("all-MiniLM-L6-v2")
    texts = [
        "Kestrels hover over fields.",
        "  padded on both sides  ",
        "word " * 600,  # truncated to the window, as the model's own encode truncates
        "A table\nquarter | budget\nQ3 | 12,400",
        "x",
        *[f"Passage {n} about ferns, mosses and {'spores ' * n}" for n in range(40)],
    ]
    expected = embedder.embed_batch(texts)
    got = embedder.embed_token_ids(counter.encode(texts))
    assert got.shape == expected.shape and got.dtype == np.float32
    cosines = (got * expected).sum(axis=1)
    assert cosines.min() > 1 - 1e-3, cosines.min()
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_batches_hold_the_token_budget_and_every_row_once():
    lengths = sorted([256, 256, 200, 130, 130, 129, 60, 12, 12, 3, 600], reverse=True)
    batches = list(token_batches(lengths, 512))
    assert sorted(itertools.chain(*batches)) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * lengths[batch[0]] <= 512
    assert batches[0] == [0]  # longer than the budget: alone


def test_a_crashed_parser_is_reported_by_name_and_the_rest_ingested(tmp_path, embedder):
    folder = tmp_path / "batch"
    folder.mkdir()
    for n in range(6):
        (folder / f"note-{n}.md").write_text(f"Note {n}: kestrels hover over field {n}.")
    decompression_bomb_pdf(folder / "note-3-bomb.pdf", megabytes=1100)
    make_pdf(folder / "z-good.pdf", ["A good PDF page about ferns and mosses."])
    settings = Settings(index=tmp_path / "index", parse_workers=2, parse_memory_mb=1024)
    report = ingest_paths([str(folder)], settings, embedder=embedder)
    assert [(Path(f.path).name, f.error[:33]) for f in report.failed] == [
        ("note-3-bomb.pdf", "the parser crashed on this file (")
    ]
    assert report.added == 7
    assert len(_stored(tmp_path / "index")) == 7


def test_no_more_files_in_flight_than_the_pools_bound(tmp_path):
    pulled = 0
    files = []
    for n in range(40):
        path = tmp_path / f"n{n}.txt"
        path.write_text(f"note {n}")
        files.append(FileTask(str(path), "txt", path.stat().st_size, 0.0))

    def tasks():
        nonlocal pulled
        for task in files:
            pulled += 1
            yield task, "digest"

    results = workers.parse_files(tasks(), workers=2)
    first = next(results)
    assert first[0].path == files[0].path
    assert pulled <= 2 * 4 + 1  # the bound on parsed files held in memory
    assert len([first, *results]) == 40
