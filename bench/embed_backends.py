"""The CPU embedding backends side by side (RAG_EMBED_BACKEND=torch, onnx,
onnx-int8): SciFact nDCG@10 in every mode through `rag eval` (one index
per backend), documents embedded per second (SciFact abstracts, batches
of 32, as ingestion sends them) and the p50 latency of embedding one
query (the 300 SciFact queries, one at a time, warm).

    .venv/bin/python bench/embed_backends.py                     # everything
    .venv/bin/python bench/embed_backends.py --no-quality        # timings only
    .venv/bin/python bench/embed_backends.py --quality-from DIR  # nDCG from
        # DIR/<backend>.json files that `rag eval DATASET --json` printed

Time it on a quiet machine: other processes on the cores change the
timings, not the nDCG. The indexes go to ~/.cache/kbqa/bench/embed-<backend>
(an existing one is reused without re-embedding).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import corpora  # bench/corpora.py: bench/ is first on sys.path when a script here runs

from rag.embedding import BACKENDS, load_embedder
from rag.evaluation import load_dataset

MODES = ("hybrid", "dense", "bm25")
BATCH = 32


def quality(backend: str, dataset: Path, index: Path) -> dict[str, float]:
    """nDCG@10 per mode, from `rag eval` run with this backend."""
    env = {**os.environ, "RAG_EMBED_BACKEND": backend}
    command = [sys.executable, "-c", "from cli.rag_main import main; main()", "eval",
               str(dataset), "--index", str(index), "--json"]  # fmt: skip
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return ndcg(json.loads(out.strip().splitlines()[-1]))


def ndcg(report: dict) -> dict[str, float]:  # type: ignore[type-arg]
    return {mode: report["modes"][mode]["ndcg@10"] for mode in MODES if mode in report["modes"]}


def speed(backend: str, passages: list[str], queries: list[str]) -> tuple[float, float]:
    """Documents per second (batches of BATCH) and p50 ms of one query."""
    embedder = load_embedder("all-MiniLM-L6-v2", "auto", "cpu", backend)
    embedder.embed_batch(passages[:BATCH])  # warm up
    start = time.perf_counter()
    for i in range(0, len(passages), BATCH):
        embedder.embed_batch(passages[i : i + BATCH])
    per_second = len(passages) / (time.perf_counter() - start)
    for q in queries[:10]:
        embedder.embed_batch([q], kind="query")
    times = []
    for q in queries:
        start = time.perf_counter()
        embedder.embed_batch([q], kind="query")
        times.append((time.perf_counter() - start) * 1000)
    return per_second, statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=corpora.SCIFACT)
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--passages", type=int, default=2000, help="abstracts timed")
    parser.add_argument("--no-quality", action="store_true", help="timings only")
    parser.add_argument("--quality-from", type=Path, help="folder of <backend>.json eval outputs")
    parser.add_argument("--no-speed", action="store_true", help="nDCG only")
    args = parser.parse_args()

    data = load_dataset(args.dataset)
    passages = [f"{d.get('title', '')}\n{d.get('text', '')}" for d in data.corpus]
    passages = passages[: args.passages]
    queries = list(data.queries.values())
    rows = []
    for backend in args.backends:
        scores: dict[str, float] = {}
        if args.quality_from:
            found = args.quality_from / f"{backend}.json"
            if found.is_file() and found.stat().st_size:
                scores = ndcg(json.loads(found.read_text().strip().splitlines()[-1]))
        elif not args.no_quality:
            index = corpora.CACHE / f"embed-{backend}"
            scores = quality(backend, args.dataset, index)
        rate, p50 = (None, None) if args.no_speed else speed(backend, passages, queries)
        rows.append((backend, scores, rate, p50))
        print(f"  {backend} done", file=sys.stderr)

    cpu = platform.processor() or platform.machine()
    print(f"{os.cpu_count()} cores ({cpu}), {len(passages)} SciFact abstracts, "
          f"{len(queries)} queries")  # fmt: skip
    print("| backend | nDCG@10 hybrid | dense | bm25 | passages/s (documents, batch 32) "
          "| query ms p50 (single query) |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    base = rows[0][1] if rows and rows[0][0] == "torch" else {}
    for backend, scores, rate, p50 in rows:
        cells = []
        for mode in MODES:
            value = scores.get(mode)
            delta = f" ({value - base[mode]:+.4f})" if value is not None and base.get(mode) \
                and backend != "torch" else ""  # fmt: skip
            cells.append("-" if value is None else f"{value:.4f}{delta}")
        rate_cell = "-" if rate is None else f"{rate:.1f}"
        p50_cell = "-" if p50 is None else f"{p50:.2f}"
        print(f"| {backend} | {' | '.join(cells)} | {rate_cell} | {p50_cell} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
