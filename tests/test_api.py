"""`rag serve` (api/) through real clients: the `openai` Python
client, LangChain's ChatOpenAI and httpx, against uvicorn on a free port,
over the sample knowledge base, the real app database and the real vLLM
CPU server (SmolLM2, quoting extractively so that it cites)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import openai
import pytest
import sqlalchemy
from api_server import PASSWORD, QUESTION, Server, accounts, indexes, offline_settings, serve
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from api.chat import CitationStream
from cli.rag_main import main as rag_main
from rag.answering.citations import resolve_citations
from rag.settings import Settings
from team.access import Role
from team.appdb import open_app_db
from team.appdb.schema import SCHEMA_VERSION


@pytest.fixture(scope="module")
def api(tmp_path_factory, docs_index, llm_settings) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("api")
    settings = llm_settings.model_copy(
        update={
            "indexes_root": indexes(tmp, docs_index),
            "auth": "local",
            "app_db": SecretStr(str(tmp / "app.sqlite")),
            "answer_style": "extractive",
            "screen": False,
            "llm_retries": 0,
            "api_burst": 1000,
        }
    )
    keys = accounts(settings)
    with serve(settings) as url:
        yield Server(url, settings, keys)


@pytest.fixture
def offline(tmp_path, docs_index) -> Settings:
    return offline_settings(tmp_path, docs_index)


@pytest.fixture(scope="module")
def offline_server(tmp_path_factory, docs_index) -> Iterator[Server]:
    """One server without an LLM for the tests that only send requests and
    change nothing (an upload, a removal or other settings get their own):
    its accounts and start are paid once. A burst that no test reaches, as
    they share its keys."""
    tmp = tmp_path_factory.mktemp("offline")
    settings = offline_settings(tmp, docs_index).model_copy(update={"api_burst": 1000})
    keys = accounts(settings)
    with serve(settings) as url:
        yield Server(url, settings, keys)


def markers(text: str) -> set[int]:
    return {int(n) for n in re.findall(r"\[(\d+)\]", text)}


# -- chat completions -------------------------------------------------------------------


@pytest.mark.llm
def test_a_chat_completion_carries_the_cited_answer_and_its_passages(api):
    completion = api.client("rex").chat.completions.create(
        model="default", messages=[{"role": "user", "content": QUESTION}]
    )
    message = completion.choices[0].message
    citations = message.model_extra["citations"]
    assert message.content and citations, message
    assert markers(message.content) == {c["n"] for c in citations}
    for c in citations:
        assert c["text"] and isinstance(c["chunk_id"], int) and c["source"]
        assert not c["source"].startswith("/"), "no server path leaves the server"
    assert completion.model_extra["found"] is True
    assert {"retrieve", "read"} <= set(completion.model_extra["timings"])
    assert completion.usage.completion_tokens > 0


@pytest.mark.llm
def test_a_server_started_before_the_llm_server_answers_with_the_model_it_serves(
    tmp_path, docs_index, llm_server
):
    """`rag serve` learns the model, its context and the small model's
    profile from the LLM server when it starts; one started first (or told
    nothing) asks again per answer, as `rag ask` does, instead of asking
    SmolLM2 for gpt-oss's 4,096 answer tokens in its 2,048-token context."""
    settings = offline_settings(tmp_path, docs_index).model_copy(
        update={"llm_url": llm_server.base_url, "api_burst": 1000}
    )
    assert "llm_model" not in settings.model_fields_set  # as the server saw it at start
    keys = accounts(settings)
    with serve(settings) as url:
        completion = (
            Server(url, settings, keys)
            .client("rex")
            .chat.completions.create(
                model="default", messages=[{"role": "user", "content": QUESTION}]
            )
        )
    message = completion.choices[0].message
    assert completion.model_extra["found"] is True, message
    assert message.model_extra["citations"] and markers(message.content)


@pytest.mark.llm
def test_a_streamed_answer_ends_with_its_citations(api):
    stream = api.client("rex").chat.completions.create(
        model="default", messages=[{"role": "user", "content": QUESTION}], stream=True
    )
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    last = chunks[-1]
    citations = last.choices[0].delta.model_extra["citations"]
    assert last.choices[0].finish_reason == "stop"
    assert len(chunks) > 3, "the answer arrived in pieces"
    assert content and citations
    assert markers(content) == {c["n"] for c in citations}, "streamed markers are the final ones"
    assert "final_content" not in last.model_extra, "the streamed text is the answer"
    assert last.usage.completion_tokens > 0


