"""`rag serve` against other web pages and anonymous clients (issue 29,
findings 2 and 3, and the low "errors never carry server paths"), and
`rag serve` / `make run` refusing to start without a login over an app
database that holds accounts (issue 31, item 3). Real server (uvicorn on a
free port), real clients: httpx, the openai client, curl, the MCP client,
and raw sockets for the bodies that never end."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai
import pytest
from api_server import PASSWORD, QUESTION, Server, accounts, offline_settings, serve
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from rag.settings import Settings
from serving import launch
from team.access import Role
from team.appdb import open_app_db

ROOT = Path(__file__).resolve().parent.parent
REBOUND = "rebind.attacker.example"
ATTACKER = "http://attacker.example"
NOTE = ("larch.md", b"# Larches\n\nThe zorblat larch sheds its needles every autumn.", "text/md")
INITIALIZE = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "t", "version": "1"}},
}  # fmt: skip
RAG = [sys.executable, "-c", "from cli.rag_main import main; main()"]  # this checkout's `rag`
MCP_ACCEPT = {"Accept": "application/json, text/event-stream"}


def call(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request, with room for a slow machine (an upload ingests at once)."""
    return httpx.request(method, url, timeout=300, **kwargs)


@pytest.fixture
def no_login(tmp_path, docs_index) -> Iterator[Server]:
    """`rag serve` with RAG_AUTH=none on loopback: a keyless request is the local admin."""
    settings = offline_settings(tmp_path, docs_index).model_copy(update={"auth": "none"})
    with serve(settings) as url:
        yield Server(url, settings, {})


@pytest.fixture
def with_keys(tmp_path, docs_index) -> Iterator[Server]:
    settings = offline_settings(tmp_path, docs_index)
    keys = accounts(settings)
    with serve(settings) as url:
        yield Server(url, settings, keys)


def documents(url: str, **headers: str) -> list[dict[str, Any]]:
    reply = call("GET", url + "/v1/knowledge-bases/default/documents", headers=headers)
    assert reply.status_code == 200, reply.text
    return list(reply.json()["data"])


def finds_zorblat(url: str, **headers: str) -> bool:
    body = {"model": "default", "query": "zorblat larch", "k": 3, "mode": "bm25"}
    reply = call("POST", url + "/v1/search", json=body, headers=headers)
    assert reply.status_code == 200, reply.text
    return any("zorblat" in d["text"] for d in reply.json()["data"])


# -- finding 2: other web pages ---------------------------------------------------------


def test_a_rebound_host_is_refused_on_every_route_and_changes_nothing(no_login):
    url = no_login.url
    before = documents(url)
    port = url.rsplit(":", 1)[1]
    rebound = {"Host": f"{REBOUND}:{port}", "Origin": f"http://{REBOUND}:{port}"}
    target = f"/v1/knowledge-bases/default/documents/{before[0]['id']}"
    search = {"model": "default", "query": "broken files"}
    for method, path, extra in [
        ("GET", "/v1/models", {}),
        ("POST", "/v1/search", {"json": search}),
        ("GET", "/v1/knowledge-bases/default/stats", {}),
        ("GET", "/v1/knowledge-bases/default/documents", {}),
        ("DELETE", target, {}),
        ("POST", "/v1/knowledge-bases/default/documents", {"files": [("files", NOTE)]}),
        ("POST", "/mcp", {"json": INITIALIZE, "headers": MCP_ACCEPT}),
        ("GET", "/docs", {}),
        ("GET", "/openapi.json", {}),
    ]:
        headers = rebound | extra.pop("headers", {})
        for sent in (headers, {"Host": headers["Host"]}):  # with and without the Origin
            reply = call(method, url + path, headers=sent, **extra)
            assert reply.status_code == 421, (method, path, reply.status_code, reply.text)
            assert "RAG_API_ALLOWED_HOSTS" in reply.text
            assert "broken" not in reply.text.lower(), "no search result leaked"
    assert documents(url) == before, "nothing was deleted"
    assert not finds_zorblat(url), "nothing was uploaded"


