"""Backups, restores and copies between stores (team/backup.py, team/archive.py,
rag/store/copying.py, `rag backup` / `rag restore` / `rag copy`), on the real
local store, Milvus Lite, the real embedding model and the real ingest."""

from __future__ import annotations

import io
import shutil
import sqlite3
import tarfile
import threading
import time
from pathlib import Path

import pytest
from builders import KNOWN_ANSWERS, UNANSWERED, write_field_notes, write_notes
from click.testing import CliRunner

from cli.rag_main import main
from ingest.pipeline import ingest_paths
from rag import layout
from rag.errors import BadArchive, RagError
from rag.knowledge_base import MODES, KnowledgeBase
from rag.settings import Settings
from rag.store import open_store, recorded_store
from rag.store.copying import difference, verify
from rag.synced import last_sync, record_sync
from rag.types import Chunk, Hit
from team import archive
from team.access import Role
from team.backup import backup_app_db, backup_index, restore

HELD = [question for question, _, _ in KNOWN_ANSWERS] + UNANSWERED


def milvus(tmp_path: Path, name: str = "kb") -> str:
    return f"milvus-lite://{tmp_path}/{name}.db"


def run(*args: str) -> object:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def searches(index: Path, embedder) -> dict[tuple[str, str], list[Hit]]:
    """Every held question's top 10 in every mode, searching float32 vectors."""
    kb = KnowledgeBase.open(index, embedder, Settings(dense_precision="float32"))
    try:
        return {(mode, q): kb.search(q, k=10, mode=mode) for mode in MODES for q in HELD}
    finally:
        kb.close()
        getattr(kb.store, "close", lambda: None)()


def plain(found: dict[tuple[str, str], list[Hit]]) -> dict:
    """Searches as plain values: chunk ids and exact scores included."""
    return {
        key: [(h.chunk_id, h.source, h.text, h.score) for h in hits] for key, hits in found.items()
    }


def results(index: Path, embedder) -> dict:
    return plain(searches(index, embedder))


def assert_same_searches(copy: Path, theirs: dict[tuple[str, str], list[Hit]], embedder) -> None:
    """The same passages and scores as `theirs` (another store numbers chunks its own way)."""
    mine = searches(copy, embedder)
    assert {key: difference(theirs[key], hits) for key, hits in mine.items()} == {
        key: "" for key in mine
    }
    assert all(len(mine[key]) == 10 for key in mine if key[0] != "bm25"), "a real top 10"


@pytest.fixture(scope="module")
def held_corpus(tmp_path_factory: pytest.TempPathFactory, embedder) -> Path:
    """The field notes (holding the answers to the held questions) among
    twenty distractor notes, indexed: the top 10 is a real cut."""
    folder = tmp_path_factory.mktemp("held") / "docs"
    write_field_notes(folder / "field")
    write_notes(folder / "distractors", 20, sentences=20)
    index = tmp_path_factory.mktemp("held-index") / "index"
    report = ingest_paths([str(folder)], Settings(index=index), embedder=embedder)
    assert not report.failed, report.failed
    return index


@pytest.fixture(scope="module")
def held_searches(held_corpus: Path, embedder) -> dict[tuple[str, str], list[Hit]]:
    """The held corpus's searches, done once: each test's `notes` is a copy of
    it, which the tests compare against and do not change."""
    return searches(held_corpus, embedder)


@pytest.fixture
def notes(held_corpus: Path, tmp_path: Path) -> Path:
    """A private copy of the held corpus's index (local store)."""
    target = tmp_path / "notes"
    shutil.copytree(held_corpus, target)
    return target


# -- backup and restore ------------------------------------------------------------------


def test_a_restored_base_answers_the_same_searches(notes, held_searches, tmp_path, embedder):
    record_sync(notes, 1_800_000_000.0, ["/srv/docs"])
    out = tmp_path / "backups" / "notes.tar.zst"
    made = run("backup", "--index", notes, out)
    assert made.exit_code == 0, made.output
    assert "generation 1" in made.output and "from the local store" in made.output
    assert out.stat().st_mode & 0o077 == 0, "a backup holds every passage: owner-only"

    restored = tmp_path / "elsewhere" / "kb"
    back = run("restore", out, "--index", restored)
    assert back.exit_code == 0, back.output
    assert results(restored, embedder) == plain(held_searches)
    assert (
        KnowledgeBase.open(restored, embedder).documents()
        == KnowledgeBase.open(notes, embedder).documents()
    ), "documents with their tags, hashes and ingest times"
    assert last_sync(restored) == last_sync(notes)
    assert layout.current_generation(restored) == layout.current_generation(notes)


