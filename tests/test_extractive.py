"""Extractive answers, the parts that need no LLM: which sentences a
passage has, which of them are offered (real embedding model), and the
grammar that holds the model to them."""

from __future__ import annotations

import re
from functools import partial

import pytest
from builders import KNOWN_ANSWERS, UNANSWERED

from rag.answering.extractive import Candidate, candidates, grammar, sentences
from rag.answering.pipeline import knows
from rag.answering.profiles import small_model
from rag.knowledge_base import KnowledgeBase
from rag.types import Chunk, Hit


def hit(n: int, text: str) -> Hit:
    return Hit(
        chunk=Chunk(text=text, source="/docs/a.md", start=0, end=1, page=None, id=n), score=1.0
    )


MARKDOWN = """## Files that cannot be ingested

A corrupt, truncated or encrypted PDF is reported by name with the reason.
The rest of the batch is ingested, e.g. the good files. Too short.

- a list item without a full stop
- Files larger than the size limit are refused before they are read.
"""

# Text as pdfium gives it: a heading line, then wrapped paragraph lines.
PDF_PAGE = """Troubleshooting
The app shows a banner saying the LLM server is not reachable: the server is not
running. An answer ends with a note that it was cut off: raise RAG_READ_MAX_TOKENS.
gpt-oss spends tokens on reasoning before it answers, so it needs a generous limit.
"""


def test_sentences_are_whole_sentences_without_headings_or_fragments():
    assert sentences(MARKDOWN) == [
        "A corrupt, truncated or encrypted PDF is reported by name with the reason.",
        "The rest of the batch is ingested, e.g. the good files.",
        "Files larger than the size limit are refused before they are read.",
    ]


def test_a_pdf_heading_does_not_run_into_the_next_sentence():
    assert sentences(PDF_PAGE) == [
        "The app shows a banner saying the LLM server is not reachable: the server is not running.",
        "An answer ends with a note that it was cut off: raise RAG_READ_MAX_TOKENS.",
        # a sentence may start in lower case (a command or model name)
        "gpt-oss spends tokens on reasoning before it answers, so it needs a generous limit.",
    ]


def test_candidates_are_the_closest_sentences_closest_first(embedder):
    ordered = [hit(1, MARKDOWN), hit(2, PDF_PAGE), hit(3, MARKDOWN)]  # 3 repeats 1
    chosen = candidates(
        "What happens to an encrypted PDF?", ordered, embedder, limit=3, min_support=0.0
    )
    assert (chosen[0].n, chosen[0].sentence) == (1, sentences(MARKDOWN)[0])
    assert [c.support for c in chosen] == sorted((c.support for c in chosen), reverse=True)
    assert len({c.sentence for c in chosen}) == len(chosen) == 3, "repeated sentences offered once"
    assert all(c.n in (1, 2) for c in chosen)


def test_an_off_topic_question_gets_no_candidates(embedder):
    ordered = [hit(1, MARKDOWN), hit(2, PDF_PAGE)]
    assert candidates("What is the capital of France?", ordered, embedder, 4, 0.25) == []
    assert candidates("How is an encrypted PDF reported?", ordered, embedder, 4, 0.25)


def offered(question: str, kb: KnowledgeBase) -> list[str]:
    """The sentences an extractive answer would offer the model, with the
    small-model profile's retrieval, keep and threshold (screen off)."""
    settings = small_model()
    hits = kb.search(question, k=settings.screen_k)[: settings.keep_max]
    limit, floor = settings.extract_sentences, settings.extract_min_support
    known = partial(knows, kb)
    return [c.sentence for c in candidates(question, hits, kb.embedder, limit, floor, known=known)]


@pytest.mark.parametrize("question", UNANSWERED)
def test_a_question_no_passage_answers_gets_no_sentence_to_quote(question, notes_index, embedder):
    # No candidate: the answer is "not in the knowledge base", the model unasked.
    assert offered(question, KnowledgeBase.open(notes_index, embedder)) == []


