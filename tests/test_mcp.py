"""The MCP server (api/mcp_tools.py), through the `mcp` SDK's own
client: `rag mcp` launched over stdio, and the streamable-HTTP app served by
uvicorn. Every tool call goes through the access policy, as in the app."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from api_server import Server, accounts, offline_settings, serve
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from api.mcp_tools import mcp_http_app
from rag.settings import Settings
from serving.launch import free_port
from team.access import Access, AccessDenied, AccessPolicy, Role, User
from team.appdb import open_app_db

RAG = str(Path(sys.executable).parent / "rag")
QUESTION = "How are broken files reported?"
TOOLS = {"list_knowledge_bases", "search_knowledge_base", "ask_knowledge_base"}

Session = Callable[[ClientSession], Awaitable[Any]]


def _env(**settings: str) -> dict[str, str]:
    """This process's environment without its RAG_ settings, plus `settings`
    (the SDK passes only a few variables to the server otherwise)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    return {**env, "RAG_LLM_RETRIES": "0", **settings}


def over_stdio(root: Path, work: Session, *args: str, **settings: str) -> Any:
    """Runs `work` in a client session with `rag mcp --index-root root ARGS`."""
    params = StdioServerParameters(
        command=RAG, args=["mcp", "--index-root", str(root), *args], env=_env(**settings)
    )

    async def main() -> Any:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            return await work(session)

    return anyio.run(main)


def payload(result: Any) -> Any:
    assert not result.is_error, result.content
    return result.structured_content


def error_text(result: Any) -> str:
    assert result.is_error, result.structured_content
    return " ".join(block.text for block in result.content)


def search(kb: str = "default", query: str = QUESTION, **extra: Any) -> Session:
    async def work(session: ClientSession) -> Any:
        arguments = {"knowledge_base": kb, "query": query, **extra}
        return await session.call_tool("search_knowledge_base", arguments)

    return work


def ask(question: str, kb: str = "default") -> Session:
    async def work(session: ClientSession) -> Any:
        arguments = {"knowledge_base": kb, "question": question}
        return await session.call_tool("ask_knowledge_base", arguments, read_timeout_seconds=300)

    return work


@pytest.fixture
def two_kbs(kb_root: Path) -> Path:
    """The sample knowledge base as `default` and as `private`."""
    shutil.copytree(kb_root / "default", kb_root / "private")
    return kb_root


LONG_QUESTION = "why " * 60  # 240 characters


@pytest.fixture(scope="module")
def stdio_replies(tmp_path_factory: pytest.TempPathFactory, docs_index: Path) -> dict[str, Any]:
    """What one `rag mcp` over stdio answered to the calls of the tests that
    only read (each server loads the embedding model: seconds a start): the
    sample knowledge base as `default` and as `private`, an LLM server that
    is not there and questions of at most 200 characters."""
    root = tmp_path_factory.mktemp("mcp-stdio")
    for name in ("default", "private"):
        shutil.copytree(docs_index, root / name)

    async def work(session: ClientSession) -> dict[str, Any]:
        return {
            "tools": await session.list_tools(),
            "listed": await session.call_tool("list_knowledge_bases", {}),
            "found": await search(k=3)(session),
            "too_many": await search(k=10_000)(session),
            "missing": await search(kb="nowhere")(session),
            "escaping": await search(kb="../default")(session),
            "unreachable": await ask(QUESTION)(session),
            "too_long": await ask(LONG_QUESTION)(session),
        }

    dead = f"http://127.0.0.1:{free_port()}/v1"
    return over_stdio(root, work, RAG_LLM_URL=dead, RAG_MAX_QUESTION_CHARS="200")


def test_stdio_lists_the_three_tools_and_the_knowledge_bases(stdio_replies):
    tools, listed = stdio_replies["tools"], stdio_replies["listed"]
    assert {tool.name for tool in tools.tools} == TOOLS
    schema = next(t for t in tools.tools if t.name == "search_knowledge_base").input_schema
    assert set(schema["required"]) == {"knowledge_base", "query"}
    assert payload(listed) == {"result": ["default", "private"]}


