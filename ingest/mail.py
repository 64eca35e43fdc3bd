"""E-mail: MIME messages (.eml, the standard library's `email`) and Outlook
messages (.msg, extract-msg), told apart by their bytes.

A message is one document: its headers (subject, from, to, cc, date) and
body first, cited by the file alone, then each attachment of a supported
type parsed by its own loader and cited by name: "message.eml, attachment
report.pdf, page 2". The store, --sync and deletion see one path, so
changing or deleting the message replaces or removes its attachments'
passages with it. An HTML body goes through the HTML loader (scripts, styles
and frames dropped). An attachment that cannot be read is left out and
named in the document's `notes`, which the ingest reports; one of a type we
do not read (an image, a zip) is left out silently.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import re
from collections.abc import Iterator
from pathlib import PureWindowsPath
from typing import Any

from ingest import loaders, tables
from ingest.sections import Sections
from ingest.tables import clean
from rag.errors import BadDocument
from rag.types import Document, TableSpan

# A message inside a message inside ...: deeper ones are left out (and named).
MAX_DEPTH = 3
_NAME_CHARS = 120
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ENCRYPTED = {"application/pkcs7-mime", "application/x-pkcs7-mime", "multipart/encrypted"}


def load_message(
    data: bytes, ocr: bool = False, max_chars: int | None = None, depth: int = 0
) -> Document:
    """A message (either format) as one document: the headers and body as
    an unlabelled section, then its attachments' sections."""
    if data.startswith(loaders.OLE_MAGIC):
        headers, body, html, attachments = _msg(data)
    else:
        headers, body, html, attachments = _eml(data)
    head = "\n".join(f"{name}: {value}" for name, value in headers if value)
    text = clean(body).strip()
    found: tuple[TableSpan, ...] = ()
    if not text and html:
        # An HTML body without visible text: the headers stand.
        with contextlib.suppress(BadDocument):
            text, _, _, found = loaders.html(html)
    out = Sections()
    out.add("", f"{head}\n\n{text}" if text else head, tables.shifted(found, len(head) + 2))
    notes: list[str] = []
    for name, content in attachments:
        _attach(out, notes, name, content, ocr, max_chars, depth)
    subject = next((value for name, value in headers if name == "Subject"), "")
    if not (subject or text or len(out.sections) > 1):
        raise BadDocument("an empty message (no subject, body or attachment to read)")
    return out.document("email", subject, notes)


def _attach(
    out: Sections,
    notes: list[str],
    name: str,
    content: bytes | None,
    ocr: bool,
    max_chars: int | None,
    depth: int,
) -> None:
    """Parse one attachment and add it as sections labelled by its name (and
    its page, slide, chapter or own attachment); a failure becomes a note."""
    kind = loaders.kind_of(name)
    if kind is None:
        return
    label = f"attachment {name}"
    try:
        if content is None:
            raise BadDocument("its content could not be read from the message")
        if kind == "email" and depth + 1 >= MAX_DEPTH:
            raise BadDocument(f"messages nested more than {MAX_DEPTH} deep are not read")
        room = None if max_chars is None else max(max_chars - out.length, 0)
        document = loaders.parse(content, kind, ocr, room, depth + 1)
    except BadDocument as exc:
        notes.append(f"{label} skipped: {exc}")
        return
    spans = [(p.start, p.end, f"page {p.number}") for p in document.pages] or [
        (s.start, s.end, s.label) for s in document.sections
    ]
    if not spans:
        spans = [(0, len(document.text), "")]
    for start, end, where in spans:
        inside = [t for t in document.tables if start <= t.start < end]
        part = document.text[start:end]
        out.add(", ".join(p for p in (label, where) if p), part, tables.shifted(inside, -start))
    notes.extend(f"{label}, {note}" for note in document.notes)


def attachment_name(raw: str | None, fallback: str) -> str:
    """An attachment's file name as shown in citations: its last path part,
    on one line, at most 120 characters."""
    name = PureWindowsPath(raw or "").name.strip() or fallback
    name = " ".join(_CONTROL.sub(" ", name).split())
    return name[:_NAME_CHARS] or fallback


# -- MIME (.eml) -----------------------------------------------------------------------


Parsed = tuple[list[tuple[str, str]], str, bytes, list[tuple[str, bytes | None]]]