def test_restore_refuses_to_overwrite_a_base_unless_forced(
    notes, held_searches, tmp_path, embedder
):
    out = tmp_path / "notes.tar.gz"
    assert run("backup", "--index", notes, out).exit_code == 0
    again = run("backup", "--index", notes, out)
    assert again.exit_code == 1 and "--force" in again.output
    other = tmp_path / "other"
    ingest_paths(
        [str(write_notes(tmp_path / "docs", 2, 4))], Settings(index=other), embedder=embedder
    )
    before = results(other, embedder)

    refused = run("restore", out, "--index", other)
    assert refused.exit_code == 1 and "holds a knowledge base already" in refused.output
    assert "--force" in refused.output and results(other, embedder) == before

    forced = run("restore", out, "--index", other, "--force")
    assert forced.exit_code == 0, forced.output
    assert "generation 2" in forced.output, "after the base it replaced, so readers switch"
    assert results(other, embedder) == plain(held_searches)


def test_backup_during_a_running_ingest_restores_to_a_whole_generation(tmp_path, embedder):
    index = tmp_path / "index"
    docs = tmp_path / "docs"
    docs.mkdir()
    notes = write_notes(tmp_path / "notes", 10, sentences=8)
    rounds = [sorted(notes.iterdir())[i : i + 2] for i in range(0, 10, 2)]
    settings = Settings(index=index)
    # Each round adds two notes and publishes a generation; the sweep
    # after each removes all but the two newest: a backup must not tear.
    ingest_paths([str(shutil.copy(rounds[0][0], docs))], settings, embedder=embedder)
    failures: list[BaseException] = []

    def ingest() -> None:
        try:
            for batch in rounds:
                for note in batch:
                    shutil.copy(note, docs)
                report = ingest_paths([str(docs)], settings, embedder=embedder)
                assert not report.failed
        except BaseException as exc:
            failures.append(exc)

    writer = threading.Thread(target=ingest)
    writer.start()
    archives = []
    while writer.is_alive() or not archives:
        out = tmp_path / "backups" / f"b{len(archives)}.tar.zst"
        archives.append((backup_index(index, out, settings), out))
        time.sleep(0.3)
    writer.join()
    assert not failures, failures
    print(f"{len(archives)} backups during the ingest")
    final = open_store(index, settings).snapshot()
    whole = {d.path: texts(final, d.path) for d in final.documents()}
    order = [str(docs / note.name) for batch in rounds for note in batch]
    assert len({h.generation for h, _ in archives}) > 2, "backups taken while it published"
    for number, (header, out) in enumerate(archives):
        restored = tmp_path / f"restored-{number}"
        restore(out, restored, Settings())
        snap = open_store(restored, Settings()).snapshot()  # vectors, BM25, chunks agree
        paths = [d.path for d in snap.documents()]
        assert snap.generation == header.generation and len(paths) == header.documents
        assert sorted(paths) == sorted(order[: len(paths)]) and len(paths) in {1, 2, 4, 6, 8, 10}
        for path in paths:
            assert texts(snap, path) == whole[path]
        snap.close()
        shutil.rmtree(restored)


def texts(snap, path: str) -> list[str]:
    return [c.text for c in snap.document_chunks(path)]


def test_a_milvus_base_backs_up_and_restores_into_a_local_store(
    notes, held_searches, tmp_path, embedder
):
    in_milvus = tmp_path / "in-milvus"
    copied = run("copy", "--index", notes, "--to-store", milvus(tmp_path), "--to", in_milvus)
    assert copied.exit_code == 0, copied.output
    out = tmp_path / "milvus.tar.zst"
    made = run("backup", "--index", in_milvus, out)
    assert made.exit_code == 0, made.output
    assert "from the milvus-lite://" in made.output
    assert archive.read_header(out).source_store == milvus(tmp_path)
    local = tmp_path / "local-again"
    assert run("restore", out, "--index", local).exit_code == 0
    assert recorded_store(local) == "local"
    assert_same_searches(local, held_searches, embedder)


