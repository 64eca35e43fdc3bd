"""A long PDF parsed in ranges of pages across the parser processes: the
same document, chunks, token ids and stored passages as parsed whole, and a
range that fails fails the whole file by name, the rest of the batch
ingested."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from builders import _pdf_bytes, glued_words_stream, make_pdf, repeated_zlib

from ingest import workers
from ingest.discovery import FileTask
from ingest.pipeline import ingest_paths
from rag.knowledge_base import KnowledgeBase
from rag.settings import Settings

WORDS = [
    "kestrels",
    "hover",
    "over",
    "the",
    "fields",
    "while",
    "ferns",
    "unroll",
    "beside",
    "the",
    "mossy",
    "stones",
]


def long_pdf(path: Path, pages: int = 9) -> Path:
    """A PDF of `pages` pages: running text long enough for several
    passages a page, ruled tables (two on one page) on some pages, and a
    blank page, so ranges meet tables, empty pages and page breaks."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import (
        PageBreak,
        Paragraph,
        SimpleDocTemplate,
        Spacer,
        Table,
        TableStyle,
    )

    style = getSampleStyleSheet()["Normal"]

    def table(n: int) -> Table:
        rows = [["Site", "Count", "Note"]]
        rows += [[f"site {n}-{r}", str(n * 10 + r), WORDS[(n + r) % len(WORDS)]] for r in range(5)]
        made = Table(rows)
        made.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.5, colors.black)]))
        return made

    story: list = []
    for page in range(1, pages + 1):
        if page != 6:  # page 6 stays blank
            words = [WORDS[(page * 7 + i) % len(WORDS)] for i in range(260)]
            story.append(Paragraph(f"Page {page} notes. " + " ".join(words) + ".", style))
        if page in (2, 5, 8):
            story += [Spacer(1, 12), table(page)]
        if page == 5:
            story += [Spacer(1, 12), table(50)]
        story.append(PageBreak() if page != 6 else Spacer(1, 1))
        if page == 6:
            story.append(PageBreak())
    SimpleDocTemplate(str(path), pagesize=A4, title="Field notes").build(story)
    return path


def _task(path: Path) -> tuple[FileTask, str]:
    return FileTask(str(path), "pdf", path.stat().st_size, 0.0), "digest"


def test_a_pdf_parsed_in_ranges_is_the_pdf_parsed_whole(tmp_path, embedder):
    path = long_pdf(tmp_path / "notes.pdf")
    split = workers.Split(embedder.model_id, 200, 30)
    [(_, whole)] = workers.parse_files([_task(path)], split=split)
    [(_, ranges)] = workers.parse_files([_task(path)], workers=2, split=split, pages_per_range=2)
    assert not isinstance(whole, str) and not isinstance(ranges, str)
    assert len(whole.document.pages) == 9 and len(whole.document.tables) == 4
    assert ranges.document == whole.document
    assert ranges.chunks == whole.chunks
    assert any(c.locator.startswith("table 4") for c in whole.chunks or [])
    assert len(ranges.token_ids or []) == len(whole.token_ids or [])
    for got, expected in zip(ranges.token_ids or [], whole.token_ids or [], strict=True):
        assert np.array_equal(got, expected)


def _stored(index: Path) -> dict[str, list[tuple]]:
    kb = KnowledgeBase.open(index)
    snap = kb.snapshot()
    return {
        Path(d.path).name: [
            (c.id, c.ordinal, c.start, c.end, c.page, c.locator, c.text)
            for c in snap.document_chunks(d.path)
        ]
        for d in kb.documents()
    }


def test_an_index_built_from_ranges_stores_the_same_passages(tmp_path, embedder):
    folder = tmp_path / "docs"
    folder.mkdir()
    long_pdf(folder / "notes.pdf")
    make_pdf(folder / "short.pdf", ["A short PDF about ferns.", "And mosses."])
    stored = []
    for per_range in (0, 2):
        index = tmp_path / f"index-{per_range}"
        settings = Settings(index=index, parse_workers=2, pdf_pages_per_range=per_range)
        report = ingest_paths([str(folder)], settings, embedder=embedder)
        assert not report.failed and report.added == 2
        stored.append(_stored(index))
    assert stored[0] == stored[1]
    assert {page for *_, page, _, _ in stored[0]["notes.pdf"]} == {1, 2, 3, 4, 5, 7, 8, 9}


