"""Builders for small, real fixture files (PDF, DOCX, HTML, ...)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from rag.store import DocumentEntry
from rag.types import Chunk, Hit
from team.access import LOCAL_USER, Access, AccessPolicy

# The one user of a loopback app (RAG_AUTH=none), with no audit trail: for
# tests of what an action in team/library.py does rather than who may do it.
LOCAL_ADMIN = Access(LOCAL_USER, AccessPolicy(None))


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
    path.write_bytes(_one_page_pdf(612, 792, content))
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


def make_hit(
    n: int, text: str = "", source: str = "/docs/a.pdf", page: int | None = 1, title: str = ""
) -> Hit:
    """A retrieved passage with chunk id `n` (score 1/n), built in memory."""
    chunk = Chunk(
        text=text or f"passage {n}", source=source, start=0, end=1, page=page, title=title, id=n
    )
    return Hit(chunk=chunk, score=1.0 / n)


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


NOTE_WORDS = [
    "river", "mountain", "lantern", "copper", "violet", "harbour", "meadow", "glacier", "orchard",
    "falcon", "timber", "compass", "saffron", "beacon", "quarry", "thistle", "marble", "canyon",
    "willow", "ember", "prairie", "lagoon", "cobalt", "tundra", "juniper", "basalt", "raven",
]  # fmt: skip


def code_word(i: int) -> str:
    """The one word only note `i` contains (a BM25 search finds exactly it)."""
    return f"zq{i:02d}xv"


def write_notes(folder: Path, count: int, sentences: int = 60) -> Path:
    """`count` plain-text notes (alternately .txt and .md) of `sentences`
    near-identical sentences each, note i holding `code_word(i)` halfway."""
    import random

    folder.mkdir(parents=True)
    for i in range(count):
        rng = random.Random(i)
        lines = [
            f"Note {i} sentence {j}: the {rng.choice(NOTE_WORDS)} near the "
            f"{rng.choice(NOTE_WORDS)} keeps the {rng.choice(NOTE_WORDS)} of "
            f"{rng.choice(NOTE_WORDS)}."
            for j in range(sentences)
        ]
        lines.insert(sentences // 2, f"The code word of note {i} is {code_word(i)}.")
        suffix = ".md" if i % 2 else ".txt"
        (folder / f"note-{i:02d}{suffix}").write_text(" ".join(lines), encoding="utf-8")
    return folder


def write_beir(
    folder: Path,
    docs: dict[str, tuple[str, str]],
    queries: dict[str, str],
    qrels: dict[str, str],
) -> Path:
    """A BEIR-format dataset folder: corpus (id -> (title, text)), queries,
    one judged document per query, and a README with a published figure."""
    import json

    (folder / "qrels").mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w") as fh:
        for doc_id, (title, text) in docs.items():
            fh.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w") as fh:
        for qid, text in queries.items():
            fh.write(json.dumps({"_id": qid, "text": text}) + "\n")
    rows = "".join(f"{q}\t{d}\t1\n" for q, d in qrels.items())
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    (folder / "README.md").write_text(
        "| system | nDCG@10 | source |\n| --- | --- | --- |\n| BM25 | 0.5000 | x |\n"
    )
    return folder


# Known answers over five mixed documents that share words ("creek", "every",
# "checked"), so only the right passage answers: (question, sentence to quote,
# file it is in).
KNOWN_ANSWERS = [
    (
        "How often is the rain gauge at Larch Creek calibrated?",
        "The rain gauge at Larch Creek is calibrated every six months by the regional "
        "hydrology office.",
        "larch-creek.md",
    ),
    (
        "How often are the greenhouse drip lines flushed?",
        "The drip lines are flushed with clean water every Friday to keep the emitters clear.",
        "greenhouse.txt",
    ),
    (
        "How many times a day is the sourdough starter fed?",
        "The sourdough starter is fed twice a day, at seven in the morning and seven at night.",
        "bakery.pdf",
    ),
]

# Questions the field notes do not answer: one off topic, and two on topics
# they touch (a sentence of each is over the old 0.25 similarity floor).
UNANSWERED = [
    "Who wrote the opera Carmen?",
    "Which pesticide is sprayed on the tomatoes?",
    "What price does the bakery charge for a loaf?",
]


def write_field_notes(folder: Path) -> Path:
    """Five mixed documents holding the KNOWN_ANSWERS among close distractors."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "larch-creek.md").write_text(
        "# Larch Creek weather station\n\nThe station stands on the north bank of Larch Creek, "
        "four hundred metres above sea level. " + KNOWN_ANSWERS[0][1] + " The anemometer "
        "bearings are replaced every two years. Snow depth is read by hand each morning "
        "from November to March.\n",
        encoding="utf-8",
    )
    (folder / "greenhouse.txt").write_text(
        "The greenhouse grows tomatoes and peppers on raised benches. Irrigation runs through "
        "drip lines laid along every bench. " + KNOWN_ANSWERS[1][1] + " The roof vents open "
        "automatically when the air is warmer than twenty-eight degrees.\n",
        encoding="utf-8",
    )
    (folder / "bees.html").write_text(
        "<html><head><title>Apiary</title></head><body><h1>Apiary</h1><p>The hives by the "
        "creek are inspected every nine days during the swarming season. Each inspection "
        "checks the brood, the queen cells and the honey stores.</p></body></html>",
        encoding="utf-8",
    )
    make_docx(
        folder / "footbridge.docx",
        "Footbridge",
        [
            "The wooden footbridge over the creek is checked for rot every spring.",
            "Loose planks are replaced before the summer walking season begins.",
        ],
    )
    make_pdf(
        folder / "bakery.pdf",
        [
            "Village bakery routine. The ovens are lit at four in the morning. "
            + KNOWN_ANSWERS[2][1]
            + " Rye loaves rest for two hours before baking."
        ],
    )
    return folder


