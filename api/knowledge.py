"""The knowledge bases over HTTP: which ones a key may read (as OpenAI
"models"), ranked passages, documents uploaded, listed and deleted, and
the numbers. Each route translates HTTP to the core service
(core/service.py, the one the app and MCP call), which asks the access
policy first and keeps changes in the audit trail."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api import uploads
from api.errors import ApiError
from api.service import Requester, public, service
from core.service import MAX_K, Uploaded, check_k, check_length
from rag.filters import MAX_TAGS, MAX_VALUE_CHARS, Filters
from rag.knowledge_base import KnowledgeBase
from rag.settings import SearchMode
from rag.store import DocumentRecord
from team.access import Action
from team.sources import SourceNames

router = APIRouter(tags=["knowledge bases"])


def _model(name: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "kbqa"}


@router.get("/v1/models", summary="The knowledge bases this key may read")
def list_models(access: Requester, request: Request) -> dict[str, object]:
    names = service(request).core.names(access)
    return {"object": "list", "data": [_model(name) for name in names]}


@router.get("/v1/models/{model}", summary="One knowledge base, when this key may read it")
def get_model(model: str, access: Requester, request: Request) -> dict[str, object]:
    if not service(request).core.exists(access, model):
        raise ApiError(404, f"No knowledge base named {model!r}.", code="model_not_found")
    return _model(model)


class SearchFilters(BaseModel):
    """Which documents to search: all the parts given must hold."""

    model_config = ConfigDict(extra="forbid")
    path_prefix: str | None = Field(
        None, max_length=MAX_VALUE_CHARS,
        description="documents whose path, as this API shows it, starts with this",
    )  # fmt: skip
    types: list[str] = Field([], max_length=MAX_TAGS, description="file types, e.g. pdf, md")
    tags: list[str] = Field([], max_length=MAX_TAGS, description="any of these tags")
    after: str | None = Field(None, max_length=40, description="modified at or after (ISO date)")
    before: str | None = Field(None, max_length=40, description="modified before (ISO date)")


def scope(body: SearchFilters | None, kb: KnowledgeBase) -> Filters | None:
    """`body` as the store's filters. A path prefix is read as this API shows
    paths (`SourceNames`): relative to the knowledge base's folder, or to the
    folder its other documents share. Raises 404 when no document matches,
    before anything is searched or answered."""
    if body is None:
        return None
    names, prefix = SourceNames.of(kb), body.path_prefix or ""
    if prefix and (os.path.isabs(prefix) or ".." in Path(prefix).parts):
        raise ApiError(400, "path_prefix is relative, as document paths are shown.",
                       code="invalid_filter")  # fmt: skip
    documents = kb.documents()
    if prefix:
        bases = [b for b in (names.kb_root, names.shared) if b]
        found = [os.path.join(b, prefix) for b in bases]
        prefix = next((p for p in found if any(d.path.startswith(p) for d in documents)), found[0])
    filters = Filters.parse(prefix, body.types, body.tags, body.after, body.before)
    if filters and not any(filters.matches(d) for d in documents):
        raise ApiError(404, names.redact(str(filters.nothing_matches())),
                       code="no_document_matches")  # fmt: skip
    return filters


class SearchRequest(BaseModel):
    knowledge_base: str = Field(
        validation_alias=AliasChoices("knowledge_base", "model"),
        description="the knowledge base (`model` is accepted too)",
    )
    query: str = Field(min_length=1)
    # No ge/le: the core's check_k refuses with the words of every edge.
    k: int = Field(8, description=f"passages to return, 1 to {MAX_K}")
    mode: SearchMode = "hybrid"
    filters: SearchFilters | None = None


@router.post("/v1/search", summary="The passages that best match a query, best first")
def search(body: SearchRequest, access: Requester, request: Request) -> dict[str, object]:
    core = service(request).core
    check_length(body.query, core.settings, "query")
    check_k(body.k)  # before the base is opened, as the core's search does
    kb = core.open(access, body.knowledge_base)
    filters = scope(body.filters, kb)
    hits = core.search(access, body.knowledge_base, body.query, body.k, body.mode, filters)
    data = [{"rank": rank, **hit.to_dict()} for rank, hit in enumerate(hits, start=1)]
    found = {"object": "list", "model": body.knowledge_base, "query": body.query, "data": data}
    return public(found, SourceNames.of(kb))  # type: ignore[no-any-return]


def _document(record: DocumentRecord) -> dict[str, object]:
    return {
        "id": record.id, "name": Path(record.path).name, "path": record.path,
        "title": record.title, "kind": record.kind, "pages": record.pages,
        "chunks": record.chunks, "size": record.size, "ingested_at": record.ingested_at,
        "modified_at": record.mtime, "tags": list(record.tags),
    }  # fmt: skip


@router.get("/v1/knowledge-bases/{kb}/stats", summary="Documents, chunks, model, disk size")
def stats(kb: str, access: Requester, request: Request) -> dict[str, object]:
    core = service(request).core
    base = core.open(access, kb)
    figures = core.stats(access, kb).to_dict()
    figures["index"] = kb  # the name, not the server's folder
    # The kind of store (local, milvus-lite, milvus): not its file or address.
    figures["store"] = str(figures["store"]).split(":", 1)[0]
    return public(figures, SourceNames.of(base))  # type: ignore[no-any-return]


@router.get("/v1/knowledge-bases/{kb}/documents", summary="The documents of a knowledge base")
def documents(kb: str, access: Requester, request: Request) -> dict[str, object]:
    core = service(request).core
    base = core.open(access, kb)
    listed = {"object": "list", "data": [_document(r) for r in core.documents(access, kb)]}
    return public(listed, SourceNames.of(base))  # type: ignore[no-any-return]


@router.post(
    "/v1/knowledge-bases/{kb}/documents",
    summary="Upload and ingest files (a new knowledge base is created by its first upload)",
    openapi_extra=uploads.SCHEMA,
)
async def upload(kb: str, access: Requester, request: Request) -> dict[str, Any]:
    """Asked first (the guard: the key; here: may this key write to `kb`),
    then the body is read, each file to disk as it comes (uploads.py)."""
    svc = service(request)
    kb_dir = await run_in_threadpool(svc.kb_dir, access, kb, Action.WRITE)
    svc.root.mkdir(parents=True, exist_ok=True)
    settings = svc.settings
    parts = await uploads.read_files(
        request, svc.root, settings.max_file_mb, settings.max_upload_files
    )
    try:
        files = [(part.name, _reader(part)) for part in parts]
        done = await run_in_threadpool(svc.core.upload, access, kb, files)
        return _uploaded(kb, kb_dir, done)
    finally:
        for part in parts:
            part.close()


def _reader(part: uploads.Part) -> Callable[[], bytes | None]:
    """The part's bytes (None: over the size limit), its file closed once read."""

    def read() -> bytes | None:
        if part.file is None:
            return None
        data = part.read()
        part.close()
        return data

    return read


