"""Knowledge bases that share one Milvus (issue 29, finding 1): two bases in
one Milvus Lite file, "public" and "finance", never reach each other's rows
through search (every mode, with and without filters), listing, deleting,
syncing or rebuilding; two writers at once on different bases both publish;
a base keeps its rows across a rename and loses them when deleted; a base
written before each base had its own collections still opens. And the
Milvus cluster URI's TLS forms, and the token never sent in plain text
(finding 6). The API and the app as a reader granted one base:
test_api.py and test_app_access.py."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from builders import LOCAL_ADMIN, put_texts, texts_of

from ingest.pipeline import IngestOptions, ingest_paths, noop
from rag import lexical
from rag.errors import NothingMatches, RagError
from rag.filters import Filters
from rag.knowledge_base import MODES, KnowledgeBase
from rag.layout import IndexParams
from rag.settings import Settings
from rag.store import STORE_RECORD, open_store
from rag.store.milvus import schema as ms
from rag.store.milvus.store import MilvusStore, open_milvus
from team import library

PARAMS = IndexParams("test-model", 8, 200, 32, lexical.ANALYZER_ID)
PUBLIC = {
    "ferry.md": "# Ferry\n\nThe harbour ferry leaves at nine every morning; tickets cost 4 euros.",
    "library.md": "# Library\n\nThe town library lends books for three weeks and opens at ten.",
}
FINANCE = {
    "merger.md": "# Merger\n\nConfidential: the Zanzibar merger closes in March for 40 million.",
}
SECRET = "Zanzibar"
QUERIES = ["Zanzibar merger confidential", "when does the ferry leave", "library books"]


def write_notes(folder: Path, notes: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in notes.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def base_settings(tmp_path: Path, name: str) -> Settings:
    """The base `name` under tmp_path/indexes, in the one Milvus Lite file tmp_path/shared.db."""
    root = tmp_path / "indexes"
    return Settings(
        indexes_root=root, index=root / name, store=f"milvus-lite://{tmp_path}/shared.db"
    )


def build(tmp_path: Path, name: str, notes: dict[str, str], embedder) -> Settings:
    settings = base_settings(tmp_path, name)
    folder = write_notes(tmp_path / "docs" / name, notes)
    report = ingest_paths([str(folder)], settings, embedder=embedder)
    assert not report.failed and report.added == len(notes), report
    return settings


@pytest.fixture
def two_bases(tmp_path: Path, embedder) -> tuple[Settings, Settings]:
    """The bases public and finance, built one after the other in the same file."""
    public = build(tmp_path, "public", PUBLIC, embedder)
    return public, build(tmp_path, "finance", FINANCE, embedder)


def listed(settings: Settings, embedder) -> list[str]:
    kb = KnowledgeBase.open(settings.index, embedder=embedder, settings=settings)
    try:
        return sorted(Path(d.path).name for d in kb.documents())
    finally:
        kb.close()


def everything_found(settings: Settings, embedder) -> set[str]:
    """The files of every passage a search of the base returns, in every
    mode, with no filter and with filters that would match the other base."""
    kb = KnowledgeBase.open(settings.index, embedder=embedder, settings=settings)
    other = settings.index.parent.parent / "docs"
    found: set[str] = set()
    try:
        for query in QUERIES:
            for mode in MODES:
                scopes = [None, Filters.parse(types=["md"]), Filters.parse(path_prefix=str(other))]
                for filters in scopes:
                    try:
                        hits = kb.search(query, k=10, mode=mode, filters=filters)
                    except NothingMatches:
                        continue
                    found |= {Path(h.source).name for h in hits}
                    assert all(SECRET not in h.chunk.text for h in hits) or (
                        settings.index.name == "finance"
                    )
        for doc in kb.documents():
            found |= {Path(c.source).name for c in kb.snapshot().document_chunks(doc.path)}
    finally:
        kb.close()
    return found


def test_a_base_searches_and_lists_only_its_own_rows(two_bases, embedder):
    public, finance = two_bases
    assert everything_found(public, embedder) == set(PUBLIC)
    assert everything_found(finance, embedder) == set(FINANCE)
    assert listed(public, embedder) == sorted(PUBLIC)
    assert listed(finance, embedder) == sorted(FINANCE)
    assert KnowledgeBase.open(public.index, settings=public).stats().documents == len(PUBLIC)


def test_deleting_syncing_and_rebuilding_one_base_leaves_the_other(two_bases, embedder, tmp_path):
    public, finance = two_bases
    merger = str(tmp_path / "docs" / "finance" / "merger.md")
    # An editor of "public" deleting finance's document through "public": nothing there.
    report = library.delete_documents(LOCAL_ADMIN, public.index, [merger], public)
    assert report.deleted == 0
    assert listed(finance, embedder) == ["merger.md"]
    (tmp_path / "docs" / "public" / "library.md").unlink()
    synced = ingest_paths([str(tmp_path / "docs" / "public")], public, IngestOptions(sync=True))
    assert (synced.deleted, synced.added) == (1, 0)
    library.rebuild(LOCAL_ADMIN, public.index, public, noop)
    assert listed(public, embedder) == ["ferry.md"]
    assert everything_found(public, embedder) == {"ferry.md"}
    library.rebuild(LOCAL_ADMIN, finance.index, finance, noop)
    assert everything_found(finance, embedder) == set(FINANCE)


def test_two_writers_at_once_on_different_bases_both_publish(two_bases):
    stores = [open_store(s.index, s) for s in two_bases]
    both_open = threading.Barrier(2, timeout=60)
    errors: list[BaseException] = []
    params = [s.published().params for s in stores]  # type: ignore[union-attr]

    def write(n: int) -> None:
        try:
            with stores[n].writer(params[n]) as w:
                put_texts(w, f"written-by-{n}.md", [f"Writer {n} wrote this."])
                both_open.wait()  # neither publishes before both have begun
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for n, (store, notes) in enumerate(zip(stores, (PUBLIC, FINANCE), strict=True)):
        texts = texts_of(store.snapshot())
        assert sorted(Path(p).name for p in texts) == sorted([*notes, f"written-by-{n}.md"])
        assert texts[f"written-by-{n}.md"] == [f"Writer {n} wrote this."]


def test_a_renamed_base_keeps_its_rows_and_its_old_name_starts_empty(two_bases, embedder):
    public, finance = two_bases
    moved = public.index.with_name("harbour")
    os.rename(public.index, moved)
    harbour = public.model_copy(update={"index": moved})
    assert listed(harbour, embedder) == sorted(PUBLIC)
    again = build(public.index.parent.parent.parent, "public", {"new.md": "# New\n\nA new base."},
                  embedder)  # fmt: skip
    assert listed(again, embedder) == ["new.md"]
    assert listed(harbour, embedder) == sorted(PUBLIC)
    assert listed(finance, embedder) == sorted(FINANCE)


def test_deleting_a_base_drops_its_collections_and_no_other(two_bases, embedder):
    public, finance = two_bases
    store = open_store(public.index, public)
    assert isinstance(store, MilvusStore)
    client, prefix = store.client, store.prefix
    mine = {n for n in client.list_collections() if n.startswith(f"{prefix}_")}
    others = set(client.list_collections()) - mine
    assert mine and others
    with pytest.raises(RagError, match="admin"):
        library.delete_knowledge_base(editor_of("public"), public.index, public)
    library.delete_knowledge_base(LOCAL_ADMIN, public.index, public)
    assert not public.index.exists()
    assert set(client.list_collections()) == others
    assert listed(finance, embedder) == sorted(FINANCE)
    assert everything_found(finance, embedder) == set(FINANCE)


def test_the_service_deletes_a_base_it_holds_open_and_the_name_starts_afresh(
    two_bases, embedder, tmp_path
):
    from core.service import KnowledgeService

    public, finance = two_bases
    svc = KnowledgeService(public)
    assert svc.search(LOCAL_ADMIN, "public", "ferry", k=2)  # now open, in its cache
    assert svc.is_open("public")
    svc.delete_knowledge_base(LOCAL_ADMIN, "public")
    assert not svc.is_open("public") and not public.index.exists()
    folder = write_notes(tmp_path / "docs" / "again", {"new.md": "# New\n\nA new base."})
    report = ingest_paths([str(folder)], public, embedder=embedder)  # the same name, same file
    assert report.added == 1 and not report.failed, report
    assert listed(public, embedder) == ["new.md"]
    assert listed(finance, embedder) == sorted(FINANCE)


def editor_of(name: str):
    from team.access import Access, AccessPolicy, Role, User

    return Access(User("eddie", Role.EDITOR, frozenset({name})), AccessPolicy(None))


def test_each_base_records_its_own_identity_and_a_rename_keeps_it(two_bases):
    from rag.store import valid_identity

    public = two_bases[0]
    ids = [json.loads((s.index / STORE_RECORD).read_text())["id"] for s in two_bases]
    assert ids[0] != ids[1] and all(valid_identity(i) for i in ids)
    prefixes = {open_store(s.index, s).prefix for s in two_bases}  # type: ignore[attr-defined]
    assert prefixes == {f"kbqa_{i}" for i in ids}
    assert "public" not in "".join(prefixes) and "finance" not in "".join(prefixes)
    (public.index / STORE_RECORD).write_text(json.dumps({"store": public.store, "id": "x;drop"}))
    with pytest.raises(RagError, match=r"store\.json"):
        open_store(public.index, public).exists()


def test_a_base_from_before_identities_still_opens_in_its_collections(tmp_path, embedder):
    """A base whose store.json names no identity (written before it existed)
    keeps the collections it recorded: PREFIX_meta, PREFIX_chunks_N, ..."""
    old = base_settings(tmp_path, "old")
    old.index.mkdir(parents=True)
    (old.index / STORE_RECORD).write_text(json.dumps({"store": old.store}) + "\n")
    store = open_store(old.index, old)
    with store.writer(PARAMS) as w:
        put_texts(w, "old.md", ["Written the old way."])
    assert isinstance(store, MilvusStore) and store.prefix == "kbqa"
    assert "kbqa_meta" in store.client.list_collections()
    assert texts_of(open_store(old.index, old).snapshot()) == {"old.md": ["Written the old way."]}
    new = build(tmp_path, "new", {"n.md": "# N\n\nNew base."}, embedder)
    assert listed(new, embedder) == ["n.md"]
    assert texts_of(open_store(old.index, old).snapshot()) == {"old.md": ["Written the old way."]}
    assert json.loads((old.index / STORE_RECORD).read_text()) == {"store": old.store}


# -- the cluster's URI: TLS, and no token in plain text (finding 6) ----------------------


def test_tls_uris_reach_the_cluster_over_https():
    tls = ms.parse_uri("milvus+tls://db.example:19531")
    assert (tls.client_uri, tls.uri, tls.tls) == (
        "https://db.example:19531", "milvus+tls://db.example:19531", True,
    )  # fmt: skip
    https = ms.parse_uri("https://db.example")
    assert (https.client_uri, https.uri, https.tls) == (
        "https://db.example:443", "https://db.example:443", True,
    )  # fmt: skip
    assert ms.parse_uri("milvus://db.example").tls is False


def test_the_token_is_refused_over_plain_text_to_another_host(tmp_path):
    def opened(uri: str, **env: object) -> MilvusStore:
        settings = Settings(store=uri, milvus_token="root:Milvus", **env)  # type: ignore[arg-type]
        return open_milvus(tmp_path / "kb", uri, settings)

    with pytest.raises(RagError, match=r"plain text.*milvus\+tls://.*RAG_MILVUS_INSECURE"):
        opened("milvus://db.example:19530")
    ms.check_transport(ms.parse_uri("milvus://127.0.0.1:19530"), "t", insecure=False)
    ms.check_transport(ms.parse_uri("milvus://localhost:19530"), "t", insecure=False)
    ms.check_transport(ms.parse_uri("milvus://[::1]:19530"), "t", insecure=False)
    ms.check_transport(ms.parse_uri("milvus+tls://db.example"), "t", insecure=False)
    ms.check_transport(ms.parse_uri("milvus://db.example"), None, insecure=False)  # no token
    ms.check_transport(ms.parse_uri("milvus://db.example"), "t", insecure=True)
    assert opened("milvus://db.example", milvus_insecure=True).target.tls is False
