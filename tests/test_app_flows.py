"""The app as a new user meets it (issue 17), through AppTest on the real
page: creating a knowledge base, uploading, asking, reloading, switching.
The LLM is the real vLLM server with the tiny scripted gpt-oss, whose
default script answers with a fixed cited sentence (serving/scripted_logits.py);
tests/misbehaving_server.py only for the HTTP 500 it cannot produce."""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

import pytest
from builders import delete_box
from misbehaving_server import MODEL, misbehaving_server
from test_app import app, texts, use_llm

QUESTION = "How do I serve gpt-oss-20b on two GPUs?"
LARCH = b"# Larch Creek pump station\n\nThe Larch Creek pump was installed in 1987."
# What the tiny gpt-oss says to any unscripted question (serving/scripted_logits.py).
ANSWER = "The knowledge base answers this in the first passage [1]."


@pytest.fixture
def answering(app_env, tiny_gpt_oss_server):
    """The app answering through the real vLLM server (the session's tiny
    scripted gpt-oss); yields the server."""
    use_llm(app_env, tiny_gpt_oss_server, answer_style="generative", screen_k=4,
            read_max_tokens=200)  # fmt: skip
    return tiny_gpt_oss_server


def chat_requests(server) -> float:
    """How many chat completions the server has been asked for, by its own
    Prometheus counter."""
    root = server.base_url.removesuffix("/v1")
    with urllib.request.urlopen(f"{root}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("http_requests_total{") and 'handler="/v1/chat/completions"' in line
    )


def button(at, label: str):
    return next(b for b in at.button if b.label == label)


def chat(at) -> list[tuple[str, str]]:
    """The conversation on the page: (role, first text) per message."""
    shown = []
    for message in at.chat_message:
        first = message.children[0]
        shown.append((message.name, getattr(first, "value", "")))
    return shown


def upload(at, files: list[tuple[str, bytes]]) -> None:
    at.file_uploader[0].set_value([(n, d, "text/markdown") for n, d in files]).run()
    button(at, "Ingest").click().run()


# -- 1. a new knowledge base is usable at once -----------------------------------------


def test_the_first_upload_makes_the_ask_tab_usable_in_the_same_run(app_env, kb_root):
    shutil.rmtree(kb_root / "default")  # a new user: no knowledge base at all
    at = app().run()
    assert not at.chat_input
    upload(at, [("larch.md", LARCH)])
    assert not at.exception, [e.value for e in at.exception]
    assert not [i.value for i in at.info if "No index" in i.value]
    assert at.chat_input, "the question box is there as soon as the index is"


# -- 5. limits that explain themselves ---------------------------------------------------


def test_a_blank_question_runs_nothing_and_says_why(answering):
    asked = chat_requests(answering)
    at = app().run()
    at.chat_input[0].set_value("   \n  ").run()
    assert not at.exception
    assert chat_requests(answering) == asked, "a blank question reached the model"
    assert any("Type a question" in w.value for w in at.warning)
    assert not at.chat_message


def test_the_question_box_says_its_limit(app_env):
    at = app().run()
    assert at.chat_input[0].max_chars == 2000
    assert any("2,000 characters" in c.value for c in at.caption)


def test_a_question_too_long_for_the_model_says_so_and_stays_in_the_conversation(
    answering, app_env
):
    asked = chat_requests(answering)
    app_env.setenv("RAG_LLM_CONTEXT_TOKENS", "512")
    app_env.setenv("RAG_READ_MAX_TOKENS", "128")
    at = app().run()
    long_question = "How do I serve the model? " * 70  # 1,820 characters
    at.chat_input[0].set_value(long_question).run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert any(
        "your question is too long for this model" in e.lower() and "tokens, at most" in e
        for e in errors
    ), errors
    assert chat_requests(answering) == asked, "the pipeline ran for a question that cannot fit"
    assert all(s.state != "running" for s in at.status), "the status ended"
    assert [m.name for m in at.chat_message] == ["user", "assistant"]
    assert button(at.sidebar, "New conversation")
    # and it is still there after the next run
    at.run()
    assert any("too long for this model" in e.value for e in at.error)


def test_a_failed_answer_stays_in_the_conversation_with_its_error(app_env):
    with misbehaving_server() as server:
        app_env.setenv("RAG_LLM_URL", server.url("http-500", only="read"))
        app_env.setenv("RAG_LLM_MODEL", MODEL)
        at = app().run()
        at.chat_input[0].set_value(QUESTION).run()
        at.chat_input[0].set_value("What does the screen do?").run()
    assert not at.exception, [e.value for e in at.exception]
    assert [m.name for m in at.chat_message] == ["user", "assistant"] * 2
    assert sum("HTTP 500" in e.value for e in at.error) == 2
    assert all(s.state != "running" for s in at.status)


# -- 2. the conversation survives a reload and a restart ----------------------------


def test_the_conversation_survives_a_reload_and_new_conversation_starts_over(answering, kb_root):
    asked = chat_requests(answering)
    at = app().run()
    at.chat_input[0].set_value(QUESTION).run()
    assert not at.exception, [e.value for e in at.exception]
    assert chat_requests(answering) > asked, "the server's counter sees a question"
    reloaded = app().run()  # a new session: a reload, or the app restarted
    assert [m.name for m in reloaded.chat_message] == ["user", "assistant"]
    assert chat(reloaded)[0] == chat(at)[0] == ("user", QUESTION)
    assert ANSWER in texts(reloaded)
    citation = next(e for e in reloaded.expander if e.label.startswith("[1] "))
    assert any(":orange-background[" in m.value for m in citation.markdown)
    assert (kb_root / ".app" / "app.sqlite").is_file()
    assert not any(kb_root.glob("default/**/app.sqlite*")), "history kept out of the index"
    button(reloaded.sidebar, "New conversation").click().run()
    assert not reloaded.chat_message
    assert not app().run().chat_message, "the new, empty conversation is the one kept"


def test_a_stored_citation_opens_after_its_document_is_gone(answering, kb_root):
    at = app().run()
    at.chat_input[0].set_value(QUESTION).run()
    cited = next(e for e in at.expander if e.label.startswith("[1] "))
    source = next(c.value for c in cited.caption)
    doomed = next(p for p in delete_box(at).options if source.endswith(Path(p).name))
    delete_box(at).set_value([doomed]).run()
    next(c for c in at.checkbox if c.label.startswith("Yes, delete 1")).check().run()
    button(at, "Delete selected").click().run()
    reloaded = app().run()
    citation = next(e for e in reloaded.expander if e.label.startswith("[1] "))
    assert not reloaded.exception, [e.value for e in reloaded.exception]
    assert any("no longer in the knowledge base" in c.value for c in citation.caption)
    assert citation.markdown, "the stored passage text is shown"


# -- 3. a conversation belongs to one knowledge base --------------------------------


def test_switching_knowledge_base_switches_conversation(answering, kb_root):
    shutil.copytree(kb_root / "default", kb_root / "larch")
    at = app().run()
    at.chat_input[0].set_value(QUESTION).run()
    at.sidebar.selectbox[0].set_value("larch").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.chat_message, "the other base's conversation is not carried over"
    assert any("larch" in c.value and "conversation" in c.value.lower() for c in at.caption)
    at.chat_input[0].set_value("When was it installed?").run()
    assert not [c.value for c in at.caption if c.value.startswith("Searched for")], (
        "the first question of larch's conversation was rewritten with default's"
    )
    assert len(at.chat_message) == 2
    at.sidebar.selectbox[0].set_value("default").run()
    assert chat(at)[0] == ("user", QUESTION), "default's conversation comes back"
    assert len(at.chat_message) == 2


# -- 6. creating a knowledge base is one action ---------------------------------------


def test_creating_a_knowledge_base_selects_it_everywhere(app_env, kb_root):
    at = app().run()
    at.sidebar.text_input[0].set_value("contracts")
    assert at.sidebar.selectbox[0].value == "default", "typing alone switches nothing"
    button(at.sidebar, "Create").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.sidebar.selectbox[0].value == "contracts"
    assert "contracts" in at.sidebar.selectbox[0].options
    assert (kb_root / "contracts").is_dir()
    assert any("contracts" in c.value for c in at.caption if "Knowledge base" in c.value)
    assert at.sidebar.text_input[0].value == ""
    upload(at, [("larch.md", LARCH)])
    assert (kb_root / "contracts" / "uploads" / "larch.md").is_file()
    assert not (kb_root / "default" / "uploads").exists()


def test_an_invalid_name_creates_nothing_and_keeps_the_selection(app_env, kb_root):
    at = app().run()
    at.sidebar.text_input[0].set_value("../escape")
    button(at.sidebar, "Create").click().run()
    assert any("letters, digits" in e.value for e in at.sidebar.error)
    assert at.sidebar.selectbox[0].value == "default"
    assert sorted(p.name for p in kb_root.iterdir() if not p.name.startswith(".")) == ["default"]


# -- 7. the uploader is emptied after ingesting and on switching -----------------------


def test_the_uploader_is_empty_after_ingesting_and_after_switching(app_env, kb_root):
    shutil.copytree(kb_root / "default", kb_root / "larch")
    at = app().run()
    upload(at, [("larch.md", LARCH)])
    assert any("Added 1" in s.value for s in at.success)
    assert not at.file_uploader[0].value, "ingested files are no longer offered"
    at.file_uploader[0].set_value([("other.md", b"# Other\n\nText.", "text/markdown")]).run()
    at.sidebar.selectbox[0].set_value("larch").run()
    assert not at.file_uploader[0].value, "files chosen for default are not offered to larch"


# -- 8. a deleted document is no longer selected -------------------------------------


def test_after_a_delete_nothing_is_selected(app_env, kb_root):
    at = app().run()
    doomed = next(p for p in delete_box(at).options if p.endswith("searching.md"))
    delete_box(at).set_value([doomed]).run()
    next(c for c in at.checkbox if c.label.startswith("Yes, delete 1")).check().run()
    button(at, "Delete selected").click().run()
    assert any("Deleted 1" in s.value for s in at.success)
    assert delete_box(at).value == []
    assert doomed not in delete_box(at).options
    assert not [b for b in at.button if b.label == "Delete selected"]


# -- 9 and 13. no server internals, numbers that fit a phone ------------------------


def test_the_manage_tab_is_compact_and_counts_in_words(app_env, kb_root):
    shutil.rmtree(kb_root / "default")
    at = app().run()
    upload(at, [("larch.md", LARCH)])
    assert not at.metric, "four big numbers filled a phone's screen"
    lines = [c.value for c in at.caption]
    assert any(line.startswith("1 document · 1 passage · 1 vector · ") for line in lines), lines
    assert "None" not in at.dataframe[0].value["pages"].tolist()
    main_area = [c.value for c in at.main.caption if "Knowledge base" in c.value]
    assert main_area == ["Knowledge base **default** · 1 document · 1 passage"]