@pytest.mark.parametrize(("question", "sentence", "source"), KNOWN_ANSWERS)
def test_the_sentence_that_answers_is_still_offered_first(
    question, sentence, source, notes_index, embedder
):
    assert offered(question, KnowledgeBase.open(notes_index, embedder))[0] == sentence


def test_the_grammar_quotes_each_candidate_with_its_citation_in_order():
    chosen = [
        Candidate(2, 'He said "stop" and left.', 0.9),
        Candidate(1, r"A path C:\temp is long enough.", 0.8),
        Candidate(3, "The last sentence is here.", 0.7),
    ]
    rules = dict(line.split(" ::= ", 1) for line in grammar(chosen).splitlines())
    # the closest always opens the answer; any of the others may follow
    assert rules["root"] == r'"He said \"stop\" and left." " [2]" (" " from1)?'
    assert rules["from1"] == r'"A path C:\\temp is long enough." " [1]" (" " from2)? | from2'
    assert rules["from2"] == '"The last sentence is here." " [3]"'
    assert not re.search(r"not contain", grammar(chosen)), "no way out but quoting"
    assert grammar(chosen[:1]) == r'root ::= "He said \"stop\" and left." " [2]"'


# -- evidence, tables and follow-ups (issue 30) --------------------------------------

BUDGET = (
    "Sheet: Budget 2025\n| Quarter | Category | Budget | Spent |\n"
    "| Q1 | Travel | $12,000 | 11,500.50 |\n| Q2 | Travel | $9,000 | 9,400.00 |\n"
    "| Q3 | Travel | $15,500 | 14,200.00 |\n| Q3 | Training | $6,500 | 6,100.25 |"
)


def test_a_table_passage_is_quoted_by_its_header_and_the_matching_row(embedder):
    table = Hit(
        chunk=Chunk(text=BUDGET, source="/kb/budget-2025.xlsx", start=0, end=1, id=1,
                    locator='sheet "Budget 2025", rows 2-5'),
        score=1.0, dense_rank=1, bm25_rank=1,
    )  # fmt: skip
    floor = small_model().extract_min_support
    chosen = candidates("What was the Q3 travel budget?", [table], embedder, 4, floor)
    assert chosen, "a row is not a sentence, but it answers"
    assert chosen[0].sentence == (
        "Sheet: Budget 2025\n| Quarter | Category | Budget | Spent |\n"
        "| Q3 | Travel | $15,500 | 14,200.00 |"
    )
    # the quote's newlines reach the grammar escaped, as one literal
    assert "\\n| Q3 | Travel" in grammar(chosen[:1]) and "\n|" not in grammar(chosen[:1])


def test_a_follow_up_is_quoted_from_the_rows_it_names_itself(embedder):
    table = Hit(chunk=Chunk(text=BUDGET, source="/kb/b.xlsx", start=0, end=1, id=1), score=1.0)
    said = ["| Q1 | Travel | $12,000 | 11,500.50 | [1]"]
    joined = "And in Q2? Q1 travel budget"
    chosen = candidates(joined, [table], embedder, 4, -1.0, said, own="And in Q2?")
    assert "| Q2 | Travel | $9,000" in chosen[0].sentence
    assert "| Q1 |" not in chosen[0].sentence


LAB = (
    "Section 2: chemicals. Flammable solvents are stored in the ventilated cabinet marked F. "
    "A spill of more than one litre is reported to the safety officer, Dr Imani Okafor, "
    "at extension 4417."
)


def test_a_follow_up_quote_is_weighed_by_the_follow_ups_own_words_too(embedder):
    # Joined to "Who is the safety officer?", the follow-up's words are a
    # minority of the query: the sentence that answers it fell under the floor.
    page = Hit(chunk=Chunk(text=LAB, source="/kb/lab.pdf", start=0, end=1, id=1), score=1.0)
    floor = small_model().extract_min_support
    joined = "What is her extension? safety officer"
    chosen = candidates(joined, [page], embedder, 4, floor, own="What is her extension?")
    assert chosen and "extension 4417" in chosen[0].sentence


