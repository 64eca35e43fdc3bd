"""The core service (core/service.py): each rule and limit in its one home,
and the edges (the HTTP API, MCP) reaching it with the same words. Real
FAISS, SQLite and embedding model; the LLM is a closed port (answers are
not the subject here)."""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio
import httpx
import pytest
from api_server import accounts, offline_settings, serve

from rag.errors import IndexMissing, LLMUnreachable, RagError
from rag.llm import OpenAIChat
from rag.settings import Settings
from serving.launch import free_port
from team.access import LOCAL_USER, Access, AccessDenied, AccessPolicy, Role, User, valid_kb_name

LOCAL = Access(LOCAL_USER, AccessPolicy(None))


def reader_of(*kbs: str) -> Access:
    return Access(User("rex", Role.READER, frozenset(kbs)), AccessPolicy(None))


def editor_of(*kbs: str) -> Access:
    return Access(User("eve", Role.EDITOR, frozenset(kbs)), AccessPolicy(None))


@pytest.fixture
def offline(tmp_path, docs_index) -> Settings:
    return offline_settings(tmp_path, docs_index).model_copy(update={"max_question_chars": 200})


def service(settings: Settings, **kwargs):
    from core.service import KnowledgeService

    return KnowledgeService(settings, **kwargs)


def rag_error(work) -> str:
    with pytest.raises(RagError) as caught:
        work()
    return str(caught.value)


# -- limits: one message, the same words at every edge ----------------------------------------


def test_an_over_long_question_or_query_gets_one_message_at_every_edge(offline, monkeypatch):
    """The API's chat and search, MCP's ask and search and `rag ask` and
    `rag search` refuse the same over-long text with the core's message
    (they had four messages, and the command none)."""
    from click.testing import CliRunner

    from api.mcp_tools import KnowledgeTools
    from cli.rag_main import main as rag_main

    long = "why " * 60  # 240 characters, over 200
    keys = accounts(offline)
    with serve(offline) as url:
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['ada']}"})
        chat = {"model": "default", "messages": [{"role": "user", "content": long}]}
        api_ask = http.post("/v1/chat/completions", json=chat).json()["error"]["message"]
        search = {"model": "default", "query": long}
        api_search = http.post("/v1/search", json=search).json()["error"]["message"]
    tools = KnowledgeTools(offline)
    mcp_ask = rag_error(lambda: tools.ask(LOCAL, "default", long))
    mcp_search = rag_error(lambda: tools.search(LOCAL, "default", long, 3, "bm25"))
    for key in ("max_question_chars", "llm_url", "llm_retries"):
        monkeypatch.setenv(f"RAG_{key.upper()}", str(getattr(offline, key)))
    index = str(offline.indexes_root / "default")
    cli_ask, cli_search = (
        CliRunner().invoke(rag_main, [command, long, "--index", index]).stderr
        for command in ("ask", "search")
    )
    expected = "too long (240 characters, at most 200: RAG_MAX_QUESTION_CHARS); please shorten it."
    assert api_ask == mcp_ask == f"The question is {expected}"
    assert api_search == mcp_search == f"The query is {expected}"
    assert cli_ask == f"error: The question is {expected}\n"
    assert cli_search == f"error: The query is {expected}\n"


def test_a_k_out_of_range_gets_one_message_at_every_edge(offline):
    """`rag search -k`, the API's search and MCP's search tool refuse a k
    over MAX_K (or under 1) with the core's words (they had click's and
    pydantic's: "51 is not in the range 1<=x<=50", "Input should be less
    than or equal to 50")."""
    from click.testing import CliRunner
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    from cli.rag_main import main as rag_main
    from core.service import MAX_K

    async def over_mcp(url: str, key: str, k: int) -> str:
        client = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
        async with (
            client,
            streamable_http_client(url + "/mcp", http_client=client) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            arguments = {"knowledge_base": "default", "query": "ingestion", "k": k}
            result = await session.call_tool("search_knowledge_base", arguments)
        assert result.is_error, result.structured_content
        return " ".join(block.text for block in result.content)

    keys = accounts(offline)
    index = str(offline.indexes_root / "default")
    messages = {
        MAX_K + 1: f"k={MAX_K + 1}: a search returns at most {MAX_K} passages; ask for fewer.",
        0: "k=0: a search returns at least 1 passage; ask for more.",
    }
    with serve(offline) as url:
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['ada']}"})
        search = {"model": "default", "query": "ingestion"}
        api = {k: http.post("/v1/search", json={**search, "k": k}) for k in messages}
        mcp = {k: anyio.run(over_mcp, url, keys["ada"], k) for k in messages}
    for k, expected in messages.items():
        cli = CliRunner().invoke(rag_main, ["search", "ingestion", "--index", index, "-k", str(k)])
        assert (api[k].status_code, api[k].json()["error"]["message"]) == (400, expected)
        # The SDK frames every tool's error; the text inside is the core's.
        assert mcp[k] == f"Error executing tool search_knowledge_base: {expected}"
        assert (cli.exit_code, cli.stderr) == (1, f"error: {expected}\n")