# -- hostile files -------------------------------------------------------------------


def _pdf_bytes(objects: list[bytes]) -> bytes:
    """A PDF file around `objects` (object 1 is the catalog)."""
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
    return out


def decompression_bomb_pdf(path: Path, megabytes: int) -> Path:
    """A one-page PDF whose ~1/1000-size content stream inflates to
    `megabytes` MB: a small file that makes a parser allocate a lot.
    Deflated in one piece: the same data from `repeated_zlib` (a full flush
    every megabyte) took pdfium longer than test_hostile_input's 4 s parse
    timeout to blow the memory cap, so the bomb read as a slow file there."""
    import zlib

    raw = b"BT /F1 10 Tf 40 750 Td (bomb) Tj ET\n" + b" " * (megabytes * 1024 * 1024)
    stream = zlib.compress(raw, 9)
    path.write_bytes(
        _pdf_bytes(
            [
                b"<< /Type /Catalog /Pages 2 0 R >>",
                b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
                b"/Resources << /Font << /F1 5 0 R >> >> >>",
                b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream)
                + stream
                + b"\nendstream",
                b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
            ]
        )
    )
    return path


def repeated_zlib(head: bytes, block: bytes, times: int) -> bytes:
    """zlib.compress(head + block * times, 9) in effect, a valid zlib stream
    of that data, without making or deflating the whole: after a full flush
    the compressor starts afresh, so `block` deflates to the same bytes
    every time (a gigabyte took the test process tens of seconds)."""
    import zlib

    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    start = deflate.compress(head) + deflate.flush(zlib.Z_FULL_FLUSH)
    once = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    assert deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH) == once
    end = deflate.flush(zlib.Z_FINISH)
    checksum = zlib.adler32(head)
    for _ in range(times):
        checksum = zlib.adler32(block, checksum)
    return b"\x78\xda" + start + once * times + end + checksum.to_bytes(4, "big")


def glued_words_stream() -> bytes:
    """A page's content stream of kerned words with no space characters: it
    looks glued, so the loader re-reads the page with pdfminer, slowly."""
    words = ("The quick brown fox jumps over the lazy dog while seven wizards box " * 6).split()
    lines = []
    for start in range(0, len(words), 12):
        pieces = b"-120".join(b"(%s)" % w.encode() for w in words[start : start + 12])
        lines.append(b"[" + pieces + b"] TJ 0 -14 Td")
    return b"BT /F1 10 Tf 40 750 Td " + b" ".join(lines) + b" ET"


def slow_pdf(path: Path, pages: int) -> Path:
    """Many pages sharing one content stream of kerned words with no space
    characters: each page looks glued, so the loader re-reads every one
    with pdfminer (~10 ms a page): a small file that parses for a long time."""
    content = glued_words_stream()
    kids = b" ".join(b"%d 0 R" % (5 + i) for i in range(pages))
    page = (
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 3 0 R "
        b"/Resources << /Font << /F1 4 0 R >> >> >>"
    )
    path.write_bytes(
        _pdf_bytes(
            [
                b"<< /Type /Catalog /Pages 2 0 R >>",
                b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % pages,
                b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
                b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
            ]
            + [page] * pages
        )
    )
    return path


