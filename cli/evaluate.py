"""`rag eval`: retrieval and answering measured on a BEIR-format dataset,
through the product's own pipeline (rag/evaluation.py). An edge like
cli/rag_main.py: it ingests the corpus, so it may import `ingest`.

Unlike `rag search`, `stats` and `ask`, it opens its index with the
retrieval library (`KnowledgeBase.open`), not through the core service:
it measures the library, as bench/ does, and Recall@100 needs searches
deeper than the service's MAX_K."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from rag.knowledge_base import MODES, KnowledgeBase
from rag.settings import Settings
from rag.store import recorded_store, scheme

if TYPE_CHECKING:
    from rag.evaluation import Dataset

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def settings_with(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


@click.command(name="eval")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--index",
    type=click.Path(file_okay=False, path_type=Path),
    help="Index to build/reuse for the corpus  [default: indexes/eval-<dataset>, "
    "indexes/eval-<dataset>-<scheme> in another store than local]",
)
@click.option(
    "--store",
    metavar="URI",
    default=None,
    help="Store of the corpus's index, as `ingest --store`: local, "
    "milvus-lite:///path/file.db or milvus+tls://host:19530  [default: $RAG_STORE or local]",
)
@click.option(
    "--mode",
    "modes",
    type=click.Choice(MODES),
    multiple=True,
    help="Mode(s) to evaluate  [default: all three]",
)
@click.option(
    "--stages",
    is_flag=True,
    help="Answer each query through retrieve, screen and read (the configured LLM server) "
    "and score every stage.",
)
@click.option(
    "--half",
    type=click.Choice(["all", "tune", "test"]),
    default="all",
    show_default=True,
    help="Only one half of the queries (split by query id): tune on one, report the other.",
)
@click.option("--limit", type=click.IntRange(1), default=None, help="At most this many queries.")
@click.option(
    "--negatives",
    type=click.IntRange(0),
    default=None,
    help="With --stages: further queries asked of a copy of the index without their judged "
    "documents, to count 'not found' answers  [default: as many as --limit, else 0]",
)
@json_option
def evaluate(
    dataset: Path,
    index: Path | None,
    store: str | None,
    modes: tuple[str, ...],
    stages: bool,
    half: str,
    limit: int | None,
    negatives: int | None,
    as_json: bool,
) -> None:
    """Evaluate retrieval on a BEIR-format DATASET folder (corpus.jsonl,
    queries.jsonl, qrels/test.tsv): nDCG@10, Recall@100 and MRR@10 per mode,
    beside the published figures the dataset's README lists.

    With --stages, evaluate answering instead: per query, whether a relevant
    passage was retrieved, kept by the screen and cited; the screen's
    precision and recall; citation precision; "not found" answers on queries
    whose documents were removed; time and tokens per stage. The LLM server
    and answering settings are those of `rag ask`.

    The corpus is ingested through the normal pipeline into its own index;
    an existing index of the same corpus is reused without re-embedding."""
    from rag import evaluation

    data = evaluation.load_dataset(dataset)
    settings = settings_with(store=store)
    kind = scheme(settings.store)
    suffix = "" if kind == "local" else f"-{kind}"
    target = index or settings.indexes_root / f"eval-{data.name}{suffix}"
    chosen = evaluation.half(data.queries, half)
    if stages:
        extra = (limit or 0) if negatives is None else negatives
        asked = chosen[:limit] if limit else chosen
        others = chosen[len(asked) : len(asked) + extra]
        _evaluate_stages(data, target, settings, asked, others, as_json)
        return
    data.queries = {q: data.queries[q] for q in (chosen[:limit] if limit else chosen)}
    kb, report = _eval_index(data, evaluation.documents(data), target, settings)
    results = {}
    for mode in modes or MODES:
        with _bar(len(data.queries), mode, "query") as bar:
            run = evaluation.run_queries(kb, data.queries, mode, on_query=lambda: bar.update())
        results[mode] = evaluation.score(data.qrels, run)
    if as_json:
        payload = {
            "dataset": str(dataset), "index": str(target), "store": kb.store.uri,
            "queries": len(data.queries), "chunks_embedded": report.chunks_embedded,
            "modes": results, "published": dict(data.published),
        }  # fmt: skip
        click.echo(json.dumps(payload))
        return
    _print_table(data, f"index {target} ({kb.store.uri})", results)


def _print_table(data: Dataset, where: str, results: dict[str, dict[str, float]]) -> None:
    """Each mode's metrics beside the published figures, as a table."""
    from rich.console import Console
    from rich.table import Table

    from rag import evaluation

    table = Table(title=f"{data.name}: {len(data.queries)} queries, {where}")
    for column in ("system", *evaluation.METRICS):
        table.add_column(column, justify="left" if column == "system" else "right")
    for mode, metrics in results.items():
        table.add_row(f"kbqa {mode}", *(f"{metrics[m]:.4f}" for m in evaluation.METRICS))
    for system, ndcg in data.published:
        table.add_row(f"published: {system}", f"{ndcg:.4f}", "", "")
    Console(markup=False, highlight=False).print(table)


