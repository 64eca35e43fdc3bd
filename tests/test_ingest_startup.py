"""Ingestion's start-up: the embedding model loads in a background thread
while the files are scanned and parsed, joined when the first chunks are to
be embedded; an unchanged re-run loads none, and a missing model still
fails by name before anything is written."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import ingest.ingestor
import ingest.pipeline
from ingest.pipeline import Progress, ingest_paths
from rag.embedding import load_embedder
from rag.errors import ModelMissing
from rag.settings import Settings
from rag.store import open_store

# How long the recorded load waits for parsing to show: only the old order
# (the model loaded first, parsing after it) ever waits this long.
PATIENCE = 30.0
# How long the model goes on loading once every file is parsed, in the
# test of the "model" phase.
LOAD_DELAY = 4.0


class Recorder:
    """The order of an ingest's events: its progress, and the model load,
    which (instrumented, the real loader inside) waits until a parsed file
    has reached the ingestor before it finishes."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.load_threads: list[str] = []
        self._parsed = threading.Event()

    def progress(self, event: Progress) -> None:
        self.events.append(event.stage)
        if event.stage == "ingest":
            self._parsed.set()

    def load(self, *args: object, **kwargs: object) -> object:
        self.events.append("load start")
        self.load_threads.append(threading.current_thread().name)
        saw = self._parsed.wait(PATIENCE)
        self.events.append("load done" if saw else "load waited in vain")
        return load_embedder(*args, **kwargs)  # type: ignore[arg-type]

    def reset(self) -> None:
        self.events.clear()
        self._parsed.clear()

    def first(self, event: str) -> int:
        return self.events.index(event)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(ingest.ingestor, "load_embedder", recorder.load)
    monkeypatch.setattr(ingest.pipeline, "load_embedder", recorder.load, raising=False)
    return recorder


def _files(folder: Path, count: int = 6) -> Path:
    folder.mkdir()
    for n in range(count):
        (folder / f"note{n}.txt").write_text(f"Note {n}: the comet passed Jupiter in year {n}.\n")
    return folder


def test_the_model_loads_while_files_are_parsed(tmp_path: Path, recorder: Recorder) -> None:
    folder = _files(tmp_path / "docs")
    settings = Settings(index=tmp_path / "index", parse_workers=1)
    report = ingest_paths([str(folder)], settings, progress=recorder.progress)
    assert report.added == 6 and not report.failed
    events = recorder.events
    assert "load done" in events, events
    assert recorder.load_threads != [threading.main_thread().name]
    # Not before the scan; parsed files reach the ingestor while it loads;
    # embedding waits for it.
    assert recorder.first("scan") < recorder.first("load start")
    assert recorder.first("ingest") < recorder.first("load done") < recorder.first("embed")


def test_an_unchanged_rerun_loads_no_model_and_a_changed_one_does(
    tmp_path: Path, recorder: Recorder
) -> None:
    folder = _files(tmp_path / "docs")
    settings = Settings(index=tmp_path / "index", parse_workers=1)
    ingest_paths([str(folder)], settings, progress=recorder.progress)
    recorder.reset()
    again = ingest_paths([str(folder)], settings, progress=recorder.progress)
    assert again.unchanged == 6 and "load start" not in recorder.events
    (folder / "note3.txt").write_text("Note 3, rewritten: the comet never came back.\n")
    recorder.reset()
    changed = ingest_paths([str(folder)], settings, progress=recorder.progress)
    assert (changed.updated, changed.unchanged) == (1, 5)
    assert recorder.first("scan") < recorder.first("load start")
    assert recorder.first("ingest") < recorder.first("load done") < recorder.first("embed")


def test_a_missing_model_fails_by_name_before_anything_is_written(tmp_path: Path) -> None:
    folder = _files(tmp_path / "docs")
    settings = Settings(
        index=tmp_path / "index", parse_workers=1,
        embedding_model="sentence-transformers/not-on-this-disk-L3-v2",
    )  # fmt: skip
    seen: list[str] = []
    with pytest.raises(ModelMissing, match="not-on-this-disk-L3-v2"):
        ingest_paths([str(folder)], settings, progress=lambda e: seen.append(e.stage))
    assert seen == []  # not a file scanned
    assert open_store(tmp_path / "index", settings).published() is None


def test_the_wait_for_the_model_is_timed_apart_from_the_embedding(
    tmp_path: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _files(tmp_path / "docs")
    settings = Settings(index=tmp_path / "index", parse_workers=1)

    def slow_load(*args: object, **kwargs: object) -> object:
        loaded = recorder.load(*args, **kwargs)
        deadline = time.monotonic() + PATIENCE
        while recorder.events.count("ingest") < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(LOAD_DELAY)  # a model still loading when every file is parsed
        return loaded

    monkeypatch.setattr(ingest.ingestor, "load_embedder", slow_load)
    report = ingest_paths([str(folder)], settings, progress=recorder.progress)
    assert report.added == 6
    assert report.phases["model"] >= LOAD_DELAY * 0.9, report.phases
    assert report.phases["embed"] < LOAD_DELAY, report.phases  # the embedding alone
