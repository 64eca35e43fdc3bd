"""Concurrency: searches while another process publishes generation after
generation; two ingests on one index at once.

Readers must see one consistent generation per search (old or new, never a
mix, never an error, never going back); a second writer waits or fails with
a clear message, and nothing is corrupted either way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.ingest_main import main as ingest_main
from ingest.pipeline import ingest_paths
from rag import layout
from rag.knowledge_base import KnowledgeBase
from rag.settings import Settings

pytestmark = pytest.mark.timeout(900)

INGEST = str(Path(sys.executable).parent / "ingest")
QUERIES = [
    ("glacier meltwater valley", "hybrid"),
    ("harbour lighthouse", "bm25"),
    ("glacier", "dense"),
]
TOPICS = [
    "The glacier feeds a meltwater lake below the valley, fed by spring thaw.",
    "Meltwater from the glacier carved a deep valley over ten thousand years.",
    "A harbour lighthouse guides boats past the glacier's calving front.",
    "The valley glacier retreats a little every summer, leaving moraines.",
    "Scientists sample meltwater at the glacier snout each week.",
    "The old harbour froze when the glacier advanced in the cold century.",
]
SEED = {
    "seed-a.md": "The harbour lighthouse was rebuilt in stone after the storm.",
    "seed-b.txt": "Valley farmers grow barley and keep sheep on the high pastures.",
    "seed-c.md": "The museum keeps a map of every glacier in the range.",
}
# Runs in its own process: one `ingest_paths` per file, each publishing a
# generation, with a pause between them so that readers interleave. It
# loads its model while the test replays the ingests, and starts on "go".
WRITER = """
import sys, time
from ingest.pipeline import ingest_paths
from rag.embedding import load_embedder
from rag.settings import Settings
embedder = load_embedder("all-MiniLM-L6-v2")
index, files = sys.argv[1], sys.argv[2:]
print("ready", flush=True)
sys.stdin.readline()  # go
for path in files:
    ingest_paths([path], Settings(index=index), embedder=embedder)
    time.sleep(0.3)
"""


def search(kb: KnowledgeBase, query: str, mode: str) -> tuple:
    return tuple((h.source, h.chunk.start, h.text) for h in kb.search(query, k=4, mode=mode))


def results(kb: KnowledgeBase) -> tuple:
    return tuple(search(kb, query, mode) for query, mode in QUERIES)


@pytest.fixture
def folders(tmp_path):
    seed, new = tmp_path / "seed", tmp_path / "new"
    seed.mkdir()
    new.mkdir()
    for name, text in SEED.items():
        (seed / name).write_text(text, encoding="utf-8")
    for i, text in enumerate(TOPICS):
        (new / f"topic-{i}.md").write_text(text, encoding="utf-8")
    return seed, sorted(str(p) for p in new.iterdir())


def test_searches_during_publishes_see_one_consistent_generation(tmp_path, folders, embedder):
    seed, files = folders
    index = tmp_path / "index"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(index), *files],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _searches_during_publishes(tmp_path, seed, files, writer, embedder)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.communicate()


def _searches_during_publishes(tmp_path, seed, files, writer, embedder) -> None:
    # What each generation must answer: the same sequence of ingests, replayed.
    replay = tmp_path / "replay"
    ingest_paths([str(seed)], Settings(index=replay), embedder=embedder)
    expected = [results(KnowledgeBase.open(replay, embedder))]
    for path in files:
        ingest_paths([path], Settings(index=replay), embedder=embedder)
        expected.append(results(KnowledgeBase.open(replay, embedder)))
    assert len(set(expected)) > 3, "the generations must answer differently"

    index = tmp_path / "index"
    ingest_paths([str(seed)], Settings(index=index), embedder=embedder)
    shared = KnowledgeBase.open(index, embedder)  # one long-lived instance, as in the app
    assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    assert writer.stdin is not None
    writer.stdin.write("go\n")
    writer.stdin.flush()
    seen: dict[str, list[int]] = {}
    errors: list[str] = []
    stats_checked = [0]

    def read(name: str, fresh: bool) -> None:
        """Search until the writer is done; map each result to the
        generation(s) that give it, and never step back to an older one."""
        generations = seen.setdefault(name, [])
        lowest = 0
        while True:
            done = writer.poll() is not None
            for number, (query, mode) in enumerate(QUERIES):
                try:
                    kb = KnowledgeBase.open(index, embedder) if fresh else shared
                    found = search(kb, query, mode)
                except Exception as exc:  # any error at all is a failure
                    errors.append(f"{name}: {exc.__class__.__name__}: {exc}")
                    return
                matching = [g for g, answers in enumerate(expected) if answers[number] == found]
                if not matching:
                    errors.append(f"{name}: {query!r} gave what no generation gives: {found}")
                    return
                if max(matching) < lowest:
                    errors.append(f"{name}: {query!r} went back to generation {max(matching)}")
                    return
                lowest = min(g for g in matching if g >= lowest)
                generations.append(lowest)
            if done:
                return

    def stats() -> None:
        while writer.poll() is None:
            try:
                figures = shared.stats()
                if figures.chunks != figures.vectors:
                    errors.append(f"stats: {figures}")
                stats_checked[0] += 1
            except Exception as exc:
                errors.append(f"stats: {exc.__class__.__name__}: {exc}")
                return

    threads = [
        threading.Thread(target=read, args=("shared-1", False)),
        threading.Thread(target=read, args=("shared-2", False)),
        threading.Thread(target=read, args=("fresh", True)),
        threading.Thread(target=stats),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    _, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    assert not errors, errors[:5]
    for name, generations in seen.items():
        assert generations[-1] == len(files), f"{name} never saw the last generation"
    # Readers really ran during the publishes, not only before or after.
    assert len(set(seen["shared-1"] + seen["shared-2"] + seen["fresh"])) >= 3
    assert stats_checked[0] > 0
    print(f"\n[concurrency] searches per reader: { {k: len(v) for k, v in seen.items()} }")


# -- two writers ------------------------------------------------------------------------


def make_batch(folder: Path, prefix: str, files: int = 20) -> Path:
    folder.mkdir()
    for i in range(files):
        text = " ".join(
            f"{prefix} note {i} line {j} describes the {TOPICS[(i + j) % len(TOPICS)].lower()}"
            for j in range(12)
        )
        (folder / f"{prefix}-{i:02d}.md").write_text(text, encoding="utf-8")
    return folder


def start(batch: Path, index: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [INGEST, str(batch), "--index", str(index), "--json", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def ingest_here(batch: Path, index: Path, *extra: str) -> Result:
    """The second ingest, in this process: the lock it meets is the other
    process's all the same, and it starts without a model load."""
    return CliRunner().invoke(ingest_main, [str(batch), "--index", str(index), "--json", *extra])