def test_the_question_limit_has_one_home(offline):
    from core.service import TooLong, check_length

    check_length("x" * 200, offline)
    with pytest.raises(TooLong, match=r"^The question is too long \(201 characters, at most 200"):
        check_length("x" * 201, offline)
    check_length("x" * 1600, offline, "earlier message 2 (assistant)", factor=8)


def test_too_many_files_is_refused_before_anything_is_written(offline):
    from core.service import TooManyFiles

    svc = service(offline.model_copy(update={"max_upload_files": 2}))
    files = [(f"n{i}.md", lambda i=i: f"# N{i}\n\nText.".encode()) for i in range(3)]
    with pytest.raises(TooManyFiles) as caught:
        svc.upload(LOCAL, "fresh", files)
    assert str(caught.value) == (
        "3 files chosen; at most 2 can be added at once (RAG_MAX_UPLOAD_FILES): "
        "add them in smaller groups."
    )
    assert not (offline.indexes_root / "fresh").exists()


def test_a_search_returns_1_to_max_k_passages_and_refuses_other_ks(offline):
    from core.service import MAX_K, BadPassageCount

    svc = service(offline)
    hits = svc.search(LOCAL, "default", "ingestion", k=MAX_K, mode="bm25")
    assert 0 < len(hits) <= MAX_K
    for k in (MAX_K + 1, 0, -3):
        with pytest.raises(BadPassageCount, match=rf"^k={k}: a search returns"):
            svc.search(LOCAL, "default", "ingestion", k=k, mode="bm25")


# -- the name rule, listing and access ---------------------------------------------------------


@pytest.mark.parametrize("name", ["default", "a", "x.y-z_1", "A" * 64])
def test_good_names(name):
    assert valid_kb_name(name)


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "a/b", "../x", "a\n", "A" * 65, "-a"])
def test_bad_names_are_refused_before_any_path_is_built(offline, name):
    from team import library

    assert not valid_kb_name(name)
    with pytest.raises(IndexMissing, match="There is no knowledge base named"):
        service(offline).open(LOCAL, name)
    with pytest.raises(ValueError, match="Use letters, digits"):
        library.create(LOCAL, offline.indexes_root, name)


def test_a_user_lists_and_opens_only_what_they_may_read(offline):
    svc = service(offline)
    svc.upload(LOCAL, "empty-yet", [])  # created, still without documents
    assert svc.names(LOCAL) == ["default", "empty-yet", "secret"]
    assert svc.names(reader_of("default")) == ["default"]
    with pytest.raises(AccessDenied, match="no access to the knowledge base 'secret'"):
        svc.open(reader_of("default"), "secret")
    with pytest.raises(AccessDenied):  # whether it exists is not told
        svc.open(reader_of("default"), "no-such-base")
    with pytest.raises(IndexMissing, match="no documents yet"):
        svc.open(LOCAL, "empty-yet")


def test_a_reader_cannot_change_a_base(offline):
    svc = service(offline)
    rex = reader_of("default")
    note = [("note.md", lambda: b"# Note\n\nText.")]
    with pytest.raises(AccessDenied, match="can read 'default' but not change it"):
        svc.upload(rex, "default", note)
    with pytest.raises(AccessDenied):
        svc.rebuild(rex, "default")
    assert not (offline.indexes_root / "default" / "uploads").exists()


# -- one cache per process, following generations ----------------------------------------------


def test_a_base_is_opened_once_and_reopened_when_its_folder_is_replaced(offline, docs_index):
    svc = service(offline)
    first = svc.open(LOCAL, "default")
    assert svc.open(reader_of("default"), "default") is first
    shutil.rmtree(offline.indexes_root / "default")
    shutil.copytree(docs_index, offline.indexes_root / "default")
    assert svc.open(LOCAL, "default") is not first


