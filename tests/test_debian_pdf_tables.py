"""A real public PDF with tables: gnuplot's manual from Debian's
gnuplot-doc package (fetched with apt-get download, as `make system-setup`
fetches its packages, and cached). Its tables are LaTeX tables ruled by
horizontal lines only, so a table's body comes out as a few wide rows
rather than one row per entry; the question is whether a question answered
by one cell of one finds that table, on its page, first."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pypdf
import pytest

from ingest.pipeline import ingest_paths
from rag.knowledge_base import KnowledgeBase

# The manual's first pages, not all 311: the table's page with dozens of
# pages of other commands and other tables before and after it to compete
# with, parsed and embedded in much less time than the whole book.
PAGES = 80
CACHE = Path(os.environ.get("KBQA_CACHE", Path.home() / ".cache" / "kbqa")) / "tests"


@pytest.fixture(scope="module")
def gnuplot_pdf() -> Path:
    target = CACHE / "gnuplot-doc" / "gnuplot.pdf"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            fetch = ["apt-get", "download", "-q", "gnuplot-doc"]
            if subprocess.run(fetch, cwd=tmp).returncode:  # no package lists yet
                sudo = [] if os.getuid() == 0 else ["sudo"]
                subprocess.run([*sudo, "apt-get", "update", "-q"], check=True)
                subprocess.run(fetch, cwd=tmp, check=True)
            deb = next(Path(tmp).glob("gnuplot-doc_*.deb"))
            subprocess.run(["dpkg", "-x", str(deb), str(Path(tmp) / "x")], check=True)
            shutil.copy(Path(tmp) / "x/usr/share/doc/gnuplot/gnuplot.pdf", target)
    return target


def test_a_cell_of_a_table_in_gnuplots_manual_is_found_first_on_its_page(
    gnuplot_pdf, settings, embedder, tmp_path
):
    folder = tmp_path / "docs"
    folder.mkdir()
    writer = pypdf.PdfWriter()
    for page in pypdf.PdfReader(gnuplot_pdf).pages[:PAGES]:
        writer.add_page(page)
    writer.write(folder / "gnuplot.pdf")
    report = ingest_paths([str(folder)], settings, embedder=embedder)
    assert not report.failed, report.failed

    kb = KnowledgeBase.open(settings.index, settings=settings)
    hits = kb.search("command-line editing: which key deletes the previous word?", k=5)
    first = hits[0]
    assert first.chunk.locator.startswith("table 1"), [(h.chunk.locator, h.page) for h in hits]
    assert first.page == 32
    assert "^W delete previous word" in first.text
