"""Truncated or tampered index files are a clear error, never a crash and
never code execution; nothing in the product ever unpickles anything.

tests/test_store.py covers whole-file truncation and garbage of the SQLite
and FAISS files; this adds every file of a generation (cut, zeroed, bytes
overwritten in place at the same size), the manifest, CURRENT, pickles
planted in the files the loaders open, a manifest that points the model
loader at a pickle, and a grep of the source tree.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli.rag_main import main as rag_main
from ingest.pipeline import ingest_paths
from rag import layout
from rag.errors import IndexCorrupt, IndexIncompatible, ModelMissing, RagError
from rag.knowledge_base import KnowledgeBase
from rag.settings import Settings

ROOT = Path(__file__).resolve().parent.parent

# Opens each index it is given and uses it every way a reader does; prints
# one JSON line per index. A crash (segfault, abort) ends the process and
# fails the test with the case it was on.
PROBE = r"""
import hashlib, json, sys
import numpy as np
from rag.embedding import load_embedder
from rag.errors import RagError
from rag.knowledge_base import KnowledgeBase
embedder = load_embedder("all-MiniLM-L6-v2")
for index in sys.argv[1:]:
    print(json.dumps({"index": index, "outcome": "started"}), flush=True)
    try:
        kb = KnowledgeBase.open(index, embedder)
        stats = kb.stats()
        seen = [stats.documents, stats.chunks, stats.vectors]
        seen += [(d.path, d.content_hash, d.chunks) for d in kb.documents()]
        for query in ("largest planet Jupiter storm", "volcano eruption Pompeii", "bird migration"):
            for mode in ("hybrid", "dense", "bm25"):
                for hit in kb.search(query, k=5, mode=mode):
                    seen.append((mode, hit.chunk_id, hit.source, hit.page, hit.text,
                                 round(hit.score, 3), kb.snapshot().context(hit.chunk)))
        outcome = "works " + hashlib.sha256(json.dumps(seen).encode()).hexdigest()
    except RagError as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    except Exception as exc:
        outcome = f"CRASH {type(exc).__name__}: {exc}"
    print(json.dumps({"index": index, "outcome": outcome}), flush=True)
