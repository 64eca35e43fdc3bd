"""`ingest --ray` on a real local Ray instance (one per module): the same
index as without Ray, an embedding actor killed mid-run costs nothing, a
broken file is reported by name, and an unchanged re-run parses nothing."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
import ray
from click.testing import CliRunner

from cli.ingest_main import main
from ingest.discovery import discover
from ingest.distributed import check_address, ray_engine
from ingest.loaders import sha256_file
from ingest.pipeline import IngestReport, Progress, ingest_paths
from ingest.ray_cluster import start_local
from rag.embedding import load_embedder, load_token_counter
from rag.settings import Settings
from rag.store import open_store
from rag.types import Chunk

WORDS = [
    "protein",
    "cell",
    "gene",
    "membrane",
    "receptor",
    "signal",
    "kinase",
    "pathway",
    "tumour",
    "enzyme",
]


@pytest.fixture(scope="module")
def local_ray():
    start_local(cpus=2)
    yield
    ray.shutdown()


def _settings(index: Path) -> Settings:
    """Short passages: as many chunks and slices as with the default size
    (slices on a CPU hold at most 32 passages), a fraction of the tokens to
    embed, each in the process, in the actors and in an actor restarted."""
    return Settings(index=index, chunk_tokens=48, chunk_overlap=8)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough text for several embedding slices (over 100 chunks)."""
    folder = tmp_path_factory.mktemp("corpus")
    rng = random.Random(20)
    for n in range(12):
        paragraphs = [" ".join(rng.choices(WORDS, k=60)) + "." for _ in range(5)]
        (folder / f"paper{n:02}.txt").write_text(f"Paper {n}\n\n" + "\n\n".join(paragraphs))
    return folder