def test_stdio_search_ranks_the_ingestion_page_first(stdio_replies):
    found = payload(stdio_replies["found"])
    passages = found["passages"]
    assert len(passages) == 3 and [p["n"] for p in passages] == [1, 2, 3]
    assert Path(passages[0]["source"]).name == "how-ingestion-works.md"
    assert passages[0]["score"] >= passages[1]["score"] >= passages[2]["score"]
    assert passages[0]["text"] and "page" in passages[0]


def test_stdio_search_bounds_k_and_names_a_missing_knowledge_base(stdio_replies):
    too_many, missing, escaping = (stdio_replies[k] for k in ("too_many", "missing", "escaping"))
    assert "k" in error_text(too_many)
    assert "nowhere" in error_text(missing)
    assert "../default" in error_text(escaping) and not escaping.structured_content


def test_a_knowledge_base_the_user_may_not_read_is_a_tool_error(two_kbs, tmp_path):
    app_db = tmp_path / "app.sqlite"
    db = open_app_db(Settings(indexes_root=two_kbs, app_db=str(app_db)))
    db.accounts.add_user("reader", Role.READER, "correct horse battery", ["default"], by="test")

    async def work(session: ClientSession) -> Any:
        listed = await session.call_tool("list_knowledge_bases", {})
        return listed, await search("private")(session), await search("default")(session)

    settings = {"RAG_AUTH": "local", "RAG_APP_DB": str(app_db)}
    listed, denied, allowed = over_stdio(two_kbs, work, "--user", "reader", **settings)
    assert payload(listed) == {"result": ["default"]}
    assert "no access to the knowledge base 'private'" in error_text(denied)
    assert payload(allowed)["passages"]
    assert [e.action for e in db.audit.entries()][-1] == "denied"


def test_rag_mcp_with_accounts_needs_a_known_user(kb_root, tmp_path):
    from click.testing import CliRunner

    from cli.rag_main import main

    env = {"RAG_AUTH": "local", "RAG_APP_DB": str(tmp_path / "app.sqlite")}
    nobody = CliRunner(env=env).invoke(main, ["mcp", "--index-root", str(kb_root)])
    assert nobody.exit_code != 0 and "--user" in nobody.output
    unknown = CliRunner(env=env).invoke(
        main, ["mcp", "--index-root", str(kb_root), "--user", "ghost"]
    )
    assert unknown.exit_code == 1 and "ghost" in unknown.output


def test_ask_answers_with_its_citations(kb_root, llm_server):
    result = over_stdio(
        kb_root, ask("How are broken files reported during ingestion?"),
        RAG_LLM_URL=llm_server.base_url,
    )  # fmt: skip
    answer = payload(result)
    assert answer["found"] and answer["citations"], answer
    cited = {c["n"] for c in answer["citations"]}
    assert {int(n) for n in _markers(answer["answer"])} <= cited
    first = answer["citations"][0]
    assert first["text"] and first["source"] and "page" in first


def _markers(text: str) -> list[str]:
    import re

    return re.findall(r"\[(\d+)\]", text)


def test_ask_with_the_llm_unreachable_is_a_clear_tool_error(stdio_replies):
    assert len(QUESTION) <= 200  # within the server's limit: refused by the LLM alone
    assert "LLM server" in error_text(stdio_replies["unreachable"])


def test_ask_refuses_a_question_over_the_length_limit(stdio_replies):
    assert len(LONG_QUESTION) > 200
    text = error_text(stdio_replies["too_long"])
    assert "too long" in text and "LLM" not in text


# -- streamable HTTP ----------------------------------------------------------------------


def _key_resolver(keys: dict[str, User]) -> Callable[[Any], Access]:
    """A stand-in for the API's bearer keys: the key in the Authorization header."""

    def resolve(request: Any) -> Access:
        key = request.headers.get("authorization", "").removeprefix("Bearer ")
        if key not in keys:
            raise AccessDenied("Unknown API key.")
        return Access(keys[key], AccessPolicy(None))

    return resolve


