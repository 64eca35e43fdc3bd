"""The few errors a user must tell apart. Edges (CLI, app) turn them into
messages; everything else lets them travel."""

from __future__ import annotations

from collections.abc import Sequence


class RagError(Exception):
    """Base class: the message is written for the user, not the developer."""


class IndexMissing(RagError):
    pass


class IndexIncompatible(RagError):
    """The index was built with another model or format version."""


class IndexCorrupt(RagError):
    pass


class StoreUnknown(RagError):
    """A store URI whose scheme no store implements (`--store`, `RAG_STORE`
    or the index folder's record)."""


class IndexBusy(RagError):
    """Another process holds the index's write lock."""


class BadArchive(RagError):
    """A backup archive that is damaged, of another format, or hostile
    (a member that would land outside the folder it is restored into)."""


class CopyDiffers(RagError):
    """A copied knowledge base answers the probe searches otherwise than the original."""


class ModelMissing(RagError):
    pass


class BadDocument(RagError):
    """A file that cannot be ingested; the batch goes on without it."""


class LLMError(RagError):
    pass


class LLMUnreachable(LLMError):
    pass


class LLMTimeout(LLMError):
    pass


class PromptTooLong(LLMError):
    pass


class LLMIncomplete(LLMError):
    """The model stopped before writing an answer (e.g. reasoning used up
    every token)."""


class QuestionTooLong(RagError):
    """The question alone leaves no room for a passage in the model's context."""


class BadFilter(RagError):
    """A search filter (or tag) the user must correct: a date, a tag, a type."""


class NothingMatches(RagError):
    """The search filters match no document: nothing was searched."""


class RebuildRefused(RagError):
    """A rebuild that would publish an empty index, or drop documents nobody
    agreed to drop. Nothing was published: the current index stays."""

    def __init__(self, message: str, dropped: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.dropped = list(dropped)

    @classmethod
    def dropping(cls, paths: Sequence[str], shown: int = 5) -> RebuildRefused:
        """The refusal naming the first `shown` of `paths` and how many more."""
        names = ", ".join(paths[:shown])
        if len(paths) > shown:
            names += f" and {len(paths) - shown} more"
        plural = "s" if len(paths) != 1 else ""
        return cls(
            f"The rebuild would drop {len(paths)} document{plural} it cannot ingest again "
            f"(file gone or unreadable, or not under the paths given): {names}. "
            "The index is unchanged.",
            paths,
        )