def _eml(data: bytes) -> Parsed:
    """(headers, plain body, HTML body, attachments) of a MIME message."""
    import email
    from email import policy

    if b"\x00" in data[:8192]:
        raise BadDocument("not an e-mail message (binary content, NUL bytes found)")
    message = email.message_from_bytes(data, policy=policy.default)
    if not any(message.get(h) for h in ("From", "To", "Subject", "Date", "Message-ID")):
        raise BadDocument("not an e-mail message (no From, To, Subject or Date header)")
    if message.get_content_type() in _ENCRYPTED:
        if message.get_param("smime-type") == "signed-data":
            raise BadDocument("an opaque-signed S/MIME message: its text is not read here")
        raise BadDocument("encrypted message (S/MIME or OpenPGP): it cannot be read here")
    headers = [(h, _header(message, h)) for h in ("Subject", "From", "To", "Cc")]
    headers.append(("Date", _date(message)))
    plain, html = _part_text(message.get_body(preferencelist=("plain",))), b""
    if not plain.strip():
        part = message.get_body(preferencelist=("html",))
        html = _part_text(part).encode("utf-8") if part is not None else b""
    return headers, plain, html, list(_eml_attachments(message))


def _header(message: Any, name: str) -> str:
    try:
        return " ".join(str(message.get(name) or "").split())
    except Exception:  # a malformed header the parser keeps as a defect
        return ""


def _date(message: Any) -> str:
    try:
        when = message["Date"].datetime if message["Date"] is not None else None
    except Exception:
        when = None
    return _when(when) if when else _header(message, "Date")


def _when(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M %z").strip()


def _part_text(part: Any) -> str:
    if part is None:
        return ""
    try:
        return str(part.get_content())
    except (LookupError, UnicodeError):  # an unknown or lying charset
        payload = part.get_payload(decode=True) or b""
        return payload.decode("utf-8", "replace")


def _eml_attachments(message: Any) -> Iterator[tuple[str, bytes | None]]:
    for number, part in enumerate(message.iter_attachments(), start=1):
        if part.get_content_type() == "message/rfc822":
            inner = part.get_payload()
            inner = inner[0] if isinstance(inner, list) and inner else inner
            name = attachment_name(part.get_filename(), f"message {number}.eml")
            yield name, inner.as_bytes() if hasattr(inner, "as_bytes") else None
        else:
            name = attachment_name(part.get_filename(), f"attachment {number}")
            yield name, part.get_payload(decode=True)


# -- Outlook (.msg) --------------------------------------------------------------------


def _msg(data: bytes) -> Parsed:
    """(headers, plain body, HTML body, attachments) of an Outlook message."""
    import extract_msg

    try:
        message: Any = extract_msg.openMsg(io.BytesIO(data), delayAttachments=False)
    except MemoryError:
        raise
    except Exception as exc:  # olefile's and extract-msg's own errors on damage
        raise BadDocument(
            f"not a valid Outlook .msg file ({exc.__class__.__name__}: {exc})"
        ) from None
    try:
        if not hasattr(message, "body"):  # a contact, an appointment, a task ...
            raise BadDocument("an Outlook item that is not a mail message")
        if (message.classType or "").lower().endswith(".smime"):  # signed ones end otherwise
            raise BadDocument("encrypted message (S/MIME): it cannot be read here")
        headers = [
            ("Subject", _plain(message.subject)),
            ("From", _plain(message.sender)),
            ("To", _plain(message.to)),
            ("Cc", _plain(message.cc)),
            ("Date", _when(message.date) if isinstance(message.date, dt.datetime) else ""),
        ]
        body = message.body or ""
        html = b"" if body.strip() else (message.htmlBody or b"")
        attachments = list(_msg_attachments(message))
    except BadDocument:
        raise
    except Exception as exc:  # a damaged stream surfaces only while reading it
        raise BadDocument(
            f"not a valid Outlook .msg file ({exc.__class__.__name__}: {exc})"
        ) from None
    finally:
        message.close()
    return headers, body, html, attachments


def _plain(value: object) -> str:
    return " ".join(str(value or "").split())


def _msg_attachments(message: Any) -> Iterator[tuple[str, bytes | None]]:
    for number, attachment in enumerate(message.attachments, start=1):
        raw = getattr(attachment, "longFilename", None) or getattr(attachment, "name", None)
        name = attachment_name(raw, f"attachment {number}")
        content = getattr(attachment, "data", None)
        # An embedded Outlook message comes back as an object, not bytes: its
        # text is not read (named in the notes when it is a supported type).
        yield name, content if isinstance(content, bytes) else None
