"""Builders for small, real fixture files (PDF, DOCX, HTML, ...)."""

from __future__ import annotations

from pathlib import Path


def make_pdf(path: Path, pages: list[str]) -> Path:
    """A real PDF with one text page per entry (reportlab, wrapped lines)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path), pagesize=A4)
    for text in pages:
        y = 800
        for paragraph in text.split("\n"):
            line = ""
            for word in paragraph.split():
                if len(line) + len(word) > 80:
                    c.drawString(50, y, line)
                    y -= 14
                    line = ""
                line = f"{line} {word}".strip()
            c.drawString(50, y, line)
            y -= 20
        c.showPage()
    c.save()
    return path


def make_raw_pdf(path: Path, content: bytes) -> Path:
    """A one-page PDF whose content stream is `content`, written by hand so a
    test controls exactly how the text is laid out (e.g. kerning in TJ)."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    path.write_bytes(out)
    return path


def kerned_words_pdf(path: Path, words: list[str], gap: int) -> Path:
    """Words separated only by a TJ kerning gap (thousandths of an em), no
    space characters: how tightly justified PDFs often encode spaces."""
    lines = []
    for line_no in range(0, len(words), 12):
        chunk = words[line_no : line_no + 12]
        pieces = f"-{gap}".encode().join(b"(%s)" % w.encode() for w in chunk)
        lines.append(b"[" + pieces + b"] TJ 0 -14 Td")
    return make_raw_pdf(path, b"BT /F1 10 Tf 40 750 Td " + b" ".join(lines) + b" ET")


def make_docx(
    path: Path, title: str, paragraphs: list[str], table: list[list[str]] | None = None
) -> Path:
    import docx

    document = docx.Document()
    document.add_heading(title, 0)
    for text in paragraphs:
        document.add_paragraph(text)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, value in enumerate(row):
                grid.rows[r].cells[c].text = value
    document.save(str(path))
    return path


def write_corpus(folder: Path) -> Path:
    """A small mixed knowledge base with facts the tests search for."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "volcanoes.md").write_text(
        "# Volcanoes\n\nMount Vesuvius erupted in 79 AD and buried the Roman town of Pompeii "
        "under volcanic ash.\n\n## Monitoring\n\nSeismometers detect the small earthquakes that "
        "often come before an eruption.\n",
        encoding="utf-8",
    )
    (folder / "tea.txt").write_text(
        "Green tea is made from unoxidised leaves of Camellia sinensis. Black tea leaves are fully "
        "oxidised before drying, which gives the darker colour.\n",
        encoding="utf-8",
    )
    (folder / "birds.html").write_text(
        "<html><head><title>Birds</title><script>var hidden = 'SCRIPTSECRET';</script>"
        "<style>p { color: red }</style></head><body><h1>Birds</h1>"
        "<p>The Arctic tern migrates from the Arctic to the Antarctic every year, the longest "
        "migration of any animal.</p></body></html>",
        encoding="utf-8",
    )
    make_docx(
        folder / "fish.docx",
        "Fish",
        ["Salmon return from the ocean to the river where they hatched in order to spawn."],
        [["organ", "purpose"], ["gills", "breathing under water"]],
    )
    make_pdf(
        folder / "astronomy.pdf",
        [
            "Astronomy handbook. Chapter one introduces the night sky.",
            "Jupiter is the largest planet in the Solar System; its Great Red Spot is a storm "
            "larger than the Earth.",
            "Saturn's rings are made mostly of water ice, with some rock and dust.",
        ],
    )
    return folder
