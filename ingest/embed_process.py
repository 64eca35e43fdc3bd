"""The embedding model in a child process of the ingest (`RAG_EMBED_PROCESS`).

Loaded in a thread of the ingest process, the model's imports (torch,
transformers: seconds of them) hold Python's lock while the files are
scanned and parsed, and every hash and SQLite call of the scan waits its
turn behind them. In a process of its own the model imports, loads and
warms up beside the scan, and the ingest process never imports torch.

`EmbeddingProcess` is a `RemoteEmbedding` (the seam Ray's engine also
fills): slices of token ids (or texts) go to the child over a pipe, vectors
come back, each slice as soon as it is embedded. Only numpy arrays and the
`Batching` cross the pipe, between our own two processes; the index is
never pickled. A child that dies fails the ingest by saying so.
"""

from __future__ import annotations

import contextlib
import glob
import multiprocessing
import os
import queue
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from ingest.batching import Batching, batching_of
from rag import errors
from rag.embedding import Embedder, Precision, load_embedder
from rag.errors import RagError
from rag.settings import Settings

# How long the child may take to stop once asked, before it is killed.
STOP_SECONDS = 10.0


def wanted(settings: Settings) -> bool:
    """Whether the ingest embeds in a child process: as `embed_process`
    says, and by default (auto) where the model embeds on a GPU, decided
    without importing torch, and where this process has not imported torch
    already (the app, which embeds queries: its models stay loaded in it
    from one upload to the next, where a child would load them each time)."""
    if settings.embed_process != "auto":
        return settings.embed_process == "on"
    if settings.embed_device == "cpu" or "torch" in sys.modules:
        return False
    return settings.embed_device == "cuda" or gpu_visible()


def gpu_visible() -> bool:
    """Whether this process would see an NVIDIA GPU: a device file is
    there, and CUDA_VISIBLE_DEVICES does not hide them all. A GPU that torch
    cannot use (a CPU-only build) leaves the child embedding on the CPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def warm_up(embedder: Embedder) -> None:
    """One small batch, so the first flush does not pay for the device's
    first calls (CUDA's context, cuBLAS, kernel choices)."""
    embedder.embed_batch(["A short passage to warm the model up."] * 4)


def _serve(
    requests: Connection, results: Connection, model: str, precision: Precision, device: str
) -> None:
    """The child: load and warm the model, say how to cut its batches, then
    embed each request's slices in order, sending each one's vectors from a
    thread while the next embeds (the parent may be busy writing)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        embedder = load_embedder(model, precision, device)
        warm_up(embedder)
    except Exception as exc:  # a model missing, out of memory, ...: said in the parent
        results.send(("error", type(exc).__name__, str(exc)))
        return
    results.send(("ready", batching_of(embedder)))
    out: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
    sender = threading.Thread(target=_send_all, args=(out, results), daemon=True)
    sender.start()
    try:
        while True:
            try:
                kind, slices = requests.recv()
            except EOFError:  # the parent is gone
                break
            if kind == "stop":
                break
            for number, part in enumerate(slices):
                out.put(("slice", number, _embed(embedder, kind, part)))
    except Exception as exc:
        out.put(("error", type(exc).__name__, str(exc)))
    finally:
        out.put(None)
        sender.join()


def _embed(embedder: Embedder, kind: str, part: Sequence[Any]) -> np.ndarray:
    if kind == "ids":
        return embedder.embed_token_ids(part)  # type: ignore[attr-defined, no-any-return]
    return embedder.embed_batch(part)


def _send_all(out: queue.Queue[tuple[Any, ...] | None], results: Connection) -> None:
    while (item := out.get()) is not None:
        try:
            results.send(item)
        except OSError:  # the parent is gone
            return


class EmbeddingProcess:
    """A `RemoteEmbedding` on a model in a child process, started by
    `start` (when the ingest finds its first file to parse) and stopped by
    `close`."""

    def __init__(self, settings: Settings) -> None:
        # What the child needs, not the settings (they may hold credentials).
        self._job = (settings.embedding_model, settings.embed_precision, settings.embed_device)
        self._process: Any = None  # a SpawnProcess
        self._requests: Connection | None = None
        self._results: Connection | None = None
        self._batching: Batching | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start the child (once): it imports torch and loads the model
        while this process goes on."""
        if self._process is not None:
            return
        context = multiprocessing.get_context("spawn")  # never a fork of this process
        requests_in, self._requests = context.Pipe(duplex=False)
        self._results, results_out = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_serve, args=(requests_in, results_out, *self._job), name="kbqa-embed",
            daemon=True,
        )  # fmt: skip
        self._process.start()
        requests_in.close()  # the child's ends: a child that dies then reads as EOF here
        results_out.close()

    embeds_ahead = True  # the child embeds what is sent while this process writes

    def prepare(self) -> None:
        """Start the child at the first file to parse (`RemoteEmbedding`)."""
        self.start()

    def batching(self) -> Batching:
        """How the child's model wants its flushes cut: waits until it is
        loaded and warmed up."""
        if self._batching is None:
            self.start()
            self._batching = self._receive("loading the model")[1]
        return self._batching

    def embed_id_slices(self, slices: list[list[np.ndarray]]) -> Iterator[tuple[int, np.ndarray]]:
        """Sent at once (the child embeds while this process writes the
        previous flush), each slice's vectors yielded as they come, in order."""
        return self._submit("ids", slices)

    def embed_slices(self, slices: list[list[str]]) -> Iterator[tuple[int, np.ndarray]]:
        """The same for slices of texts."""
        return self._submit("texts", slices)

    def _submit(self, kind: str, slices: list[Any]) -> Iterator[tuple[int, np.ndarray]]:
        self.batching()
        assert self._requests is not None
        try:
            self._requests.send((kind, slices))
        except OSError:
            raise self._died("embedding") from None
        return self._collect(len(slices))

    def _collect(self, count: int) -> Iterator[tuple[int, np.ndarray]]:
        for _ in range(count):
            _, number, vectors = self._receive("embedding")
            yield number, vectors

    def _receive(self, doing: str) -> tuple[Any, ...]:
        assert self._results is not None
        try:
            message: tuple[Any, ...] = self._results.recv()
        except (EOFError, OSError):
            raise self._died(doing) from None
        if message[0] == "error":
            _, kind, text = message
            raised = getattr(errors, kind, None)
            if isinstance(raised, type) and issubclass(raised, RagError):
                raise raised(text)  # a model missing: by its own name
            raise RagError(f"The embedding process failed while {doing}: {kind}: {text}")
        return message

    def _died(self, doing: str) -> RagError:
        process = self._process
        process.join(timeout=STOP_SECONDS)
        code = process.exitcode
        if code is not None and code < 0:
            how = f"killed by signal {signal.Signals(-code).name}"
            if code == -signal.SIGKILL:
                how += ": by someone, or by the kernel for want of memory"
        else:
            how = f"exit code {code}"
        return RagError(
            f"The embedding process (pid {process.pid}) died while {doing} ({how}). "
            "The ingest stopped; it published nothing more."
        )

    def close(self, failed: bool = False) -> None:
        """Stop the child and wait for it: killed at once when the ingest
        `failed` or the model never came up, else when it does not stop."""
        process, self._process = self._process, None
        if process is None:
            return
        if failed or self._batching is None:
            process.kill()
        elif self._requests is not None:
            with contextlib.suppress(OSError):
                self._requests.send(("stop", None))
        process.join(timeout=STOP_SECONDS)
        if process.is_alive():
            process.kill()
            process.join()
        for end in (self._requests, self._results):
            if end is not None:
                end.close()
        self._requests = self._results = None
