"""The knowledge bases over HTTP: which ones a key may read (as OpenAI
"models"), ranked passages, documents uploaded, listed and deleted, and
the numbers. Each route asks the access policy first (through
`Service.kb_dir`/`Service.open` and ingest/library's functions, the same the
app calls) and changes are kept in the audit trail there."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api import uploads
from api.errors import ApiError
from api.service import Requester, Service, public, service
from ingest.ingestor import noop
from rag.filters import MAX_TAGS, MAX_VALUE_CHARS, Filters
from rag.knowledge_base import KnowledgeBase
from rag.settings import SearchMode
from rag.store import DocumentRecord
from team import library
from team.access import Access, Action
from team.sources import SourceNames

router = APIRouter(tags=["knowledge bases"])


def _model(name: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "kbqa"}


@router.get("/v1/models", summary="The knowledge bases this key may read")
def list_models(access: Requester, request: Request) -> dict[str, object]:
    names = library.readable_knowledge_bases(access, service(request).root)
    return {"object": "list", "data": [_model(name) for name in names]}


@router.get("/v1/models/{model}", summary="One knowledge base, when this key may read it")
def get_model(model: str, access: Requester, request: Request) -> dict[str, object]:
    svc = service(request)
    svc.kb_dir(access, model)
    if model not in library.list_knowledge_bases(svc.root):
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
    k: int = Field(8, ge=1, le=100)
    mode: SearchMode = "hybrid"
    filters: SearchFilters | None = None


@router.post("/v1/search", summary="The passages that best match a query, best first")
def search(body: SearchRequest, access: Requester, request: Request) -> dict[str, object]:
    svc = service(request)
    if len(body.query) > svc.settings.max_question_chars:
        raise ApiError(
            400, f"The query is longer than {svc.settings.max_question_chars} characters.",
            code="message_too_long",
        )  # fmt: skip
    kb = svc.open(access, body.knowledge_base)
    hits = kb.search(body.query, k=body.k, mode=body.mode, filters=scope(body.filters, kb))
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
    base = service(request).open(access, kb)
    figures = base.stats().to_dict()
    figures["index"] = kb  # the name, not the server's folder
    # The kind of store (local, milvus-lite, milvus): not its file or address.
    figures["store"] = str(figures["store"]).split(":", 1)[0]
    return public(figures, SourceNames.of(base))  # type: ignore[no-any-return]


@router.get("/v1/knowledge-bases/{kb}/documents", summary="The documents of a knowledge base")
def documents(kb: str, access: Requester, request: Request) -> dict[str, object]:
    base = service(request).open(access, kb)
    listed = {"object": "list", "data": [_document(r) for r in base.documents()]}
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
        return await run_in_threadpool(_save_and_ingest, svc, access, kb, kb_dir, parts)
    finally:
        for part in parts:
            part.close()


def _save_and_ingest(
    svc: Service, access: Access, kb: str, kb_dir: Path, parts: list[uploads.Part]
) -> dict[str, Any]:
    settings = svc.settings
    if not kb_dir.exists():
        library.create(access, svc.root, kb)
    saved = library.SavedUploads([], [])
    for part in parts:  # one file's bytes in memory at a time
        if part.file is None:
            saved.refused.append((part.name, library.too_large(settings.max_file_mb)))
            continue
        one = library.save_uploads(
            access, kb_dir, [library.Upload(part.name, part.read())], settings.max_file_mb
        )
        part.close()
        saved.paths += one.paths
        saved.refused += one.refused
        saved.renamed += one.renamed
        saved.unchanged += one.unchanged
    report = None
    if saved.paths:
        report = library.ingest_files(access, kb_dir, saved.paths, settings, noop)
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
    svc = service(request)
    kb_dir = svc.kb_dir(access, kb, Action.WRITE)
    base = svc.open(access, kb)
    records, names = base.documents(), SourceNames.of(base)
    matches = [r for r in records if document in (str(r.id), r.path, names.show(r.path))]
    if not matches:
        matches = [r for r in records if Path(r.path).name == document]
    if len(matches) != 1:
        why = "No document" if not matches else f"{len(matches)} documents"
        raise ApiError(
            404 if not matches else 409, f"{why} in '{kb}' match {document!r}; use its id.",
            code="document_not_found" if not matches else "ambiguous_document",
        )  # fmt: skip
    report = library.delete_documents(access, kb_dir, [matches[0].path], svc.settings)
    shown = {"deleted": _document(matches[0]), "report": report.to_dict() | {"index": kb}}
    return public(shown, names)  # type: ignore[no-any-return]