def test_the_cache_keeps_at_most_max_open(offline, docs_index):
    for n in range(3):
        shutil.copytree(docs_index, offline.indexes_root / f"kb{n}")
    svc = service(offline, max_open=2)
    first = svc.open(LOCAL, "kb0")
    svc.open(LOCAL, "kb1")
    last = svc.open(LOCAL, "kb2")
    assert len(svc.open_knowledge_bases()) == 2
    assert svc.open(LOCAL, "kb2") is last
    assert svc.open(LOCAL, "kb0") is not first, "the oldest one was let go"


def test_rag_serve_keeps_one_cache_for_the_api_and_mcp(offline):
    """The API's routes and its /mcp tools share the process's one service."""
    from api import create_app

    app = create_app(offline)
    core = app.state.service.core
    assert core.settings is offline
    assert app.state.mcp_app.state.knowledge is core


# -- ask goes through the injected chat model ---------------------------------------------------


def test_mcp_ask_goes_through_the_injected_chat_model(offline):
    from api.mcp_tools import KnowledgeTools

    injected_url = f"http://127.0.0.1:{free_port()}/v1"
    chat = OpenAIChat(offline.model_copy(update={"llm_url": injected_url}))
    tools = KnowledgeTools(offline, svc=service(offline, chat=chat))
    with pytest.raises(LLMUnreachable) as caught:
        tools.ask(LOCAL, "default", "How are broken files reported?")
    assert injected_url.rsplit("/", 1)[0] in str(caught.value)


# -- upload, delete, rebuild, stats --------------------------------------------------------------


def test_upload_search_delete_rebuild_and_stats(offline):
    from core.service import NoSuchDocument
    from team.library import too_large

    svc = service(offline)
    eve = editor_of("notes")
    with pytest.raises(AccessDenied):
        svc.upload(eve, "other", [])
    note = "# Larches\n\nThe zorblat larch sheds its needles in autumn."
    done = svc.upload(eve, "notes", [("larch.md", note.encode), ("big.pdf", lambda: None)])
    assert done.report is not None and not done.report.failed
    assert done.saved.refused == [("big.pdf", too_large(offline.max_file_mb))]
    assert svc.stats(eve, "notes").documents == 1
    hits = svc.search(eve, "notes", "zorblat larch", k=3, mode="bm25")
    assert "zorblat" in hits[0].text
    with pytest.raises(NoSuchDocument, match="use its id"):
        svc.find_document(eve, "notes", "pine.md")
    svc.upload(eve, "notes", [("pine.md", b"# Pines\n\nPines keep their needles.".__bytes__)])
    record = svc.find_document(eve, "notes", "larch.md")
    svc.delete(eve, "notes", [record.path])
    assert [Path(d.path).name for d in svc.documents(eve, "notes")] == ["pine.md"]
    report = svc.rebuild(eve, "notes")
    assert not report.failed and svc.stats(eve, "notes").documents == 1


# -- what the app's Manage tab and sidebar ask for ----------------------------------------------


def test_create_applies_the_name_rule_and_the_policy_and_has_index_tells_an_empty_base(offline):
    from team.access import KB_NAME_RULE

    svc = service(offline)
    with pytest.raises(ValueError, match="Use letters, digits") as caught:
        svc.create(LOCAL, "../x")
    assert str(caught.value) == KB_NAME_RULE
    with pytest.raises(AccessDenied):
        svc.create(editor_of("notes"), "contracts")
    assert svc.create(editor_of("notes"), "notes") == offline.indexes_root / "notes"
    assert svc.names(LOCAL) == ["default", "notes", "secret"]
    assert not svc.has_index(LOCAL, "notes") and svc.has_index(LOCAL, "default")
    with pytest.raises(AccessDenied):
        svc.has_index(reader_of("default"), "secret")
    assert svc.last_synced(LOCAL, "default") is None
    with pytest.raises(AccessDenied):
        svc.last_synced(reader_of("default"), "secret")
    assert svc.default_name == offline.index.name


def test_a_search_names_the_text_it_refuses(offline):
    long = "why " * 60  # over the fixture's 200 characters
    said = rag_error(lambda: service(offline).search(LOCAL, "default", long, what="question"))
    assert said.startswith("The question is too long (240 characters, at most 200")
