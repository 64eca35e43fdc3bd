"""Tables and spreadsheets: XLSX and CSV loaders, tables inside HTML, DOCX
and PDF as pipe rows, table-aware chunking with the header repeated, and
the sheet-and-rows locator from the loader through both stores to a search.

Every file is real, made here: openpyxl workbooks, python-docx documents,
HTML, CSV, and a PDF with a ruled table drawn by reportlab. A real public
PDF with tables (gnuplot's manual, from Debian's gnuplot-doc):
tests/test_debian_pdf_tables.py.
"""

from __future__ import annotations

import datetime as dt
import json
import zipfile
from pathlib import Path

import openpyxl
import pytest
from builders import make_docx

from ingest.chunking import Chunker
from ingest.loaders import kind_of, load, sha256_file
from ingest.pipeline import ingest_paths
from ingest.tables import format_cell
from rag.errors import BadDocument
from rag.knowledge_base import KnowledgeBase
from rag.settings import Settings
from rag.types import Chunk, Hit

CITIES = [
    ("Lisbon", "Portugal"), ("Oslo", "Norway"), ("Quito", "Ecuador"), ("Hanoi", "Vietnam"),
    ("Nairobi", "Kenya"), ("Lima", "Peru"), ("Dakar", "Senegal"), ("Riga", "Latvia"),
]  # fmt: skip


def loaded(path: Path):
    return load(str(path), kind_of(path), sha256_file(path))


def budget_workbook(path: Path, rows: int = 60) -> Path:
    """A 'Summary' sheet and a long '2025' sheet of expense lines; line 37
    (sheet row 38) is the one the retrieval test asks about."""
    book = openpyxl.Workbook()
    summary = book.active
    summary.title = "Summary"
    summary.append(["Year", "Total", "Growth"])
    summary.append([2025, 98765.4, 0.1 + 0.2])
    summary["B2"].number_format = '"$"#,##0.00'
    summary["C2"].number_format = "0.0%"
    sheet = book.create_sheet("2025")
    sheet.append(["Line", "Expense", "City", "Amount", "Paid on"])
    for i in range(1, rows + 1):
        city, _ = CITIES[i % len(CITIES)]
        expense = "Zeppelin hangar rental" if i == 37 else f"Office supplies batch {i}"
        sheet.append([i, expense, city, 1000 + i * 12.5, dt.datetime(2025, 1, 1) + dt.timedelta(i)])
        sheet.cell(row=i + 1, column=4).number_format = "#,##0.00"
        sheet.cell(row=i + 1, column=5).number_format = "yyyy-mm-dd"
    book.save(path)
    return path


# -- loaders ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "number_format", "shown"),
    [
        (0.1 + 0.2, "General", "0.3"),
        (1234567.891, "#,##0.00", "1,234,567.89"),
        (0.125, "0.0%", "12.5%"),
        (0.3, "0%", "30%"),
        (-1234.5, '"$"#,##0.00', "-$1,234.50"),
        (42.0, "General", "42"),
        (9.5, "#,##0.00 [$€-407]", "9.50 €"),
        (dt.datetime(2025, 3, 14), "mm-dd-yy", "2025-03-14"),
        (dt.datetime(2025, 3, 14, 9, 30), "yyyy-mm-dd h:mm", "2025-03-14 09:30"),
        (True, "General", "TRUE"),
        (None, "General", ""),
    ],
)
def test_cells_are_written_as_the_spreadsheet_shows_them(value, number_format, shown):
    assert format_cell(value, number_format) == shown


def test_each_sheet_is_a_table_with_its_formats_applied(tmp_path):
    document = loaded(budget_workbook(tmp_path / "budget.xlsx", rows=3))
    assert [t.label for t in document.tables] == ['sheet "Summary"', 'sheet "2025"']
    summary, lines = document.tables
    assert document.text[summary.start : summary.end] == (
        "Sheet: Summary\n| Year | Total | Growth |\n| 2025 | $98,765.40 | 30.0% |"
    )
    assert "0.30000000000000004" not in document.text
    assert summary.rows == (2,) and lines.rows == (2, 3, 4)
    assert "| 1 | Office supplies batch 1 | Oslo | 1,012.50 | 2025-01-02 |" in document.text


def test_csv_dialect_is_sniffed_and_rows_numbered_as_records(tmp_path):
    path = tmp_path / "people.csv"
    path.write_text('name;city\n"Ada; Countess";London\nAlan;Wilmslow\n', encoding="utf-8")
    document = loaded(path)
    assert document.text == "| name | city |\n| Ada; Countess | London |\n| Alan | Wilmslow |"
    (table,) = document.tables
    assert table.label == "" and table.rows == (2, 3)