def _bar(total: int, desc: str, unit: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=None, file=sys.stderr)


def _eval_index(data: Any, documents: Any, target: Path, settings: Settings) -> Any:
    """Ingest (or update) the corpus into `target`; the knowledge base and report."""
    from ingest.pipeline import ingest_documents

    with _bar(len(data.corpus), "ingest", "doc") as bar:
        report = ingest_documents(
            documents, settings, index=target, total=len(data.corpus),
            prune=True, progress=lambda p: bar.update(round(p.fraction * bar.total) - bar.n),
        )  # fmt: skip
    return KnowledgeBase.open(target, settings=settings), report


def _evaluate_stages(
    data: Any, target: Path, settings: Settings, asked: list[str], others: list[str],
    as_json: bool,
) -> None:  # fmt: skip
    import shutil

    from rag import evaluation
    from rag.answering.profiles import discover
    from rag.llm import OpenAIChat

    settings = discover(settings)
    if others and scheme(recorded_store(target) or settings.store) != "local":
        raise click.UsageError(
            "--negatives copies the index folder, so it needs the local store: a copy of "
            "another store's folder would share its data (pass --negatives 0)"
        )
    kb, _ = _eval_index(data, evaluation.documents(data), target, settings)
    asks = [(q, False, data.queries[q], kb) for q in asked]
    if others:
        # A copy of the index less the negatives' judged documents: pruning
        # them re-embeds nothing.
        reduced = target.with_name(f"{target.name}-negatives-{len(others)}")
        if not reduced.exists():
            shutil.copytree(target, reduced, ignore=shutil.ignore_patterns(".lock"))
        without = evaluation.without_judged(data, others)
        negative_kb, _ = _eval_index(data, without, reduced, settings)
        asks += [(q, True, data.queries[q], negative_kb) for q in others]
    with _bar(len(asks), "answer", "query") as bar:
        rows = evaluation.run_stages(
            asks, data.qrels, OpenAIChat(settings), settings, on_query=lambda row: bar.update()
        )
    summary = evaluation.summarize(rows)
    if as_json:
        payload = {
            "dataset": str(data.folder), "index": str(target), "model": settings.llm_model,
            "settings": settings.model_dump(mode="json", include=STAGE_SETTINGS),
            "summary": summary, "queries": [asdict(row) for row in rows],
        }  # fmt: skip
        click.echo(json.dumps(payload))
        return
    _print_stages(data.name, settings, rows, summary)


STAGE_SETTINGS = {
    "llm_model", "llm_context_tokens", "screen", "screen_k", "keep_max", "screen_weight",
    "keep_min", "answer_style", "search_mode",
}  # fmt: skip


def _print_stages(name: str, settings: Settings, rows: list[Any], summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(markup=False, highlight=False)
    shown = ", ".join(
        f"{key} {value}"
        for key, value in sorted(settings.model_dump(include=STAGE_SETTINGS).items())
    )
    table = Table(title=f"{name}: stage by stage — {shown}")
    # Relevant passages retrieved, and of those kept and cited (relevant/all);
    # per-stage times are in the summary.
    for column in ("query", "set", "retrieved", "kept", "cited", "answer", "seconds", "tokens"):
        table.add_column(column, justify="left" if column in ("query", "set") else "right")
    for row in rows:
        table.add_row(
            row.qid, "negative" if row.negative else "judged", str(row.retrieved),
            f"{row.kept}/{row.kept_total}", f"{row.cited}/{row.cited_total}",
            "error" if row.error else ("yes" if row.answered else "not found"),
            f"{sum(row.seconds.values()):.2f}", str(sum(row.tokens.values())),
        )  # fmt: skip
    console.print(table)
    totals = Table(title="summary (rates over queries, precision/recall over passages)")
    totals.add_column("measure")
    totals.add_column("value", justify="right")
    for key, value in summary.items():
        text = (
            "n/a" if value is None else (str(value) if isinstance(value, int) else f"{value:.3f}")
        )
        totals.add_row(key, text)
    console.print(totals)
