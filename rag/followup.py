"""Whether a question needs the conversation, and whether its rewrite kept
its meaning.

A standalone question is searched as it is: rewriting it costs a request
and can only lose meaning (a small model once turned "How do I report
broken files?" into "You can report broken files to the system using the
following command:"). A follow-up is rewritten, and the rewrite is used
only if it still looks like a question about the same thing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

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
_WORD = re.compile(r"[\w'’]+")
SHORT = 3  # words: "Why?", "Since when?" need the conversation
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
