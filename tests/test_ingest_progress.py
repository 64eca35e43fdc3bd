"""The ingest's progress moves with the work (issue 17, point 11): a long
document reports its chunks as they are embedded, and the bar's fraction is
full only once the last chunk is stored."""

from __future__ import annotations

from builders import NOTE_WORDS, make_pdf

from ingest.pipeline import Progress, ingest_paths
from rag.settings import Settings


def long_pdf(path, pages: int):
    """A real PDF of `pages` pages of distinct sentences (a few chunks a page
    at 32-token chunks)."""
    text = [
        " ".join(
            f"Page {n} line {j}: the {NOTE_WORDS[(n + j) % len(NOTE_WORDS)]} by the "
            f"{NOTE_WORDS[(n * j) % len(NOTE_WORDS)]}."
            for j in range(12)
        )
        for n in range(pages)
    ]
    return make_pdf(path, text)


def test_a_long_pdf_reports_progress_while_its_chunks_are_embedded(tmp_path, embedder):
    pdf = long_pdf(tmp_path / "manual.pdf", pages=30)
    settings = Settings(index=tmp_path / "index", chunk_tokens=32, chunk_overlap=4)
    events: list[Progress] = []
    report = ingest_paths([str(pdf)], settings, embedder=embedder, progress=events.append)
    assert not report.failed, report.failed
    # one document under the embedding buffer: stored in one piece, after all
    # its chunks are embedded
    assert 100 < report.chunks_embedded < 256, report.chunks_embedded

    embedding = [e for e in events if e.stage == "embed"]
    assert len(embedding) >= 4, [(e.stage, e.done, e.total) for e in events]
    done = [e.done for e in embedding]
    assert done == sorted(set(done)), "chunks embedded, strictly increasing"
    assert embedding[-1].done == embedding[-1].total == report.chunks_embedded
    assert all(e.path == str(pdf) for e in embedding)
    # before the document is stored (its last chunk embedded), several events
    assert len([e for e in embedding if e.done < e.total]) >= 3

    # The bar: scanning is a phase of its own; after it, the fraction never
    # goes back and is full only at the last event.
    bar = [e.fraction for e in events if e.stage != "scan"]
    assert bar == sorted(bar), bar
    assert bar[-1] == 1.0 and max(bar[:-1]) < 1.0, bar