def wait_for_writer(index: Path, process: subprocess.Popen) -> None:
    """Until `process` holds the lock: its staging generation exists."""
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".staging-") for p in index.iterdir()):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the first ingest never started writing"
        time.sleep(0.02)


def documents(index: Path) -> set[str]:
    return {Path(d.path).name for d in KnowledgeBase.open(index).documents()}


@pytest.fixture
def seeded(tmp_path, folders, embedder):
    index = tmp_path / "index"
    ingest_paths([str(folders[0])], Settings(index=index), embedder=embedder)
    return index


def test_a_second_ingest_fails_at_once_with_a_clear_message(tmp_path, seeded):
    first = start(make_batch(tmp_path / "a", "alpha"), seeded)
    wait_for_writer(seeded, first)
    generation = layout.current_generation(seeded)
    second = ingest_here(make_batch(tmp_path / "b", "beta"), seeded)
    assert first.poll() is None, "the first ingest must still hold the lock"
    assert second.exit_code == 3, second.output
    assert second.stderr.strip() == (
        f"error: Another ingest is writing to {seeded}; try again when it finishes "
        "(or pass a longer --wait)."
    )
    assert layout.current_generation(seeded) == generation  # the loser wrote nothing
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert json.loads(out)["added"] == 20
    assert documents(seeded) == set(SEED) | {f"alpha-{i:02d}.md" for i in range(20)}
    stats = KnowledgeBase.open(seeded).stats()
    assert stats.chunks == stats.vectors


def test_a_second_ingest_with_wait_runs_after_the_first(tmp_path, seeded):
    first = start(make_batch(tmp_path / "a", "alpha"), seeded)
    wait_for_writer(seeded, first)
    second = ingest_here(make_batch(tmp_path / "b", "beta"), seeded, "--wait", "300")
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    first_generation = json.loads(out)["generation"]
    assert second.exit_code == 0, second.output
    summary = json.loads(second.stdout)
    assert summary["added"] == 20 and summary["generation"] > first_generation
    assert documents(seeded) == (
        set(SEED)
        | {f"alpha-{i:02d}.md" for i in range(20)}
        | {f"beta-{i:02d}.md" for i in range(20)}
    )
    stats = KnowledgeBase.open(seeded).stats()
    assert stats.chunks == stats.vectors
    assert not [p for p in os.listdir(seeded) if p.startswith(".staging-")]
    shutil.rmtree(tmp_path / "a")
