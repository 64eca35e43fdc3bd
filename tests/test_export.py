"""A conversation exported as Markdown (issue 31): paths as the app shows
them (relative to the knowledge base, never the server's), clean text (no
stray backslashes in a readable answer), and the filters each question
used, kept with the turn in the conversation store."""

from __future__ import annotations

import re

from builders import make_hit

from rag.filters import Filters
from rag.settings import Settings
from rag.types import Answer, Citation
from team.appdb import open_app_db
from team.conversation import Turn
from team.sources import SourceNames
from ui.conversation import to_markdown

ANSWER = "On the token limit: raise RAG_LLM_CONTEXT_TOKENS (see `a_b[0]`) [1]."


def test_the_export_shows_relative_paths_clean_text_and_the_filters_used(tmp_path):
    root = tmp_path / "indexes" / "handbook"
    source = str(root / "uploads" / "answering_notes.md")
    hit = make_hit(1, text="Raise the token limit: *raise* it.", source=source, page=None)
    answer = Answer(question="q", text=ANSWER, citations=[Citation(1, hit)], hits=[hit])
    used = Filters.parse(str(root / "uploads") + "/", ["md"], ["ops"], "2024-01-01")
    db = open_app_db(Settings(app_db=str(tmp_path / "app.sqlite")))
    talks = db.conversations
    conversation = talks.start("ann", "handbook")
    talks.add(conversation, Turn("The token limit: what then?", answer=answer, filters=used))
    talks.add(conversation, Turn("And without filters?", answer=answer))
    stored = talks.open("ann", conversation.id)
    assert stored.turns[0].filters == used  # kept with the turn in the store
    assert stored.turns[1].filters is None

    text = to_markdown(stored, SourceNames(kb_root=str(root), shared=None))
    assert str(tmp_path) not in text, text
    assert "`uploads/answering_notes.md`" in text, text
    assert "On the token limit: raise RAG_LLM_CONTEXT_TOKENS (see `a_b[0]`) [1]." in text, text
    assert "The token limit: what then?" in text, text
    assert not re.search(r"\\[:()_*.-]", text), text
    first, second = text.split("## Question 2")
    assert (
        "Filters: folder `uploads`; types markdown; tags ops; modified on or after 2024-01-01."
        in first
    ), first
    assert "Filters:" not in second


def test_a_hostile_answer_exports_with_no_link_image_or_html():
    hostile = "[x](https://evil.example) ![i](https://evil.example/p.png) <img src=x> [1]"
    answer = Answer(question="q", text=hostile)
    text = to_markdown_export(Turn("<b>q</b> [y]: https://evil.example", answer=answer))
    body = text.split("## Question 1")[1]
    assert not re.search(r"(?<!\\)[\[<](?!1\])", body), body
    assert "[1]" in body


def to_markdown_export(turn: Turn) -> str:
    from team.conversation import Conversation

    return to_markdown(Conversation(id=1, kb="default", started=0.0, turns=[turn]))
