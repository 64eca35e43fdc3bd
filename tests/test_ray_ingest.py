"""`ingest --ray` on a real local Ray instance (one per module): the same
index as without Ray, an embedding actor killed mid-run costs nothing, a
broken file is reported by name, and an unchanged re-run parses nothing."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import ray
from click.testing import CliRunner

from ingest.cli import main
from ingest.distributed import check_address, ray_engine, start_local
from ingest.pipeline import IngestReport, Progress, ingest_paths
from rag.settings import Settings
from rag.storage import open_store
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


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough text for several embedding slices (over 100 chunks)."""
    folder = tmp_path_factory.mktemp("corpus")
    rng = random.Random(20)
    for n in range(12):
        paragraphs = [" ".join(rng.choices(WORDS, k=120)) + "." for _ in range(12)]
        (folder / f"paper{n:02}.txt").write_text(f"Paper {n}\n\n" + "\n\n".join(paragraphs))
    return folder


def _contents(index: Path) -> dict[str, list[tuple[int | None, str, np.ndarray]]]:
    """Each document's chunks: (id, text, vector)."""
    store = open_store(index, Settings(index=index))
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


def _ingest_on_ray(corpus: Path, index: Path, progress=None) -> IngestReport:
    settings = Settings(index=index)
    with ray_engine("auto", settings) as engine:
        return ingest_paths(
            [str(corpus)], settings, engine=engine, progress=progress or (lambda _: None)
        )


def test_same_index_with_and_without_ray(local_ray, corpus: Path, tmp_path: Path) -> None:
    here = ingest_paths([str(corpus)], Settings(index=tmp_path / "here"))
    on_ray = _ingest_on_ray(corpus, tmp_path / "ray")
    assert on_ray.added == here.added == 12
    assert on_ray.chunks_embedded == here.chunks_embedded > 100
    assert on_ray.worker_seconds["embed"] > 0 and on_ray.worker_seconds["parse"] > 0
    assert {"parse", "embed", "write"} <= set(on_ray.phases)
    a, b = _contents(tmp_path / "here"), _contents(tmp_path / "ray")
    assert a.keys() == b.keys()
    for path in a:
        assert [(i, t) for i, t, _ in a[path]] == [(i, t) for i, t, _ in b[path]]
        for (_, _, u), (_, _, v) in zip(a[path], b[path], strict=True):
            assert float(u @ v) > 1 - 1e-3

    again = _ingest_on_ray(corpus, tmp_path / "ray")  # incremental: nothing to parse
    assert (again.unchanged, again.added, again.chunks_embedded) == (12, 0, 0)
    assert again.worker_seconds == {"parse": 0.0, "chunk": 0.0, "embed": 0.0}


def test_killed_embedding_actor_is_retried(local_ray, corpus: Path, tmp_path: Path) -> None:
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
    reference = ingest_paths([str(corpus)], Settings(index=tmp_path / "here"))
    assert report.chunks_embedded == reference.chunks_embedded
    a, b = _contents(tmp_path / "here"), _contents(tmp_path / "ray")
    ids = [i for rows in b.values() for i, _, _ in rows]
    assert len(ids) == len(set(ids)) == reference.chunks_embedded  # none lost, none twice
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
