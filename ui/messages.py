"""Small wording helpers for what the app shows a user."""

from __future__ import annotations

import re

# "(RAG_LLM_TIMEOUT)", "(RAG_EXTRACT_MIN_SUPPORT 0.25)", ", RAG_LLM_CONTEXT_TOKENS,":
# the setting names belong in logs and `--help`, not in front of a user.
_SETTING = re.compile(r"\s*\(RAG_[A-Z_]+(?: [^()]*)?\)|,\s*RAG_[A-Z_]+(?=[,)])")
_BARE = re.compile(r"\bRAG_[A-Z_]+\b")


def for_user(message: str) -> str:
    """`message` without environment variable names (a bare one in a
    sentence becomes "the app's settings": the person who runs it knows)."""
    return _BARE.sub(_setting_in_words, _SETTING.sub("", message))


def _setting_in_words(match: re.Match[str]) -> str:
    return "the app's LLM address" if match.group(0) == "RAG_LLM_URL" else "the app's settings"


def plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else (words or word + 's')}"


def ago(seconds: float) -> str:
    """ "just now", "2 minutes ago", "3 hours ago", "5 days ago"."""
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            return plural(int(seconds // size), unit) + " ago"
    return "just now"
