"""The default CPU path (SmolLM2, the small-model profile, extractive
answers) on the real server answers what retrieval finds (issue 30): the
README's own example, a workbook row, and a follow-up through the app and
through the API; and a refusal is never labelled "Answered"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from api_server import Server, accounts, indexes, serve
from click.testing import CliRunner
from pydantic import SecretStr
from streamlit.testing.v1 import AppTest
from test_app import APP, use_llm

from cli.rag_main import main as rag_main
from ingest.pipeline import ingest_paths
from rag.answering.pipeline import answer
from rag.answering.profiles import small_model
from rag.knowledge_base import KnowledgeBase
from rag.llm import OpenAIChat
from rag.settings import Settings

pytestmark = pytest.mark.llm

ADD = "How do I add my own documents?"
REMOVE = "And how do I remove one?"


def test_the_readme_example_answers_from_how_ingestion_works(monkeypatch, llm_server, docs_index):
    for key in [k for k in __import__("os").environ if k.startswith("RAG_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("RAG_LLM_URL", llm_server.base_url)
    question = "How are broken files reported?"  # as README.md asks it
    result = CliRunner().invoke(rag_main, ["ask", question, "--index", str(docs_index), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["found"], out["notes"]
    assert "is reported by name" in out["answer"]
    assert "how-ingestion-works.md" in {Path(c["source"]).name for c in out["citations"]}


def budget_workbook(folder: Path) -> Path:
    import openpyxl

    folder.mkdir(parents=True)
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Budget 2025"
    sheet.append(["Quarter", "Category", "Budget", "Spent"])
    for row in [("Q1", "Travel", 12000, 11500.5), ("Q2", "Travel", 9000, 9400),
                ("Q3", "Travel", 15500, 14200), ("Q3", "Training", 6500, 6100.25)]:  # fmt: skip
        sheet.append(list(row))
    for cells in sheet.iter_rows(min_row=2):
        cells[2].number_format = '"$"#,##0'
    team = book.create_sheet("Team")
    team.append(["Team", "People"])
    team.append(["Engineering", 14])
    book.save(folder / "budget-2025.xlsx")
    return folder


def test_a_workbook_row_question_is_answered_with_the_row(tmp_path, embedder, llm_server):
    index = tmp_path / "index"
    report = ingest_paths([str(budget_workbook(tmp_path / "kb"))], Settings(index=index),
                          embedder=embedder)  # fmt: skip
    assert not report.failed
    settings = small_model(llm_url=llm_server.base_url, llm_model=llm_server.served_model_name)
    kb = KnowledgeBase.open(index, embedder)
    result = answer("What was the Q3 travel budget?", kb, OpenAIChat(settings), settings)
    assert result.found, result.notes
    assert "| Quarter | Category | Budget | Spent |\n| Q3 | Travel | $15,500 |" in result.text
    cited = result.citations[0].hit
    assert Path(cited.source).name == "budget-2025.xlsx"
    assert cited.locator.startswith('sheet "Budget 2025", rows')


def test_a_follow_up_in_the_app_is_answered_and_a_refusal_is_not_answered(app_env, llm_server):
    use_llm(app_env, llm_server)
    at = AppTest.from_file(APP, default_timeout=240).run()
    at.chat_input[0].set_value(ADD).run()
    at.chat_input[0].set_value(REMOVE).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [s.label for s in at.status] == ["Answered"]  # the turn just asked
    reply = " ".join(m.value for m in at.chat_message[3].markdown)
    assert "ingest --delete" in reply, reply
    searched = [c.value for c in at.caption if c.value.startswith("Searched for: ")]
    assert searched == [f"Searched for: {REMOVE} add documents"]
    said = [*(i.value for i in at.info), *(c.value for c in at.caption)]
    assert not any("rewrite" in t.lower() or "kept passages" in t.lower() for t in said)
    at.chat_input[0].set_value("What is the capital of France?").run()
    assert [s.label for s in at.status][-1] == "Not found"
    assert not any("kept" in s.label for s in at.status), "the screen is off: nothing kept"


def test_a_follow_up_through_the_api_is_answered(tmp_path, docs_index, llm_settings):
    settings = llm_settings.model_copy(
        update={"indexes_root": indexes(tmp_path, docs_index), "auth": "local",
                "app_db": SecretStr(str(tmp_path / "app.sqlite")), "answer_style": "extractive",
                "screen": False, "llm_retries": 0, "followup": "join"}
    )  # fmt: skip
    keys = accounts(settings)
    with serve(settings) as url:
        client = Server(url, settings, keys).client("rex")
        first = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": ADD}]
        )
        messages = [
            {"role": "user", "content": ADD},
            {"role": "assistant", "content": first.choices[0].message.content},
            {"role": "user", "content": REMOVE},
        ]
        reply = client.chat.completions.create(model="default", messages=messages)
    assert reply.model_extra["found"], reply.model_extra["notes"]
    assert "ingest --delete" in (reply.choices[0].message.content or "")
    assert reply.model_extra["search_query"] == f"{REMOVE} add documents"
