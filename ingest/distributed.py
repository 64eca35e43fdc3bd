"""Ingestion fanned out on Ray (`ingest ... --ray [ADDRESS]`): files are
parsed and split in Ray tasks, chunks embedded in Ray actors (one per GPU
where the cluster has GPUs, else one per node on its CPUs) fed the parse
tasks' token ids in the batches one process would embed, and everything is
written by this process through the Store seam, as without Ray.

The pipeline's own code runs in both places: a task calls
`workers.parse_files` (so each file is still parsed, split and tokenized in
a capped, killable process of its own, with the model's tokenizer alone);
an actor loads the model with `load_embedder`. Hashing, incremental checks, copies
and the index write stay in `ingest.pipeline`. Workers of a cluster must
have this package installed and see the files at the same paths.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayError

from ingest import workers
from ingest.batching import Batching, batching_of
from ingest.discovery import FileTask
from ingest.pipeline import Parsed, ToParse
from ingest.ray_cluster import check_address, connect
from rag.embedding import Precision, load_embedder
from rag.errors import RagError
from rag.settings import Settings
from rag.types import Chunk

# Parse tasks per CPU of the cluster, so that the CPUs finish together
# (files differ in size), within bounds: enough files for Ray's own cost of
# a task to stay small, few enough that a slow file holds back little. The
# parser process is kept from task to task (`_parser_pool`): a task no
# longer has to pay for starting it.
TASKS_PER_CPU = 4
FILES_PER_TASK = 8
MAX_FILES_PER_TASK = 256
BYTES_PER_TASK = 64 * 2**20
# Times one embedding slice is sent again after its actor died.
EMBED_ATTEMPTS = 3
# How long a restarted embedding actor may take to load its model.
ACTOR_START_SECONDS = 300


@dataclass(frozen=True)
class _Job:
    """What a parse task needs from the settings (not the settings
    themselves: they may hold credentials)."""

    model: str
    precision: Precision
    chunk_tokens: int
    chunk_overlap: int
    timeout: float
    memory_mb: int
    max_text_chars: int

    @classmethod
    def of(cls, settings: Settings) -> _Job:
        return cls(
            settings.embedding_model, settings.embed_precision, settings.chunk_tokens,
            settings.chunk_overlap, settings.parse_timeout, settings.parse_memory_mb,
            settings.max_text_chars,
        )  # fmt: skip


Split = tuple[workers.Parsed | str, list[Chunk] | None]

# The parser process of this Ray worker process, kept from one parse task to
# the next with the tokenizer it loaded: starting them took seconds a task.
# It ends with the Ray worker process (its end of the pool's pipes closes).
_parsers: dict[int, Any] = {}


def _parser_pool(memory_mb: int) -> Any:
    pool = _parsers.get(memory_mb)
    if pool is None or not pool.active:  # a pool that broke is started again
        pool = _parsers[memory_mb] = workers.parser_pool(1, memory_mb)
    return pool


def _parse_and_split(
    job: _Job, batch: list[tuple[FileTask, str]], ocr: bool
) -> tuple[list[Split], float, float]:
    """A parse task: each file parsed and split (or why it failed) in the
    Ray worker's parser process, and the seconds the task waited for it
    (parsing and splitting happen together there: all counted as parsing)."""
    split = workers.Split(job.model, job.chunk_tokens, job.chunk_overlap)
    out: list[Split] = []
    started = time.perf_counter()
    parsed = workers.parse_files(
        batch, ocr=ocr, timeout=job.timeout, memory_mb=job.memory_mb,
        max_text_chars=job.max_text_chars, split=split, pool=_parser_pool(job.memory_mb),
    )  # fmt: skip
    for _, result in parsed:
        out.append((result, None if isinstance(result, str) else result.chunks))
    return out, time.perf_counter() - started, 0.0


class _Embedder:
    """An embedding actor: the model loaded once, as the main process loads
    it; passages come as the parser's token ids where the model takes them."""

    def __init__(self, model: str, precision: Precision, device: str, threads: int) -> None:
        if device == "cpu":
            import torch

            torch.set_num_threads(threads)  # its share of the node's cores
        self._embedder = load_embedder(model, precision, device)

    def ping(self) -> bool:
        return True

    def batching(self) -> Batching:
        return batching_of(self._embedder)

    def embed(self, texts: list[str]) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        vectors = self._embedder.embed_batch(texts)
        return vectors, time.perf_counter() - started

    def embed_ids(self, ids: list[np.ndarray]) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        vectors = self._embedder.embed_token_ids(ids)  # type: ignore[attr-defined]
        return vectors, time.perf_counter() - started


