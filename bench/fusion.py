"""How the hybrid defaults were chosen: fusion method, dense weight (alpha)
and candidate depth, tuned on half of a BEIR dataset's queries and reported
on the other half and on all of them; then the headline, every mode on the
same three sides.

The split is `rag.evaluation.half` (sha256 of the query id, even first
byte: tuning half), so it is fixed, independent of the dataset's order, and
keyed to nothing in the judgements. Every figure comes from the product's
own path: `KnowledgeBase.search` over the index `rag eval` builds, documents
scored by their best chunk, metrics from pytrec_eval (`rag.evaluation`).
Each setting runs every query once; the three columns score that one run on
the tuning half, the held-out half and all queries.

    .venv/bin/rag eval ../shared/data/scifact          # builds indexes/eval-scifact once
    .venv/bin/python bench/fusion.py ../shared/data/scifact
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from datetime import date
from pathlib import Path

from rag import evaluation
from rag.knowledge_base import KnowledgeBase
from rag.settings import Settings

SIDES = ("tune", "test", "all")
METRICS = ("ndcg@10", "recall@100", "mrr@10")


def scores(
    kb: KnowledgeBase, data: evaluation.Dataset, mode: str = "hybrid"
) -> dict[str, dict[str, float]]:
    """side -> metric -> value, from one run over every query."""
    run = evaluation.run_queries(kb, data.queries, mode)
    out = {}
    for side in SIDES:
        qids = evaluation.half(data.queries, side)
        out[side] = evaluation.score({q: data.qrels[q] for q in qids if q in data.qrels},
                                     {q: run[q] for q in qids})  # fmt: skip
    return out


def tuning_table(args: argparse.Namespace, data: evaluation.Dataset, kb_with) -> tuple[str, int]:
    print("| fusion | depth | nDCG@10 tuning half | nDCG@10 held-out half | nDCG@10 all |")
    print("|---|---|---|---|---|")
    rows = []
    for depth in (int(d) for d in args.depths.split(",")):
        settings = [(f"convex alpha={float(a):g}", {"fusion": "convex", "fusion_alpha": float(a)})
                    for a in args.alphas.split(",")]  # fmt: skip
        settings.append(("rrf k=60", {"fusion": "rrf"}))
        for name, overrides in settings:
            got = scores(kb_with(fusion_depth=depth, **overrides), data)
            rows.append((got["tune"]["ndcg@10"], name, depth))
            print(f"| {name} | {depth} | {got['tune']['ndcg@10']:.4f} | "
                  f"{got['test']['ndcg@10']:.4f} | {got['all']['ndcg@10']:.4f} |")  # fmt: skip
            sys.stdout.flush()
    _, name, depth = max(rows, key=lambda row: row[0])  # a tie: the first listed
    print(f"\nbest on the tuning half: {name}, depth {depth}\n")
    return name, depth


def headline(data: evaluation.Dataset, kb_with) -> None:
    """Every mode with the current settings (Settings, RAG_* variables), and
    RRF of the same two sides, on the same three sides."""
    print("| mode | side | queries | nDCG@10 | Recall@100 | MRR@10 |")
    print("|---|---|---|---|---|---|")
    modes = [("hybrid (settings: convex)", "hybrid", {}), ("hybrid, rrf k=60", "hybrid",
             {"fusion": "rrf"}), ("dense", "dense", {}), ("bm25", "bm25", {})]  # fmt: skip
    names = {"tune": "tuning half", "test": "held-out half", "all": "all"}
    for label, mode, overrides in modes:
        got = scores(kb_with(**overrides), data, mode)
        for side in SIDES:
            n = len([q for q in evaluation.half(data.queries, side) if q in data.qrels])
            m = got[side]
            print(
                f"| {label} | {names[side]} | {n} | "
                + " | ".join(f"{m[k]:.4f}" for k in METRICS)
                + " |"
            )
        sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--index", type=Path, help="[default: indexes/eval-<dataset>]")
    parser.add_argument("--alphas", default="0.3,0.4,0.5,0.55,0.6,0.65,0.7,0.8")
    # `rag eval` reads 300 chunks a query (for Recall@100) and the search
    # reads max(k, depth) from each side, so depths under 300 equal 300 here.
    parser.add_argument("--depths", default="300,400,600")
    parser.add_argument("--headline-only", action="store_true", help="skip the tuning table")
    args = parser.parse_args()

    data = evaluation.load_dataset(args.dataset)
    settings = Settings()
    index = args.index or settings.indexes_root / f"eval-{data.name}"

    def kb_with(**overrides: object) -> KnowledgeBase:
        return KnowledgeBase.open(index, settings=settings.model_copy(update=overrides))

    tune, held = (len(evaluation.half(data.queries, s)) for s in ("tune", "test"))
    print(f"Fusion tuning — {data.name}, index {index}; {platform.node()}, "
          f"{os.cpu_count()} cores, {date.today()}")  # fmt: skip
    print(f"queries: {tune} to tune on, {held} held out (rag.evaluation.half)\n")
    if not args.headline_only:
        tuning_table(args, data, kb_with)
    print(f"Headline (settings: fusion {settings.fusion}, alpha {settings.fusion_alpha:g}, "
          f"depth {settings.fusion_depth})\n")  # fmt: skip
    headline(data, kb_with)
    return 0


if __name__ == "__main__":
    sys.exit(main())
