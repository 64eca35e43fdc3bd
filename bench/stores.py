"""The local store against Milvus Lite, in one run: write throughput, query
latency and search quality over the same chunks and the same vectors.

The chunks come from an existing local index (`--index`, e.g. the one
`rag eval` builds for SciFact, or bench/query.py's large index): each
document is copied, with its stored vectors, into a fresh local store and a
fresh Milvus Lite store through the `Store` seam (`rag.store.copying.copy`, as
`rag copy` does), so
embedding cost is left out and only the stores differ. Then every query of
the dataset is searched on both, in every mode: nDCG@10 from the product's
own evaluation (`rag.evaluation`), and latency of `KnowledgeBase.search`
(k=10, warm, one query at a time).

    .venv/bin/rag eval ../shared/data/scifact        # builds indexes/eval-scifact once
    .venv/bin/python bench/stores.py ../shared/data/scifact --index indexes/eval-scifact

At ~100k chunks (bench/query.py's large index, whose files are not named by
SciFact's corpus ids, so nDCG is not computed there):

    .venv/bin/python bench/query.py --build-only --sizes large
    .venv/bin/python bench/stores.py ../shared/data/scifact \
        --index ~/.cache/kbqa/bench/index-large --queries 100 --no-quality
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from rag import evaluation
from rag.knowledge_base import KnowledgeBase
from rag.settings import Settings
from rag.store import open_store
from rag.store.copying import copy

MODES = ("hybrid", "dense", "bm25")


def latency(kb: KnowledgeBase, queries: list[str]) -> tuple[float, float]:
    """p50 and p95 of one hybrid search, ms, after a warm-up pass."""
    for text in queries:
        kb.search(text, k=10)
    times = []
    for text in queries:
        started = time.perf_counter()
        kb.search(text, k=10)
        times.append(1000 * (time.perf_counter() - started))
    ordered = sorted(times)
    return statistics.median(ordered), ordered[int(0.95 * (len(ordered) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", type=Path, help="a BEIR dataset (queries and judgements)")
    parser.add_argument("--index", type=Path, required=True, help="the local index to copy")
    parser.add_argument("--work", type=Path, help="where the copies go [default: a temp folder]")
    parser.add_argument(
        "--queries",
        type=int,
        default=0,
        help="time only the dataset's first N queries [default: all]",
    )
    parser.add_argument(
        "--no-quality",
        action="store_true",
        help="skip nDCG@10 (when the index's files are not the dataset's corpus)",
    )
    args = parser.parse_args()

    data = evaluation.load_dataset(args.dataset)
    settings = Settings()
    source = open_store(args.index, settings)
    work = args.work or Path(tempfile.mkdtemp(prefix="kbqa-stores-"))
    stores = {
        "local": (work / "local", "local"),
        "Milvus Lite": (work / "milvus", f"milvus-lite://{(work / 'milvus.db').resolve()}"),
    }
    timed = list(data.queries.values())[: args.queries or None]
    print(f"Stores — {args.index} ({len(timed)} {data.name} queries timed); {platform.node()}, "
          f"{os.cpu_count()} cores, {date.today()}\n")  # fmt: skip
    print("| store | chunks | copy (s) | chunks/s | p50 (ms) | p95 (ms) | "
          + " | ".join(f"nDCG@10 {m}" for m in MODES) + " |")  # fmt: skip
    print("|---|---|---|---|---|---|" + "---|" * len(MODES))
    for name, (root, uri) in stores.items():
        root.mkdir(parents=True, exist_ok=True)
        target_settings = settings.model_copy(update={"store": uri})
        copied = copy(source.snapshot(), open_store(root, target_settings))
        chunks, seconds = copied.chunks, copied.seconds
        kb = KnowledgeBase.open(root, settings=target_settings)
        p50, p95 = latency(kb, timed)
        quality = ["not measured"] * len(MODES)
        for i, mode in enumerate(MODES if not args.no_quality else ()):
            run = evaluation.run_queries(kb, data.queries, mode)
            quality[i] = f"{evaluation.score(data.qrels, run)['ndcg@10']:.4f}"
        kb.close()
        print(f"| {name} | {chunks} | {seconds:.1f} | {chunks / seconds:.0f} | {p50:.1f} | "
              f"{p95:.1f} | " + " | ".join(quality) + " |")  # fmt: skip
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
