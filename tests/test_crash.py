"""SIGKILL `ingest` at random moments, again and again, on a multi-file batch.

After every kill: the index opens, `rag stats` reports as many chunks as
vectors, every stored document is complete (exactly the chunks an
uninterrupted run stores), nothing published before is lost, and searches
find the earlier content. A later run completes and reaches exactly the
state of an uninterrupted run, vectors included.

Frequent checkpoints (RAG_CHECKPOINT_SECONDS) and small chunks make each run
publish several generations, so kills land during start-up and model load,
parsing, embedding, between checkpoints and while publishing.

Repetitions: KBQA_KILL_RUNS (default 5, what `make test` runs); the full
loop is `make crash-test` (20). KBQA_KILL_SEED replays a sequence of delays.
The figures go to test-artifacts/crash-loop.json (quoted in RELIABILITY.md).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from builders import code_word, ingest_process, reap, write_notes
from click.testing import CliRunner

from cli.rag_main import main as rag_main
from ingest.pipeline import ingest_paths
from rag import layout
from rag.errors import IndexMissing
from rag.knowledge_base import KnowledgeBase
from rag.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
FILES = 24
ENV = {
    "RAG_CHUNK_TOKENS": "32",
    "RAG_CHUNK_OVERLAP": "4",
    "RAG_CHECKPOINT_SECONDS": "0.01",  # publish after every embedding batch
}
SEED_FACT = "The seed note says the observatory dome was painted teal in 1931."


def write_batch(folder: Path) -> None:
    write_notes(folder, FILES)


def state(index: Path) -> dict[str, tuple]:
    """Every document's chunks (text, offsets, page) and vectors."""
    snap = KnowledgeBase.open(index).snapshot()
    out = {}
    for document in snap.documents():
        chunks = snap.document_chunks(document.path)
        vectors = np.stack([snap.vectors.reconstruct(int(c.id)) for c in chunks])
        out[document.path] = (
            document.content_hash,
            tuple((c.text, c.start, c.end, c.page) for c in chunks),
            vectors,
        )
    return out


def same(a: tuple, b: tuple) -> bool:
    # Vectors embedded in other batches differ in the last bits (padding).
    return a[:2] == b[:2] and np.allclose(a[2], b[2], atol=1e-4)


def run_ingest(batch: Path, index: Path) -> subprocess.Popen:
    return ingest_process([str(batch), "--index", str(index)], ENV)


def phase(index: Path, started_generation: str | None, started: float) -> str:
    """What the run was doing when killed, as far as the folder tells."""
    if index.exists() and layout.current_generation(index) != started_generation:
        return "after a checkpoint (embedding/publishing more)"
    if index.exists() and any(
        p.name.startswith(".staging-") and p.stat().st_ctime >= started for p in index.iterdir()
    ):  # its own staging folder, not one left by the previous kill
        return "writing its first generation (parsing/embedding)"
    return "start-up (imports, model load, lock, scan)"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, embedder):
    base = tmp_path_factory.mktemp("crash")
    batch = base / "batch"
    write_batch(batch)
    seed_file = base / "seed" / "seed.md"
    seed_file.parent.mkdir()
    seed_file.write_text(SEED_FACT, encoding="utf-8")
    settings = Settings(
        index=base / "seeded", chunk_tokens=int(ENV["RAG_CHUNK_TOKENS"]),
        chunk_overlap=int(ENV["RAG_CHUNK_OVERLAP"]),
    )  # fmt: skip
    ingest_paths([str(seed_file)], settings, embedder=embedder)
    reference = base / "reference"
    shutil.copytree(base / "seeded", reference)
    started = time.monotonic()
    process = run_ingest(batch, reference)
    _, err = process.communicate(timeout=600)
    seconds = time.monotonic() - started
    assert process.returncode == 0, err.decode()
    generations = layout.generation_number(layout.current_generation(reference) or "")
    assert generations and generations >= 4, "the batch must publish several checkpoints"
    return {
        "base": base,
        "batch": batch,
        "seeded": base / "seeded",
        "seed_file": str(seed_file),
        "reference": state(reference),
        "seconds": seconds,
    }