@pytest.mark.llm
def test_a_follow_up_is_rewritten_with_the_conversation(api):
    first = api.client("rex").chat.completions.create(
        model="default", messages=[{"role": "user", "content": QUESTION}]
    )
    messages = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And where are they listed?"},
    ]
    follow_up = api.client("rex").chat.completions.create(model="default", messages=messages)
    extra = follow_up.model_extra
    assert "follow-up" in extra["timings"], "the follow-up was joined as in the app"
    assert follow_up.choices[0].message.content


@pytest.mark.llm
def test_langchain_chat_openai_gets_the_cited_answer(api):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=api.url + "/v1", api_key=api.keys["rex"], model="default", max_retries=0
    )
    reply = llm.invoke(QUESTION)
    assert reply.content and markers(reply.content)


LOAD_QUESTIONS = [
    QUESTION,
    "Which file types can be ingested?",
    "What happens if ingestion is interrupted?",
    "How does hybrid search combine BM25 and dense retrieval?",
    "What does the fast screen do?",
    "Who won the 1962 chess olympiad?",  # not in the knowledge base
]


@pytest.mark.llm
def test_concurrent_chat_requests_all_get_a_cited_or_not_found_answer(api):
    """Six requests, at most four at once, through the API to the real LLM
    server: each comes back whole (bench/load.py --via api measures it)."""
    from concurrent.futures import ThreadPoolExecutor

    def ask(question: str) -> openai.types.chat.ChatCompletion:
        client = api.client("rex")
        return client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": question}]
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        completions = list(pool.map(ask, LOAD_QUESTIONS))  # raises any request's error
    for question, completion in zip(LOAD_QUESTIONS, completions, strict=True):
        message = completion.choices[0].message
        assert message.content, question
        citations = message.model_extra["citations"]
        if completion.model_extra["found"]:
            assert citations and markers(message.content) <= {c["n"] for c in citations}
        else:
            assert not citations, question
    assert any(c.model_extra["found"] for c in completions)


def test_a_bad_key_is_refused_with_401_in_openais_shape(offline_server):
    keys, url = offline_server.keys, offline_server.url
    for key in ("kbqa-000000000000-not-a-key", "EMPTY", keys["rex"][:-1]):
        client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as refused:
            client.models.list()
        assert refused.value.body["type"] == "authentication_error"
        assert refused.value.body["message"]
    reply = httpx.get(url + "/v1/models")
    assert reply.status_code == 401 and set(reply.json()["error"]) == {
        "message", "type", "code",
    }  # fmt: skip


