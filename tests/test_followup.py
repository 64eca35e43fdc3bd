"""Which questions are rewritten with the conversation, and which rewrites
are kept (rag/answering/followup.py): known answers."""

from __future__ import annotations

import pytest

from rag.answering.followup import joined, needs_context, plausible_rewrite, referred

HISTORY = [
    ("user", "How are broken files reported during ingestion?"),
    ("assistant", "Broken files are listed by name with the parser's error [1]."),
]


@pytest.mark.parametrize(
    "question",
    [
        "When was it installed?",
        "And what about scanned PDFs?",
        "What does that command print?",
        "Why?",
        "Since when?",
        "How do I fix those?",
    ],
)
def test_follow_ups_need_the_conversation(question):
    assert needs_context(question)


@pytest.mark.parametrize(
    "question",
    [
        "How do I serve gpt-oss-20b on two GPUs?",
        "How can I report broken files to the system?",
        "Which embedding model does the index use?",
    ],
)
def test_standalone_questions_are_searched_as_asked(question):
    assert not needs_context(question)


def test_a_rewrite_that_resolves_the_reference_is_kept():
    assert plausible_rewrite(
        "And what about scanned PDFs?",
        "How are broken scanned PDFs reported during ingestion?",
        HISTORY,
    )


@pytest.mark.parametrize(
    "rewrite",
    [
        # an answer, not a question (what a small model wrote)
        "You can report broken files to the system using the following command:",
        # a question, but the asked words are gone
        "How are broken files reported during ingestion?",
        # a question about something neither asked nor said
        "What is the capital city of Australia and its population?",
        "",
        "What about scanned PDFs? " * 40,  # far longer than a question
    ],
)
def test_a_rewrite_that_loses_the_question_is_set_aside(rewrite):
    assert not plausible_rewrite("And what about scanned PDFs?", rewrite, HISTORY)


def test_a_follow_up_is_joined_to_the_words_of_the_question_it_follows():
    history = [("user", "How do I add my own documents?"), ("assistant", "Run `ingest PATH`.")]
    assert joined("And how do I remove one?", history) == "And how do I remove one? add documents"
    # a follow-up of a follow-up also takes the question before
    longer = [*history, ("user", "And how do I remove one?"), ("assistant", "...")]
    assert set(joined("Why?", longer).split()) >= {"Why?", "remove", "add", "documents"}
    assert joined("Why?", []) == "Why?"


def test_a_follow_up_is_also_asked_with_each_thing_the_previous_answer_named():
    joined_question = "And if it stops working? new employee receive first day"
    answer = "Every new employee receives a laptop and a headset on the first day. [1]"
    assert referred("And if it stops working?", joined_question, answer) == [
        "And if it stops working? laptop",
        "And if it stops working? headset",
    ]
    # a follow-up with no word of its own would ask for the answer's word alone
    assert referred("Where?", "Where? garden club meet", "The club meets in the hall.") == []


def test_a_long_answer_adds_a_bounded_number_of_asks():
    from rag.answering.followup import MAX_REFERENTS

    answer = " ".join(f"component{n:03d}" for n in range(200))
    asks = referred("And if it stops working?", "And if it stops working?", answer)
    assert len(asks) == MAX_REFERENTS
    assert asks[0] == "And if it stops working? component000"