def _wait_until_up(actor: Any) -> None:
    """Wait for an actor Ray is restarting (calls sent meanwhile fail at
    once); a dead one (out of restarts) raises."""
    deadline = time.monotonic() + ACTOR_START_SECONDS
    while True:
        try:
            ray.get(actor.ping.remote(), timeout=ACTOR_START_SECONDS)
            return
        except ActorUnavailableError:
            if time.monotonic() > deadline:
                raise RagError(
                    f"a Ray embedding actor did not come back within {ACTOR_START_SECONDS} s"
                ) from None
            time.sleep(0.5)
        except RayActorError as exc:
            raise RagError(f"a Ray embedding actor died for good ({exc})") from None


class RayEngine:
    """An `ingest.pipeline.Engine` on Ray. Connects on first use, so an
    ingest with nothing to parse never starts Ray."""

    def __init__(self, address: str, settings: Settings) -> None:
        self.address = address
        self.settings = settings
        self.worker_seconds: dict[str, float] = {"parse": 0.0, "chunk": 0.0, "embed": 0.0}
        # Passages sent to the actors: as the parser's token ids, or as text
        # (a model without `embed_token_ids`, or chunks split without ids).
        self.passages: dict[str, int] = {"token_ids": 0, "texts": 0}
        self.retried = 0
        self.connected = False  # by this engine, which then disconnects
        self._ready = False
        self._actors: list[Any] = []
        self._batching: Batching | None = None

    # Its actors embed a slice when the ingest asks for it (`RemoteEmbedding`).
    embeds_ahead = False

    def prepare(self) -> None:
        """Nothing at the first file to parse: the actors start with the
        parse tasks (`parse`), before them (`RemoteEmbedding`)."""

    def _start(self) -> None:
        if not self._ready:
            self.connected = connect(self.address)
            self._ready = True

    def parse(self, to_parse: ToParse, settings: Settings) -> Iterator[Parsed]:
        """Batches of files in tasks, a bounded number in flight, results
        in the order given: those without OCR first, as without Ray."""
        if not to_parse:
            return
        self._start()
        # The actors first: each loads its model while the files are parsed,
        # and takes its CPU before the parse tasks take them all.
        self._embedders()
        job = ray.put(_Job.of(settings))
        task = ray.remote(num_cpus=1, max_retries=1)(_parse_and_split)
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        limit = 2 * cpus
        per_task = -(-len(to_parse) // (TASKS_PER_CPU * cpus))
        per_task = min(max(FILES_PER_TASK, per_task), MAX_FILES_PER_TASK)
        batches = deque(_batches(to_parse, per_task))
        in_flight: deque[tuple[list[tuple[FileTask, str]], bool, Any]] = deque()
        while batches or in_flight:
            while batches and len(in_flight) < limit:
                batch, ocr = batches.popleft()
                in_flight.append((batch, ocr, task.remote(job, batch, ocr)))
            batch, ocr, ref = in_flight.popleft()
            try:
                splits, parse_s, chunk_s = ray.get(ref)
            except RayError as exc:  # the task's worker or node was lost, twice
                reason = f"the Ray task parsing it failed ({exc.__class__.__name__})"
                splits, parse_s, chunk_s = [(reason, None)] * len(batch), 0.0, 0.0
            self.worker_seconds["parse"] += parse_s
            self.worker_seconds["chunk"] += chunk_s
            for (file, _), (result, chunks) in zip(batch, splits, strict=True):
                if isinstance(result, str):
                    yield Parsed(file, result, ocr)
                else:
                    yield Parsed(file, result.document, ocr, chunks, result.token_ids)

    def _embedders(self) -> list[Any]:
        """One actor per GPU; on CPUs, one per node with that node's cores
        (torch spreads one batch over them, as in one process)."""
        if not self._actors:
            self._start()
            resources = ray.cluster_resources()
            gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
            nodes = sum(1 for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU"))
            count = gpus or max(1, nodes)
            device, precision = (
                ("cuda", "float16") if gpus else ("cpu", self.settings.embed_precision)
            )
            actor = ray.remote(
                num_cpus=1, num_gpus=1 if gpus else 0, max_restarts=EMBED_ATTEMPTS,
                scheduling_strategy="SPREAD",
            )  # fmt: skip
            self._actors = [
                actor(_Embedder)
                .options(name=f"kbqa-embed-{os.getpid()}-{n}")
                .remote(self.settings.embedding_model, precision, device, max(1, cpus // count))
                for n in range(count)
            ]
        return self._actors

    def batching(self) -> Batching:
        """As one process cuts flushes for the actors' model and device, a
        flush holding one buffer's worth per actor (waits for a model)."""
        if self._batching is None:
            actors = self._embedders()
            found: Batching = ray.get(actors[0].batching.remote())
            self._batching = replace(found, buffer=found.buffer * len(actors))
        return self._batching

    def embed_slices(self, slices: list[list[str]]) -> Iterator[tuple[int, np.ndarray]]:
        """Slices of texts spread over the actors (`_spread`)."""
        self.passages["texts"] += sum(len(s) for s in slices)
        return self._spread("embed", slices)

    def embed_id_slices(self, slices: list[list[np.ndarray]]) -> Iterator[tuple[int, np.ndarray]]:
        """Slices of token ids spread over the actors: never tokenized again."""
        self.passages["token_ids"] += sum(len(s) for s in slices)
        return self._spread("embed_ids", slices)

    def _spread(self, method: str, slices: list[Any]) -> Iterator[tuple[int, np.ndarray]]:
        """Slices spread over the actors; one whose actor died is sent again
        (Ray restarts the actor), so every slice comes back once."""
        actors = self._embedders()
        sent = [ray.put(s) for s in slices]

        def call(actor: Any, number: int) -> Any:
            return getattr(actor, method).remote(sent[number])

        pending = {call(actors[n % len(actors)], n): (n, 0) for n in range(len(slices))}
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            number, attempt = pending.pop(ref)
            try:
                vectors, seconds = ray.get(ref)
            except (RayActorError, ActorUnavailableError) as exc:
                if attempt + 1 >= EMBED_ATTEMPTS:
                    raise RagError(
                        f"Ray embedding actors were lost {EMBED_ATTEMPTS} times on one batch "
                        f"({exc.__class__.__name__}: {exc})"
                    ) from None
                self.retried += 1
                actor = actors[(number + attempt + 1) % len(actors)]
                _wait_until_up(actor)
                pending[call(actor, number)] = (number, attempt + 1)
                continue
            self.worker_seconds["embed"] += seconds
            yield number, vectors

    def close(self) -> None:
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []
        if self.connected:
            ray.shutdown()
            self.connected = False


@contextmanager
def ray_engine(address: str, settings: Settings) -> Iterator[RayEngine]:
    """A `RayEngine` for one ingest; its actors are killed at the end, and
    Ray shut down (or left) if this engine started (or joined) it."""
    engine = RayEngine(check_address(address), settings)
    try:
        yield engine
    finally:
        engine.close()


def _batches(
    to_parse: ToParse, per_task: int = FILES_PER_TASK
) -> Iterator[tuple[list[tuple[FileTask, str]], bool]]:
    """(files with their hashes, with OCR): without OCR first, each batch
    at most `per_task` files or about BYTES_PER_TASK."""
    for with_ocr in (False, True):
        batch: list[tuple[FileTask, str]] = []
        size = 0
        for task, digest, ocr in to_parse:
            if ocr != with_ocr:
                continue
            if batch and (len(batch) >= per_task or size + task.size > BYTES_PER_TASK):
                yield batch, with_ocr
                batch, size = [], 0
            batch.append((task, digest))
            size += task.size
        if batch:
            yield batch, with_ocr