def test_a_knowledge_base_not_granted_is_refused_with_403(offline_server):
    keys, url = offline_server.keys, offline_server.url
    rex = openai.OpenAI(base_url=url + "/v1", api_key=keys["rex"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError, match="no access"):
        rex.chat.completions.create(
            model="secret", messages=[{"role": "user", "content": QUESTION}]
        )
    headers = {"Authorization": f"Bearer {keys['rex']}"}
    found = httpx.post(url + "/v1/search", json={"model": "secret", "query": "x"},
                       headers=headers)  # fmt: skip
    assert found.status_code == 403 and found.json()["error"]["code"] == "permission_denied"
    gone = httpx.post(url + "/v1/search", json={"model": "nope", "query": "x"},
                      headers=headers)  # fmt: skip
    assert gone.status_code == 403, "a reader learns nothing of bases not granted"


def test_models_lists_only_the_knowledge_bases_the_key_may_read(offline_server):
    keys, url = offline_server.keys, offline_server.url
    listed = {
        user: [m.id for m in openai.OpenAI(base_url=url + "/v1", api_key=keys[user],
                                           max_retries=0).models.list()]
        for user in ("ada", "rex")
    }  # fmt: skip
    assert listed == {"ada": ["default", "secret"], "rex": ["default"]}


# -- search, documents, stats -----------------------------------------------------------


def test_search_returns_ranked_passages(offline_server):
    keys, url = offline_server.keys, offline_server.url
    headers = {"Authorization": f"Bearer {keys['rex']}"}
    body = {"knowledge_base": "default", "query": "broken files", "k": 3, "mode": "bm25"}
    reply = httpx.post(url + "/v1/search", json=body, headers=headers)
    assert reply.status_code == 200, reply.text
    data = reply.json()["data"]
    assert [d["rank"] for d in data] == [1, 2, 3]
    assert data[0]["score"] >= data[-1]["score"]
    assert all("broken" in d["text"].lower() for d in data[:1])
    assert not any(d["source"].startswith("/") for d in data)


def test_search_filters_scope_the_passages_and_say_when_nothing_matches(offline_server):
    keys, url = offline_server.keys, offline_server.url
    rex = httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {keys['rex']}"}, timeout=120
    )

    def search(filters, k=3):
        body = {"model": "default", "query": "broken files", "k": k, "mode": "dense"}
        return rex.post("/v1/search", json=body | {"filters": filters})

    pdf = search({"types": ["pdf"]})
    assert pdf.status_code == 200, pdf.text
    assert [d["source"] for d in pdf.json()["data"]] == ["operations-handbook.pdf"] * 3
    scoped = search({"path_prefix": "how-", "after": "2000-01-01"}, k=2).json()["data"]
    assert [d["source"] for d in scoped] == ["how-ingestion-works.md"] * 2
    nothing = search({"tags": ["travel"]})
    assert nothing.status_code == 404
    error = nothing.json()["error"]
    assert error["code"] == "no_document_matches" and "tagged travel" in error["message"]
    none_under = search({"path_prefix": "nowhere/"}).json()["error"]["message"]
    assert "under nowhere/" in none_under and "/docs/" not in none_under  # no server path
    for bad in ({"after": "last tuesday"}, {"path_prefix": "/etc"}, {"tags": ["a b"]}):
        reply = search(bad)
        assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_filter"
    assert search({"colour": "red"}).status_code in (400, 422)
    # The chat completion takes the same object in its extra body, checked before the LLM.
    client = openai.OpenAI(base_url=url + "/v1", api_key=keys["rex"], max_retries=0)
    with pytest.raises(openai.NotFoundError, match="tagged travel"):
        client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": QUESTION}],
            extra_body={"filters": {"tags": ["travel"]}},
        )  # fmt: skip


def test_upload_see_in_stats_search_and_delete(offline):
    keys = accounts(offline)
    note = b"# Larches\n\nThe zorblat larch sheds its needles every autumn."
    with serve(offline) as url:
        eve = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {keys['eve']}"}, timeout=120
        )
        rex = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {keys['rex']}"}, timeout=120
        )
        before = eve.get("/v1/knowledge-bases/default/stats").json()["documents"]
        files = [("files", ("larch.md", note, "text/markdown")),
                 ("files", ("broken.pdf", b"%PDF-1.4 not a pdf", "application/pdf")),
                 ("files", ("tool.exe", b"MZ", "application/octet-stream"))]  # fmt: skip
        assert rex.post("/v1/knowledge-bases/default/documents", files=files).status_code == 403
        uploaded = eve.post("/v1/knowledge-bases/default/documents", files=files)
        assert uploaded.status_code == 200, uploaded.text
        report = uploaded.json()
        assert report["ingested"] == ["larch.md", "broken.pdf"]
        assert [f["name"] for f in report["failed"]] == ["broken.pdf"]
        assert [r["name"] for r in report["refused"]] == ["tool.exe"]
        assert eve.get("/v1/knowledge-bases/default/stats").json()["documents"] == before + 1
        listed = eve.get("/v1/knowledge-bases/default/documents").json()["data"]
        larch = next(d for d in listed if d["name"] == "larch.md")
        assert larch["path"] == "uploads/larch.md"
        hit = rex.post("/v1/search", json={"model": "default", "query": "zorblat", "k": 1})
        assert "zorblat" in hit.json()["data"][0]["text"]
        assert rex.delete(f"/v1/knowledge-bases/default/documents/{larch['id']}").status_code == 403
        deleted = eve.delete(f"/v1/knowledge-bases/default/documents/{larch['id']}")
        assert deleted.status_code == 200, deleted.text
        assert eve.get("/v1/knowledge-bases/default/stats").json()["documents"] == before
        hit = rex.post("/v1/search", json={"model": "default", "query": "zorblat", "k": 1})
        assert all("zorblat" not in d["text"] for d in hit.json()["data"])