@pytest.fixture
def http_mcp(two_kbs):
    """The streamable-HTTP app under uvicorn on a free port; its /mcp URL."""
    keys = {
        "admin-key": User("ann", Role.ADMIN),
        "reader-key": User("rob", Role.READER, frozenset({"default"})),
    }
    app = mcp_http_app(Settings(indexes_root=two_kbs, auth="local"), _key_resolver(keys))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/mcp"
    server.should_exit = True
    thread.join(timeout=10)


def over_http(url: str, key: str, work: Session) -> Any:
    async def main() -> Any:
        client = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
        async with (
            client,
            streamable_http_client(url, http_client=client) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return await work(session)

    return anyio.run(main)


def test_http_search_ranks_the_ingestion_page_first(http_mcp):
    found = payload(over_http(http_mcp, "admin-key", search(k=2)))
    assert Path(found["passages"][0]["source"]).name == "how-ingestion-works.md"


def test_http_takes_the_caller_from_the_resolver(http_mcp):
    async def work(session: ClientSession) -> Any:
        return await session.call_tool("list_knowledge_bases", {}), await search("private")(session)

    listed, denied = over_http(http_mcp, "reader-key", work)
    assert payload(listed) == {"result": ["default"]}
    assert "no access" in error_text(denied)
    unknown = over_http(http_mcp, "bad-key", search())
    assert "Unknown API key" in error_text(unknown)
    assert json.dumps(unknown.structured_content or {}) == "{}"


# -- /mcp of `rag serve`: the API's keys and grants ----------------------------------------


@pytest.fixture
def served(tmp_path, docs_index) -> Iterator[Server]:
    """`rag serve` (no LLM needed) with the accounts of tests/api_server.py."""
    settings = offline_settings(tmp_path, docs_index)
    keys = accounts(settings)
    with serve(settings) as url:
        yield Server(url, settings, keys)


def test_rag_serve_offers_the_tools_at_mcp_to_a_valid_key(served):
    async def work(session: ClientSession) -> Any:
        tools = await session.list_tools()
        listed = await session.call_tool("list_knowledge_bases", {})
        return tools, listed, await search(k=2)(session)

    tools, listed, found = over_http(served.url + "/mcp", served.keys["rex"], work)
    assert {tool.name for tool in tools.tools} == TOOLS
    assert payload(listed) == {"result": ["default"]}, "rex's grants, not the admin's"
    first = payload(found)["passages"][0]["source"]
    assert first.endswith("how-ingestion-works.md") and not first.startswith("/"), first


def test_rag_serve_mcp_refuses_a_bad_key_before_any_session(served):
    for key in ("kbqa-000000000000-not-a-key", served.keys["rex"][:-1], "EMPTY"):
        with pytest.raises(ExceptionGroup) as refused:  # from the SDK's task groups
            over_http(served.url + "/mcp", key, search())
        assert refused.group_contains(MCPError, match="API key", depth=None), refused.value
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    accept = "application/json, text/event-stream"
    headers = {"Authorization": "Bearer kbqa-0-x", "Accept": accept}
    reply = httpx.post(served.url + "/mcp", json=initialize, headers=headers)
    assert reply.status_code == 401, reply.text
    assert "Invalid API key" in reply.json()["error"]["message"]
    assert reply.json()["error"]["data"]["type"] == "authentication_error"


def test_rag_serve_mcp_gives_a_tool_error_for_a_knowledge_base_not_granted(served):
    async def work(session: ClientSession) -> Any:
        return await search("secret")(session), await ask("Anything?", kb="secret")(session)

    searched, asked = over_http(served.url + "/mcp", served.keys["rex"], work)
    assert "no access to the knowledge base 'secret'" in error_text(searched)
    assert "no access" in error_text(asked) and "LLM" not in error_text(asked)
    admin = payload(over_http(served.url + "/mcp", served.keys["ada"], search("secret", k=1)))
    assert admin["passages"], "the admin may read it"
    denied = [e for e in open_app_db(served.settings).audit.entries() if e.action == "denied"]
    assert denied and {e.user for e in denied} == {"rex"}
