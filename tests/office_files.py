"""Builders for real slide decks, e-books and e-mail files, each written by
the library that makes them: python-pptx, ebooklib, the standard library's
`email` and msgforge (an .msg writer; extract-msg, which reads them, cannot
write one)."""

from __future__ import annotations

import datetime as dt
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

Slide = dict[str, object]  # title, texts (list[str]), table (list[list[str]]), notes


def make_pptx(path: Path, slides: list[Slide]) -> Path:
    """A deck with one slide per entry: its title, text boxes, an optional
    table (header row first) and speaker notes."""
    from pptx import Presentation
    from pptx.util import Inches

    deck = Presentation()
    layout = deck.slide_layouts[5]  # title only: the rest is added by hand
    for spec in slides:
        slide = deck.slides.add_slide(layout)
        if spec.get("title") and slide.shapes.title is not None:
            slide.shapes.title.text = str(spec["title"])
        top = 1.5
        for text in spec.get("texts", []):  # type: ignore[attr-defined]
            box = slide.shapes.add_textbox(Inches(1), Inches(top), Inches(8), Inches(1))
            box.text_frame.text = text
            top += 1
        rows = spec.get("table")
        if rows:
            shape = slide.shapes.add_table(
                len(rows),
                len(rows[0]),
                Inches(1),
                Inches(top),
                Inches(8),
                Inches(2),  # type: ignore[arg-type]
            )
            for r, row in enumerate(rows):  # type: ignore[arg-type]
                for c, value in enumerate(row):
                    shape.table.cell(r, c).text = value
        if spec.get("notes"):
            slide.notes_slide.notes_text_frame.text = str(spec["notes"])
    deck.save(str(path))
    return path


def make_epub(path: Path, title: str, chapters: list[tuple[str, str]]) -> Path:
    """An EPUB 3 book of (chapter title, chapter HTML body) in reading order,
    with its navigation document and NCX, as ebooklib writes them."""
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier("test-book")
    book.set_title(title)
    book.set_language("en")
    items = []
    for number, (name, body) in enumerate(chapters, start=1):
        item = epub.EpubHtml(title=name, file_name=f"chap_{number}.xhtml", lang="en")
        item.content = f"<html><body>{body}</body></html>"
        book.add_item(item)
        items.append(item)
    book.toc = items
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", *items]
    epub.write_epub(str(path), book)
    return path


def make_eml(
    path: Path,
    subject: str,
    text: str | None = None,
    html: str | None = None,
    attachments: list[tuple[str, bytes]] = (),  # type: ignore[assignment]
) -> Path:
    """A MIME message (the standard library's `email`), plain and/or HTML
    body, with attachments (name, bytes)."""
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = "Ada Lovelace <ada@example.org>"
    message["To"] = "Charles Babbage <charles@example.org>"
    message["Date"] = format_datetime(dt.datetime(2025, 3, 14, 9, 26, tzinfo=dt.UTC))
    if text is not None:
        message.set_content(text)
    if html is not None:
        if text is None:
            message.set_content(html, subtype="html")
        else:
            message.add_alternative(html, subtype="html")
    for name, data in attachments:
        maintype, subtype = _mime_type(name).split("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    path.write_bytes(bytes(message))
    return path


def make_msg(
    path: Path,
    subject: str,
    text: str | None = None,
    html: str | None = None,
    attachments: list[tuple[str, bytes]] = (),  # type: ignore[assignment]
) -> Path:
    """An Outlook .msg (msgforge: MS-CFB and MS-OXMSG), sent by Ada to Charles."""
    from msgforge import Message

    message = Message(
        subject=subject,
        text_body=text,
        html_body=html,
        sender=("ada@example.org", "Ada Lovelace"),
        to=[("charles@example.org", "Charles Babbage")],
        sent=dt.datetime(2025, 3, 14, 9, 26),
    )
    for name, data in attachments:
        message.attach_bytes(name, data)
    message.save(str(path))
    return path


def _mime_type(name: str) -> str:
    import mimetypes

    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def make_smime_eml(path: Path, subject: str, text: str) -> Path:
    """A real S/MIME encrypted message (enveloped-data for a throwaway
    certificate, by `cryptography`), with its headers in the clear."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import pkcs7
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "charles@example.org")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    body = pkcs7.PKCS7EnvelopeBuilder().set_data(text.encode()).add_recipient(cert)
    envelope = body.encrypt(serialization.Encoding.SMIME, [])
    head = (
        f"Subject: {subject}\r\nFrom: Ada Lovelace <ada@example.org>\r\n"
        "To: Charles Babbage <charles@example.org>\r\n"
    )
    path.write_bytes(head.encode() + envelope)
    return path