def _uploaded(kb: str, kb_dir: Path, done: Uploaded) -> dict[str, Any]:
    saved, report = done.saved, done.report
    # By the name it was saved under (`renamed` maps a name taken by another file).
    failures = report.failed if report else []
    failed = [{"name": Path(f.path).name, "error": f.error} for f in failures]
    shown = {
        "knowledge_base": kb,
        "ingested": [Path(p).name for p in saved.paths],
        "refused": [{"name": name, "reason": why} for name, why in saved.refused],
        "failed": failed,
        "renamed": [{"name": a, "saved_as": b} for a, b in saved.renamed],
        "unchanged": [{"name": a, "same_as": b} for a, b in saved.unchanged],
        "report": report.to_dict() | {"index": kb} if report else None,
    }
    return public(shown, SourceNames(os.path.realpath(kb_dir), None))  # type: ignore[no-any-return]


@router.delete(
    "/v1/knowledge-bases/{kb}/documents/{document:path}",
    summary="Remove a document (by id, path or file name); an uploaded file is deleted too",
)
def delete(kb: str, document: str, access: Requester, request: Request) -> dict[str, object]:
    core = service(request).core
    record = core.find_document(access, kb, document)
    names = SourceNames.of(core.open(access, kb, Action.WRITE))
    report = core.delete(access, kb, [record.path])
    shown = {"deleted": _document(record), "report": report.to_dict() | {"index": kb}}
    return public(shown, names)  # type: ignore[no-any-return]


@router.delete(
    "/v1/knowledge-bases/{kb}",
    summary="Remove a knowledge base whole: documents, index, uploads, grants (an admin's key)",
)
def delete_knowledge_base(kb: str, access: Requester, request: Request) -> dict[str, object]:
    service(request).core.delete_knowledge_base(access, kb)
    return {"deleted": kb}
