"""The Streamlit app through AppTest, against real indexes and real vLLM
servers (SmolLM2, and the scripted tiny gpt-oss for citations)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from builders import delete_box, make_pdf
from streamlit.testing.v1 import AppTest

from rag.answering.profiles import SMALL_MODEL_PROFILE, as_env

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")


def app() -> AppTest:
    return AppTest.from_file(APP, default_timeout=240)


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += [e.label for e in at.expander] + [s.label for s in at.status]
    return "\n".join(parts)


def use_llm(env, server, **overrides: object) -> None:
    """Point the app at `server` with the small CPU model's profile, as
    `make run` does, and `overrides` (Settings fields) on top."""
    served = {"llm_url": server.base_url, "llm_model": server.served_model_name}
    for key, value in as_env({**SMALL_MODEL_PROFILE, **served, **overrides}).items():
        env.setenv(key, value)


def test_no_bare_expression_is_rendered_by_streamlit_magic():
    # Streamlit writes every bare expression of the app file to the page
    # ("magic"): a `kb.embedder  # load it now` line once showed the
    # embedder's API documentation above the chat.
    import ast

    tree = ast.parse(Path(APP).read_text(encoding="utf-8"))
    shown = [
        f"line {node.lineno}: {ast.unparse(node)}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr)
        and not isinstance(node.value, ast.Call | ast.Yield | ast.YieldFrom | ast.Await)
        and not (isinstance(node.value, ast.Constant) and isinstance(node.value.value, str))
    ]
    assert not shown


def test_offline_llm_shows_a_banner_and_ranked_passages(app_env):
    from serving.launch import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    app_env.setenv("RAG_LLM_URL", url)
    at = app().run()
    assert not at.exception
    assert not at.get("help"), "an expression was rendered by Streamlit magic"
    assert any(url in w.value and "not reachable" in w.value for w in at.warning)
    at.chat_input[0].set_value("How do I serve gpt-oss-20b on two GPUs?").run()
    assert not at.exception
    labels = [e.label for e in at.expander]
    assert labels and labels[0].startswith("1. ")
    assert any("operations-handbook.pdf, page" in label for label in labels)
    assert len(at.image) > 0, "the PDF page is shown as an image"


def test_the_filters_expander_scopes_the_passages_and_warns_when_nothing_matches(app_env):
    import datetime as dt

    from serving.launch import free_port

    app_env.setenv("RAG_LLM_URL", f"http://127.0.0.1:{free_port()}/v1")  # passages only
    at = app().run()
    assert "Filters" in [e.label for e in at.expander]
    types = next(m for m in at.multiselect if m.label == "Types")
    assert "pdf" in types.options and "markdown" in types.options
    types.select("markdown").run()
    assert any("Questions search 5 of 6 documents" in c.value for c in at.caption)
    at.chat_input[0].set_value("How do I serve gpt-oss-20b on two GPUs?").run()
    assert not at.exception
    labels = [e.label for e in at.expander if e.label[:1].isdigit()]
    assert labels and not any(".pdf" in label for label in labels), labels
    after = next(d for d in at.date_input if d.label == "Modified on or after")
    after.set_value(dt.date.today() + dt.timedelta(days=365)).run()
    assert any("No document matches these filters" in w.value for w in at.warning)
    at.chat_input[0].set_value("How do I serve gpt-oss-20b on two GPUs?").run()
    assert not at.exception
    assert any("No document matches the filters (type markdown, modified after" in e.value
               for e in at.error)  # fmt: skip


def test_a_failing_answer_shows_the_error_and_still_the_passages(app_env):
    # A server that answers the screen but fails the deep read with HTTP 500
    # (tests/misbehaving_server.py: a real HTTP server, wrong on purpose).
    from misbehaving_server import MODEL, misbehaving_server

    with misbehaving_server() as server:
        app_env.setenv("RAG_LLM_URL", server.url("http-500", only="read"))
        app_env.setenv("RAG_LLM_MODEL", MODEL)
        at = app().run()
        at.chat_input[0].set_value("How do I serve gpt-oss-20b on two GPUs?").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("HTTP 500" in e.value for e in at.error), [e.value for e in at.error]
    labels = [e.label for e in at.expander]
    assert any(label.startswith("1. ") for label in labels), labels
    # the failed turn stays in the conversation, with its error (issue 17)
    assert [m.name for m in at.chat_message] == ["user", "assistant"]


@pytest.mark.llm
def test_ask_streams_a_cited_answer_with_stages(app_env, llm_server):
    # As `make run` serves it on a machine without a GPU: SmolLM2 with the
    # CPU profile, whose answers quote the passages (extractive).
    use_llm(app_env, llm_server)
    at = app().run()
    assert not at.warning, [w.value for w in at.warning]
    at.chat_input[0].set_value("How are broken files reported during ingestion?").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert "Answered" in texts(at)
    # the status says it is done; the timings and tokens are shown once, in Stages
    assert [s.label for s in at.status] == ["Answered"]
    stages = next(e.label for e in at.expander if e.label.startswith("Stages — "))
    assert "retrieve" in stages and "screen" in stages and "read" in stages
    assert "tokens" in stages and "retrieve" not in at.status[0].label
    verdicts = at.dataframe[0].value
    assert len(verdicts) == SMALL_MODEL_PROFILE["screen_k"]
    assert set(verdicts.columns) >= {"read", "reason", "source"}, "the screen is off: none kept"
    cited = [e for e in at.expander if re.match(r"\[\d+\] ", e.label)]
    assert cited, "the answer cites a passage, which opens below it"
    shown = [m.value for m in cited[0].markdown if ":orange-background[" in m.value]
    assert shown and "**" in shown[0], "the quoted sentence is in bold inside its passage"


@pytest.mark.llm
def test_a_follow_up_is_searched_as_a_standalone_question(app_env, llm_server):
    use_llm(app_env, llm_server)
    at = app().run()
    at.chat_input[0].set_value("How are broken files reported during ingestion?").run()
    at.chat_input[0].set_value("And what about scanned PDFs?").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    # The small model's profile joins the follow-up to the question it
    # follows (rag/answering/followup.py), a stage with its own time.
    searched = [c.value for c in at.caption if c.value.startswith("Searched for: ")]
    joined = "And what about scanned PDFs? broken files reported ingestion"
    assert searched == [f"Searched for: {joined}"]
    assert [m.name for m in at.chat_message] == ["user", "assistant", "user", "assistant"]
    assert [s.label for s in at.status] == ["Answered"]
    assert any(e.label.startswith("Stages — follow-up ") for e in at.expander)
    # the conversation reads in the order it was asked
    assert at.chat_message[2].children[0].value == "And what about scanned PDFs?"
    next(b for b in at.sidebar.button if b.label == "New conversation").click().run()
    assert not at.chat_message
    assert not app().run().chat_message, "the new conversation is kept across a reload"


def test_quoted_sentences_are_found_and_set_in_bold_across_line_breaks():
    from ui.safe_text import _embolden, quoted

    answer = "Files are checked first. [2] Broken files are reported by name. [1][2]"
    assert quoted(answer, 1) == ["Broken files are reported by name."]
    assert quoted(answer, 2) == ["Files are checked first.", "Broken files are reported by name."]
    span = "Intro *here*.\nBroken files are\nreported by name. Tail."
    assert _embolden(span, quoted(answer, 1)) == (
        "Intro \\*here\\*\\.  \n**Broken files are reported by name\\.** Tail\\."
    )
    assert _embolden(span, ["Not in the passage at all."]) == _embolden(span, [])


def test_a_highlighted_passage_is_one_paragraph_whatever_its_blank_lines():
    # A blank line inside `:orange-background[...]` ends the directive, and
    # its brackets showed as text around a Markdown passage's headings.
    from ui.safe_text import highlighted

    span = "# How ingestion works\n\n## Loading\n  \n\nEach file type has a loader."
    shown = highlighted(span, ["Each file type has a loader."])
    assert shown == (
        ":orange-background[\\# How ingestion works  \n\\#\\# Loading  \n"
        "**Each file type has a loader\\.**]"
    )


@pytest.mark.llm
def test_citations_open_their_passage_and_pdf_page(app_env, tiny_gpt_oss_server):
    use_llm(
        app_env, tiny_gpt_oss_server, answer_style="generative", screen_k=4, read_max_tokens=200
    )
    at = app().run()
    at.chat_input[0].set_value("How do I serve gpt-oss-20b on two GPUs?").run()
    assert not at.exception, [e.value for e in at.exception]
    page = texts(at)
    assert "The knowledge base answers this in the first passage [1]." in page
    citation = next(e for e in at.expander if e.label.startswith("[1] "))
    assert "Model reasoning" in [e.label for e in at.expander]
    highlighted = [m.value for m in citation.markdown if ":orange-background[" in m.value]
    assert highlighted, "the cited span is highlighted in its context"
    # The scripted answer cites the first passage, which for this question
    # is a page of the handbook PDF: its page is rendered.
    assert re.search(r"operations-handbook\.pdf, page \d+", citation.label), citation.label
    assert citation.get("image"), "a cited PDF page is rendered"


def test_upload_ingests_good_files_and_reports_broken_ones(app_env, kb_root, tmp_path):
    at = app().run()
    pdf = make_pdf(tmp_path / "p.pdf", ["Quarterly revenue grew by twelve percent."]).read_bytes()
    at.file_uploader[0].set_value(
        [
            (
                "../../escape attempt.md",
                b"# Escape\n\nThis note tries to leave the folder.",
                "text/markdown",
            ),
            ("report.pdf", pdf, "application/pdf"),
            ("broken.pdf", b"%PDF-1.4 this is not a pdf", "application/pdf"),
        ]
    ).run()
    next(b for b in at.button if b.label == "Ingest").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Added 2" in s.value for s in at.success)
    assert any("broken.pdf" in e.value and "PDF" in e.value for e in at.error)
    uploads = kb_root / "default" / "uploads"
    assert sorted(p.name for p in uploads.iterdir()) == [
        "broken.pdf",
        "escape attempt.md",
        "report.pdf",
    ]
    assert not (kb_root.parent / "escape attempt.md").exists()
    documents = at.dataframe[0].value["document"].tolist()
    assert "uploads/report.pdf" in documents  # relative to the knowledge base
    # the sidebar's summary is drawn after the ingest: it counts the new files
    summary = next(c.value for c in at.sidebar.caption if "documents" in c.value)
    assert summary.startswith(f"{len(documents)} documents · "), summary


def test_visitors_never_see_an_absolute_server_path(app_env, kb_root, tmp_path):
    # The sample documents were ingested from docs/ (outside the knowledge
    # base, as `make run` does) and one more is uploaded into it: passages,
    # their captions and labels, the documents table, the delete picker and
    # an upload's failure message all show paths relative to the knowledge
    # base, or to the folder its outside documents share.
    from serving.launch import free_port

    app_env.setenv("RAG_LLM_URL", f"http://127.0.0.1:{free_port()}/v1")  # passages only
    at = app().run()
    at.file_uploader[0].set_value(
        [
            ("notes.md", b"# Notes\n\nThe ingestion report lists broken files.", "text/markdown"),
            ("broken.pdf", b"%PDF-1.4 this is not a pdf", "application/pdf"),
        ]
    ).run()
    next(b for b in at.button if b.label == "Ingest").click().run()
    assert any("uploads/broken.pdf" in e.value for e in at.error), "the failure is reported"
    shown = page_text(at)
    at.chat_input[0].set_value("How are broken files reported during ingestion?").run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.expander) >= 3, "the passages are shown"
    shown += page_text(at)
    for server_path in (str(kb_root), str(Path(APP).parent), str(tmp_path)):
        assert server_path not in shown
    assert "uploads/notes.md" in shown and "how-ingestion-works.md" in shown


def page_text(at: AppTest) -> str:
    """Everything the page shows as text: Markdown, captions, labels, alerts,
    the options of pickers and the cells of tables."""
    shown = [texts(at)] + [
        m.value for kind in ("error", "success", "info", "warning") for m in at.get(kind)
    ]
    shown += [str(o) for box in at.multiselect for o in box.options]
    shown += [frame.value.to_csv() for frame in at.dataframe]
    return "\n".join(shown)


def test_delete_a_document_from_the_manage_tab(app_env, kb_root):
    at = app().run()
    doomed = next(p for p in delete_box(at).options if p.endswith("searching.md"))
    delete_box(at).set_value([doomed]).run()
    next(c for c in at.checkbox if c.label.startswith("Yes, delete 1")).check().run()
    next(b for b in at.button if b.label == "Delete selected").click().run()
    assert any("Deleted 1" in s.value for s in at.success)
    assert doomed not in at.dataframe[0].value["document"].tolist()


def test_rebuild_from_the_manage_tab_embeds_every_document_again(app_env, kb_root):
    at = app().run()

    def generation() -> int:
        line = next(c.value for c in at.caption if "generation" in c.value)
        return int(re.search(r"generation (\d+)", line).group(1))

    before = generation()
    next(b for b in at.button if b.label == "Rebuild this knowledge base").click().run()
    assert not at.exception, [e.value for e in at.exception]
    done = [s.value for s in at.success]
    assert done and re.search(r"\b[1-9]\d* passages embedded", done[0]), done
    assert generation() == before + 1


def test_a_rebuild_that_would_drop_documents_asks_first(app_env, kb_root, tmp_path, embedder):
    from ingest.pipeline import ingest_paths
    from rag.settings import Settings

    note = tmp_path / "gone.md"
    note.write_text("# Gone\n\nThis note's file is deleted before the rebuild.\n")
    ingest_paths([str(note)], Settings(index=kb_root / "default"), embedder=embedder)
    note.unlink()
    at = app().run()

    def state() -> tuple[int, list[str]]:
        line = next(c.value for c in at.caption if "generation" in c.value)
        generation = int(re.search(r"generation (\d+)", line).group(1))
        return generation, at.dataframe[0].value["document"].tolist()

    # As visitors see it: relative to the folder the documents share, which
    # depends on where the checkout and the temporary folder are.
    from rag.knowledge_base import KnowledgeBase
    from team.sources import SourceNames

    shown = SourceNames.of(KnowledgeBase.open(kb_root / "default")).show(str(note))
    assert shown.endswith("gone.md") and not os.path.isabs(shown), shown
    before = state()
    assert shown in before[1]
    next(b for b in at.button if b.label == "Rebuild this knowledge base").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("would drop 1 document" in w.value for w in at.warning), at.warning
    assert any(t.value == shown for t in at.text), "names the document it would drop"
    assert state() == before, "nothing changes before the user confirms"

    at.run()  # any other rerun: the question is still there
    confirm = next(b for b in at.button if b.label == "Rebuild without these 1 document(s)")
    confirm.click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(s.value.startswith("Added ") for s in at.success), [e.value for e in at.error]
    assert not any("would drop" in w.value for w in at.warning), "the question is answered"
    assert not any(b.label.startswith("Rebuild without") for b in at.button)
    generation, documents = state()
    # (names are relative to the folder the remaining documents share)
    assert generation == before[0] + 1
    assert [Path(p).name for p in documents] == [Path(p).name for p in before[1] if p != shown]