def test_html_table_keeps_its_caption_and_header_first(tmp_path):
    path = tmp_path / "page.html"
    path.write_text(
        "<html><body><p>Before the table.</p><table><caption>Fleet</caption>"
        "<thead><tr><th>Ship</th><th>Crew</th></tr></thead>"
        "<tbody><tr><td>Nautilus</td><td>12<script>alert(1)</script></td></tr>"
        "<tr><td>Pequod | II</td><td>30</td></tr></tbody></table><p>After it.</p></body></html>",
        encoding="utf-8",
    )
    document = loaded(path)
    assert document.text == (
        "Before the table.\n\nFleet\n| Ship | Crew |\n| Nautilus | 12 |\n"
        "| Pequod \\| II | 30 |\n\nAfter it."
    )
    (table,) = document.tables
    assert table.label == "table 1" and table.rows == (1, 2)


def test_docx_tables_are_numbered_pipe_rows(tmp_path):
    path = make_docx(
        tmp_path / "d.docx", "Report", ["Intro."], [["Metal", "Melts at"], ["Tin", "232 °C"]]
    )
    document = loaded(path)
    (table,) = document.tables
    assert document.text[table.start : table.end] == "| Metal | Melts at |\n| Tin | 232 °C |"
    assert table.label == "table 1"


def ruled_table_pdf(path: Path) -> Path:
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Table, TableStyle

    rows = [["Element", "Symbol", "Boiling point"]]
    rows += [["Argon", "Ar", "-185.8"], ["Bromine", "Br", "58.8"], ["Cesium", "Cs", "671"]]
    table = Table(rows)
    table.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.5, colors.black)]))
    style = getSampleStyleSheet()["Normal"]
    story = [Paragraph("Elements measured this week.", style), table,
             Paragraph("Measured at sea level.", style)]  # fmt: skip
    SimpleDocTemplate(str(path), pagesize=A4).build(story)
    return path


def test_pdf_ruled_table_becomes_pipe_rows_on_its_page(tmp_path):
    document = loaded(ruled_table_pdf(tmp_path / "elements.pdf"))
    (table,) = document.tables
    assert document.text[table.start : table.end] == (
        "| Element | Symbol | Boiling point |\n| Argon | Ar | -185.8 |\n"
        "| Bromine | Br | 58.8 |\n| Cesium | Cs | 671 |"
    )
    assert document.text.index("Elements measured") < table.start < document.text.index("sea level")
    assert document.page_at(table.start) == 1


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"PK\x03\x04 not really a zip", "not a valid XLSX"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 600, "encrypted"),
    ],
)
def test_corrupt_or_encrypted_workbook_is_refused_with_a_reason(tmp_path, content, reason):
    path = tmp_path / "bad.xlsx"
    path.write_bytes(content)
    with pytest.raises(BadDocument, match=reason):
        loaded(path)


def test_workbook_without_data_is_refused(tmp_path):
    path = tmp_path / "empty.xlsx"
    openpyxl.Workbook().save(path)
    with pytest.raises(BadDocument, match="no data"):
        loaded(path)


# -- chunking ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def chunker(embedder) -> Chunker:
    return Chunker(embedder.count_tokens, chunk_tokens=120, overlap=16, max_tokens=256)


def test_a_table_that_fits_stays_whole_with_its_sheet_name(tmp_path, chunker):
    document = loaded(budget_workbook(tmp_path / "b.xlsx", rows=2))
    chunks = chunker.split(document)
    assert [c.locator for c in chunks] == ['sheet "Summary", row 2', 'sheet "2025", rows 2-3']
    assert chunks[1].text.startswith("Sheet: 2025\n| Line | Expense |")
    assert chunks[1].text.endswith("| 2025-01-03 |")


def test_a_long_sheet_splits_by_rows_with_the_header_repeated(tmp_path, chunker):
    document = loaded(budget_workbook(tmp_path / "b.xlsx", rows=60))
    parts = [c for c in chunker.split(document) if c.locator.startswith('sheet "2025"')]
    assert len(parts) > 3
    head = "Sheet: 2025\n| Line | Expense | City | Amount | Paid on |\n"
    covered = []
    for part in parts:
        assert part.text.startswith(head)
        assert chunker.count_tokens(part.indexed_text) <= 256
        assert part.text.endswith(document.text[part.start : part.end])
        assert part.document_part == document.text[part.start : part.end] or part.start == 0
        first, last = (int(n) for n in part.locator.rsplit(" ", 1)[1].split("-"))
        rows = part.text.removeprefix(head).split("\n")
        assert [int(r.split(" | ")[0].lstrip("| ")) + 1 for r in rows] == list(
            range(first, last + 1)
        ), "sheet row n holds line n - 1"
        covered += range(first, last + 1)
    assert covered == list(range(2, 62)), "every row in exactly one part, in order"


