"""What a question asks for and the words it says otherwise: the kind of
thing asked (rag/answering/asked_kind.py) and the words the base lacks, as
the extractive read weighs them (real embedding model)."""

from __future__ import annotations

import re

import pytest

from rag.answering import asked_kind
from rag.answering.asked_kind import asked, lacks
from rag.answering.extractive import candidates
from rag.answering.profiles import small_model
from rag.answering.siblings import kinds
from rag.types import Chunk, Hit

GARDEN = (
    "Membership costs 25 pounds a year. The club rents out forty allotment plots by the "
    "river. A plot is ten metres by five metres."
)
FLEET = (
    "Vans are washed every second Friday at the contractor's site on Quarry Road. "
    "The tyre pressure for the Model K van is 4.5 bar on the front axle."
)
LEAVE = "Full-time staff have twenty-eight days of paid leave a year."
ONBOARDING = "Building passes are collected from reception on the ground floor with a photo ID."


@pytest.mark.parametrize(
    ("question", "kind"),
    [
        ("How much does a plot cost to rent?", "amount"),
        ("What is the fee for students?", "amount"),
        ("How many vans does the fleet have?", "number"),
        ("How often are the vans washed?", "frequency"),
        ("When is the office open?", "time"),
        ("How soon must a collision be reported?", "time"),
        ("Who leads the Sales team?", "person"),
        ("Where are passes collected?", None),
        ("What does Orbit 4.2 add?", None),
    ],
)
def test_the_kind_of_thing_a_question_asks_for(question, kind):
    assert asked(question) == kind


@pytest.mark.parametrize(
    ("question", "quote", "lacking"),
    [
        ("How much does a plot cost to rent?", "The club rents out forty plots.", True),
        ("How much does membership cost?", "Membership costs 25 pounds a year.", False),
        ("How often are the tyres replaced?", "The tyre pressure is 4.5 bar.", True),
        ("How often are vans washed?", "Vans are washed every second Friday.", False),
        ("When was the van bought?", "The tyre pressure for the Model K van is 4.5 bar.", True),
        ("When is the show?", "The show takes place on the first Saturday of September.", False),
        ("Who judges the show?", "The show takes place on the first Saturday of September.", True),
        ("Who runs the training?", "| Week 3 | Product training | Product team |", False),
        ("Who is the safety officer?", "Spills are reported to Dr Imani Okafor.", False),
    ],
)
def test_a_quote_holds_the_kind_of_thing_asked_for_or_not(question, quote, lacking):
    assert lacks(question, quote) is lacking


def offered(question: str, text: str, embedder, base: str | None = None) -> list[str]:
    """The quotes offered from `text` alone, at the small-model profile's
    threshold, where the knowledge base holds the words of `base` (default:
    the passage's) and no others."""
    page = Hit(chunk=Chunk(text=text, source="/kb/a.pdf", start=0, end=1, id=1), score=1.0,
               dense_rank=1, bm25_rank=1)  # fmt: skip
    words = set(re.findall(r"\w+", (base or text).lower()))
    known = lambda word: word.lower() in words  # noqa: E731
    floor = small_model().extract_min_support
    return [c.sentence for c in candidates(question, [page], embedder, 4, floor, known=known)]


def test_a_near_miss_whose_sentence_lacks_the_kind_of_thing_asked_is_refused(embedder):
    # the sentence on renting plots shares the question's words but names no price
    question = "How much does a plot at the garden club cost to rent?"
    assert offered(question, GARDEN, embedder, base=GARDEN + " garden") == []
    # asked what it holds, it is answered
    assert offered("How many allotment plots does the club rent out?", GARDEN, embedder) == [
        "The club rents out forty allotment plots by the river."
    ]


def test_a_word_the_base_lacks_standing_alone_is_a_question_in_other_words(embedder):
    # "allowance" is nowhere in the base and near no word of the sentence,
    # but it names no other kind of leave: the sentence answers it
    question = "What is the yearly allowance of paid leave for full-time staff?"
    assert offered(question, LEAVE, embedder) == [LEAVE]


@pytest.mark.parametrize("kind", ["parental", "sick"])
def test_a_word_the_base_lacks_qualifying_what_the_sentence_names_is_a_near_miss(kind, embedder):
    # "parental leave" beside "paid leave": a kind of leave the base does not name
    question = f"How many days of {kind} leave do full-time staff get?"
    assert offered(question, LEAVE, embedder) == []


# -- another kind of the thing named, a person in another role, another operation

