"""A real HTTP server on loopback that speaks the OpenAI chat-completions
streaming format and misbehaves on purpose, for the faults a real vLLM
cannot be made to produce: slowness, hangs, 5xx, broken or truncated SSE.

The fault is chosen by the URL: `server.url("slow")` is a base URL whose
requests get the "slow" behaviour, `server.url("ok")` a well-behaved
server. Screen requests (those with a `response_format`) and deep reads can
be told apart, so a fault can hit one stage only: `server.url("slow",
only="screen")`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "misbehaving-model"
ANSWER = "The answer is in the first passage [1]."


@dataclass
class Log:
    """Every request received, as (fault, stage) pairs, in order."""

    requests: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, fault: str, stage: str) -> None:
        with self.lock:
            self.requests.append((fault, stage))

    def count(self, fault: str, stage: str | None = None) -> int:
        with self.lock:
            return sum(1 for f, s in self.requests if f == fault and stage in (None, s))


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _usage() -> bytes:
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _verdicts(request: dict[str, Any]) -> str:
    schema = request["response_format"]["json_schema"]["schema"]
    ids = schema["properties"]["verdicts"]["items"]["properties"]["id"]["enum"]
    return json.dumps(
        {"verdicts": [{"id": i, "score": 3, "relevant": True, "reason": "fake"} for i in ids]}
    )


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- routing -------------------------------------------------------------

    def do_GET(self) -> None:
        parts = self.path.strip("/").split("/")
        if parts[-1] == "models":
            self._json(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        # /<fault>/<only>/v1/chat/completions
        parts = self.path.strip("/").split("/")
        fault, only = parts[0], parts[1]
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        stage = "screen" if request.get("response_format") else "read"
        self.server.log.add(fault, stage)
        if only not in ("all", stage):
            fault = "ok"
        getattr(self, "_" + fault.replace("-", "_"))(request, stage)

    # -- helpers ---------------------------------------------------------------

    def _json(self, status: int, body: Any, close: bool = False) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")  # the body ends when we close
        self.end_headers()
        self.close_connection = True

    def _send(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()

    def _answer_text(self, request: dict[str, Any], stage: str) -> str:
        return _verdicts(request) if stage == "screen" else self.server.answer

    def _hold(self) -> None:
        """Keep the connection open without a byte until the test ends."""
        self.server.release.wait(self.server.hold_seconds)
        self.close_connection = True

    # -- behaviours ------------------------------------------------------------

    def _ok(self, request: dict[str, Any], stage: str) -> None:
        self._start_stream()
        self._send(_chunk({"role": "assistant", "content": ""}))
        text = self._answer_text(request, stage)
        for start in range(0, len(text), 8):
            self._send(_chunk({"content": text[start : start + 8]}))
        self._send(_chunk({}, finish="stop"))
        self._send(_usage())
        self._send(b"data: [DONE]\n\n")

    def _slow(self, request: dict[str, Any], stage: str) -> None:
        """Accepts the request, then says nothing (no status line)."""
        self._hold()

    def _hang_mid_stream(self, request: dict[str, Any], stage: str) -> None:
        """Starts answering, then stalls forever."""
        self._start_stream()
        self._send(_chunk({"role": "assistant", "content": "The answer"}))
        self._hold()

    def _http_500(self, request: dict[str, Any], stage: str) -> None:
        self._json(500, {"error": {"message": "internal server error (on purpose)"}})

    def _flaky(self, request: dict[str, Any], stage: str) -> None:
        """HTTP 503 on every other request, starting with the first."""
        with self.server.log.lock:
            self.server.flaky_calls += 1
            fail = self.server.flaky_calls % 2 == 1
        if fail:
            self._json(503, {"error": {"message": "overloaded (on purpose)"}})
        else:
            self._ok(request, stage)

    def _context_400(self, request: dict[str, Any], stage: str) -> None:
        self._json(
            400,
            {
                "error": {
                    "message": "This model's maximum context length is 2048 tokens. However, "
                    "you requested 9000 tokens. Please reduce the length of the messages.",
                    "type": "BadRequestError",
                    "code": 400,
                }
            },
        )

    def _malformed_sse(self, request: dict[str, Any], stage: str) -> None:
        self._start_stream()
        self._send(_chunk({"role": "assistant", "content": "The"}))
        self._send(b"data: {this is not json\n\n")
        self._send(b"data: [DONE]\n\n")

    def _wrong_shape(self, request: dict[str, Any], stage: str) -> None:
        """Valid JSON that is not a chat-completion chunk."""
        self._start_stream()
        self._send(b'data: {"choices": "surprise", "usage": 7}\n\n')
        self._send(b"data: [DONE]\n\n")

    def _error_event(self, request: dict[str, Any], stage: str) -> None:
        """An error reported inside the stream, after some text."""
        self._start_stream()
        self._send(_chunk({"role": "assistant", "content": "The"}))
        self._send(b'data: {"error": {"message": "engine died (on purpose)"}}\n\n')

    def _cut_off(self, request: dict[str, Any], stage: str) -> None:
        """Chunked body that stops in the middle: the peer just vanishes."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        data = _chunk({"role": "assistant", "content": "The answer"})
        self._send(b"%x\r\n" % len(data) + data + b"\r\n")
        self._send(b"400\r\npartial")  # announces 1024 bytes, sends 7, hangs up
        self.close_connection = True

    def _cut_off_once(self, request: dict[str, Any], stage: str) -> None:
        """Cut off on every other request, the well-behaved answer otherwise:
        a replica behind a router that dies mid-answer, then another one."""
        with self.server.log.lock:
            self.server.flaky_calls += 1
            fail = self.server.flaky_calls % 2 == 1
        if not fail:
            self._ok(request, stage)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        # The first two of the pieces `_ok` sends, then the peer vanishes.
        text = self._answer_text(request, stage)
        for delta in ({"role": "assistant", "content": ""}, {"content": text[:8]},
                      {"content": text[8:16]}):  # fmt: skip
            data = _chunk(delta)
            self._send(b"%x\r\n" % len(data) + data + b"\r\n")
        self._send(b"400\r\npartial")
        self.close_connection = True

    def _ends_early(self, request: dict[str, Any], stage: str) -> None:
        """A clean end of stream before any finish_reason or [DONE]."""
        self._start_stream()
        self._send(_chunk({"role": "assistant", "content": "The answer is"}))

    def _html_page(self, request: dict[str, Any], stage: str) -> None:
        """What a misconfigured proxy sends: 200 with an HTML page."""
        data = b"<html><body><h1>Welcome to nginx!</h1></body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.log = Log()
        self.release = threading.Event()
        self.hold_seconds = 120.0
        self.flaky_calls = 0
        self.answer = ANSWER  # what deep reads (and rewrites) say; a test may change it


@dataclass
class Misbehaving:
    server: _Server

    @property
    def log(self) -> Log:
        return self.server.log

    def answer_with(self, text: str) -> None:
        """Deep reads and follow-up rewrites answer `text` from now on."""
        self.server.answer = text

    def url(self, fault: str, only: str = "all") -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/{fault}/{only}/v1"


@contextmanager
def misbehaving_server() -> Iterator[Misbehaving]:
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, name="misbehaving", daemon=True)
    thread.start()
    try:
        yield Misbehaving(server)
    finally:
        server.release.set()  # let held connections go
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