def test_restore_into_milvus_lite_answers_the_same_searches(
    notes, held_searches, tmp_path, embedder
):
    out = tmp_path / "notes.tar.zst"
    assert run("backup", "--index", notes, out).exit_code == 0
    target = tmp_path / "restored"
    back = run("restore", out, "--index", target, "--to-store", milvus(tmp_path))
    assert back.exit_code == 0, back.output
    assert recorded_store(target) == milvus(tmp_path)
    assert_same_searches(target, held_searches, embedder)


# -- a hostile or damaged archive ---------------------------------------------------------


def _member(tar: tarfile.TarFile, info: tarfile.TarInfo, data: bytes = b"") -> None:
    info.size = len(data) if info.isreg() else 0
    tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


def hostile(real: Path, out: Path, bad: tarfile.TarInfo) -> Path:
    """The real archive `real` (gzip) with `bad` right after its header."""
    with tarfile.open(real, "r:gz") as src, tarfile.open(out, "w:gz") as tar:
        for n, member in enumerate(src.getmembers()):
            tar.addfile(member, src.extractfile(member))
            if n == 0:
                _member(tar, bad, b"pwned")
    return out


def _link(name: str, kind: bytes, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    "bad",
    [
        tarfile.TarInfo("../escaped.txt"),
        tarfile.TarInfo("generation/../../escaped.txt"),
        tarfile.TarInfo("/tmp/kbqa-escaped.txt"),
        _link("generation/vectors.faiss", tarfile.SYMTYPE, "../../escaped.txt"),
        _link("generation/chunks.sqlite", tarfile.LNKTYPE, "/etc/passwd"),
        _link("generation/bm25", tarfile.DIRTYPE, ""),
        _link("generation/fifo", tarfile.FIFOTYPE, ""),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "folder", "fifo"],
)
def test_a_hostile_archive_writes_nothing_outside_the_folder(notes, tmp_path, bad):
    real = tmp_path / "real.tar.gz"
    backup_index(notes, real, Settings())
    evil = hostile(real, tmp_path / "evil.tar.gz", bad)
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    before = sorted(p for p in tmp_path.rglob("*") if "notes" not in p.parts)
    refused = run("restore", evil, "--index", sandbox / "a" / "kb")
    assert refused.exit_code == 1, refused.output
    assert repr(bad.name) in refused.output and "nothing restored" in refused.output
    assert sorted(p for p in tmp_path.rglob("*") if "notes" not in p.parts) == before
    assert not Path("/tmp/kbqa-escaped.txt").exists()


def test_an_archive_of_another_format_or_damaged_is_refused(notes, tmp_path):
    real = tmp_path / "real.tar.gz"
    backup_index(notes, real, Settings())
    with tarfile.open(real, "r:gz") as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers()]
    header, *rest = members

    def write(out: Path, items) -> Path:
        with tarfile.open(out, "w:gz") as tar:
            for info, data in items:
                _member(tar, info, data)
        return out

    newer = header[1].replace(b'"format_version": 1', b'"format_version": 99')
    cases = {
        "format version 99": write(tmp_path / "v99.tar.gz", [(header[0], newer), *rest]),
        "does not match its checksum": write(
            tmp_path / "flipped.tar.gz",
            [
                header,
                *[
                    (m, d[:-1] + bytes([d[-1] ^ 1]) if m.name.endswith(".faiss") else d)
                    for m, d in rest
                ],
            ],
        ),
        "not its header": write(tmp_path / "headless.tar.gz", rest),
        "not a kbqa backup": tmp_path / "plain.txt",
    }
    (tmp_path / "plain.txt").write_text("hello")
    for why, path in cases.items():
        with pytest.raises(BadArchive, match=why):
            restore(path, tmp_path / "target", Settings())
        assert not (tmp_path / "target").exists()


# -- copies between stores -----------------------------------------------------------------


