"""Query latency of `KnowledgeBase.search` (hybrid, k=10), warm, at
SciFact's size (5,183 abstracts) and at 100k chunks, with the time split by stage and
the FAISS index type chosen by measurement.

The large index is real text, ingested with our own pipeline (cached under
~/.cache/kbqa/bench): SciFact, the R manuals (r-doc-pdf), and the HTML
documentation of Python 3.11, PostgreSQL 15 and Linux 6.1 from Debian
packages (apt-get download + dpkg -x). Queries: the 300 SciFact queries.

    .venv/bin/python bench/query.py              # brings the indexes up to date, then measures
    .venv/bin/python bench/query.py --no-build   # measures the indexes as they stand

The large index is built from the corpus's files in a fixed order, 200 at
a time, and stops at the first batch past `--max-chunks` (100,000 by
default; 0 ingests everything), so the measured index is the one this
script builds on any machine. An interrupted build resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import urllib.parse
from datetime import date
from pathlib import Path

import corpora  # bench/corpora.py: bench/ is first on sys.path when a script here runs
import faiss
import numpy as np
from stats import p50_p95  # bench/stats.py

from ingest.pipeline import ingest_paths
from rag import layout
from rag.knowledge_base import KnowledgeBase
from rag.settings import Settings

BATCH = 200  # files per ingest when the build stops at --max-chunks


def build(index: Path, folders: list[Path], max_chunks: int | None = None) -> None:
    """Ingest (incrementally: a finished index costs seconds, an interrupted
    build resumes from its last checkpoint). With `max_chunks`, files go in
    in a fixed order (folder by folder, sorted paths), BATCH at a time, and
    the build stops at the first batch that brings the index past
    `max_chunks`: the same index on every machine."""
    print(f"bringing {index} up to date with {len(folders)} folders…", file=sys.stderr)
    if max_chunks is None:
        report = ingest_paths([str(f) for f in folders], Settings(index=index))
        print(f"  {report.chunks_embedded} chunks embedded in {report.seconds:.0f} s",
              file=sys.stderr)  # fmt: skip
        return
    files = [str(p) for f in folders for p in sorted(f.rglob("*")) if p.is_file()]
    for start in range(0, len(files), BATCH):
        if chunks_in(index) >= max_chunks:
            break
        report = ingest_paths(files[start : start + BATCH], Settings(index=index))
        print(f"  files {start + 1}-{min(start + BATCH, len(files))} of {len(files)}: "
              f"{report.chunks_embedded} chunks embedded, {chunks_in(index)} in the index",
              file=sys.stderr)  # fmt: skip


def chunks_in(index: Path) -> int:
    name = layout.current_generation(index)
    return layout.read_manifest(index / name).chunks if name else 0


def queries() -> list[str]:
    with open(corpora.SCIFACT / "queries.jsonl", encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh]


def profile(kb: KnowledgeBase, texts: list[str]) -> dict[str, tuple[float, float]]:
    """Warm, one query at a time: end to end, and each stage on its own."""
    for text in texts:  # warm-up pass: caches, memory maps, lazy imports
        kb.search(text, k=10)
    snap = kb.snapshot()
    total, embed, dense, bm25 = [], [], [], []
    for text in texts:
        t0 = time.perf_counter()
        kb.search(text, k=10)
        t1 = time.perf_counter()
        vector = kb.embedder.embed_batch([text], kind="query")[0]
        t2 = time.perf_counter()
        snap.dense(vector, kb.depth)
        t3 = time.perf_counter()
        snap.bm25(text, kb.depth)
        t4 = time.perf_counter()
        total.append(t1 - t0)
        embed.append(t2 - t1)
        dense.append(t3 - t2)
        bm25.append(t4 - t3)
    ms = {name: [1000 * v for v in values] for name, values in
          {"total": total, "embed": embed, "dense": dense, "bm25": bm25}.items()}  # fmt: skip
    return {name: p50_p95(values) for name, values in ms.items()}


def local_generation(kb: KnowledgeBase) -> Path:
    """The folder of the local store's current generation: the FAISS and
    BM25 comparisons below read the local store's own files."""
    if kb.store.uri != "local":
        raise SystemExit(f"the FAISS and BM25 comparisons need a local store, not {kb.store.uri}")
    return kb.root / layout.require_generation(kb.root)


def faiss_choice(kb: KnowledgeBase, texts: list[str]) -> list[tuple[str, float, float]]:
    """Exact float32 search against the float16 copy searches use and two
    approximate indexes: top-depth search time, and recall@10 of each one's
    top 10 against the exact top 10."""
    stored = faiss.read_index(str(local_generation(kb) / layout.VECTORS_FILE))
    flat = faiss.downcast_index(stored.index)
    vectors = flat.reconstruct_n(0, flat.ntotal)
    queries_ = np.vstack([kb.embedder.embed_batch([t], kind="query")[0] for t in texts])
    _, exact = flat.search(queries_, 10)
    metric = faiss.METRIC_INNER_PRODUCT
    candidates: list[tuple[str, faiss.Index]] = [("IndexFlatIP float32 (exact, on disk)", flat)]
    for name, kind in [("float16", faiss.ScalarQuantizer.QT_fp16),
                       ("8-bit", faiss.ScalarQuantizer.QT_8bit)]:  # fmt: skip
        quantized = faiss.IndexScalarQuantizer(flat.d, kind, metric)
        quantized.train(vectors)
        quantized.add(vectors)
        label = f"IndexScalarQuantizer {name}"
        candidates.append(
            (label + (" (searched, default)" if name == "float16" else ""), quantized)
        )
    hnsw = faiss.IndexHNSWFlat(flat.d, 32, metric)
    hnsw.hnsw.efConstruction = 80
    hnsw.add(vectors)
    hnsw.hnsw.efSearch = max(256, kb.depth)
    candidates.append((f"IndexHNSWFlat M=32 efSearch={hnsw.hnsw.efSearch}", hnsw))
    rows = []
    for name, index in candidates:
        times = []
        found = []
        for q in queries_:
            t = time.perf_counter()
            index.search(q.reshape(1, -1), kb.depth)
            times.append(1000 * (time.perf_counter() - t))
            found.append(index.search(q.reshape(1, -1), 10)[1][0])
        recall = float(
            np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)])
        )
        rows.append((name, statistics.median(times), recall))
    return rows