"""


def generation(index: Path) -> Path:
    return index / layout.require_generation(index)


def tampered_copies(built: Path, into: Path) -> dict[str, Path]:
    """One copy of the index per (file, kind of damage)."""
    files = sorted(p.relative_to(generation(built)) for p in generation(built).rglob("*"))
    cases: dict[str, Path] = {}
    for name in (f for f in files if (generation(built) / f).is_file()):
        size = (generation(built) / name).stat().st_size
        damages = {
            "cut in half": lambda data: data[: len(data) // 2],
            "emptied": lambda data: b"",
            "header overwritten": lambda data: b"\xa5" * min(64, len(data)) + data[64:],
        }
        for third in (1, 2):  # same size: the manifest's size check cannot see it
            at = size * third // 3

            def overwrite(data: bytes, at: int = at) -> bytes:
                return data[:at] + bytes(range(256))[: min(256, len(data) - at)] + data[at + 256 :]

            damages[f"256 bytes overwritten at {third}/3"] = overwrite
        for damage, change in damages.items():
            copy = into / f"case{len(cases):03d}"
            shutil.copytree(built, copy)
            target = generation(copy) / name
            target.write_bytes(change(target.read_bytes()))
            cases[f"{name}: {damage}"] = copy
    return cases


def test_every_damaged_file_is_a_clear_error_or_harmless(built_index, tmp_path):
    # "Harmless" means: the same documents, hits, scores and texts as the
    # intact index, every way a reader uses it. Anything else must be refused.
    cases = tampered_copies(built_index, tmp_path)
    assert len(cases) >= 20
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, str(built_index), *map(str, cases.values())],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    lines = [json.loads(line) for line in probe.stdout.splitlines()]
    outcomes = {line["index"]: line["outcome"] for line in lines}
    intact = outcomes.pop(str(built_index))
    assert intact.startswith("works "), intact
    by_case = {case: outcomes.get(str(path), "never reached") for case, path in cases.items()}
    crashed_on = [case for case, path in cases.items() if outcomes.get(str(path)) == "started"]
    assert probe.returncode == 0, f"the reader died (code {probe.returncode}) on {crashed_on}"
    bad = {
        case: outcome
        for case, outcome in by_case.items()
        if outcome != intact and not outcome.startswith(("IndexCorrupt: ", "IndexIncompatible: "))
    }
    assert not bad, {c: "works, with other results" if o.startswith("works") else o
                     for c, o in bad.items()}  # fmt: skip
    # Damage the manifest's sizes cannot see still shows somewhere; a summary
    # for the record (-s): how many cases were refused vs harmless.
    refused = sum(outcome != intact for outcome in by_case.values())
    print(f"\n[tampering] {len(cases)} damaged copies: {refused} refused, "
          f"{len(cases) - refused} harmless")  # fmt: skip
    # Cutting or emptying any file is always noticed.
    for case, outcome in by_case.items():
        if case.endswith(("cut in half", "emptied")):
            assert outcome != intact, case


def test_rag_reports_a_damaged_index_in_one_line(index_copy):
    target = generation(index_copy) / layout.VECTORS_FILE
    target.write_bytes(target.read_bytes()[:50])
    for command in (["stats"], ["search", "planet"]):
        result = CliRunner().invoke(rag_main, [*command, "--index", str(index_copy)])
        assert result.exit_code == 1
        assert result.stderr.startswith("error: ") and "damaged" in result.stderr
        assert "Traceback" not in result.output


# -- the manifest and CURRENT ------------------------------------------------------------


def edit_manifest(index: Path, change) -> None:
    path = generation(index) / layout.MANIFEST_FILE
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (
            lambda m: m["file_sizes"].update({"chunks.sqlite": 12}),
            IndexCorrupt,
            "the manifest says",
        ),
        (lambda m: m.update(chunks=m["chunks"] + 1), IndexCorrupt, "the index is damaged"),
        (lambda m: m.pop("params"), IndexCorrupt, "unreadable"),
        (lambda m: m["params"].update(dimension="many"), None, ""),
        (lambda m: m.update(format="not-kbqa"), IndexIncompatible, "is not a kbqa index"),
        (lambda m: m.update(file_sizes={"../../../etc/passwd": 1}), IndexCorrupt, "damaged"),
        (lambda m: m.update(file_sizes=["vectors.faiss"]), IndexCorrupt, "not a mapping"),
        (lambda m: m.update(chunks="many"), IndexCorrupt, "damaged"),
    ],
)
def test_an_edited_manifest_is_refused_clearly(index_copy, change, error, message):
    edit_manifest(index_copy, change)
    if error is None:  # a field readers do not use: harmless
        assert KnowledgeBase.open(index_copy).stats().chunks > 0
        return
    with pytest.raises(error, match=message):
        KnowledgeBase.open(index_copy)


def test_a_valid_faiss_file_of_another_kind_is_refused(index_copy):
    # Well-formed FAISS, right size in the manifest, but not vectors keyed by
    # chunk id: readers would otherwise fail on the missing id map.
    import faiss
    import numpy as np

    gen = generation(index_copy)
    stored = faiss.read_index(str(gen / layout.VECTORS_FILE))
    plain = faiss.IndexFlatIP(stored.d)
    plain.add(np.zeros((stored.ntotal, stored.d), dtype=np.float32))
    faiss.write_index(plain, str(gen / layout.VECTORS_FILE))
    size = (gen / layout.VECTORS_FILE).stat().st_size
    digest = layout.file_digest(gen / layout.VECTORS_FILE)

    def consistent(manifest: dict) -> None:  # a manifest edited to match the swap
        manifest["file_sizes"][layout.VECTORS_FILE] = size
        manifest["file_sha256"][layout.VECTORS_FILE] = digest

    edit_manifest(index_copy, consistent)
    with pytest.raises(IndexCorrupt, match="not vectors keyed by chunk id"):
        KnowledgeBase.open(index_copy)


@pytest.mark.parametrize(
    "content",
    [b"g00000099\n", b"../../../etc\n", b"\xff\xfe\x00garbage", b"", b"g" + b"0" * 5000],
)
def test_current_naming_no_generation_is_a_clear_error(index_copy, content):
    (index_copy / "CURRENT").write_bytes(content)
    with pytest.raises(IndexCorrupt):
        KnowledgeBase.open(index_copy)
    result = CliRunner().invoke(rag_main, ["stats", "--index", str(index_copy)])
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_current_replaced_by_a_folder_or_a_symlink_is_a_clear_error(index_copy, tmp_path):
    (index_copy / "CURRENT").unlink()
    (index_copy / "CURRENT").mkdir()
    with pytest.raises(IndexCorrupt):
        KnowledgeBase.open(index_copy)
    (index_copy / "CURRENT").rmdir()
    outside = tmp_path / "elsewhere"
    outside.write_text("not a generation\n")
    (index_copy / "CURRENT").symlink_to(outside)
    with pytest.raises(IndexCorrupt):
        KnowledgeBase.open(index_copy)


# -- nothing is ever unpickled ---------------------------------------------------------


class _Payload:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def pickled_like(path: Path, marker: Path) -> bytes:
    """A pickle that creates `marker` when loaded, in `path`'s own format where
    that format can carry one: an .npy of objects is a pickle behind a valid
    NumPy header, which `np.load(..., allow_pickle=True)` would run."""
    if path.suffix == ".npy":
        buffer = io.BytesIO()
        objects = np.empty(1, dtype=object)
        objects[0] = _Payload(marker)
        np.save(buffer, objects, allow_pickle=True)
        return buffer.getvalue()
    return pickle.dumps(_Payload(marker))


def test_pickles_in_the_files_the_loader_opens_are_refused_and_never_run(
    built_index, tmp_path, embedder
):
    # Each file of a generation in turn becomes a pickle, and the manifest's
    # sizes and SHA-256 are rewritten to match (whoever can write the folder
    # can write the manifest), so the pickle reaches the very loader that
    # opens that file. A loader that unpickled would create the marker.
    marker = tmp_path / "PWNED"
    files = sorted(p.relative_to(generation(built_index))
                   for p in generation(built_index).rglob("*") if p.is_file())  # fmt: skip
    planted = [f for f in files if f.name != layout.MANIFEST_FILE]
    assert {"chunks.sqlite", "vectors.faiss", "bm25/chunk_ids.npy"} <= set(map(str, planted))
    cases: dict[str, Path] = {}
    for name in planted:
        copy = tmp_path / f"case{len(cases):02d}"
        shutil.copytree(built_index, copy)
        target = generation(copy) / name
        plant(copy, str(name), pickled_like(target, marker))
        layout.read_manifest(generation(copy))  # passes the integrity check: the loader sees it
        cases[str(name)] = copy
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, cases.values())],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    outcomes = {json.loads(line)["index"]: json.loads(line)["outcome"]
                for line in probe.stdout.splitlines()}  # fmt: skip
    assert not marker.exists(), "a planted pickle was executed by a reader"
    assert probe.returncode == 0, probe.stderr[-2000:]
    by_file = {name: outcomes.get(str(path), "never reached") for name, path in cases.items()}
    refused = ("IndexCorrupt: ", "IndexIncompatible: ")
    assert all(o.startswith(refused) for o in by_file.values()), by_file
    # A writer adding a document on top of a planted generation runs nothing either.
    extra = tmp_path / "new.md"
    extra.write_text("A new note so that the writer publishes a generation.")
    for path in cases.values():
        # A raw error here is a finding of its own (the xfail below); this
        # test is about what runs.
        with contextlib.suppress(RagError, sqlite3.DatabaseError):
            ingest_paths([str(extra)], Settings(index=path), embedder=embedder)
    assert not marker.exists(), "a planted pickle was executed by the writer"


def plant(index: Path, name: str, data: bytes) -> None:
    """Replace a generation's file with `data`, manifest sizes and hashes to match."""
    (generation(index) / name).write_bytes(data)
    edit_manifest(index, lambda m: (
        m["file_sizes"].update({name: len(data)}),
        m["file_sha256"].update({name: hashlib.sha256(data).hexdigest()}),
    ))  # fmt: skip