def test_a_one_row_table_longer_than_a_passage_is_split_like_text(tmp_path, chunker):
    """A layout table of one long row (an index page's columns of entries)
    has a header and no body rows: it used to become one passage of any
    length (a Python docs index page: 76,669 characters, 31,223 tokens)."""
    entries = " ".join(f"entry{i} (in module m{i})" for i in range(600))
    path = tmp_path / "index.html"
    path.write_text(
        f"<html><body><table><tr><td>{entries}</td><td>{entries}</td></tr></table></body></html>",
        encoding="utf-8",
    )
    document = loaded(path)
    (table,) = document.tables
    assert table.body == table.end, "a header only: the case under test"
    chunks = chunker.split(document)
    assert len(chunks) > 10
    assert all(chunker.count_tokens(c.indexed_text) <= 256 for c in chunks)
    assert {c.locator for c in chunks} == {"table 1"}
    assert "entry599 (in module m599)" in chunks[-1].text


# -- through ingest, the stores and a search -----------------------------------------


@pytest.mark.parametrize("store", ["local", "milvus-lite"])
def test_one_cell_question_finds_its_sheet_and_rows_first(tmp_path, embedder, store):
    folder = tmp_path / "docs"
    folder.mkdir()
    budget_workbook(folder / "budget.xlsx")
    (folder / "cities.csv").write_text(
        "city,country\n" + "".join(f"{c},{n}\n" for c, n in CITIES), encoding="utf-8"
    )
    (folder / "notes.md").write_text("# Notes\n\nThe hangar is rented by the month.\n")
    broken = folder / "broken.xlsx"
    with zipfile.ZipFile(broken, "w") as archive:  # a zip, but no workbook inside
        archive.writestr("hello.txt", "not a workbook")
    uri = "local" if store == "local" else f"milvus-lite://{tmp_path}/kb.db"
    settings = Settings(index=tmp_path / "index", store=uri, chunk_tokens=120)
    report = ingest_paths([str(folder)], settings, embedder=embedder)
    assert [(Path(f.path).name, "XLSX" in f.error) for f in report.failed] == [
        ("broken.xlsx", True)
    ]
    kb = KnowledgeBase.open(settings.index, embedder, settings)
    try:
        assert sorted(Path(d.path).name for d in kb.documents()) == [
            "budget.xlsx", "cities.csv", "notes.md"
        ]  # fmt: skip
        top = kb.search("How much did the zeppelin hangar rental cost?", k=5)[0]
        assert Path(top.source).name == "budget.xlsx"
        assert "| 37 | Zeppelin hangar rental | Lima | 1,462.50 | 2025-02-07 |" in top.text
        first, last = (int(n) for n in top.locator.rsplit(" ", 1)[1].split("-"))
        assert top.locator.startswith('sheet "2025", rows ') and first <= 38 <= last
        assert top.to_dict()["locator"] == top.locator
        capital = kb.search("Which country is Quito in?", k=3)[0]
        assert Path(capital.source).name == "cities.csv"
        assert capital.locator == f"rows 2-{len(CITIES) + 1}"
    finally:
        kb.close()


def test_rag_search_shows_the_sheet_and_rows(tmp_path, embedder):
    from click.testing import CliRunner

    from cli.ingest_main import main as ingest_main
    from cli.rag_main import main as rag_main

    budget_workbook(tmp_path / "budget.xlsx")
    index = str(tmp_path / "index")
    runner = CliRunner()
    ingested = runner.invoke(ingest_main, [str(tmp_path / "budget.xlsx"), "--index", index])
    assert ingested.exit_code == 0, ingested.output
    query = ["search", "zeppelin hangar rental", "--index", index, "-k", "1"]
    shown = runner.invoke(rag_main, query, env={"COLUMNS": "300"})
    assert shown.exit_code == 0, shown.output
    assert 'budget.xlsx, sheet "2025", rows ' in shown.stdout
    (hit,) = json.loads(runner.invoke(rag_main, [*query, "--json"]).stdout)
    assert hit["locator"].startswith('sheet "2025", rows ')


def test_the_apps_source_line_shows_the_locator_as_plain_text():
    from ui.render import location
    from ui.safe_text import plain

    # A sheet's name is the document's text: hostile, shown as plain text.
    hostile = 'sheet "<img src=x onerror=alert(1)> [x](http://e.example)", rows 2-9'
    chunk = Chunk(text="| a |", source="/kb/b.xlsx", start=0, end=5, id=1, locator=hostile)
    shown = plain(location(Hit(chunk, 1.0)))
    assert shown.startswith("b.xlsx, sheet") and shown.endswith("rows 2-9")
    assert "\\<img" in shown and "\\[x\\]\\(http" in shown, "markup escaped, never live"