def bm25_choice(kb: KnowledgeBase, texts: list[str]) -> list[tuple[str, float]]:
    """The BM25 side two ways, over the same analysed terms: bm25s (what the
    index uses) and an SQLite FTS5 table built here from the stored terms
    (the other candidate the foundation issue named). Top-`depth` query
    time, median, ms."""
    import sqlite3
    import tempfile

    from rag import lexical

    snap = kb.snapshot()
    where = urllib.parse.quote(str(local_generation(kb) / layout.DB_FILE))
    stored = sqlite3.connect(f"file:{where}?mode=ro", uri=True)
    rows = stored.execute("SELECT id, terms FROM chunks").fetchall()
    stored.close()
    times: dict[str, list[float]] = {"bm25s (memory-mapped arrays)": [], "SQLite FTS5": []}
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(Path(tmp) / "fts.sqlite")
        db.execute("CREATE VIRTUAL TABLE fts USING fts5(terms)")
        db.executemany("INSERT INTO fts (rowid, terms) VALUES (?, ?)", rows)
        db.commit()
        for text in texts:
            t = time.perf_counter()
            snap.bm25(text, kb.depth)
            times["bm25s (memory-mapped arrays)"].append(1000 * (time.perf_counter() - t))
            expression = " OR ".join(f'"{w}"' for w in dict.fromkeys(lexical.terms(text)))
            t = time.perf_counter()
            if expression:
                db.execute(
                    "SELECT rowid, rank FROM fts WHERE fts MATCH ? ORDER BY rank LIMIT ?",
                    (expression, kb.depth),
                ).fetchall()
            times["SQLite FTS5"].append(1000 * (time.perf_counter() - t))
        db.close()
    return [(name, statistics.median(values)) for name, values in times.items()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="small,large")
    parser.add_argument(
        "--no-build", action="store_true", help="measure the indexes as they are (no ingest)"
    )
    parser.add_argument(
        "--max-chunks",
        type=int,
        default=100_000,
        help="stop building the large index at the first batch of files past this "
        "many chunks (0: ingest the whole corpus) [default: 100000]",
    )
    parser.add_argument(
        "--build-only", action="store_true", help="bring the indexes up to date, measure nothing"
    )
    args = parser.parse_args()
    texts = queries()
    indexes = {
        "small": (corpora.CACHE / "index-scifact", [corpora.scifact_texts()]),
        "large": (
            corpora.CACHE / "index-large",
            [
                corpora.scifact_texts(),
                corpora.r_manuals(),
                *(corpora.debian_html(p) for p in corpora.DEBIAN_DOCS),
            ],
        ),
    }
    print(f"Query latency — {platform.node()}, {os.cpu_count()} cores, {date.today()}; "
          f"hybrid, k=10, {len(texts)} SciFact queries, warm, one at a time\n")  # fmt: skip
    print("| index | chunks | p50 (ms) | p95 (ms) | embed p50 | dense p50 | bm25 p50 |")
    print("|---|---|---|---|---|---|---|")
    choices = {}
    lexical_choices = {}
    for size in args.sizes.split(","):
        path, folders = indexes[size]
        if not args.no_build:
            build(path, folders, (args.max_chunks or None) if size == "large" else None)
        if args.build_only:
            continue
        kb = KnowledgeBase.open(path)
        stats = profile(kb, texts)
        chunks = kb.stats().chunks
        p50 = {name: f"{values[0]:.1f}" for name, values in stats.items()}
        print(f"| {size} | {chunks} | {p50['total']} | {stats['total'][1]:.1f} | "
              f"{p50['embed']} | {p50['dense']} | {p50['bm25']} |")  # fmt: skip
        sys.stdout.flush()
        choices[size] = (chunks, faiss_choice(kb, texts))
        lexical_choices[size] = (chunks, bm25_choice(kb, texts))
    if args.build_only:
        return 0
    depth = Settings().fusion_depth
    print(f"\nFAISS index type (top-{depth} search time; recall@10 against exact search)\n")
    print("| index | chunks | FAISS index | search p50 (ms) | recall@10 |")
    print("|---|---|---|---|---|")
    for size, (chunks, rows) in choices.items():
        for name, ms, recall in rows:
            print(f"| {size} | {chunks} | {name} | {ms:.2f} | {recall:.4f} |")
    print(f"\nBM25 side (top {Settings().fusion_depth} a query, the same analysed terms)\n")
    print("| index | chunks | BM25 engine | query p50 (ms) |")
    print("|---|---|---|---|")
    for size, (chunks, rows) in lexical_choices.items():
        for name, ms in rows:
            print(f"| {size} | {chunks} | {name} | {ms:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
