"""Scoped search: which documents a search may return passages from.

A `Filters` travels from the edges (`rag search/ask` options, the API's
`filters` object, the app's expander) through `KnowledgeBase.search` into
the store, which applies it before taking the top k: k passages come back
whenever k matching passages exist. `matches` is the one definition of what
a filter means; each store translates it to its engine (a FAISS id selector
and a BM25 mask, or a Milvus filter expression) and the contract suite
checks that both agree with it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rag.errors import BadFilter, NothingMatches

if TYPE_CHECKING:
    from rag.store import DocumentRecord

MAX_TAGS = 32  # per document, and per filter
MAX_VALUE_CHARS = 1024  # a path prefix; a tag or a type is far shorter
_TAG = re.compile(r"^[a-z0-9][a-z0-9_.:/-]{0,63}$")
_KIND = re.compile(r"^[a-z0-9]{1,16}$")
# File extensions whose documents are stored under another kind (ingest/loaders.py KINDS).
_KIND_OF_EXTENSION = {"md": "markdown", "txt": "text", "rst": "text", "htm": "html",
                      "xhtml": "html", "tsv": "csv", "eml": "email", "msg": "email",
                      "mail": "email"}  # fmt: skip


def tags_of(values: Iterable[str]) -> tuple[str, ...]:
    """Tags as stored: lower-case, sorted, without duplicates; each one
    letters, digits and `_.:/-`, at most 64 characters, at most 32 of them."""
    tags = sorted({v.strip().lower() for v in values if v.strip()})
    bad = [t for t in tags if not _TAG.match(t)]
    if bad:
        raise BadFilter(
            f"Bad tag {bad[0][:70]!r}: a tag is up to 64 letters, digits and _.:/- "
            "(starting with a letter or digit)."
        )
    if len(tags) > MAX_TAGS:
        raise BadFilter(f"{len(tags)} tags; at most {MAX_TAGS}.")
    return tuple(tags)


def _kind(value: str) -> str:
    """A type as stored: "pdf", "markdown" (also for "md" or ".md"), "email"
    (for "eml" and "msg": both are mail)."""
    name = value.strip().lower().lstrip(".")
    return _KIND_OF_EXTENSION.get(name, name)


def _timestamp(value: str | float | None, name: str) -> float | None:
    """Seconds since the epoch of an ISO date or date-time (naive: UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        parsed = dt.datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise BadFilter(
            f"--{name} {str(value)[:40]!r} is not an ISO date (2025-01-31 or 2025-01-31T12:00)."
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


@dataclass(frozen=True)
class Filters:
    """Documents under `path_prefix`, of one of `types` (e.g. "pdf"),
    carrying any of `tags`, modified in [`after`, `before`) (seconds since
    the epoch). Every part left empty matches everything."""

    path_prefix: str = ""
    types: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    after: float | None = None
    before: float | None = None

    @classmethod
    def parse(
        cls,
        path_prefix: str | None = None,
        types: Iterable[str] = (),
        tags: Iterable[str] = (),
        after: str | float | None = None,
        before: str | float | None = None,
    ) -> Filters:
        """Validated filters from what a user typed; raises `BadFilter`."""
        prefix = (path_prefix or "").strip()
        if len(prefix) > MAX_VALUE_CHARS or "\x00" in prefix:
            raise BadFilter(f"The path prefix is longer than {MAX_VALUE_CHARS} characters.")
        kinds = sorted({_kind(t) for t in types if t.strip()})
        bad = [k for k in kinds if not _KIND.match(k)]
        if bad or len(kinds) > MAX_TAGS:
            raise BadFilter(
                f"Bad file type {(bad or kinds)[0][:20]!r}: e.g. pdf, md, docx, pptx, email."
            )
        low, high = _timestamp(after, "after"), _timestamp(before, "before")
        if low is not None and high is not None and low >= high:
            raise BadFilter("--after must be earlier than --before.")
        return cls(prefix, tuple(kinds), tags_of(tags), low, high)

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> Filters:
        """From the API's `filters` object: `path_prefix`, `types`, `tags`,
        `after`, `before` (lists of strings; dates as ISO strings)."""
        unknown = sorted(set(raw) - {"path_prefix", "types", "tags", "after", "before"})
        if unknown:
            raise BadFilter(f"Unknown filter {unknown[0][:40]!r}.")

        def strings(name: str) -> list[str]:
            value = raw.get(name) or []
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise BadFilter(f"The filter {name!r} is a list of strings.")
            return value

        scalars = {name: raw.get(name) for name in ("path_prefix", "after", "before")}
        if any(v is not None and not isinstance(v, str) for v in scalars.values()):
            raise BadFilter("path_prefix, after and before are strings.")
        return cls.parse(
            scalars["path_prefix"],  # type: ignore[arg-type]
            strings("types"),
            strings("tags"),
            scalars["after"],  # type: ignore[arg-type]
            scalars["before"],  # type: ignore[arg-type]
        )

    def __bool__(self) -> bool:
        return bool(self.path_prefix or self.types or self.tags) or (
            self.after is not None or self.before is not None
        )

    def matches(self, doc: DocumentRecord) -> bool:
        return (
            doc.path.startswith(self.path_prefix)
            and (not self.types or doc.kind in self.types)
            and (not self.tags or not set(self.tags).isdisjoint(doc.tags))
            and (self.after is None or doc.mtime >= self.after)
            and (self.before is None or doc.mtime < self.before)
        )

    def describe(self) -> str:
        """The filters in words, for messages."""
        parts = []
        if self.path_prefix:
            parts.append(f"under {self.path_prefix}")
        if self.types:
            parts.append("type " + " or ".join(self.types))
        if self.tags:
            parts.append("tagged " + " or ".join(self.tags))
        for word, value in (("after", self.after), ("before", self.before)):
            if value is not None:
                when = dt.datetime.fromtimestamp(value, dt.UTC)
                parts.append(f"modified {word} {when:%Y-%m-%d %H:%M} UTC")
        return ", ".join(parts) or "no filter"

    def nothing_matches(self) -> NothingMatches:
        return NothingMatches(
            f"No document matches the filters ({self.describe()}): nothing was searched."
        )
