"""How the hybrid defaults were chosen: fusion method, dense weight (alpha)
and candidate depth, tuned on half of a BEIR dataset's queries and reported
on the other half and on all of them.

The split is by a hash of the query id (sha256, even first byte: tuning
half), so it is fixed, independent of the dataset's order, and keyed to
nothing in the judgements. Every figure comes from the product's own path:
`KnowledgeBase.search` over the index `rag eval` builds, documents scored
by their best chunk, metrics from pytrec_eval (`rag.evaluation`).

    .venv/bin/rag eval ../shared/data/scifact          # builds indexes/eval-scifact once
    .venv/bin/python bench/fusion.py ../shared/data/scifact
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
from datetime import date
from pathlib import Path

from rag import evaluation
from rag.knowledge_base import KnowledgeBase
from rag.settings import Settings


def tuning_half(qid: str) -> bool:
    return hashlib.sha256(qid.encode()).digest()[0] % 2 == 0


def ndcg(kb: KnowledgeBase, data: evaluation.Dataset, queries: dict[str, str]) -> float:
    run = evaluation.run_queries(kb, queries, "hybrid")
    return evaluation.score({q: data.qrels[q] for q in queries}, run)["ndcg@10"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--index", type=Path, help="[default: indexes/eval-<dataset>]")
    parser.add_argument("--alphas", default="0.3,0.4,0.5,0.55,0.6,0.65,0.7,0.8")
    # `rag eval` reads 300 chunks a query (for Recall@100) and the search
    # reads max(k, depth) from each side, so depths under 300 equal 300 here.
    parser.add_argument("--depths", default="300,400,600")
    args = parser.parse_args()

    data = evaluation.load_dataset(args.dataset)
    settings = Settings()
    index = args.index or settings.indexes_root / f"eval-{data.name}"
    tune = {q: t for q, t in data.queries.items() if tuning_half(q)}
    held = {q: t for q, t in data.queries.items() if not tuning_half(q)}
    everything = data.queries

    def kb_with(**overrides: object) -> KnowledgeBase:
        return KnowledgeBase.open(index, settings=settings.model_copy(update=overrides))

    print(f"Fusion tuning — {data.name}, index {index}; {platform.node()}, "
          f"{os.cpu_count()} cores, {date.today()}")  # fmt: skip
    print(f"queries: {len(tune)} to tune on, {len(held)} held out (sha256 of the id)\n")

    rows = []
    for depth in (int(d) for d in args.depths.split(",")):
        for alpha in (float(a) for a in args.alphas.split(",")):
            kb = kb_with(fusion="convex", fusion_alpha=alpha, fusion_depth=depth)
            rows.append((f"convex alpha={alpha:g}", depth, ndcg(kb, data, tune), kb))
        kb = kb_with(fusion="rrf", fusion_depth=depth)
        rows.append(("rrf k=60", depth, ndcg(kb, data, tune), kb))
    best = max(rows, key=lambda r: r[2])

    print("| fusion | depth | nDCG@10 tuning half | nDCG@10 held-out half | nDCG@10 all |")
    print("|---|---|---|---|---|")
    for name, depth, tuned, kb in rows:
        mark = " **(chosen)**" if (name, depth) == best[:2] else ""
        # Only the chosen row and the RRF rows need the other halves; the
        # rest are printed on the tuning half alone to keep the run short.
        if mark or name.startswith("rrf"):
            print(f"| {name}{mark} | {depth} | {tuned:.4f} | {ndcg(kb, data, held):.4f} | "
                  f"{ndcg(kb, data, everything):.4f} |")  # fmt: skip
        else:
            print(f"| {name} | {depth} | {tuned:.4f} | | |")
        sys.stdout.flush()
    name, depth, *_ = best
    print(f"\nchosen on the tuning half: {name}, depth {depth}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
