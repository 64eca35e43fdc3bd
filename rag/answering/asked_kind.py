"""What kind of thing a question asks for, and whether a quote holds one.

"How much" wants an amount, "how many" a number, "how often" a frequency,
"when" a time and "who" a person or a group; a sentence that names none
does not answer it, however close its words ("How much does a plot cost to
rent?" beside "The club rents out forty allotment plots"). A cheap check
by rule, in English, for the extractive read (rag/answering/extractive.py);
a question of another shape ("what", "where", "which") asks for no kind.

A "who" question also names the relation the person stands in ("Who won
the cup?"), and "how do I ..." the operation asked about ("How do I remove
a document?"): `relation` finds that word, which the quote must hold (the
extractive read checks it), so that a sentence naming a person in another
role ("a cup donated by the mayor") or another operation on the same thing
does not answer it.
"""

from __future__ import annotations

import re

from rag.answering import followup

_NUMBER_WORDS = (
    r"one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|\w+teen|twenty|thirty"
    r"|forty|fifty|sixty|seventy|eighty|ninety|hundred|thousand|million|dozen|half|single"
)
_NUMBER = rf"\d|\b(?:{_NUMBER_WORDS})\b"
_MONTHS = r"january|february|march|april|may|june|july|august|september|october|november|december"
_DAYS = r"monday|tuesday|wednesday|thursday|friday|saturday|sunday|weekdays?|weekends?"
_UNITS = r"seconds?|minutes?|hours?|days?|weeks?|months?|years?|morning|evening|night|noon"

# Asked kind -> what a quote holding one contains (matched case-insensitively,
# but for a person, whose name is told by its capital).
_HOLDS = {
    "amount": re.compile(
        r"[$€£]|\b(?:euros?|eur|pounds?|gbp|dollars?|usd|cents?|pence|free|budget)\b", re.I
    ),
    "number": re.compile(_NUMBER, re.I),
    "frequency": re.compile(
        r"\b(?:every|each|daily|weekly|monthly|yearly|annually|hourly|once|twice|times|per"
        rf"|always|never)\b|\ba (?:{_UNITS})\b",
        re.I,
    ),
    "time": re.compile(
        rf"\b(?:{_MONTHS}|{_DAYS}|{_UNITS}|within|before|after|until|by|overnight|today"
        r"|tomorrow|yesterday|annual|(?:19|20)\d\d|\d{1,2}:\d\d|\d{1,2} ?[ap]m)\b",
        re.I,
    ),
    "person": re.compile(
        rf"(?<=\w )(?!(?i:{_MONTHS}|{_DAYS})\b)[A-Z][a-z]+|\b(?i:team|teams|officer|manager"
        r"|head|desk|colleague|buddy|staff|supervisor|owner|lead|department|reception"
        r"|contractor|driver|drivers|mayor|director|committee|administrator|nobody|everyone"
        r"|who|whom)\b"
    ),
}
# The question's opening words -> the kind it asks for; the first match wins.
_ASKS = [
    ("amount", re.compile(r"\bhow much\b.*\b(?:cost|costs|pay|paid|price|fee|charge|spend)", re.I)),
    ("amount", re.compile(r"\b(?:cost|costs|price|prices|fee|fees)\b", re.I)),
    ("number", re.compile(r"\bhow many\b", re.I)),
    ("frequency", re.compile(r"\bhow (?:often|frequently|regularly)\b", re.I)),
    ("time", re.compile(r"\b(?:when|what time|what date|how soon|how quickly|deadline)\b", re.I)),
    ("person", re.compile(r"^\W*(?:who|whom|whose)\b", re.I)),
]


def asked(question: str) -> str | None:
    """The kind of thing `question` asks for, or None (a "what", "where" or
    "which" question asks for no kind the rule can check)."""
    for kind, pattern in _ASKS:
        if pattern.search(question):
            return kind
    return None


def lacks(question: str, quote: str) -> bool:
    """Whether `question` asks for a kind of thing that `quote` holds none of."""
    kind = asked(question)
    return kind is not None and not _HOLDS[kind].search(quote)


# "Who won", "Whom do ... meet", "How do I remove", "How to export".
_WHO = re.compile(r"^\W*(?:who|whom|whose)\s+(\w+)", re.I)
_HOW_DO = re.compile(
    r"^\W*how\s+(?:(?:do|can|could|should|would|must|may)\s+(?:i|we|you|one)|to)\s+(\w+)", re.I
)
_AUXILIARIES = frozenset(
    "is are was were be been do does did will would can could should shall may might must has "  # noqa: SIM905
    "have had".split()
)
_WORD = re.compile(r"\w+")


def relation(question: str) -> str | None:
    """The word naming the relation a "who" question asks about (the verb
    after "who"; after an auxiliary, the question's last content word: "Who
    should a spill be reported to?" -> "reported", "Who is the safety
    officer?" -> "officer"), or the operation of "how do I ..." (its verb),
    lower-cased; None for other questions and for words that only point
    back ("Who is that?")."""
    how = _HOW_DO.search(question)
    if how:
        return how.group(1).lower()
    who = _WHO.search(question)
    if not who:
        return None
    word = who.group(1).lower()
    if word not in _AUXILIARIES:
        return word if followup.content_terms(word) else None
    rest = [w.lower() for w in _WORD.findall(question[who.end(1) :])]
    content = [w for w in rest if followup.content_terms(w) and not w.isdigit()]
    return content[-1] if content else None
