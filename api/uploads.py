"""An upload's multipart body, read as it arrives (issue 29), only once the
guard and the route have let the request in: each file of the `files`
field goes to an unnamed temporary file (on the indexes' disk, never in
memory) as its bytes come; a file over RAG_MAX_FILE_MB stops being kept
there (it is refused by name afterwards) and a file past
RAG_MAX_UPLOAD_FILES ends the request with 400. The body as a whole is
bounded by the guard (RAG_MAX_FILE_MB x RAG_MAX_UPLOAD_FILES)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from api.errors import ApiError

if TYPE_CHECKING:  # defined for type checkers only
    from python_multipart.multipart import MultipartCallbacks

FIELD = "files"
# The OpenAPI description of the body, which FastAPI no longer derives: the
# route reads the stream itself.
SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FIELD],
                    "properties": {
                        FIELD: {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            }
        },
    }
}


@dataclass
class Part:
    """One uploaded file: its name as sent, and its bytes on disk; `file` is
    None once it went over the size limit (its bytes are dropped)."""

    name: str
    file: IO[bytes] | None
    size: int = 0

    def read(self) -> bytes:
        assert self.file is not None
        self.file.seek(0)
        return self.file.read()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class _Reader:
    """python-multipart's callbacks: the file parts, written as they come."""

    def __init__(self, folder: Path, max_bytes: int, max_files: int) -> None:
        self.folder, self.max_bytes, self.max_files = folder, max_bytes, max_files
        self.parts: list[Part] = []
        self._part: Part | None = None
        self._header = (b"", b"")
        self._disposition = b""

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._field,
            "on_header_value": self._value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
        }

    def _begin(self) -> None:
        self._part, self._disposition = None, b""

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._header = (self._header[0] + data[start:end], self._header[1])

    def _value(self, data: bytes, start: int, end: int) -> None:
        self._header = (self._header[0], self._header[1] + data[start:end])

    def _header_end(self) -> None:
        name, value = self._header
        if name.lower() == b"content-disposition":
            self._disposition = value
        self._header = (b"", b"")

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if options.get(b"name") != FIELD.encode() or b"filename" not in options:
            return  # another field: its bytes are dropped as they come
        if len(self.parts) == self.max_files:
            raise ApiError(
                400, f"At most {self.max_files} files per upload (RAG_MAX_UPLOAD_FILES).",
                code="too_many_files",
            )  # fmt: skip
        name = options[b"filename"].decode("utf-8", "replace")
        # Closed by Part.close (the route's `finally`); unnamed, so nothing is left.
        self._part = Part(name, tempfile.TemporaryFile(dir=self.folder))  # noqa: SIM115
        self.parts.append(self._part)

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part is None or part.file is None:
            return
        part.size += end - start
        if part.size > self.max_bytes:
            part.close()  # refused by name later; nothing more is kept
            return
        part.file.write(data[start:end])

    def close(self) -> None:
        for part in self.parts:
            part.close()


async def read_files(request: Request, folder: Path, max_mb: float, max_files: int) -> list[Part]:
    """The files of the request's multipart body, in the order sent, each in
    an unnamed temporary file under `folder`. The caller closes them."""
    kind, params = parse_options_header(request.headers.get("content-type"))
    if kind != b"multipart/form-data" or b"boundary" not in params:
        raise ApiError(
            400, f"Send the files as multipart/form-data, in the field `{FIELD}`.",
            code="invalid_request",
        )  # fmt: skip
    reader = _Reader(folder, int(max_mb * 1024 * 1024), max_files)
    parser = MultipartParser(params[b"boundary"], reader.callbacks())
    try:
        async for chunk in request.stream():
            await run_in_threadpool(parser.write, chunk)  # disk writes: off the event loop
        parser.finalize()
    except BaseException as exc:
        reader.close()
        if isinstance(exc, FormParserError):
            raise ApiError(
                400, "The multipart body is malformed.", code="invalid_request"
            ) from None
        raise
    if not reader.parts:
        raise ApiError(400, f"No file in the field `{FIELD}`.", code="invalid_request")
    return reader.parts
