"""`KnowledgeService`: the rules every entry point shares, in one place.

The app (streamlit_app.py, ui/), the HTTP API (api/), the MCP tools
(api/mcp_tools.py) and the `rag` command call it; they only translate
(widgets, HTTP/JSON, tool calls, argv) and turn its `RagError`s into their
own kind of error. Each rule has one home here or in the module it names:

- who may do what: `team.access.AccessPolicy`, asked through the caller's
  `Access` before anything is opened or listed;
- the knowledge-base name rule: `team.access.valid_kb_name`;
- which knowledge bases exist: `team.library.list_knowledge_bases`;
- the length of a question or query (`check_length`), the passages one
  search returns (`check_k`: 1 to `MAX_K`), the files one upload adds
  (`too_many_files`);
- one cache of open knowledge bases per process (`open`), let go when the
  folder is replaced or a new generation changes the embedding model.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.pipeline import IngestReport, ProgressFn
from ingest.records import noop
from rag import telemetry
from rag.errors import IndexMissing, QuestionTooLong, RagError
from rag.filters import Filters
from rag.knowledge_base import KnowledgeBase
from rag.llm import ChatModel
from rag.settings import Settings
from rag.store import DocumentRecord, StoreStats
from rag.types import Answer, Hit
from team import library
from team.access import Access, Action, valid_kb_name
from team.sources import SourceNames

MAX_K = 50  # passages one search returns at most, whichever edge asks
# An earlier answer in a conversation may be longer than a question: room
# for a cited answer.
ANSWER_FACTOR = 8


class TooLong(QuestionTooLong):
    """A question, query or message over RAG_MAX_QUESTION_CHARS."""


class TooManyFiles(RagError):
    """More files in one upload than RAG_MAX_UPLOAD_FILES."""


class BadPassageCount(RagError):
    """A search asked for fewer than 1 or more than MAX_K passages."""


class NoSuchDocument(RagError):
    """No document of the knowledge base matches the name given."""


class AmbiguousDocument(RagError):
    """Several documents match the name given: the id tells them apart."""


def too_long_message(what: str, length: int, limit: int) -> str:
    """The one message for text over its length limit, at every edge."""
    return (
        f"The {what} is too long ({length:,} characters, at most {limit:,}: "
        "RAG_MAX_QUESTION_CHARS); please shorten it."
    )


def check_length(text: str, settings: Settings, what: str = "question", factor: int = 1) -> None:
    """Raise `TooLong` when `text` is over RAG_MAX_QUESTION_CHARS (times
    `factor`, for an earlier answer), before any work."""
    limit = settings.max_question_chars * factor
    if len(text) > limit:
        raise TooLong(too_long_message(what, len(text), limit))


def too_many_files(count: int, limit: int) -> str:
    """The one message for an upload of more files than RAG_MAX_UPLOAD_FILES."""
    at_most = f"at most {limit} can be added at once (RAG_MAX_UPLOAD_FILES)"
    # The API refuses while the files still arrive: it cannot count them all.
    said = f"{count} files chosen; {at_most}" if count else at_most[0].upper() + at_most[1:]
    return f"{said}: add them in smaller groups."


def check_file_count(count: int, settings: Settings) -> None:
    if count > settings.max_upload_files:
        raise TooManyFiles(too_many_files(count, settings.max_upload_files))


def passage_count_message(k: int, limit: int) -> str:
    """The one message for a k outside 1..`limit`, at every edge (each calls it k)."""
    if k < 1:
        return f"k={k}: a search returns at least 1 passage; ask for more."
    return f"k={k}: a search returns at most {limit} passages; ask for fewer."


def check_k(k: int) -> None:
    """Raise `BadPassageCount` unless 1 <= k <= MAX_K, before any work: the
    edges leave the bounds to this check so that all say the same."""
    if not 1 <= k <= MAX_K:
        raise BadPassageCount(passage_count_message(k, MAX_K))


def no_such_kb(name: str) -> IndexMissing:
    return IndexMissing(f"There is no knowledge base named {name!r}.")


# One file of an upload: its name as sent, and how to read its bytes (None:
# refused as too large while it arrived).
Incoming = tuple[str, Callable[[], bytes | None]]


@dataclass
class _Open:
    kb: KnowledgeBase
    folder: tuple[int, int]  # the folder's device and inode: a recreated base is another
    model_id: str  # the embedding model its generation was built with


@dataclass
class Uploaded:
    """What an upload did: the files ingested, refused, renamed, unchanged."""

    saved: library.SavedUploads
    report: IngestReport | None
    kb_dir: Path


@dataclass
class KnowledgeService:
    """The knowledge bases under `settings.indexes_root`, for the callers
    their `Access` allows. `chat` is the LLM every answer goes through
    (None: a client for the server the settings name, asked per answer,
    as the server may start after us). Open knowledge bases are cached,
    `max_open` at most (the least recently used one beyond is let go);
    `warm` loads the embedding model when a base is opened."""

    settings: Settings
    chat: ChatModel | None = None
    max_open: int | None = None
    warm: bool = False
    _open: OrderedDict[str, _Open] = field(default_factory=OrderedDict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    @property
    def root(self) -> Path:
        return self.settings.indexes_root

    # -- which knowledge bases --------------------------------------------------------

    def names(self, access: Access) -> list[str]:
        """The knowledge bases the user may read, in order."""
        return library.readable_knowledge_bases(access, self.root)

    def kb_dir(self, access: Access, name: str, action: Action = Action.READ) -> Path:
        """The folder of `name`, once the user may do `action` there. The
        name is checked before the policy is asked, and the policy before
        the folder is looked at: a user learns nothing about a base they
        may not use, not even whether it exists."""
        if not valid_kb_name(name):
            raise no_such_kb(name)
        access.require(action, name)
        return self.root / name

    def exists(self, access: Access, name: str) -> bool:
        self.kb_dir(access, name)
        return name in library.list_knowledge_bases(self.root)

    def has_index(self, access: Access, name: str) -> bool:
        """Whether anything was published in `name` yet (a base created in
        the app has none until its first upload)."""
        return library.has_index(self.kb_dir(access, name), self.settings)

    @property
    def default_name(self) -> str:
        """The knowledge base the first upload creates when there is none."""
        return library.default_name(self.settings)

    # -- opening, with the one cache ------------------------------------------------------

    def open(self, access: Access, name: str, action: Action = Action.READ) -> KnowledgeBase:
        """The knowledge base `name` to read (or manage), once allowed;
        opened once per process and shared (it follows new generations)."""
        kb_dir = self.kb_dir(access, name, action)
        if name not in library.list_knowledge_bases(self.root) or not library.has_index(
            kb_dir, self.settings
        ):
            raise IndexMissing(
                f"The knowledge base '{name}' does not exist or has no documents yet."
            )
        return self.cached(name)

    def is_open(self, name: str) -> bool:
        with self._lock:
            return name in self._open

    def cached(self, name: str) -> KnowledgeBase:
        """The open knowledge base `name`, from the cache. No access check:
        for callers that asked already (`open`)."""
        kb_dir = self.root / name
        try:
            st = os.stat(kb_dir)
        except FileNotFoundError:
            self._forget(name)
            raise no_such_kb(name) from None
        folder = (st.st_dev, st.st_ino)
        with self._lock:
            entry = self._open.get(name)
            if entry is not None and entry.folder == folder and self._same_model(entry):
                self._open.move_to_end(name)
                telemetry.record_cache("knowledge_base", hit=True)
                return entry.kb
            telemetry.record_cache("knowledge_base", hit=False)
            kb = KnowledgeBase.open(kb_dir, settings=self.settings)
            if self.warm:
                kb.warm_up()  # the model now, not during the first question
            self._open[name] = _Open(kb, folder, kb.snapshot().params.model_id)
            self._open.move_to_end(name)
            while self.max_open is not None and len(self._open) > self.max_open:
                # Not closed: a search in another thread may still be using it.
                self._open.popitem(last=False)
            return kb

    @staticmethod
    def _same_model(entry: _Open) -> bool:
        """Whether the current generation still has the embedding model the
        base was opened with (a rebuild with another model needs a reopen)."""
        try:
            return entry.kb.snapshot().params.model_id == entry.model_id
        except RagError:
            return False

    def _forget(self, name: str) -> None:
        with self._lock:
            self._open.pop(name, None)

    def open_knowledge_bases(self) -> list[KnowledgeBase]:
        with self._lock:
            return [entry.kb for entry in self._open.values()]

    def close(self) -> None:
        with self._lock:
            for entry in self._open.values():
                entry.kb.close()
            self._open.clear()

    # -- reading ------------------------------------------------------------------------

    def search(
        self, access: Access, name: str, query: str, k: int = 8, mode: str = "hybrid",
        filters: Filters | None = None, what: str = "query",
    ) -> list[Hit]:  # fmt: skip
        """The passages of `name` that best match `query`, best first
        (`k`, 1 to `MAX_K`). `what` names the text in the length message
        (the app searches with a question when answers are off)."""
        check_length(query, self.settings, what)
        check_k(k)
        kb = self.open(access, name)
        return kb.search(query, k=k, mode=mode, filters=filters)

    def ask(
        self, access: Access, name: str, question: str,
        history: Sequence[tuple[str, str]] = (), filters: Filters | None = None,
        settings: Settings | None = None,
    ) -> Answer:  # fmt: skip
        """The cited answer to `question`, through the service's chat model.
        `settings` tunes this answer (the app's sidebar); default: the service's."""
        from rag.answering.pipeline import answer

        kb = self._for_question(access, name, question, history)
        chat, settings = self._chat(settings)
        return answer(question, kb, chat, settings, list(history), filters)

    def stream(
        self, access: Access, name: str, question: str,
        history: Sequence[tuple[str, str]] = (), filters: Filters | None = None,
        settings: Settings | None = None,
    ) -> Iterator[Any]:  # fmt: skip
        """The answer's events as they come (rag.answering.events), the last `Finished`."""
        from rag.answering.pipeline import stream_answer

        kb = self._for_question(access, name, question, history)
        chat, settings = self._chat(settings)
        return stream_answer(question, kb, chat, settings, list(history), filters)

    def _for_question(
        self, access: Access, name: str, question: str, history: Sequence[tuple[str, str]]
    ) -> KnowledgeBase:
        check_length(question, self.settings)
        for n, (role, text) in enumerate(history, start=1):
            factor = ANSWER_FACTOR if role == "assistant" else 1
            check_length(text, self.settings, f"earlier message {n} ({role})", factor)
        return self.open(access, name)

    def _chat(self, settings: Settings | None) -> tuple[ChatModel, Settings]:
        settings = settings or self.settings
        if self.chat is not None:
            return self.chat, settings
        from rag.answering.profiles import discover
        from rag.llm import OpenAIChat

        # Asked per answer, as `rag ask` does: the LLM server may start after us.
        settings = discover(settings)
        return OpenAIChat(settings), settings

    def stats(self, access: Access, name: str) -> StoreStats:
        return self.open(access, name).stats()

    def documents(self, access: Access, name: str) -> list[DocumentRecord]:
        return self.open(access, name).documents()

    def last_synced(self, access: Access, name: str) -> float | None:
        """When `ingest --watch` or `--sync` last brought the base in line
        with its folders (seconds since the epoch); None if never."""
        return library.last_synced(access, self.kb_dir(access, name))

    # -- changing -----------------------------------------------------------------------

    def create(self, access: Access, name: str) -> Path:
        """A new, empty knowledge base `name` (ValueError naming the rule
        when the name is not allowed); its index is written by the first
        upload."""
        return library.create(access, self.root, name)

    def upload(
        self, access: Access, name: str, files: Sequence[Incoming], progress: ProgressFn = noop
    ) -> Uploaded:
        """Save `files` under the base's uploads folder and ingest them; the
        first upload creates the base. Each file is read when its turn
        comes (one file's bytes in memory at a time); one that reads as None
        was refused as too large while it arrived."""
        check_file_count(len(files), self.settings)
        kb_dir = self.kb_dir(access, name, Action.WRITE)
        if not kb_dir.exists():
            library.create(access, self.root, name)
        limit = self.settings.max_file_mb
        saved = library.SavedUploads([], [])
        for file_name, read in files:
            data = read()
            if data is None:
                saved.refused.append((file_name, library.too_large(limit)))
                continue
            one = library.save_uploads(access, kb_dir, [library.Upload(file_name, data)], limit)
            del data
            saved.paths += one.paths
            saved.refused += one.refused
            saved.renamed += one.renamed
            saved.unchanged += one.unchanged
        report = None
        if saved.paths:
            report = library.ingest_files(access, kb_dir, saved.paths, self.settings, progress)
        return Uploaded(saved, report, kb_dir)

    def find_document(self, access: Access, name: str, document: str) -> DocumentRecord:
        """The one document of `name` whose id, path (full or as shown) or
        file name is `document`."""
        kb = self.open(access, name, Action.WRITE)
        records, names = kb.documents(), SourceNames.of(kb)
        matches = [r for r in records if document in (str(r.id), r.path, names.show(r.path))]
        if not matches:
            matches = [r for r in records if Path(r.path).name == document]
        if not matches:
            raise NoSuchDocument(f"No document in '{name}' matches {document!r}; use its id.")
        if len(matches) > 1:
            raise AmbiguousDocument(
                f"{len(matches)} documents in '{name}' match {document!r}; use its id."
            )
        return matches[0]

    def delete(self, access: Access, name: str, paths: list[str]) -> IngestReport:
        """Remove documents; an uploaded file is deleted from disk as well."""
        kb_dir = self.kb_dir(access, name, Action.WRITE)
        return library.delete_documents(access, kb_dir, paths, self.settings)

    def delete_knowledge_base(self, access: Access, name: str) -> None:
        """Remove `name` whole: documents, index, uploads, grants. An admin's
        action. The open copy leaves the cache and is closed (its files
        and connections let go before its folder goes); a search still
        running on it fails."""
        kb_dir = self.kb_dir(access, name, Action.ADMIN)
        if name not in library.list_knowledge_bases(self.root):
            raise no_such_kb(name)
        with self._lock:
            entry = self._open.pop(name, None)
        if entry is not None:
            entry.kb.close()
        library.delete_knowledge_base(access, kb_dir, self.settings)

    def rebuild(
        self, access: Access, name: str, progress: ProgressFn = noop, allow_drop: bool = False
    ) -> IngestReport:
        kb_dir = self.kb_dir(access, name, Action.WRITE)
        return library.rebuild(access, kb_dir, self.settings, progress, allow_drop)
