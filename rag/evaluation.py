"""`rag eval`: measure the product's own pipeline on a BEIR-format dataset.

The corpus goes through the normal ingestion path (chunking, embedding,
the index writer) into an index of its own; queries go through
`KnowledgeBase.search`; chunk hits map back to corpus ids (a document
scores as its best chunk). Metrics come from pytrec_eval, the evaluator
BEIR itself uses.

`rag eval --stages` follows each query through the whole answering path
(retrieve, screen, read, against the configured LLM server) and scores each
stage against the judgements (`run_stages`, `summarize`); queries asked of
an index without their judged documents measure "not found" answers.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rag.errors import LLMUnreachable, RagError
from rag.knowledge_base import KnowledgeBase
from rag.llm import ChatModel
from rag.settings import Settings
from rag.types import Answer, Document, Hit

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


# -- stage by stage: retrieve -> screen -> read ----------------------------------------


def half(qids: Iterable[str], which: str) -> list[str]:
    """The query ids of one half ("tune" or "test", split by a hash of the
    id, so the same on every machine and run), or all of them ("all"), in
    sorted order."""
    ids = sorted(qids)
    if which == "all":
        return ids
    wanted = 0 if which == "tune" else 1
    return [q for q in ids if hashlib.sha256(q.encode()).digest()[0] % 2 == wanted]


def without_judged(dataset: Dataset, qids: Iterable[str]) -> Iterator[Document]:
    """The corpus less every document judged for `qids`: the knowledge base
    in which those queries have no answer (the negative-rejection set)."""
    removed = {doc for q in qids for doc in dataset.qrels.get(q, {})}
    kept = [entry for entry in dataset.corpus if entry["_id"] not in removed]
    return documents(Dataset(dataset.folder, kept, {}, {}))


@dataclass
class StageRow:
    """One query through the three stages, scored against the judgements.
    Passage counts are of passages from judged documents ("relevant")."""

    qid: str
    negative: bool  # asked of the index without its judged documents
    retrieved: int = 0  # relevant passages retrieved
    kept: int = 0  # relevant passages the screen kept
    kept_total: int = 0
    cited: int = 0  # relevant passages cited
    cited_total: int = 0
    answered: bool = False  # False: "not in the knowledge base"
    seconds: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    error: str = ""


def stage_row(qid: str, negative: bool, judged: dict[str, int], result: Answer) -> StageRow:
    def relevant(hits: Iterable[Hit]) -> int:
        return sum(judged.get(h.source.rsplit("#", 1)[-1], 0) > 0 for h in hits)

    cited = [c.hit for c in result.citations]
    return StageRow(
        qid=qid,
        negative=negative,
        retrieved=relevant(result.hits),
        kept=relevant(result.kept),
        kept_total=len(result.kept),
        cited=relevant(cited),
        cited_total=len(cited),
        answered=result.found,
        seconds={stage: result.timings.get(stage, 0.0) for stage in STAGES},
        tokens={stage: u.prompt_tokens + u.completion_tokens for stage, u in result.usage.items()},
    )


STAGES = ("retrieve", "screen", "read")


def run_stages(
    asks: Iterable[tuple[str, bool, str, KnowledgeBase]],
    qrels: dict[str, dict[str, int]],
    model: ChatModel,
    settings: Settings,
    on_query: Callable[[StageRow], None] = lambda row: None,
) -> list[StageRow]:
    """Answer each (query id, negative, text, knowledge base) through the
    product's own path and score each stage. A failed answer is a row with
    its error (and counts as not answered); an unreachable server stops."""
    from rag.answering.pipeline import answer

    rows = []
    for qid, negative, text, kb in asks:
        try:
            row = stage_row(qid, negative, qrels[qid], answer(text, kb, model, settings))
        except LLMUnreachable:
            raise
        except RagError as exc:
            row = StageRow(qid, negative, error=str(exc)[:200])
        rows.append(row)
        on_query(row)
    return rows


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def summarize(rows: Sequence[StageRow]) -> dict[str, float | int | None]:
    """What the stages did, over the rows. Rates over queries:
    `in_retrieved`/`in_kept`/`in_cited` (a relevant passage is there),
    `not_found_positive` (answerable queries answered "not in the knowledge
    base") and `rejected_negative` (negative queries answered so). Over
    passages: `screen_precision` (kept passages that are relevant),
    `screen_recall` (retrieved relevant passages the screen kept) and
    `citation_precision` (cited passages that are relevant). None where
    there is nothing to divide by; mean seconds and tokens per stage."""
    positive = [r for r in rows if not r.negative]
    negative = [r for r in rows if r.negative]
    summary: dict[str, float | int | None] = {
        "queries": len(positive),
        "negatives": len(negative),
        "errors": sum(bool(r.error) for r in rows),
        "in_retrieved": _ratio(sum(r.retrieved > 0 for r in positive), len(positive)),
        "in_kept": _ratio(sum(r.kept > 0 for r in positive), len(positive)),
        "in_cited": _ratio(sum(r.cited > 0 for r in positive), len(positive)),
        "screen_precision": _ratio(
            sum(r.kept for r in positive), sum(r.kept_total for r in positive)
        ),
        "screen_recall": _ratio(sum(r.kept for r in positive), sum(r.retrieved for r in positive)),
        "citation_precision": _ratio(
            sum(r.cited for r in positive), sum(r.cited_total for r in positive)
        ),
        "not_found_positive": _ratio(sum(not r.answered for r in positive), len(positive)),
        "rejected_negative": _ratio(sum(not r.answered for r in negative), len(negative)),
    }
    for stage in STAGES:
        seconds = sum(r.seconds.get(stage, 0.0) for r in rows)
        summary[f"{stage}_seconds"] = _ratio(seconds, len(rows))
        summary[f"{stage}_tokens"] = _ratio(sum(r.tokens.get(stage, 0) for r in rows), len(rows))
    return summary