def test_a_copy_local_to_milvus_lite_and_back_gives_the_same_top_10(
    notes, held_searches, tmp_path, embedder
):
    in_milvus, back = tmp_path / "in-milvus", tmp_path / "back"
    probes = [arg for q in HELD for arg in ("--probe", q)]
    there = run(
        "copy", "--index", notes, "--to-store", milvus(tmp_path), "--to", in_milvus, *probes
    )
    assert there.exit_code == 0, there.output
    assert f"{len(HELD)} probe searches give the same top 10" in there.output
    assert "nothing embedded again" in there.output
    home = run("copy", "--index", in_milvus, "--to-store", "local", "--to", back)
    assert home.exit_code == 0, home.output
    assert "probe searches give the same top 10" in home.output, home.output
    assert_same_searches(back, held_searches, embedder)
    assert [p.difference for p in verify(notes, back, Settings(), HELD, embedder=embedder)] == [
        ""
    ] * len(HELD)

    again = run("copy", "--index", notes, "--to-store", "local", "--to", back)
    assert again.exit_code == 1 and "--force" in again.output


def test_probe_searches_name_what_a_different_base_answers_otherwise(notes, tmp_path, embedder):
    back = tmp_path / "back"
    assert run("copy", "--index", notes, "--to-store", "local", "--to", back).exit_code == 0
    store = open_store(back, Settings())
    published = store.published()
    assert published is not None
    gone = next(p for p in store.published_documents() if p.endswith(KNOWN_ANSWERS[0][2]))
    with store.writer(published.params) as writer:
        assert writer.delete(gone)
    probes = verify(notes, back, Settings(), HELD, embedder=embedder)
    assert probes[0].top.startswith("larch-creek.md")
    assert "larch-creek.md" in probes[0].difference, probes[0]


def _hit(source: str, ordinal: int, score: float) -> Hit:
    return Hit(
        Chunk(f"text {ordinal}", source, ordinal * 10, ordinal * 10 + 5, ordinal=ordinal), score
    )


def test_difference_names_what_differs_and_lets_ties_swap():
    a = [_hit("a.md", 0, 0.9), _hit("a.md", 1, 0.5), _hit("b.md", 0, 0.5)]
    assert difference(a, a) == ""
    assert difference(a, [a[0], a[2], a[1]]) == "", "a tie may come in either order"
    assert difference(a, [a[0], a[1], _hit("c.md", 3, 0.5)]) == "", "a tie at the cut-off"
    assert "rank 1" in difference(a, [_hit("a.md", 0, 0.8), *a[1:]])
    assert "missing" in difference(
        [_hit("a.md", 0, 0.9), _hit("a.md", 1, 0.8), _hit("b.md", 0, 0.5)],
        [_hit("a.md", 0, 0.9), _hit("z.md", 1, 0.8), _hit("b.md", 0, 0.5)],
    )
    assert difference(a[:2], a) == "2 results against 3"


# -- the app database ----------------------------------------------------------------------


def test_the_app_database_backs_up_while_open(tmp_path, monkeypatch):
    from team.appdb import open_app_db

    monkeypatch.setenv("RAG_INDEXES_ROOT", str(tmp_path / "indexes"))
    db = open_app_db(Settings())
    db.accounts.add_user("ann", Role.READER, "a long passphrase", by="cli")
    out = tmp_path / "app-backup.sqlite"
    with db.engine.begin() as held:  # the app is writing meanwhile
        held.exec_driver_sql("SELECT count(*) FROM users")
        made = run("backup", "--app-db", out)
    assert made.exit_code == 0, made.output
    assert out.stat().st_mode & 0o077 == 0, "it holds password hashes and conversations"
    assert sqlite3.connect(out).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert open_app_db(Settings(app_db=str(out))).accounts.user("ann") is not None
    assert run("backup", "--app-db", out).exit_code == 1, "no overwrite unless --force"
    with pytest.raises(RagError, match="pg_dump"):
        backup_app_db(Settings(app_db="postgresql://kbqa@db.example/kbqa"), tmp_path / "x")
    monkeypatch.setenv("RAG_INDEXES_ROOT", str(tmp_path / "none"))
    missing = run("backup", "--app-db", tmp_path / "y.sqlite")
    assert missing.exit_code == 1 and "No app database" in missing.output


def test_backup_names_its_suffixes(notes, tmp_path):
    refused = run("backup", "--index", notes, tmp_path / "notes.zip")
    assert refused.exit_code == 1 and ".tar.zst" in refused.output
    assert not list(tmp_path.glob("*notes.zip*"))