def pages_pdf(path: Path, contents: list[bytes]) -> Path:
    """One page for each content stream (deflated), in Helvetica."""
    import zlib

    return deflated_pages_pdf(path, [zlib.compress(raw, 9) for raw in contents])


def deflated_pages_pdf(path: Path, streams: list[bytes]) -> Path:
    """One page for each zlib-deflated content stream, in Helvetica."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")  # object 3
    kids = []
    for stream in streams:
        objects.append(
            b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream)
            + stream
            + b"\nendstream"
        )
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
            b"/Resources << /Font << /F1 3 0 R >> >> >>" % (len(objects))
        )
        kids.append(b"%d 0 R" % len(objects))
    objects[1] = b"<< /Type /Pages /Kids [" + b" ".join(kids) + b"] /Count %d >>" % len(kids)
    path.write_bytes(_pdf_bytes(objects))
    return path


def bomb_page_pdf(path: Path, pages: int, bomb: int, megabytes: int) -> Path:
    """Pages of plain text, page `bomb` (1-based) a content stream that
    inflates to `megabytes` MB: its parser runs out of memory."""
    import zlib

    text = b"BT /F1 10 Tf 40 750 Td (Page %d about kestrels and ferns.) Tj ET\n"
    streams = [
        repeated_zlib(text % page, b" " * (1 << 20), megabytes)
        if page == bomb
        else zlib.compress(text % page, 9)
        for page in range(1, pages + 1)
    ]
    return deflated_pages_pdf(path, streams)


def slow_pages_pdf(path: Path, pages: int) -> Path:
    """Pages of kerned words with no space characters, each its own stream
    (as `builders.slow_pdf`, whose pages share one): each looks glued, so
    the loader re-reads it with pdfminer, slowly."""
    content = glued_words_stream()
    # Incompressible padding: a file this long may well have this many pages.
    pad = [b"\n%" + os.urandom(400).hex().encode() + b"\n" for _ in range(pages)]
    return pages_pdf(path, [content + pad[n] for n in range(pages)])


def test_a_range_whose_parser_dies_fails_the_whole_file_by_name(tmp_path, embedder):
    folder = tmp_path / "batch"
    folder.mkdir()
    for n in range(3):
        (folder / f"note-{n}.md").write_text(f"Note {n}: kestrels hover over field {n}.")
    bomb_page_pdf(folder / "m-bomb.pdf", pages=6, bomb=4, megabytes=1100)
    shutil.copy(long_pdf(tmp_path / "notes.pdf"), folder / "z-notes.pdf")
    settings = Settings(
        index=tmp_path / "index", parse_workers=2, parse_memory_mb=1024, pdf_pages_per_range=2
    )
    report = ingest_paths([str(folder)], settings, embedder=embedder)
    [failed] = report.failed
    assert Path(failed.path).name == "m-bomb.pdf"
    assert failed.error.startswith(("the parser crashed", "parsing needed more than"))
    assert failed.error.endswith("(pages 3-4)")
    stored = _stored(tmp_path / "index")
    assert "m-bomb.pdf" not in stored  # none of its other ranges
    assert sorted(stored) == ["note-0.md", "note-1.md", "note-2.md", "z-notes.pdf"]


def test_a_range_that_times_out_fails_its_file_and_the_next_file_parses(tmp_path):
    slow = slow_pages_pdf(tmp_path / "slow.pdf", pages=200)
    good = make_pdf(tmp_path / "good.pdf", ["Ferns and mosses."])
    results = list(
        workers.parse_files([_task(slow), _task(good)], workers=2, timeout=1, pages_per_range=100)
    )
    assert [Path(task.path).name for task, _ in results] == ["slow.pdf", "good.pdf"]
    reason = results[0][1]
    assert reason == "parsing took longer than 1 s (pages 1-100); the file was skipped"
    assert not isinstance(results[1][1], str)
