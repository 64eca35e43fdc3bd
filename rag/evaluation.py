"""`rag eval`: measure the product's own pipeline on a BEIR-format dataset.

The corpus goes through the normal ingestion path (chunking, embedding,
the index writer) into an index of its own; queries go through
`KnowledgeBase.search`; chunk hits map back to corpus ids (a document
scores as its best chunk). Metrics come from pytrec_eval, the evaluator
BEIR itself uses.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rag.errors import RagError
from rag.knowledge_base import KnowledgeBase
from rag.types import Document

METRICS = ("ndcg@10", "recall@100", "mrr@10")
# Chunks read per query: enough that 100 distinct documents survive the
# chunk-to-document mapping for Recall@100.
SEARCH_DEPTH = 300


@dataclass
class Dataset:
    folder: Path
    corpus: list[dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    published: list[tuple[str, float]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.folder.resolve().name


def load_dataset(folder: Path, split: str = "test") -> Dataset:
    folder = Path(folder)
    needed = [folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels" / f"{split}.tsv"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise RagError(f"Not a BEIR dataset folder, missing: {', '.join(missing)}")
    corpus = [_json_line(line) for line in _lines(needed[0])]
    queries = {q["_id"]: q["text"] for q in map(_json_line, _lines(needed[1]))}
    qrels: dict[str, dict[str, int]] = {}
    with open(needed[2], encoding="utf-8", newline="") as fh:
        rows = csv.reader(fh, delimiter="\t")
        next(rows, None)  # header
        for qid, docid, score in rows:
            qrels.setdefault(qid, {})[docid] = int(score)
    readme = folder / "README.md"
    published = parse_published(readme.read_text(encoding="utf-8")) if readme.exists() else []
    return Dataset(
        folder, corpus, {q: t for q, t in queries.items() if q in qrels}, qrels, published
    )


def _lines(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as fh:
        yield from (line for line in fh if line.strip())


def _json_line(line: str) -> dict[str, str]:
    value: dict[str, str] = json.loads(line)
    return value


_ROW = re.compile(r"^\|\s*([^|]+?)\s*\|\s*([01]\.\d+)\s*\|")


def parse_published(readme: str) -> list[tuple[str, float]]:
    """(system, nDCG@10) rows of a markdown table in the dataset's README."""
    return [(m.group(1), float(m.group(2))) for m in map(_ROW.match, readme.splitlines()) if m]


def corpus_key(folder: Path, doc_id: str) -> str:
    """The source path a corpus entry is stored under, and back."""
    return f"{folder.resolve() / 'corpus.jsonl'}#{doc_id}"


def documents(dataset: Dataset) -> Iterator[Document]:
    import hashlib

    for entry in dataset.corpus:
        text = entry.get("text", "").strip()
        title = entry.get("title", "").strip()
        digest = hashlib.sha256(f"{title}\n{text}".encode()).hexdigest()
        yield Document(
            path=corpus_key(dataset.folder, entry["_id"]),
            text=text or title,
            content_hash=digest,
            kind="text",
            title=title,
        )


def run_queries(
    kb: KnowledgeBase,
    queries: dict[str, str],
    mode: str,
    on_query: Callable[[], None] = lambda: None,
) -> dict[str, dict[str, float]]:
    """query id -> {corpus id: score}, each document scored by its best chunk."""
    run: dict[str, dict[str, float]] = {}
    for qid, text in queries.items():
        ranked: dict[str, float] = {}
        for hit in kb.search(text, k=SEARCH_DEPTH, mode=mode):
            doc_id = hit.source.rsplit("#", 1)[-1]
            ranked.setdefault(doc_id, hit.score)
            if len(ranked) == 100:
                break
        # Scores by rank: pytrec_eval sorts by score, and fused scores tie.
        run[qid] = {d: float(len(ranked) - i) for i, d in enumerate(ranked)}
        on_query()
    return run


def score(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, float]:
    """nDCG@10, Recall@100 and MRR@10, averaged over the judged queries."""
    import pytrec_eval

    judged = {q: r for q, r in qrels.items() if q in run}
    full = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    top10 = {q: dict(sorted(docs.items(), key=lambda p: -p[1])[:10]) for q, docs in run.items()}
    mrr = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(top10)
    n = len(judged)
    return {
        "ndcg@10": sum(m["ndcg_cut_10"] for m in full.values()) / n,
        "recall@100": sum(m["recall_100"] for m in full.values()) / n,
        "mrr@10": sum(m["recip_rank"] for m in mrr.values()) / n,
    }