@pytest.fixture(scope="module")
def reference(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[IngestReport, Path]:
    """The corpus ingested in this process, without Ray: what an ingest on
    Ray must match (tests only read it)."""
    index = tmp_path_factory.mktemp("reference") / "here"
    return ingest_paths([str(corpus)], _settings(index)), index


def _contents(index: Path) -> dict[str, list[tuple[int | None, str, np.ndarray]]]:
    """Each document's chunks: (id, text, vector)."""
    store = open_store(index, _settings(index))
    published = store.published()
    assert published is not None
    snapshot = store.snapshot()
    out = {}
    with store.writer(published.params) as writer:  # read the vectors; changes nothing
        for record in snapshot.documents():
            chunks: list[Chunk] = snapshot.document_chunks(record.path)
            vectors = writer.stored_vectors(chunks)
            out[record.path] = [(c.id, c.text, v) for c, v in zip(chunks, vectors, strict=True)]
    return out


def _ingest_on_ray(
    corpus: Path, index: Path, progress=None, passages: dict[str, int] | None = None
) -> IngestReport:
    """An ingest on Ray; `passages` gets what the actors were sent."""
    settings = _settings(index)
    with ray_engine("auto", settings) as engine:
        report = ingest_paths(
            [str(corpus)], settings, engine=engine, progress=progress or (lambda _: None)
        )
        if passages is not None:
            passages.update(engine.passages)
        return report


def test_same_index_with_and_without_ray(
    local_ray, corpus: Path, reference: tuple[IngestReport, Path], tmp_path: Path
) -> None:
    here, here_index = reference
    sent: dict[str, int] = {}
    on_ray = _ingest_on_ray(corpus, tmp_path / "ray", passages=sent)
    # The actors embed the parsers' token ids: no passage is tokenized again.
    assert sent == {"token_ids": on_ray.chunks_embedded, "texts": 0}
    assert on_ray.added == here.added == 12
    assert on_ray.chunks_embedded == here.chunks_embedded > 100
    assert on_ray.worker_seconds["embed"] > 0 and on_ray.worker_seconds["parse"] > 0
    assert {"parse", "embed", "write"} <= set(on_ray.phases)
    a, b = _contents(here_index), _contents(tmp_path / "ray")
    assert a.keys() == b.keys()
    for path in a:
        assert [(i, t) for i, t, _ in a[path]] == [(i, t) for i, t, _ in b[path]]
        for (_, _, u), (_, _, v) in zip(a[path], b[path], strict=True):
            assert float(u @ v) > 1 - 1e-3

    again = _ingest_on_ray(corpus, tmp_path / "ray")  # incremental: nothing to parse
    assert (again.unchanged, again.added, again.chunks_embedded) == (12, 0, 0)
    assert again.worker_seconds == {"parse": 0.0, "chunk": 0.0, "embed": 0.0}


def test_actors_get_the_slices_one_process_would_embed(local_ray, tmp_path: Path) -> None:
    """Flushes cut as this process cuts them for the same model and device
    (full token-budget batches), and the actor's vectors of token ids those
    of the model here."""
    from ingest.batching import batching_of

    settings = Settings(index=tmp_path / "i")
    here = load_embedder(settings.embedding_model, settings.embed_precision, "cpu")
    passages = [" ".join(random.Random(n).choices(WORDS, k=20 + 7 * n)) for n in range(40)]
    ids = load_token_counter(settings.embedding_model).encode(passages)
    with ray_engine("auto", settings) as engine:
        assert engine.batching() == batching_of(here)  # one actor on a box without GPU
        slices = [ids[:25], ids[25:]]
        back = dict(engine.embed_id_slices(slices))
    assert sorted(back) == [0, 1]
    vectors = np.concatenate([back[0], back[1]])
    expected = here.embed_token_ids(ids)  # type: ignore[attr-defined]
    assert np.all(np.sum(vectors * expected, axis=1) > 1 - 1e-3)


def test_killed_embedding_actor_is_retried(
    local_ray, corpus: Path, reference: tuple[IngestReport, Path], tmp_path: Path
) -> None:
    killed: list[str] = []

    def kill_once(p: Progress) -> None:
        # After the first slice is back, the rest are queued on the actors.
        if p.stage == "embed" and not killed:
            for name in ray.util.list_named_actors():
                if name.startswith("kbqa-embed-"):
                    ray.kill(ray.get_actor(name), no_restart=False)
                    killed.append(name)

    report = _ingest_on_ray(corpus, tmp_path / "ray", progress=kill_once)
    assert killed and report.retried >= 1
    here, here_index = reference
    assert report.chunks_embedded == here.chunks_embedded
    a, b = _contents(here_index), _contents(tmp_path / "ray")
    ids = [i for rows in b.values() for i, _, _ in rows]
    assert len(ids) == len(set(ids)) == here.chunks_embedded  # none lost, none twice
    for path in a:
        assert [t for _, t, _ in a[path]] == [t for _, t, _ in b[path]]
        for (_, _, u), (_, _, v) in zip(a[path], b[path], strict=True):
            assert float(u @ v) > 1 - 1e-3


def test_broken_file_reported_by_name_on_ray(local_ray, corpus: Path, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "good.txt").write_text((corpus / "paper00.txt").read_text())
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 not really a PDF")
    result = CliRunner().invoke(
        main, [str(folder), "--index", str(tmp_path / "i"), "--json", "--ray"]
    )
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["added"] == 1
    assert [f["path"] for f in report["failed"]] == [str(folder / "broken.pdf")]
    assert "PDF" in report["failed"][0]["error"]
    assert ray.is_initialized()  # the module's instance: joined, not shut down


def test_ray_address_checked(tmp_path: Path) -> None:
    assert check_address("ray://head:10001") == "ray://head:10001"
    assert check_address("10.0.0.5:6379") == "10.0.0.5:6379"
    with pytest.raises(ValueError, match="put --ray after the paths"):
        check_address("docs/")
    result = CliRunner().invoke(main, ["--ray", "docs/", "--index", str(tmp_path / "i")])
    assert result.exit_code == 2
    assert "--ray takes a cluster address" in result.output


# The local instance, seen from outside: a fresh process with a home of its
# own (where Ray keeps its token) and a permissive umask, as a user's shell has.
_LOCAL_RAY = """
import json, os, subprocess, ray
from ingest.ray_cluster import start_local
os.umask(0o022)
start_local(cpus=1)
ours, kids = {os.getpid()}, {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        continue
    kids.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(pid))
todo = [os.getpid()]
while todo:
    for kid in kids.get(todo.pop(), []):
        ours.add(kid)
        todo.append(kid)
listening = subprocess.run(["ss", "-Hltnup"], capture_output=True, text=True, check=True)
mine = [l for l in listening.stdout.splitlines() if any(f"pid={p}," in l for p in ours)]
token = os.path.expanduser("~/.ray/auth_token")
print(json.dumps({"listening": mine, "token_mode": oct(os.stat(token).st_mode & 0o777)}))
ray.shutdown()
"""


def test_the_local_instance_listens_on_loopback_only_with_a_private_token(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path)}
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        env.pop(name, None)
    run = subprocess.run(
        [sys.executable, "-c", _LOCAL_RAY], capture_output=True, text=True, env=env,
        cwd=Path(__file__).resolve().parent.parent, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["listening"], "ss shows no socket of the Ray processes"
    for line in seen["listening"]:
        local = line.split()[4]  # e.g. 127.0.0.1:6379, [::ffff:127.0.0.1]:41000, *:41000
        host = local.rsplit(":", 1)[0].strip("[]")
        assert host in ("127.0.0.1", "::ffff:127.0.0.1", "::1"), line
    assert seen["token_mode"] == "0o600"


def _kept_parsers() -> set[int]:
    """Parser processes of this process's pools (forked by its forkserver)."""
    found = set()
    for p in psutil.Process().children(recursive=True):
        try:
            parent = " ".join(p.parent().cmdline())
            if p.status() != psutil.STATUS_ZOMBIE and "multiprocessing.forkserver" in parent:
                found.add(p.pid)
        except (psutil.NoSuchProcess, AttributeError):  # gone meanwhile
            continue
    return found


def test_parse_tasks_keep_their_parser_process(corpus: Path, tmp_path: Path) -> None:
    """A Ray worker parses task after task in the one parser process it
    started, the tokenizer loaded there once; starting them cost seconds a
    task. (The task's function, called here as a Ray worker calls it.)"""
    from ingest import distributed

    job = distributed._Job.of(Settings(index=tmp_path / "i"))
    files = [(f, sha256_file(f.path)) for f in discover([str(corpus)], None, False).files]
    before = _kept_parsers()  # other tests' pools, on their way out
    try:
        first, _, _ = distributed._parse_and_split(job, files[:6], False)
        kept = _kept_parsers() - before
        second, _, _ = distributed._parse_and_split(job, files[6:], False)
        assert len(kept) == 1 and _kept_parsers() - before == kept  # still there, the same one
    finally:
        kept_pools = getattr(distributed, "_parsers", {})
        for pool in kept_pools.values():
            pool.stop()
        kept_pools.clear()
    assert [type(r).__name__ for r, _ in first + second] == ["Parsed"] * 12