def check_after_kill(index: Path, before: dict, reference: dict, seed: str, embedder) -> dict:
    if layout.current_generation(index) is None:
        assert not before, "a published index disappeared"
        with pytest.raises(IndexMissing):
            KnowledgeBase.open(index)
        result = CliRunner().invoke(rag_main, ["stats", "--index", str(index)])
        assert result.exit_code == 1 and "does not exist or has no documents" in result.stderr
        assert f"(looked in {index.absolute()})" in result.stderr
        return {}
    stats = CliRunner().invoke(rag_main, ["stats", "--index", str(index), "--json"])
    assert stats.exit_code == 0, stats.output
    figures = json.loads(stats.stdout)
    assert figures["chunks"] == figures["vectors"]
    after = state(index)
    assert figures["documents"] == len(after)
    # Every stored document is complete: exactly what an uninterrupted run stores.
    for path, stored in after.items():
        assert same(stored, reference[path]), f"{path} is incomplete or altered"
    # Nothing published before this run was lost.
    assert set(before) <= set(after)
    # Searches work on the earlier content.
    kb = KnowledgeBase.open(index, embedder)
    if seed in before:
        assert kb.search("observatory dome painted teal", k=1)[0].source == seed
    earlier = sorted(p for p in before if p != seed)
    if earlier:
        path = random.choice(earlier)
        number = int(Path(path).stem.split("-")[1])
        assert kb.search(f"code word {code_word(number)}", k=3, mode="bm25")[0].source == path
    return after


def test_sigkill_at_random_moments_never_damages_the_index(setup, embedder, tmp_path):
    runs = int(os.environ.get("KBQA_KILL_RUNS", "5"))
    seed = int(os.environ.get("KBQA_KILL_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    random.seed(seed)
    reference, batch = setup["reference"], setup["batch"]
    index = tmp_path / "index"
    record = {"runs": runs, "random_seed": seed, "kills": 0, "completed_before_kill": 0,
              "kill_phases": {}, "leftover_staging_after_kill": 0, "reruns_matching": 0,
              "index_missing_after_kill": 0,
              "reference_run_seconds": round(setup["seconds"], 1), "delays": []}  # fmt: skip

    def reset() -> None:
        # Every third start (the first included) is from no index at all:
        # killed before its first publication, the index must be missing.
        resets.append(len(resets) % 3 == 0)
        record["starts"] = len(resets)
        record["starts_from_no_index"] = sum(resets)
        shutil.rmtree(index, ignore_errors=True)
        if not resets[-1]:
            shutil.copytree(setup["seeded"], index)

    def expected(with_seed: bool) -> dict[str, tuple]:
        return {p: r for p, r in reference.items() if with_seed or p != setup["seed_file"]}

    resets: list[bool] = []
    reset()
    for run in range(runs):
        before = state(index) if index.exists() and layout.current_generation(index) else {}
        started_generation = layout.current_generation(index) if index.exists() else None
        delay = rng.uniform(0.3, 0.95 * setup["seconds"])
        record["delays"].append(round(delay, 2))
        started = time.time() - 0.2  # coarse file-system timestamps
        process = run_ingest(batch, index)
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            where = phase(index, started_generation, started)
            process.send_signal(signal.SIGKILL)
            process.wait()
            record["kills"] += 1
            record["kill_phases"][where] = record["kill_phases"].get(where, 0) + 1
            record["leftover_staging_after_kill"] += index.exists() and any(
                p.name.startswith(".staging-") for p in index.iterdir()
            )
            record["index_missing_after_kill"] += layout.current_generation(index) is None
            context = f"run {run}, killed after {delay:.2f} s ({where}); KBQA_KILL_SEED={seed}"
            try:
                after = check_after_kill(index, before, reference, setup["seed_file"], embedder)
            except AssertionError as exc:
                raise AssertionError(f"{context}: {exc}") from exc
        else:
            assert process.returncode == 0, process.stderr.read().decode()
            record["completed_before_kill"] += 1
            after = state(index)
            wanted = expected(setup["seed_file"] in before)
            assert set(after) == set(wanted)
            assert all(same(after[p], wanted[p]) for p in after)
            record["reruns_matching"] += 1
        finally:
            reap(process)
        if set(after) >= set(expected(with_seed=False)):
            reset()  # all done: start over, so that later kills have work to interrupt

    # A final run without a kill completes and reaches the reference state.
    # (The last kill may have landed before a from-scratch run's first
    # publication: then there is no index yet, and no seed document.)
    published = index.exists() and layout.current_generation(index) is not None
    with_seed = published and setup["seed_file"] in state(index)
    process = run_ingest(batch, index)
    _, err = process.communicate(timeout=600)
    reap(process)
    assert process.returncode == 0, err.decode()
    final, wanted = state(index), expected(with_seed)
    assert set(final) == set(wanted)
    assert all(same(final[p], wanted[p]) for p in final)
    record["reruns_matching"] += 1
    leftovers = [p.name for p in index.iterdir() if p.name.startswith((".staging-", ".CURRENT."))]
    assert not leftovers
    assert len([p for p in index.iterdir() if layout.generation_number(p.name)]) <= 2

    record["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "crash-loop.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"\n[crash loop] {json.dumps(record)}")
    assert record["kills"] >= 1, "no run was killed: the delays are too long for this machine"