def test_only_an_admin_key_deletes_a_knowledge_base_and_its_grants_go_with_it(offline):
    keys = accounts(offline)
    db = open_app_db(offline)
    db.accounts.grant("rex", "secret", by="test")
    with serve(offline) as url:
        ada, eve, rex = (
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys[n]}"}, timeout=60)
            for n in ("ada", "eve", "rex")
        )
        assert rex.post("/v1/search", json={"model": "secret", "query": "ingest"}).is_success
        eve.get("/v1/knowledge-bases/default/stats").raise_for_status()  # she may write there
        assert eve.delete("/v1/knowledge-bases/default").status_code == 403
        assert rex.delete("/v1/knowledge-bases/secret").status_code == 403
        deleted = ada.delete("/v1/knowledge-bases/secret")
        assert deleted.status_code == 200, deleted.text
        assert [m["id"] for m in ada.get("/v1/models").json()["data"]] == ["default"]
        assert ada.delete("/v1/knowledge-bases/secret").status_code == 404
        assert rex.post("/v1/search", json={"model": "secret", "query": "ingest"}).status_code in (
            403, 404,
        )  # fmt: skip
    assert not (offline.indexes_root / "secret").exists()
    assert (offline.indexes_root / "default").is_dir()
    rex_now = db.accounts.user("rex")
    assert rex_now is not None and rex_now.grants == frozenset({"default"})
    done = [(e.user, e.action, e.target) for e in db.audit.entries()]
    assert ("ada", "delete knowledge base", "secret") in done
    assert ("ada", "revoke", "rex") in done


# -- bounds and the rate limit ----------------------------------------------------------


def test_oversized_requests_are_refused_before_any_work(offline_server):
    keys, url = offline_server.keys, offline_server.url
    headers = {"Authorization": f"Bearer {keys['rex']}"}
    huge = {"model": "default", "messages": [{"role": "user", "content": "x" * 300_000}]}
    reply = httpx.post(url + "/v1/chat/completions", json=huge, headers=headers)
    assert reply.status_code == 413, reply.text
    long = {"model": "default", "messages": [{"role": "user", "content": "x" * 5000}]}
    reply = httpx.post(url + "/v1/chat/completions", json=long, headers=headers)
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "message_too_long"
    many = {"model": "default", "messages": [{"role": "user", "content": "hi"}] * 65}
    reply = httpx.post(url + "/v1/chat/completions", json=many, headers=headers)
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "too_many_messages"


def test_a_key_over_its_rate_is_refused_with_429(offline):
    settings = offline.model_copy(update={"api_burst": 3, "api_requests_per_minute": 1})
    keys = accounts(settings)
    with serve(settings) as url:
        rex = openai.OpenAI(base_url=url + "/v1", api_key=keys["rex"], max_retries=0)
        ada = openai.OpenAI(base_url=url + "/v1", api_key=keys["ada"], max_retries=0)
        for _ in range(3):
            rex.models.list()
        with pytest.raises(openai.RateLimitError) as limited:
            rex.models.list()
        assert limited.value.response.headers["Retry-After"]
        assert ada.models.list().data, "each key has its own bucket"


# -- keys and the loopback-only mode ----------------------------------------------------


def test_keys_cli_create_list_revoke(offline, monkeypatch):
    accounts(offline)
    monkeypatch.setenv("RAG_APP_DB", offline.app_db.get_secret_value())
    created = CliRunner().invoke(rag_main, ["keys", "create", "rex", "--label", "laptop"])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    listed = CliRunner().invoke(rag_main, ["keys", "list"])
    key_id = key.split("-")[1]
    assert key_id in listed.stdout and "laptop" in listed.stdout and key not in listed.stdout
    with serve(offline) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        assert [m.id for m in client.models.list()] == ["default"]
        revoked = CliRunner().invoke(rag_main, ["keys", "revoke", key_id])
        assert revoked.exit_code == 0, revoked.output
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
    db = open_app_db(offline)
    with db.engine.connect() as conn:
        stored = conn.execute(sqlalchemy.text("SELECT token_hash FROM api_keys")).scalars().all()
    assert key not in stored and all(len(h) == 64 for h in stored), "only hashes are kept"


def test_a_removed_users_keys_stop_working(offline):
    keys = accounts(offline)
    open_app_db(offline).accounts.remove_user("rex", by="test")
    with serve(offline) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=keys["rex"], max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            client.models.list()