def test_adding_to_an_index_whose_chunks_file_is_not_a_database_is_a_clear_error(
    index_copy, tmp_path, embedder
):
    plant(index_copy, layout.DB_FILE, pickle.dumps(_Payload(tmp_path / "PWNED")))
    extra = tmp_path / "new.md"
    extra.write_text("A new note.")
    with pytest.raises(IndexCorrupt, match=r"chunks\.sqlite"):
        ingest_paths([str(extra)], Settings(index=index_copy), embedder=embedder)


def test_the_planted_payload_would_run_if_anything_unpickled_it(tmp_path):
    # The check above is only as good as its payload: loading it the unsafe
    # way does create the marker.
    marker = tmp_path / "PWNED"
    npy = tmp_path / "ids.npy"
    npy.write_bytes(pickled_like(npy, marker))
    with pytest.raises(ValueError, match="allow_pickle"):
        np.load(npy, allow_pickle=False)
    assert not marker.exists()
    np.load(npy, allow_pickle=True)
    assert marker.exists()
    marker.unlink()
    pickle.loads(pickled_like(tmp_path / "vectors.faiss", marker))
    assert marker.exists()


def test_a_manifest_pointing_the_model_loader_at_a_pickle_runs_nothing(index_copy, tmp_path):
    # A folder that looks like a model whose weights are a malicious pickle
    # (the classic pytorch_model.bin attack).
    marker = tmp_path / "PWNED"
    model = tmp_path / "evil-model"
    model.mkdir()
    (model / "config.json").write_text(
        json.dumps(
            {
                "model_type": "bert",
                "architectures": ["BertModel"],
                "hidden_size": 384,
                "num_attention_heads": 12,
                "num_hidden_layers": 1,
                "intermediate_size": 64,
                "vocab_size": 100,
            }
        )
    )
    (model / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    edit_manifest(index_copy, lambda m: m["params"].update(model_id=str(model)))
    # In this process (the model loader runs here as in `rag`): a pickle that
    # ran would leave the marker all the same.
    result = CliRunner().invoke(rag_main, ["search", "planet", "--index", str(index_copy)])
    assert not marker.exists(), "the weights pickle was executed"
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), "an exception escaped the command"
    assert result.stderr.startswith("error: Embedding model") and "not available" in result.stderr
    assert "pickle" not in result.stderr.lower(), "the pickle was not even opened"
    with pytest.raises(ModelMissing):
        KnowledgeBase.open(index_copy).embedder  # noqa: B018


_UNSAFE = re.compile(
    r"^\s*(import|from)\s+(pickle|cPickle|dill|joblib|shelve|marshal|cloudpickle)\b"
    r"|pickle\.loads?\(|torch\.load\(|allow_pickle\s*=\s*True|allow_dangerous_deserialization"
    r"|trust_remote_code\s*=\s*True",
    re.MULTILINE,
)


def test_no_product_code_can_unpickle():
    sources = [*ROOT.glob("rag/**/*.py"), *ROOT.glob("ingest/**/*.py"), *ROOT.glob("ui/**/*.py")]
    sources.append(ROOT / "streamlit_app.py")
    assert len(sources) > 15
    found = {
        str(path.relative_to(ROOT)): match.group(0)
        for path in sources
        for match in [_UNSAFE.search(path.read_text(encoding="utf-8"))]
        if match
    }
    assert not found, found