VANS = (
    "The fleet has 46 vans: 30 diesel vans and 16 electric vans. "
    "The service interval for the electric vans is 30,000 kilometres or two years."
)
LEAVE_KINDS = LEAVE + " Unused leave of up to five days may be carried over into the next year."
LAB = "A spill of more than one litre is reported to the safety officer, Dr Imani Okafor."
SHOW = "The prize for the heaviest marrow is a silver cup donated by the mayor."
SPILL = LAB + " The lab floor is cleaned every evening by the night staff."


@pytest.mark.parametrize(
    ("question", "text", "base"),
    [
        # "petrol" is nowhere in the base, but close in meaning to "diesel":
        # a sibling of the kinds of van the text names, not a word for one
        ("How many petrol vans does the fleet have?", VANS, None),
        # "diesel" is in the base, the sentence on the service interval
        # speaks of the electric vans
        ("What is the service interval for the diesel vans?", VANS, None),
        ("How many days of unpaid leave do full-time staff get?", LEAVE_KINDS, None),
    ],
)  # fmt: skip
def test_another_kind_of_the_thing_the_text_names_is_a_near_miss(question, text, base, embedder):
    # the sentence on another kind is not offered (the one naming the fleet's
    # diesel vans but no service interval is another matter)
    offers = offered(question, text, embedder, base=base)
    assert not [q for q in offers if "service interval" in q or "paid leave" in q]


@pytest.mark.parametrize(
    ("question", "text", "expected"),
    [
        ("How many diesel vans does the fleet have?", VANS, "30 diesel vans"),
        ("Where are combustible solvents kept?",
         "Flammable solvents are stored in the ventilated cabinet marked F.", "cabinet"),
        ("When is the yearly flower show?",
         "The annual flower show takes place on the first Saturday of September.", "September"),
    ],
)  # fmt: skip
def test_the_kind_asked_for_or_a_word_for_it_is_answered(question, text, expected, embedder):
    assert expected in offered(question, text, embedder)[0]


@pytest.mark.parametrize(
    ("question", "relation"),
    [
        ("Who won the silver cup?", "won"),
        ("Who leads the Sales team?", "leads"),
        ("Who should a large spill be reported to?", "reported"),
        ("Who is the safety officer?", "officer"),
        ("Who is that?", None),
        ("How do I remove a document from the index?", "remove"),
        ("How can we renew a fuel card?", "renew"),
        ("How to export a report?", "export"),
        ("How long is the probation period?", None),
        ("Where are passes collected?", None),
    ],
)
def test_the_relation_or_operation_a_question_asks_about(question, relation):
    assert asked_kind.relation(question) == relation


def test_a_person_named_in_another_role_does_not_answer_who(embedder):
    base = SHOW + " Orbit won an award."  # "won" is a word of the base
    assert offered("Who won the silver cup?", SHOW, embedder, base=base) == []
    assert offered("Who trained the safety officer?", LAB, embedder, base=LAB + " trained") == []
    # asked for the role they stand in, they answer it
    assert offered("Who donated the silver cup?", SHOW, embedder) == [SHOW]
    assert offered("Who is the safety officer?", LAB, embedder)[0] == LAB


def test_how_do_i_is_answered_with_the_operation_asked_not_a_neighbour(embedder):
    assert LAB not in offered("How do I clean up a spill?", SPILL, embedder)[:1]
    assert offered("How do I report a spill?", SPILL, embedder)[0] == LAB


FUEL = "Fuel cards are issued by the fleet desk and carry a monthly limit of 900 euros."
WAITING = "The waiting list for a plot is currently about eighteen months long."


def test_a_sentence_naming_the_thing_in_another_relation_is_refused(embedder):
    # Each shares every other word with the question, and the first names a
    # person: a missing relation weighed as a missing kind (0.25) let them
    # through (0.98 and 0.79 on the answering bench).
    assert offered("Who sets the monthly limit of the fuel cards?", FUEL, embedder) == []
    assert offered("How do I remove a plot from the waiting list?", WAITING, embedder) == []
    # the relation the sentence names is answered
    assert offered("Who issues the fuel cards?", FUEL, embedder) == [FUEL]


def test_the_kinds_of_a_thing_a_text_names_stand_right_before_it():
    assert kinds("30 diesel vans and 16 electric vans.")["van"] == {"diesel", "electric"}
    # a list is not a kind ("Accounts, laptop and pass"), nor a number
    assert "laptop" not in kinds("Accounts, laptop and pass") and "van" not in kinds("46 vans")