def test_without_login_a_keyless_request_is_the_local_admin(offline):
    settings = offline.model_copy(update={"auth": "none"})
    with serve(settings) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="EMPTY", max_retries=0)
        assert [m.id for m in client.models.list()] == ["default", "secret"]
        forged = openai.OpenAI(base_url=url + "/v1", api_key="kbqa-0-x", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            forged.models.list()


def test_serve_without_login_refuses_a_non_loopback_address(tmp_path, monkeypatch):
    monkeypatch.setenv("RAG_AUTH", "none")
    monkeypatch.delenv("RAG_INSECURE_NO_AUTH", raising=False)
    result = CliRunner().invoke(
        rag_main, ["serve", "--index-root", str(tmp_path), "--host", "0.0.0.0"]
    )
    assert result.exit_code == 2
    assert "Refusing to start" in result.stderr and "RAG_AUTH=none" in result.stderr


def test_an_older_app_database_gains_the_keys_table(tmp_path):
    settings = Settings(indexes_root=tmp_path / "indexes")
    db = open_app_db(settings)
    with db.engine.begin() as conn:
        conn.execute(sqlalchemy.text("DROP TABLE api_keys"))
        conn.execute(sqlalchemy.text("UPDATE kbqa_meta SET value = '1' WHERE key = 'schema'"))
    db = open_app_db(settings)
    assert db.schema_version() == SCHEMA_VERSION
    db.accounts.add_user("ann", Role.READER, PASSWORD, by="test")
    _, key = db.keys.create("ann", by="test")
    assert db.keys.user(key).name == "ann"


# -- the streamed citation numbers ------------------------------------------------------


@given(
    st.lists(st.sampled_from(["a ", "[", "1", "2", "3", "9", "]", ", ", ".", " [1]", "[2, 3]"]),
             max_size=40),
    st.lists(st.integers(1, 10), max_size=10),
)  # fmt: skip
def test_streamed_markers_are_renumbered_as_the_finished_answer(pieces, cuts):
    text = "".join(pieces)
    ordered = [object()] * 3  # three passages: [9] has none
    expected, _, _ = resolve_citations(text, ordered)  # type: ignore[arg-type]
    stream, out, at = CitationStream(passages=3), "", 0
    for cut in cuts:
        out += stream.feed(text[at : at + cut])
        at += cut
    out += stream.feed(text[at:]) + stream.flush()
    assert out == expected


# -- knowledge bases sharing one Milvus (issue 29) --------------------------------------


def test_a_reader_of_one_base_in_a_shared_milvus_reaches_nothing_of_another(tmp_path, embedder):
    """The bases default (public notes) and secret (a confidential one) in one
    Milvus Lite file: rex reads default only, eve edits default only."""
    from test_milvus_isolation import FINANCE, PUBLIC, SECRET, build

    from serving.launch import free_port

    settings = build(tmp_path, "default", PUBLIC, embedder)
    build(tmp_path, "secret", FINANCE, embedder)
    settings = settings.model_copy(
        update={"auth": "local", "app_db": SecretStr(str(tmp_path / "app.sqlite")),
                "llm_url": f"http://127.0.0.1:{free_port()}/v1", "llm_retries": 0}
    )  # fmt: skip
    keys = accounts(settings)
    with serve(settings) as url:
        rex, eve, ada = (
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys[u]}"}, timeout=300)
            for u in ("rex", "eve", "ada")
        )
        assert [m["id"] for m in rex.get("/v1/models").json()["data"]] == ["default"]
        texts = []
        for mode in ("hybrid", "dense", "bm25"):
            for filters in (None, {"types": ["md"]}):
                body = {"model": "default", "query": "Zanzibar merger confidential", "k": 10,
                        "mode": mode} | ({"filters": filters} if filters else {})  # fmt: skip
                reply = rex.post("/v1/search", json=body)
                assert reply.status_code == 200, reply.text
                texts += [d["text"] for d in reply.json()["data"]]
        assert texts and not [t for t in texts if SECRET in t]
        listed = rex.get("/v1/knowledge-bases/default/documents").json()["data"]
        assert sorted(d["name"] for d in listed) == sorted(PUBLIC)
        assert eve.delete("/v1/knowledge-bases/default/documents/merger.md").status_code == 404
        assert rex.post("/v1/search", json={"model": "secret", "query": "x"}).status_code == 403
        kept = ada.get("/v1/knowledge-bases/secret/documents").json()["data"]
        assert [d["name"] for d in kept] == ["merger.md"]