def test_a_cross_site_upload_or_delete_is_refused_and_changes_nothing(no_login):
    url = no_login.url
    before = documents(url)
    upload = url + "/v1/knowledge-bases/default/documents"
    # What a page elsewhere can send without a preflight: a multipart form post.
    cross_site = call("POST", upload, files=[("files", NOTE)], headers={"Origin": ATTACKER})
    assert cross_site.status_code == 403, cross_site.text
    assert cross_site.json()["error"]["code"] == "cross_site_request"
    # An older browser (or a plain <form>) may send no Origin: a form post
    # without a key or the custom header is refused all the same.
    form = call("POST", upload, files=[("files", NOTE)])
    assert form.status_code == 403, form.text
    assert "X-Requested-With" in form.json()["error"]["message"]
    as_text = call("POST",
        url + "/v1/search", content=json.dumps({"model": "default", "query": "zorblat"}),
        headers={"Content-Type": "text/plain"},
    )  # fmt: skip
    assert as_text.status_code == 403, as_text.text
    for method, path in [
        ("DELETE", f"/v1/knowledge-bases/default/documents/{before[0]['id']}"),
        ("POST", "/v1/search"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/mcp"),
    ]:
        reply = call(method, url + path, headers={"Origin": ATTACKER} | MCP_ACCEPT, json=INITIALIZE)
        assert reply.status_code == 403, (method, path, reply.text)
    assert documents(url) == before, "nothing was deleted"
    assert not finds_zorblat(url), "nothing was uploaded"


def test_the_openai_client_curl_and_the_mcp_client_still_work(no_login, tmp_path):
    url = no_login.url
    client = openai.OpenAI(base_url=url + "/v1", api_key="EMPTY", max_retries=0)
    assert [m.id for m in client.models.list()] == ["default", "secret"]
    note = tmp_path / "larch.md"
    note.write_bytes(NOTE[1])
    curl = subprocess.run(
        ["curl", "-s", "-S", "-X", "POST", f"{url}/v1/knowledge-bases/default/documents",
         "-H", "Authorization: Bearer EMPTY", "-F", f"files=@{note}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert curl.returncode == 0, curl.stderr
    assert json.loads(curl.stdout)["ingested"] == ["larch.md"], curl.stdout
    assert finds_zorblat(url)
    # A script's form post with the custom header; the server's own page (/docs) sends its Origin.
    scripted = call("POST",
        url + "/v1/knowledge-bases/secret/documents", files=[("files", NOTE)],
        headers={"X-Requested-With": "script", "Origin": url},
    )  # fmt: skip
    assert scripted.status_code == 200, scripted.text
    assert call("GET", url + "/docs").status_code == 200

    async def over_mcp() -> Any:
        http = create_mcp_http_client()
        async with (
            http,
            streamable_http_client(url + "/mcp", http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return await session.call_tool("list_knowledge_bases", {})

    listed = anyio.run(over_mcp)
    assert listed.structured_content == {"result": ["default", "secret"]}


def test_allowed_hosts_name_the_addresses_a_proxy_serves(tmp_path, docs_index):
    settings = offline_settings(tmp_path, docs_index).model_copy(
        update={"auth": "none", "api_allowed_hosts": ["kb.example.org"]}
    )
    with serve(settings) as url:
        named = {"Host": "kb.example.org", "Origin": "https://kb.example.org"}
        named |= {"X-Requested-With": "x"}
        reply = call(
            "POST",
            url + "/v1/knowledge-bases/default/documents",
            files=[("files", NOTE)],
            headers=named,
        )
        assert reply.status_code == 200, reply.text
        assert call("GET", url + "/v1/models", headers={"Host": "localhost"}).status_code == 200
        other = call("GET", url + "/v1/models", headers={"Host": "kb.example.org.attacker.example"})
        assert other.status_code == 421


def test_the_allowed_hosts_setting_reads_a_comma_separated_list(monkeypatch):
    monkeypatch.setenv("RAG_API_ALLOWED_HOSTS", "kb.example.org, kb.internal")
    assert Settings().api_allowed_hosts == ["kb.example.org", "kb.internal"]


# -- finding 3: nothing read before the key is checked -----------------------------------


def _request_head(port: int, path: str, *lines: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *lines]
    return ("\r\n".join(head) + "\r\n\r\n").encode()


def _endless(port: int, head: bytes, chunked: bool, wait: float = 15.0) -> tuple[bytes, int]:
    """Send `head`, then a body that never ends (64 KB every 20 ms) until the
    server answers; returns (its status line and headers, bytes of body sent
    by then). The test fails when no answer comes within `wait` seconds."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(head)
    sent, stop = [0], threading.Event()
    piece = b"x" * 65536
    frame = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece

    def send() -> None:
        while not stop.is_set():
            try:
                sock.sendall(frame)
            except OSError:
                return
            sent[0] += len(piece)
            time.sleep(0.02)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    sock.settimeout(wait)
    answer = b""
    try:
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    except TimeoutError:
        pytest.fail(f"no answer within {wait} s; {sent[0]} bytes of body read meanwhile")
    finally:
        sent_then = sent[0]
        stop.set()
        sender.join(timeout=5)
        sock.close()
    return answer, sent_then


def test_an_anonymous_endless_upload_gets_its_401_before_the_body_is_read(with_keys):
    port = int(with_keys.url.rsplit(":", 1)[1])
    path = "/v1/knowledge-bases/default/documents"
    multipart = "Content-Type: multipart/form-data; boundary=xyz"
    for framing in ("Content-Length: 4294967296", "Transfer-Encoding: chunked"):
        head = _request_head(port, path, multipart, framing)
        started = time.monotonic()
        answer, sent = _endless(port, head, chunked=framing.startswith("Transfer"))
        assert answer.startswith(b"HTTP/1.1 401"), (framing, answer[:200])
        assert time.monotonic() - started < 5 and sent < 64 * 1024 * 1024, (framing, sent)
    # The same for /mcp and a JSON route, and a key of ours that is revoked.
    for path, lines in [("/mcp", ()), ("/v1/search", ("Authorization: Bearer kbqa-0-x",))]:
        head = _request_head(port, path, "Content-Type: application/json",
                             "Transfer-Encoding: chunked", *lines)  # fmt: skip
        answer, _ = _endless(port, head, chunked=True)
        assert answer.startswith(b"HTTP/1.1 401"), (path, answer[:200])


def test_a_keyed_request_over_its_routes_limit_is_refused_from_its_headers(with_keys):
    port = int(with_keys.url.rsplit(":", 1)[1])
    key = f"Authorization: Bearer {with_keys.keys['eve']}"
    head = _request_head(port, "/v1/knowledge-bases/default/documents", key,
                         "Content-Type: multipart/form-data; boundary=xyz",
                         "Content-Length: 4294967296")  # fmt: skip
    answer, sent = _endless(port, head, chunked=False)
    assert answer.startswith(b"HTTP/1.1 413") and sent < 64 * 1024 * 1024, answer[:200]
    head = _request_head(port, "/v1/search", key, "Content-Type: application/json",
                         "Transfer-Encoding: chunked")  # fmt: skip
    answer, sent = _endless(port, head, chunked=True)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # The reader rex may not write: refused from the headers too.
    rex = f"Authorization: Bearer {with_keys.keys['rex']}"
    head = _request_head(port, "/v1/knowledge-bases/default/documents", rex,
                         "Content-Type: multipart/form-data; boundary=xyz",
                         "Transfer-Encoding: chunked")  # fmt: skip
    answer, sent = _endless(port, head, chunked=True)
    assert answer.startswith(b"HTTP/1.1 403") and sent < 64 * 1024 * 1024, answer[:200]


def test_a_keys_rate_limit_is_decided_before_its_body_is_read(tmp_path, docs_index):
    settings = offline_settings(tmp_path, docs_index).model_copy(
        update={"api_burst": 1, "api_requests_per_minute": 1}
    )
    keys = accounts(settings)
    with serve(settings) as url:
        headers = {"Authorization": f"Bearer {keys['rex']}"}
        assert call("GET", url + "/v1/models", headers=headers).status_code == 200
        port = int(url.rsplit(":", 1)[1])
        key = f"Authorization: Bearer {keys['rex']}"
        head = _request_head(port, "/v1/search", key, "Content-Type: application/json",
                             "Transfer-Encoding: chunked")  # fmt: skip
        answer, _ = _endless(port, head, chunked=True)
        assert answer.startswith(b"HTTP/1.1 429"), answer[:200]


def test_an_upload_holds_one_file_in_memory_at_most(with_keys, tmp_path):
    # Files of a type the knowledge base refuses: read and refused by name,
    # one after the other, and nothing ingested (whose own memory would count).
    # Sent by curl: only the server's memory is measured.
    size = 6 * 1024 * 1024
    names = [f"blob-{n}.bin" for n in range(3)]
    for name in names:
        (tmp_path / name).write_bytes(os.urandom(size))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        curl = subprocess.run(
            ["curl", "-s", "-S", f"{with_keys.url}/v1/knowledge-bases/default/documents",
             "-H", f"Authorization: Bearer {with_keys.keys['eve']}",
             *[arg for name in names for arg in ("-F", f"files=@{tmp_path / name}")]],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert curl.returncode == 0, curl.stderr
    assert [r["name"] for r in json.loads(curl.stdout)["refused"]] == names, curl.stdout
    assert peak < 2 * size, f"the upload held {peak / size:.1f} files' bytes at once"


def test_an_upload_over_the_file_limit_is_refused_by_name_and_not_kept(tmp_path, docs_index):
    settings = offline_settings(tmp_path, docs_index).model_copy(
        update={"max_file_mb": 1.0, "max_upload_files": 2}
    )
    keys = accounts(settings)
    with serve(settings) as url:
        eve = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {keys['eve']}"}, timeout=300
        )
        big = ("big.md", b"# Big\n\n" + b"word " * 300_000, "text/markdown")
        reply = eve.post("/v1/knowledge-bases/default/documents",
                         files=[("files", big), ("files", NOTE)])  # fmt: skip
        assert reply.status_code == 200, reply.text
        assert reply.json()["refused"] == [
            {"name": "big.md", "reason": "larger than the 1 MB upload limit"}
        ]
        assert reply.json()["ingested"] == ["larch.md"]
        three = eve.post("/v1/knowledge-bases/default/documents", files=[("files", NOTE)] * 3)
        assert three.status_code == 400 and three.json()["error"]["code"] == "too_many_files"
        not_multipart = eve.post("/v1/knowledge-bases/default/documents", json={"files": []})
        assert not_multipart.status_code == 400, not_multipart.text
        uploads = settings.indexes_root / "default" / "uploads"
        assert sorted(p.name for p in uploads.iterdir()) == ["larch.md"]


# -- the low: no server path, no LLM URL -------------------------------------------------


def test_errors_and_stats_carry_no_server_path_or_llm_url(with_keys, tmp_path):
    settings = with_keys.settings
    root = settings.indexes_root
    shutil.copytree(root / "default", root / "broken")
    (root / "broken" / "CURRENT").write_text("g99999999\n")
    llm = settings.llm_url.removesuffix("/v1")
    ada = with_keys.http("ada")
    question = {"role": "user", "content": QUESTION}
    replies = [
        ada.post("/v1/chat/completions", json={"model": "default", "messages": [question]}),
        ada.post("/v1/chat/completions",
                 json={"model": "default", "messages": [question], "stream": True}),
        ada.post("/v1/search", json={"model": "broken", "query": "broken files"}),
        ada.post("/v1/search", json={"model": "ghost", "query": "broken files"}),
        ada.get("/v1/knowledge-bases/broken/stats"),
        ada.get("/v1/knowledge-bases/default/stats"),
        ada.get("/v1/knowledge-bases/ghost/documents"),
        ada.delete("/v1/knowledge-bases/default/documents/nothing-like-it.md"),
    ]  # fmt: skip
    statuses = [r.status_code for r in replies]
    assert statuses[0] == 503 and "llm_unreachable" in replies[0].text, replies[0].text
    assert "llm_unreachable" in replies[1].text, replies[1].text
    assert statuses[2] >= 400 and statuses[3] == 404 and statuses[5] == 200, statuses
    folders = {str(tmp_path), os.path.realpath(tmp_path), str(Path.home()), str(ROOT)}
    for reply in replies:
        text = reply.text
        assert llm not in text and llm.split("//")[1] not in text, text
        assert not any(folder in text for folder in folders), text
    stats = replies[5].json()
    assert stats["index"] == "default" and stats["store"] == "local", stats
    assert not any(isinstance(v, str) and v.startswith("/") for v in stats.values()), stats


# -- issue 31, item 3: no login over an app database with accounts -----------------------


@pytest.fixture
def team_db(tmp_path, docs_index, monkeypatch) -> Path:
    """An indexes root whose app database holds an account, as `rag users add` leaves it."""
    root = tmp_path / "indexes"
    shutil.copytree(docs_index, root / "default")
    for name in [k for k in os.environ if k.startswith("RAG_")]:
        monkeypatch.delenv(name)
    db = open_app_db(Settings(indexes_root=root))
    db.accounts.add_user("alice", Role.ADMIN, PASSWORD, by="test")
    return root


def _refused(args: list[str], env: dict[str, str]) -> str:
    """Run `args` to its end (60 s at most: one that starts serving instead
    of refusing is stopped, and the test fails); its exit 2 and stderr."""
    process = subprocess.Popen(
        args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"{args[2:4]} started instead of refusing")
    assert process.returncode == 2, stderr
    return stderr


def _no_rag_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}


def test_serve_refuses_no_login_over_an_app_database_with_accounts(team_db):
    port = str(launch.free_port())
    serve_ = [*RAG, "serve", "--index-root", str(team_db)]
    stderr = _refused([*serve_, "--port", port], _no_rag_env())
    assert "Refusing to start" in stderr, stderr
    assert "RAG_AUTH=local" in stderr and "--insecure-no-auth" in stderr, stderr
    assert "Traceback" not in stderr


def _start_line(args: list[str], env: dict[str, str], marker: str) -> str:
    """Start `args`, return the first output line holding `marker`, stop it
    (after 120 s at the latest)."""
    process = subprocess.Popen(
        args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    deadline = threading.Timer(120, os.killpg, (process.pid, signal.SIGKILL))
    deadline.start()
    try:
        assert process.stdout is not None
        seen = []
        for line in process.stdout:
            seen.append(line)
            if marker in line:
                return line
        pytest.fail(f"{args} ended without {marker!r}:\n{''.join(seen)}")
    finally:
        deadline.cancel()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    return ""


def test_serve_names_its_login_mode_and_takes_insecure_no_auth(team_db):
    env = _no_rag_env()
    serve_ = [*RAG, "serve", "--index-root", str(team_db)]
    port = str(launch.free_port())
    line = _start_line([*serve_, "--port", port, "--insecure-no-auth"], env, "Serving")
    assert "RAG_AUTH=none" in line, line
    line = _start_line([*serve_, "--port", port], env | {"RAG_AUTH": "local"}, "Serving")
    assert "RAG_AUTH=local" in line, line


def test_make_run_refuses_no_login_over_an_app_database_with_accounts(team_db):
    env = _no_rag_env() | {"RAG_INDEXES_ROOT": str(team_db)}
    runner = [sys.executable, "-m", "serving.run", "--no-llm", "--index", str(team_db / "default"),
              "--port", str(launch.free_port())]  # fmt: skip
    stderr = _refused(runner, env)
    assert "RAG_AUTH=local" in stderr and "--insecure-no-auth" in stderr
    line = _start_line(runner, env | {"RAG_AUTH": "local"}, "The app:")
    assert "RAG_AUTH=local" in line, line
