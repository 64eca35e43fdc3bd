"""Embedding throughput on a corpus's passages: the model's raw forward pass
(the ceiling), sentence-transformers' `encode`, and our ingest path
(`embed_token_ids` on ids the chunker's tokenizer made), each in passages
per second on the same passages, with the ratio to the ceiling.

The passages are the corpus split as `ingest` splits it (title prefixed).
The raw forward pass gets its inputs already padded on the device, in
length-sorted batches of 512, and does nothing but the transformer and the
mean pooling: no tokenizer, no copies. Our path includes everything
`ingest` pays once a passage is tokenized: padding, copies to the device,
pooling, normalising and the copy back.

    .venv/bin/python bench/embed_throughput.py ../shared/data/scifact
    .venv/bin/python bench/embed_throughput.py ../shared/data/scifact --model /path/to/model
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import corpora  # bench/corpora.py: bench/ is first on sys.path when a script here runs
import numpy as np


def passages(corpus: Path, model: str, limit: int | None) -> list[str]:
    """The corpus's documents split as `ingest` splits them."""
    from ingest.chunking import Chunker
    from rag.embedding import load_token_counter
    from rag.settings import Settings
    from rag.types import Document

    settings = Settings()
    counter = load_token_counter(model)
    chunker = Chunker(
        counter.count_tokens, settings.chunk_tokens, settings.chunk_overlap, counter.max_tokens
    )
    out: list[str] = []
    for name, text in corpora.beir_texts(corpus, limit):
        # As the text loader makes it: a text file's title is its name.
        document = Document(f"{name}.txt", text, "", "txt", title=name)
        out += [c.indexed_text for c in chunker.split(document)]
    return out


def timed(fn: Callable[[], object], device: str) -> float:
    import torch

    fn()  # warm-up: kernels chosen, memory pools grown
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def raw_forward(
    embedder, ids: list[np.ndarray], device: str, batch: int = 512
) -> Callable[[], None]:
    """The transformer and mean pooling alone, on inputs padded beforehand
    on the device, batches of `batch` sorted by length."""
    import torch

    from rag.embedding import SentenceTransformerEmbedder

    # transformers' model (rag.embedding_hf), or the plain encoder
    # (rag.embedding_bert), which returns the token vectors themselves.
    model = embedder._model
    if isinstance(embedder, SentenceTransformerEmbedder):
        first = model[0]  # sentence-transformers' Transformer module
        model = getattr(first, "auto_model", None) or first.model
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    batches = []
    for start in range(0, len(order), batch):
        rows = [ids[i] for i in order[start : start + batch]]
        width = max(len(r) for r in rows)
        input_ids = np.zeros((len(rows), width), np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        for n, r in enumerate(rows):
            input_ids[n, : len(r)] = r
            mask[n, : len(r)] = 1
        batches.append((torch.from_numpy(input_ids).to(device), torch.from_numpy(mask).to(device)))

    def run() -> None:
        with torch.inference_mode():
            for input_ids, mask in batches:
                out = model(input_ids=input_ids, attention_mask=mask)
                hidden = getattr(out, "last_hidden_state", out)
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                (hidden * weights).sum(1) / weights.sum(1)

    return run


def embed_with_budget(embedder: Any, ids: list[np.ndarray], budget: int) -> np.ndarray:
    """`embed_token_ids` with another batch budget than the default."""
    kept, embedder.batch_tokens = embedder.batch_tokens, budget
    try:
        return embedder.embed_token_ids(ids)
    finally:
        embedder.batch_tokens = kept


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("corpus", type=Path, help="a BEIR folder (corpus.jsonl)")
    parser.add_argument(
        "--model", default=os.environ.get("RAG_EMBEDDING_MODEL", "all-MiniLM-L6-v2")
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N documents")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument(
        "--budgets", type=lambda v: [int(x) for x in v.split(",")], default=None,
        help="tokens a batch to time for embed_token_ids, e.g. 1024,2048,8192 [the default]",
    )  # fmt: skip
    args = parser.parse_args()

    import torch

    from rag.embedding import (
        SentenceTransformerEmbedder,
        load_embedder,
        load_token_counter,
        resolve_device,
    )

    device = resolve_device(args.device)
    embedder = load_embedder(args.model, "auto", device)
    # sentence-transformers' own `encode`, for its rows of the table.
    reference = SentenceTransformerEmbedder(args.model, "auto", device)
    args.budgets = args.budgets or [embedder.batch_tokens]
    counter = load_token_counter(args.model)
    texts = passages(args.corpus, args.model, args.limit)
    started = time.perf_counter()
    ids = counter.encode(texts)
    tokenize_s = time.perf_counter() - started
    name = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "CPU"
    mean = sum(len(i) for i in ids) / len(ids)
    print(f"Embedding throughput — {platform.node()}, {os.cpu_count()} cores, {date.today()}; "
          f"{device} ({name}), {embedder.precision}, torch {torch.__version__}")  # fmt: skip
    print(f"{len(texts)} passages of {args.corpus.name}, {mean:.0f} tokens on average; "
          f"the tokenizer's batch call took {tokenize_s:.2f} s\n")  # fmt: skip
    runs: list[tuple[str, Callable[[], object]]] = [
        ("raw forward pass, batches of 512 (ceiling)", raw_forward(embedder, ids, device)),
        *[(f"ingest: embed_token_ids, {budget} tokens a batch"
           + (" (the default here)" if budget == embedder.batch_tokens else ""),
           lambda budget=budget: embed_with_budget(embedder, ids, budget))
          for budget in args.budgets],
        ("sentence-transformers encode, batch 32",
         lambda: reference._model.encode(texts, batch_size=32, convert_to_tensor=True)),
        ("sentence-transformers encode, batch 1024",
         lambda: reference._model.encode(texts, batch_size=1024, convert_to_tensor=True)),
    ]  # fmt: skip
    sample = texts[:2000]
    cosines = (reference.embed_batch(sample) * embedder.embed_token_ids(ids[:2000])).sum(axis=1)
    print(f"encode against embed_token_ids, {len(sample)} passages: least cosine "
          f"{cosines.min():.6f}\n")  # fmt: skip
    print("| path | seconds | passages/s | share of the ceiling |")
    print("|---|---|---|---|")
    ceiling = 0.0
    for label, fn in runs:
        seconds = timed(fn, device)
        rate = len(texts) / seconds
        ceiling = ceiling or rate
        print(f"| {label} | {seconds:.2f} | {rate:,.0f} | {rate / ceiling:.2f} |")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
