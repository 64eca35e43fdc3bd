"""Whether a question needs the conversation, whether its rewrite kept
its meaning, and the rule that joins it to the conversation without a model.

A standalone question is searched as it is: rewriting it costs a request
and can only lose meaning (a small model once turned "How do I report
broken files?" into "You can report broken files to the system using the
following command:"). A follow-up is rewritten, and the rewrite is used
only if it still looks like a question about the same thing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice

from rag.lexical import terms

# Words that point back into the conversation ("it", "the other one") or
# open a continuation ("and", "what about ...").
_REFERRING = frozenset(
    "it its it's itself they them their theirs this that these those he him his she her "  # noqa: SIM905
    "there then one ones former latter same above previous earlier other another else "
    "more also too again".split()
)
_OPENERS = ("and ", "but ", "or ", "so ", "what about", "how about", "why not", "and?")
_QUESTION_WORDS = frozenset(
    "what how when where why who whom whose which is are was were do does did can could "  # noqa: SIM905
    "should would will shall may might has have had list name explain describe show give "
    "tell find".split()
)
# Words that carry no subject of their own, left out when a follow-up is
# joined to the question before it.
_FUNCTION = frozenset(
    "a an the of in on at to for from by with about into over under during before after "  # noqa: SIM905
    "between through up down out off i me my mine we our you your own not no yes very much "
    "many some any all each every both few most such only just than so as if because while "
    "being been be am get got go goes going make made use used way ways thing things".split()
)
_SKIP = _FUNCTION | _QUESTION_WORDS | _REFERRING  # words that carry no subject
_WORD = re.compile(r"[\w'’]+")
_CITATION = re.compile(r"\[\d+\]")
SHORT = 3  # words: "Why?", "Since when?" need the conversation
# Things of the previous answer a follow-up is also weighed with (each one
# more query to embed): a long answer's first ones.
MAX_REFERENTS = 12
MAX_REWRITE_CHARS = 400


def needs_context(question: str) -> bool:
    """True when `question` refers to earlier turns, so it needs a rewrite."""
    words = [w.replace("’", "'") for w in _WORD.findall(question.lower())]
    if len(words) <= SHORT:
        return True
    if question.lower().lstrip().startswith(_OPENERS):
        return True
    return any(w in _REFERRING for w in words)


def looks_like_question(text: str) -> bool:
    words = _WORD.findall(text.lower())
    return text.rstrip().endswith("?") or bool(words and words[0] in _QUESTION_WORDS)


def plausible_rewrite(question: str, rewrite: str, history: Sequence[tuple[str, str]]) -> bool:
    """Whether `rewrite` is a question about the same thing as `question`:
    it reads as a question, keeps at least half of the question's content
    words, and takes at least two thirds of its own from the question and
    the conversation (a rewrite that brings its own topic is not one)."""
    rewrite = rewrite.strip()
    if not rewrite or len(rewrite) > MAX_REWRITE_CHARS or not looks_like_question(rewrite):
        return False
    asked, written = set(terms(question)), set(terms(rewrite))
    if not written:
        return False
    if asked and len(asked & written) * 2 < len(asked):
        return False
    known = asked | {t for _role, text in history for t in terms(text)}
    return len(written & known) * 3 >= len(written) * 2


def content_terms(text: str) -> set[str]:
    """The BM25 terms of `text`'s words that carry a subject: question words,
    words that point back and function words left out ("What is her
    extension?" -> {"extens"})."""
    return {t for word in _WORD.findall(text) if word.lower() not in _SKIP for t in terms(word)}


def _new_words(texts: Iterable[str], have: set[str]) -> Iterator[str]:
    """The content words of `texts` whose term is not in `have`, each term's
    first word once (`have` grows as they come)."""
    for text in texts:
        for word in _WORD.findall(text):
            stem = [] if word.lower() in _SKIP else terms(word)
            if stem and stem[0] not in have:
                have.add(stem[0])
                yield word


def joined(question: str, history: Sequence[tuple[str, str]]) -> str:
    """`question` followed by the content words of the previous question that
    it lacks ("And for XLSX?" after "How are tables in PDF files indexed?"
    becomes "And for XLSX? tables PDF files indexed"), so that the search
    sees what the follow-up refers to. When the previous question was itself
    a follow-up, the one before it is joined too. No user turn: as asked."""
    asked = [text for role, text in history if role == "user"]
    earlier = asked[-1:]
    if asked and needs_context(asked[-1]):
        earlier = asked[-2:]
    words = list(_new_words(earlier, set(terms(question))))
    return f"{question} {' '.join(words)}" if words else question


def referred(question: str, joined_question: str, answer: str) -> list[str]:
    """`question` followed by each content word of the `answer` it follows
    that `joined_question` (it, joined to the questions before) lacks, one
    at a time: the things that answer named ("And if it stops working?"
    after "Every new employee receives a laptop and a headset" becomes "And
    if it stops working? laptop" and "... headset"), which "it" may point at
    rather than the earlier question's subject."""
    if not content_terms(question):
        return []  # "Where?": the answer's one word would be all it asks
    named = _new_words([_CITATION.sub(" ", answer)], set(terms(joined_question)))
    return [f"{question} {word}" for word in islice(named, MAX_REFERENTS)]