def image_only_pdf(path: Path, text: str) -> Path:
    """A 'scanned' page: the text exists only as pixels (PIL), no text layer."""
    from PIL import Image, ImageDraw, ImageFont
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    image = Image.new("L", (1700, 300), 255)
    ImageDraw.Draw(image).text((40, 100), text, fill=0, font=ImageFont.load_default(size=56))
    # A strip of a page, not A4: OCR renders the page at 300 dpi, and a strip
    # holding the one line reads the same in less time.
    c = canvas.Canvas(str(path), pagesize=(A4[0], 155))
    c.drawImage(ImageReader(image), 30, 30, width=540, height=95)
    c.showPage()
    c.save()
    return path


def zip_bomb_docx(path: Path, megabytes: int) -> Path:
    """A real DOCX whose document.xml inflates to `megabytes` MB (blank
    space inside <w:body>), from under 1/1000 of that on disk."""
    return _inflated_docx(path, b" " * (1 << 20), megabytes)


def text_bomb_docx(path: Path, megabytes: int) -> Path:
    """A real DOCX of one sentence repeated: `megabytes` MB of paragraphs
    (about as much extracted text) from under 1/100 of that on disk."""
    sentence = b"All work and no play makes Jack a dull boy. " * 22
    paragraph = b"<w:p><w:r><w:t>" + sentence + b"</w:t></w:r></w:p>"
    return _inflated_docx(path, paragraph * ((1 << 20) // len(paragraph)), megabytes)


def _inflated_docx(path: Path, block: bytes, megabytes: int) -> Path:
    """A real DOCX with `block` written `megabytes` times inside <w:body>."""
    import zipfile

    source = make_docx(path.with_name(path.name + ".src"), "Bomb", ["x"])
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename != "word/document.xml":
                zout.writestr(item, data)
                continue
            body = data.index(b"<w:body>") + len(b"<w:body>")
            with zout.open(item.filename, "w", force_zip64=True) as fh:
                fh.write(data[:body])
                for _ in range(megabytes):
                    fh.write(block)
                fh.write(data[body:])
    source.unlink()
    return path


def _one_page_pdf(width: float, height: float, content: bytes, compress: bool = False) -> bytes:
    import zlib

    stream = zlib.compress(content, 9) if compress else content
    flate = b" /Filter /FlateDecode" if compress else b""
    return _pdf_bytes(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %g %g] /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>" % (width, height),
            b"<< /Length %d%s >>\nstream\n" % (len(stream), flate) + stream + b"\nendstream",
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        ]
    )


def huge_page_pdf(path: Path, text: str, points: float = 14_400) -> Path:
    """One page `points` square (14,400 pt, PDF's largest): at the app's
    usual scale its bitmap would be about 1.5 GiB."""
    content = b"BT /F1 240 Tf 200 %g Td (%s) Tj ET" % (points - 600, text.encode("latin-1"))
    path.write_bytes(_one_page_pdf(points, points, content))
    return path


def slow_render_pdf(path: Path, strokes: int = 200_000) -> Path:
    """A 30 KB page of `strokes` overlapping lines: pdfium draws it for
    about half a minute (its text layer is empty)."""
    lines = b"".join(b"%d 0 m %d 792 l S\n" % (i % 612, 612 - i % 612) for i in range(strokes))
    path.write_bytes(_one_page_pdf(612, 792, b"1 w " + lines, compress=True))
    return path


# -- hostile Markdown ----------------------------------------------------------------

