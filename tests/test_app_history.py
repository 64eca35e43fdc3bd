"""Each user's conversations in the sidebar (issue 19): listed for the
knowledge base in use, reopened with their citations, renamed, deleted,
exported as Markdown; and never another user's. The LLM is the real vLLM
server with the tiny scripted gpt-oss (a fixed cited answer)."""

from __future__ import annotations

from test_app import app
from test_app_access import log_in, team  # noqa: F401 - a fixture
from test_app_flows import answering, button, chat  # noqa: F401 - a fixture

from ui.safe_text import plain

FIRST = "How do I serve gpt-oss-20b on two GPUs?"
SECOND = "What does the screen do?"


def listed(at) -> list[str]:
    """The titles of the conversations the sidebar lists, as their buttons read."""
    labels = [b.label for b in at.sidebar.button if (b.key or "").startswith("conversation-")]
    return [label.rpartition(" · ")[0] for label in labels]


def test_conversations_are_listed_reopened_renamed_and_deleted(answering):  # noqa: F811
    at = app().run()
    at.chat_input[0].set_value(FIRST).run()
    button(at.sidebar, "New conversation").click().run()
    at.chat_input[0].set_value(SECOND).run()
    assert not at.exception, [e.value for e in at.exception]
    assert listed(at) == [plain(SECOND), plain(FIRST)], "last used first"

    next(b for b in at.sidebar.button if b.label.startswith(plain(FIRST))).click().run()
    assert chat(at) == [("user", FIRST), ("assistant", chat(at)[1][1])]
    citation = next(e for e in at.expander if e.label.startswith("[1] "))
    assert any(":orange-background[" in m.value for m in citation.markdown), "with its passage"
    assert any(d.label == "Export as Markdown" for d in at.sidebar.download_button)

    next(t for t in at.sidebar.text_input if t.label == "Title").set_value("Serving notes")
    button(at.sidebar, "Rename").click().run()
    assert listed(at) == [plain(SECOND), "Serving notes"]
    assert chat(at)[0] == ("user", FIRST), "renaming keeps it open"

    button(at.sidebar, "Delete this conversation").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert listed(at) == [plain(SECOND)]
    assert chat(at)[0] == ("user", SECOND), "the one left is shown"


def test_each_user_sees_only_their_own_conversations(team, answering):  # noqa: F811
    at = app().run()
    log_in(at, "rita")
    at.chat_input[0].set_value(FIRST).run()
    assert len(listed(at)) == 1
    other = log_in(app().run(), "eddie")
    assert not listed(other) and not other.chat_message
    assert len(team.conversations.list("rita", "default")) == 1
    assert not team.conversations.list("eddie", "default")
