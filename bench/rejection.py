"""When is "not in the knowledge base" the right answer? The signals the
extractive answer could decide by, without the LLM: per SciFact query, the
similarity of the closest candidate sentence (what rag/answering/extractive.py
compares with RAG_EXTRACT_MIN_SUPPORT) and the dense cosine of the best
passage in the index, for the query asked of the full index (positive)
and of a copy without its judged documents (negative).

The threshold is chosen on the tuning half: the highest that keeps at least
95% of the positive queries answered that the current threshold answers;
its figures are then printed for the held-out half. Settings are the
small-model profile's (screen off, extractive answers) and retrieval is the
product's own; nothing is sent to an LLM.

    .venv/bin/python bench/rejection.py --dataset data/scifact \\
        --index indexes/eval-scifact          # the index `rag eval` built
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingest.pipeline import ingest_documents
from rag import evaluation
from rag.answering import extractive
from rag.answering.pipeline import fit_to_budget, lost_in_the_middle, read_token_limit
from rag.answering.profiles import small_model
from rag.answering.screening import keep
from rag.knowledge_base import KnowledgeBase
from rag.settings import Settings
from rag.types import Verdict

KEEP_ANSWERED = 0.95
THRESHOLDS = [round(0.25 + 0.05 * i, 2) for i in range(10)]


@dataclass
class Signals:
    best_sentence: float  # the closest candidate sentence's similarity (-1: none)
    relevant_sentences: list[float]  # similarities of candidates from judged documents
    top_dense: float  # the dense cosine of the best passage in the index


def signals(kb: KnowledgeBase, text: str, judged: dict[str, int], settings: Settings) -> Signals:
    """What the extractive read would see: the passages retrieval keeps
    (screen off), fitted to the budget and ordered as in the prompt."""
    hits = kb.search(text, k=settings.screen_k, mode=settings.search_mode)
    kept = keep([Verdict(hit=h, relevant=True, reason="screen off") for h in hits], settings)
    budget = settings.llm_context_tokens - read_token_limit(settings) - 64
    ordered = lost_in_the_middle(fit_to_budget(text, kept, budget))
    found = extractive.candidates(text, ordered, kb.embedder, settings.extract_sentences, -1.0)
    relevant = [
        c.similarity for c in found if judged.get(ordered[c.n - 1].source.rsplit("#", 1)[-1], 0) > 0
    ]
    dense = kb.search(text, k=1, mode="dense")
    return Signals(
        found[0].similarity if found else -1.0, relevant, dense[0].score if dense else -1.0
    )


def without_judged_index(data: evaluation.Dataset, full: Path, name: str, qids: list[str]) -> Path:
    """A copy of `full` less every document judged for `qids` (pruning
    re-embeds nothing)."""
    reduced = full.with_name(f"{full.name}-without-{name}-{len(qids)}")
    if not reduced.exists():
        shutil.copytree(full, reduced, ignore=shutil.ignore_patterns(".lock"))
    docs = evaluation.without_judged(data, qids)
    ingest_documents(docs, Settings(), index=reduced, total=len(data.corpus), prune=True)
    return reduced


def rates(pos: list[Signals], neg: list[Signals], t: float, by: Callable[[Signals], float]):  # type: ignore[no-untyped-def]
    answered = sum(by(s) >= t for s in pos) / len(pos)
    # A relevant sentence is offered to the model (the proxy for a relevant citation).
    offered = sum(by(s) >= t and any(x >= t for x in s.relevant_sentences) for s in pos) / len(pos)
    rejected = sum(by(s) < t for s in neg) / len(neg)
    return answered, offered, rejected


def table(title: str, pos: list[Signals], neg: list[Signals], marks: list[float]) -> None:
    print(f"\n{title} ({len(pos)} positive, {len(neg)} negative queries)\n")
    print("| threshold | positives answered | relevant sentence offered | negatives rejected |")
    print("| ---: | ---: | ---: | ---: |")
    for t in marks:
        a, o, r = rates(pos, neg, t, lambda s: s.best_sentence)
        print(f"| {t:.2f} | {a:.1%} | {o:.1%} | {r:.1%} |")


def choose(pos: list[Signals], neg: list[Signals], by: Callable[[Signals], float], floor: float):  # type: ignore[no-untyped-def]
    """The highest threshold (0.01 steps) keeping >= 95% of the positives
    answered at `floor`."""
    base = rates(pos, neg, floor, by)[0]
    best = floor
    for t in np.arange(floor, 1.0, 0.01):
        if rates(pos, neg, float(t), by)[0] >= KEEP_ANSWERED * base:
            best = round(float(t), 2)
    return best


def separation(title: str, pos: list[Signals], neg: list[Signals]) -> None:
    for name, by in (
        ("best sentence", lambda s: s.best_sentence),
        ("top dense cosine", lambda s: s.top_dense),
    ):
        p = np.array([by(s) for s in pos])
        n = np.array([by(s) for s in neg])
        # AUC: the chance a positive scores above a negative (ties count half).
        auc = ((p[:, None] > n[None, :]).mean() + 0.5 * (p[:, None] == n[None, :]).mean()).item()
        print(
            f"{title} {name}: positives median {np.median(p):.3f}, negatives median "
            f"{np.median(n):.3f}, AUC {auc:.3f}"
        )


def measure(data: evaluation.Dataset, index: Path, which: str, qids: list[str], settings: Settings):  # type: ignore[no-untyped-def]
    full = KnowledgeBase.open(index, settings=settings)
    reduced = KnowledgeBase.open(without_judged_index(data, index, which, qids), settings=settings)
    pos, neg = [], []
    for i, q in enumerate(qids, start=1):
        pos.append(signals(full, data.queries[q], data.qrels[q], settings))
        neg.append(signals(reduced, data.queries[q], data.qrels[q], settings))
        print(f"\r{i}/{len(qids)}", end="", file=sys.stderr)
    print(file=sys.stderr)
    return pos, neg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=Path("/work/shared/data/scifact"))
    parser.add_argument("--index", type=Path, default=Path("indexes/eval-scifact"))
    parser.add_argument("--limit", type=int, default=0, help="queries per half (0: all)")
    args = parser.parse_args()
    data = evaluation.load_dataset(args.dataset)
    # The floor is what the extractive answer used before this measurement.
    settings = small_model(extract_min_support=0.25)
    halves = {}
    for which in ("tune", "test"):
        qids = evaluation.half(data.queries, which)[: args.limit or None]
        halves[which] = measure(data, args.index, which, qids, settings)
    pos, neg = halves["tune"]
    chosen = choose(pos, neg, lambda s: s.best_sentence, 0.25)
    dense = choose(pos, neg, lambda s: s.top_dense, -1.0)
    print(f"rule: the closest candidate sentence reaches the threshold; chosen on tune: {chosen}")
    print(f"(for comparison, the same rule on the top dense cosine would choose {dense})")
    for which, (pos, neg) in halves.items():
        separation(which, pos, neg)
        table(f"{which} half, best-sentence rule", pos, neg, sorted({*THRESHOLDS, chosen}))
        a, _, r = rates(pos, neg, dense, lambda s: s.top_dense)
        print(
            f"\n{which} half, top-dense-cosine rule at {dense}: positives answered {a:.1%}, "
            f"negatives rejected {r:.1%}"
        )


if __name__ == "__main__":
    main()