# Model or document text that tries to make the page link to, or fetch,
# somewhere else. Every payload names evil.example (or a javascript:/data:
# URL), so a test can tell a leaked link from the app's own.
HOSTILE_MARKDOWN = [
    "Inline link: [click here](https://evil.example/inline) [1]",
    "Inline image: ![pixel](https://evil.example/pixel.png) [1]",
    "Reference link: see [1] and [docs][x].\n\n[1]: https://evil.example/ref-1\n"
    "[x]: https://evil.example/ref-x",
    "Reference image: ![tracker][img]\n\n[img]: https://evil.example/ref.png",
    "Marker as link: [1](https://evil.example/marker) and [1][1]\n\n"
    "[1]: <https://evil.example/marker-def>",
    "Autolinks: <https://evil.example/angle> <mailto:me@evil.example> me@evil.example",
    "Bare URLs: https://evil.example/bare HTTP://EVIL.EXAMPLE/upper www.evil.example/www",
    'Raw HTML: <a href="https://evil.example/html">x</a> <img src="https://evil.example/h.png">'
    '<iframe src="https://evil.example/frame"></iframe><script src="https://evil.example/s.js">'
    "</script>",
    "Script URLs: [js](javascript:alert(1)) [data](data:text/html;base64,PHNjcmlwdD4=) "
    "![d](data:image/png;base64,iVBORw0KGgo=)",
    "Look-alike brackets: ［x］（https://evil.example/fullwidth） ⟦y⟧⦅https://evil.example/w⦆",
    "Escaped: \\[a\\](https://evil.example/esc) [b\\](https://evil.example/esc2)",
    "Code: `[c](https://evil.example/code)` and ``x `[d](https://evil.example/c2)` y``",
    "Table:\n\n| a | b |\n|---|---|\n| `x | [t](https://evil.example/table) ` | y |",
    "Fence in a list:\n\n- item\n\n  ```\n  [f](https://evil.example/fence)\n"
    "out [g](https://evil.example/after)\n  ```",
    "Directive: :blue[coloured](https://evil.example/directive) :material/link:",
    "Math: $\\href{https://evil.example/katex}{x}$ and $$\\url{https://evil.example/k2}$$",
    "Footnote: text[^n]\n\n[^n]: https://evil.example/footnote",
    "Entities: &#91;e&#93;&#40;https://evil.example/entity&#41; &lt;b&gt;",
    "Nested: [[[[1]]]](https://evil.example/nested) ![![x](https://evil.example/a.png)](y)",
    "Unclosed fence (last: it runs to the end):\n```\n[u](https://evil.example/unclosed)",
]


# -- the real `ingest` command in a process of its own ---------------------------------


def ingest_process(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """`ingest ARGS --json` in a new session (its parser workers are
    reaped with it by `reap`), with `env` over this process's environment."""
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "ingest"), *args, "--json"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def reap(process: subprocess.Popen) -> None:
    """Make sure nothing the run started outlives it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


# -- a clock the tests move by hand ------------------------------------------------------


class Clock:
    """Stands in for time.time where a module takes a `clock`: the tests
    move it instead of sleeping."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- documents put straight into a store writer (rag.store.StoreWriter) ---------------

STORE_CORPUS = {
    "fruit.md": ["Apple pie with cinnamon and baked apples.", "Banana bread needs ripe bananas."],
    "pets.md": ["The cat sleeps on the warm windowsill.", "Dogs love long walks in the park."],
    "space.md": ["The telescope observed a distant galaxy.", "Rockets carry satellites to orbit."],
}


def text_vector(text: str, dimension: int = 8) -> np.ndarray:
    """A fixed unit vector per text, standing in for an embedding."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
    v = np.random.default_rng(seed).standard_normal(dimension).astype(np.float32)
    return v / np.linalg.norm(v)


def put_texts(
    writer, path: str, texts: list[str], vectors: np.ndarray | None = None, title: str = ""
) -> None:
    """Store a document of `texts`, one chunk each (offsets as if joined by
    one space), with `text_vector`s of the writer's dimension unless given."""
    chunks, offset = [], 0
    for ordinal, text in enumerate(texts):
        chunks.append(Chunk(text, path, offset, offset + len(text), title=title, ordinal=ordinal))
        offset += len(text) + 1
    if vectors is None:
        vectors = np.stack([text_vector(t, writer.params.dimension) for t in texts])
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    entry = DocumentEntry(path=path, content_hash=digest, kind="text", title=title, size=offset,
                          mtime=1.0)  # fmt: skip
    writer.put(entry, chunks, vectors)


def fill_store(store, params, corpus: dict[str, list[str]] = STORE_CORPUS) -> None:
    """Publish `corpus` (path -> chunk texts) in one writer."""
    with store.writer(params) as w:
        for path, texts in corpus.items():
            put_texts(w, path, texts)


def texts_of(snap) -> dict[str, list[str]]:
    """Every document's chunk texts in a snapshot or writer, by path."""
    return {d.path: [c.text for c in snap.document_chunks(d.path)] for d in snap.documents()}


def delete_box(at):
    """The Manage tab's "Delete documents" picker (the Ask tab's filters
    are pickers too)."""
    return next(m for m in at.multiselect if m.label == "Delete documents")


# Texts that stress an embedder: padding, a word, past the 256-token window,
# non-ASCII; what two embedding paths must agree on.
EMBED_TEXTS = [
    "What is the capital of France?",
    "  Aspirin lowers the risk of a first heart attack in adults over fifty.  ",
    "short",
    "The mitochondria is the powerhouse of the cell. " * 60,  # past the 256-token window
    "Vitamin D deficiency is associated with an increased risk of respiratory infections.",
    "Ünïcödé, 数字 and punctuation: (a) [b] {c} — fine?",
]
