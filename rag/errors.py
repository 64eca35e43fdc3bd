"""The few errors a user must tell apart. Edges (CLI, app) turn them into
messages; everything else lets them travel."""


class RagError(Exception):
    """Base class: the message is written for the user, not the developer."""


class IndexMissing(RagError):
    pass


class IndexIncompatible(RagError):
    """The index was built with another model or format version."""


class IndexCorrupt(RagError):
    pass


class IndexBusy(RagError):
    """Another process holds the index's write lock."""


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
