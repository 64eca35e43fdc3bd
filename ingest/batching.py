"""How an ingest cuts what it embeds: flushes of buffered chunks (`Batching`,
as the model's device wants them), and each flush's slices, longest first
(`slices_of`), whoever embeds them (this process, a child process, Ray)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rag.embedding import CPU_BATCH_TOKENS, Embedder, token_batches

# Embed chunks of several small documents together: sentence-transformers
# sorts a call's texts by length, so bigger calls waste less padding.
EMBED_BUFFER = 256
# ... and hand them to the model a slice at a time (the model's own batch
# size), longest first, so the progress bar moves while a long document
# embeds and no slice is padded more than one big call would be.
EMBED_SLICE = 32
# On a GPU a flush holds enough chunks for several full batches of
# GPU_BATCH_TOKENS, so the model is fed large batches of like lengths.
GPU_EMBED_BUFFER = 8192


@dataclass(frozen=True)
class Batching:
    """How a flush is cut for a model that runs elsewhere: as this process
    would cut it for the same model on the same device."""

    buffer: int  # chunks to gather before a flush
    batch_tokens: int  # padded tokens a slice of token ids
    rows: int | None  # passages a slice at most (None: any)
    takes_ids: bool  # the model embeds token ids (`embed_token_ids`)


def batching_of(embedder: Embedder) -> Batching:
    """How this process cuts flushes for `embedder` (and a remote engine
    for its own copy of the model)."""
    on_gpu = str(getattr(embedder, "device", "cpu")).startswith("cuda")
    return Batching(
        buffer=GPU_EMBED_BUFFER if on_gpu else EMBED_BUFFER,
        batch_tokens=getattr(embedder, "batch_tokens", CPU_BATCH_TOKENS),
        # On a CPU, also at most EMBED_SLICE passages a batch, so the
        # progress bar moves as often during a long document as before.
        rows=None if on_gpu else EMBED_SLICE,
        takes_ids=hasattr(embedder, "embed_token_ids"),
    )


def slices_of(
    texts: list[str], ids: list[np.ndarray] | None, batching: Batching
) -> list[list[int]]:
    """Rows of a flush, longest first, in slices: of the model's batch of
    padded tokens when pre-tokenized, else EMBED_SLICE texts."""
    if ids is not None:
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        lengths = [len(ids[i]) for i in order]
        batches = token_batches(lengths, batching.batch_tokens, batching.rows)
        return [[order[r] for r in batch] for batch in batches]
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    return [order[start : start + EMBED_SLICE] for start in range(0, len(order), EMBED_SLICE)]