EQUIPMENT = """Every new employee receives a laptop and a headset on the first day.
A broken laptop is swapped at the IT desk on the second floor within one working day.
"""


def test_a_follow_up_on_what_the_previous_answer_named_is_answered(embedder):
    # "it" is the laptop of the previous answer, not a word of the previous
    # question: joined to that question alone, the sentence that answers
    # the follow-up fell under the floor (0.57 on the answering bench).
    page = Hit(chunk=Chunk(text=EQUIPMENT, source="/kb/h.md", start=0, end=1, id=1), score=1.0)
    floor = small_model().extract_min_support
    joined = "And if it stops working? new employee receive first day"
    said = ["Every new employee receives a laptop and a headset on the first day. [1]"]
    own = "And if it stops working?"
    chosen = candidates(joined, [page], embedder, 4, floor, said, own)
    assert chosen and "IT desk" in chosen[0].sentence


def test_the_readme_example_is_answered_from_how_ingestion_works(docs_index, embedder):
    # `rag ask "How are broken files reported?"`: retrieval ranks the right
    # passage first and BM25 agrees, but its sentence is only 0.44 close in
    # meaning (the 0.47 floor refused it).
    quotes = offered("How are broken files reported?", KnowledgeBase.open(docs_index, embedder))
    assert quotes and "is reported by name" in quotes[0]


FLEET = (
    "Tyres. The tyre pressure for the Model K van is 4.5 bar on the front axle and 5.0 bar "
    "on the rear axle. Fuel cards are issued by the fleet desk."
)


@pytest.mark.parametrize(
    ("question", "text"),
    [
        # a model the passages do not name: a near sentence is the wrong answer
        ("What is the tyre pressure for the Model T van?", FLEET),
        # a budget line the passages lack, for a quarter they have
        ("What was the Q3 catering budget?", BUDGET),
    ],
)
def test_a_question_naming_what_no_passage_holds_gets_no_quote(question, text, embedder):
    page = Hit(chunk=Chunk(text=text, source="/kb/a.pdf", start=0, end=1, id=1), score=1.0,
               dense_rank=1, bm25_rank=1)  # fmt: skip
    floor = small_model().extract_min_support
    base = {"tyre", "pressure", "model", "van", "budget", "travel"}  # the base's words
    known = lambda word: word.lower() in base  # noqa: E731
    assert candidates(question, [page], embedder, 4, floor, known=known) == []
    # named as the passage names it, it is answered
    named = question.replace("Model T", "Model K").replace("catering", "travel")
    assert candidates(named, [page], embedder, 4, floor, known=known)


def test_the_base_knows_the_words_its_passages_hold(docs_index, embedder):
    kb = KnowledgeBase.open(docs_index, embedder)
    assert knows(kb, "ingest") and knows(kb, "Ingesting")  # as BM25 analyses it
    assert not knows(kb, "Carmen")


@pytest.mark.parametrize(
    ("question", "text"),
    [
        # "retained" is nowhere in the base, but "kept" is its near neighbour
        ("How long are receipts retained?", "Receipts are kept for seven years, as tax law says."),
        ("When is the yearly flower show?", "The annual flower show is on the first Saturday."),
    ],
)
def test_a_word_the_base_lacks_but_the_quote_says_otherwise_does_not_count_against_it(
    question, text, embedder
):
    page = Hit(chunk=Chunk(text=text, source="/kb/a.md", start=0, end=1, id=1), score=1.0,
               dense_rank=1, bm25_rank=1)  # fmt: skip
    floor = small_model().extract_min_support
    base = set(re.findall(r"\w+", text.lower()))  # the base's words: the passage's only
    known = lambda word: word.lower() in base  # noqa: E731
    offered = candidates(question, [page], embedder, 4, floor, known=known)
    assert offered and offered[0].sentence == text
