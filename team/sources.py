"""How document paths are shown to whoever is not the server's operator
(the app's visitors, the HTTP API's clients): relative to the knowledge
base, never as the server's absolute paths."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from rag.knowledge_base import KnowledgeBase
from rag.llm import display_url
from rag.settings import Settings


@dataclass(frozen=True)
class SourceNames:
    """How visitors see document paths: relative to the knowledge base's
    folder (uploads), or else to the folder that the documents ingested from
    elsewhere share (e.g. docs/); a path under neither shows its folder's
    name and its file name, never where that folder is."""

    kb_root: str
    shared: str | None

    @classmethod
    def of(cls, kb: KnowledgeBase) -> SourceNames:
        """The names for `kb`'s current generation. Reading every document is
        done once per generation (a published one never changes), not on
        every rerun of the app or request of the API."""
        snapshot = kb.snapshot()
        root = os.path.realpath(kb.root)
        key = (root, kb.store.uri, snapshot.generation)
        names = _BY_GENERATION.get(key)
        if names is None:
            docs = snapshot.documents()
            outside = [os.path.dirname(d.path) for d in docs if not _under(d.path, root)]
            shared = os.path.commonpath(outside) if outside else None
            # Folders with nothing in common but '/' share nothing worth hiding behind.
            names = cls(root, shared if shared and os.path.dirname(shared) != shared else None)
            if len(_BY_GENERATION) >= _KEPT:
                _BY_GENERATION.pop(next(iter(_BY_GENERATION)))
            _BY_GENERATION[key] = names
        return names

    def show(self, source: str) -> str:
        for base in (self.kb_root, self.shared):
            if base and _under(source, base):
                return os.path.relpath(source, base)
        path = Path(source)
        return f"{path.parent.name}/{path.name}" if path.parent.name else path.name

    def show_folder(self, prefix: str) -> str:
        """A folder (a filter's path prefix) as the app offers it: "." for
        the knowledge base's own or the shared folder itself."""
        folder = prefix.rstrip(os.sep)
        if folder in (self.kb_root.rstrip(os.sep), (self.shared or "").rstrip(os.sep)):
            return "."
        return self.show(folder)

    def redact(self, message: str) -> str:
        """A message with the server's folders taken out of any path in it."""
        for base in sorted(filter(None, (self.shared, self.kb_root)), key=len, reverse=True):
            message = message.replace(base + os.sep, "")
        return message


_KEPT = 64  # knowledge bases (or generations) remembered
_BY_GENERATION: dict[tuple[str, str, int], SourceNames] = {}


def _under(path: str, folder: str) -> bool:
    return os.path.abspath(path).startswith(folder.rstrip(os.sep) + os.sep)


# An absolute path in a message: a `/` that starts no URL's part (`://`,
# `host/v1`), up to the next space or quote; group 1 is its last part.
_ABSOLUTE = re.compile(r"(?<![\w:/.~-])/(?:[^\s'\"`/]+/)*([^\s'\"`/]+)/?")


def server_redacted(message: str, settings: Settings) -> str:
    """An error message as a client of the server may read it: the indexes
    folder taken out of paths (`default/CURRENT`), any other absolute path
    cut to its file name, and the LLM server's address left out (a client
    cannot reach it, and it says where the server's network is)."""
    root = str(settings.indexes_root)
    for base in sorted({os.path.realpath(root), os.path.abspath(root)}, key=len, reverse=True):
        message = message.replace(base.rstrip(os.sep) + os.sep, "")
    for url in {settings.llm_url, display_url(settings.llm_url)}:
        message = re.sub(r"\s+at\s+" + re.escape(url), "", message).replace(url, "the LLM server")
    netloc = urlsplit(settings.llm_url).netloc.rpartition("@")[2]
    if netloc:
        message = message.replace(netloc, "the LLM server")
    return _ABSOLUTE.sub(r"\1", message)
