"""A team's first hour in the app, the small things (issue 31): a base the
address asks for that the user may not read is named as such; Create and
Rename confirm; one list of file types; one word, "passages"; an empty
Tags filter says why; the Stages section is a table; `rag search --help`
lists every type the loaders know."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from misbehaving_server import MODEL, misbehaving_server
from streamlit.testing.v1 import AppTest
from test_app import app
from test_app_access import log_in, picker, team  # noqa: F401 - a fixture

ROOT = Path(__file__).resolve().parent.parent


def button(where, label: str):
    return next(b for b in where.button if b.label == label)


def test_a_reader_sent_to_a_base_not_granted_is_told_it_is_not_available(team):  # noqa: F811
    at = app()
    at.query_params["kb"] = "secret"
    log_in(at.run(), "rita")
    assert picker(at).value == "default"
    warnings = [w.value for w in at.warning]
    assert any("“secret” is not available to you" in w for w in warnings), warnings


def test_create_confirms_and_folds_its_form(app_env):
    at = app().run()
    next(t for t in at.sidebar.text_input if t.label == "Name").input("larch")
    button(at.sidebar, "Create").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert picker(at).value == "larch"
    assert [s.value for s in at.sidebar.success] == ["Created knowledge base “larch”."]
    form = next(e for e in at.sidebar.expander if e.label == "New knowledge base")
    assert not form.proto.expanded, "folded once the base is made"


def test_rename_confirms(app_env):
    with misbehaving_server() as server:
        app_env.setenv("RAG_LLM_URL", server.url("ok"))
        app_env.setenv("RAG_LLM_MODEL", MODEL)
        at = app().run()
        at.chat_input[0].set_value("How are broken files reported?").run()
        next(t for t in at.sidebar.text_input if t.label == "Title").set_value("Broken files")
        button(at.sidebar, "Rename").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Renamed to “Broken files”." in [s.value for s in at.sidebar.success]


def test_the_uploader_names_the_types_once(team):  # noqa: F811
    from ingest.loaders import KINDS

    at = log_in(app().run(), "eddie")
    [uploader] = at.get("file_uploader")
    assert {".pdf", ".md", ".docx", ".csv"} <= set(uploader.proto.type), KINDS
    label = uploader.proto.label
    assert not re.search(r"pdf|markdown|text|html|docx|csv", label, re.IGNORECASE), label


def test_the_app_says_passages_never_chunks():
    sources = [ROOT / "streamlit_app.py", *ROOT.glob("ui/*.py")]
    shown = []
    for path in sources:
        for literal in re.findall(r"(?<![\w.\[])f?\"([^\"\n]*)\"", path.read_text("utf-8")):
            if re.search(r"\bchunks?\b", re.sub(r"\{[^}]*\}", "", literal)):
                shown.append((path.name, literal))
    assert not shown, shown


def test_an_empty_tags_filter_says_there_are_no_tags_yet(app_env):
    at = app().run()
    tags = next(m for m in at.multiselect if m.label == "Tags (any of)")
    assert tags.disabled
    assert "no document has tags yet" in (tags.placeholder + tags.help).lower(), tags.proto


def _stages_page() -> None:
    from rag.types import Answer, Usage
    from ui import render

    usage = {"screen": Usage(120, 30), "read": Usage(400, 80)}
    answer = Answer(question="q", text="a", timings={"retrieve": 0.1, "read": 1.5}, usage=usage)
    render.stages(answer)


def test_the_stages_section_is_a_table_not_raw_json():
    at = AppTest.from_function(_stages_page).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.json, "no raw JSON widget"
    table = at.dataframe[-1].value
    assert list(table["stage"]) == ["retrieve", "read", "screen", "total"], table
    assert list(table["seconds"])[:1] == [0.1]


def test_rag_search_help_lists_every_type():
    from cli.rag_main import main
    from ingest.loaders import KINDS

    result = CliRunner().invoke(main, ["search", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for kind in sorted(set(KINDS.values())):
        assert kind in text, (kind, text)


@pytest.fixture(autouse=True)
def _no_leftover(tmp_path):
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)
