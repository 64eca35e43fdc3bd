"""`rag feedback`: the answers users voted on, from the app database
(RAG_APP_DB), as a question set `rag eval --stages` runs (team/feedback_export.py)."""

from __future__ import annotations

from pathlib import Path

import click

from rag.settings import Settings


@click.group()
def feedback() -> None:
    """Thumbs up and down on answers (the app's buttons, POST /v1/feedback)."""


@feedback.command(name="export")
@click.option(
    "--index", type=click.Path(file_okay=False, path_type=Path), required=True,
    help="The knowledge base folder whose answers to export (its name is the knowledge base).",
)  # fmt: skip
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--votes", type=click.Choice(["down", "all"]), default="down", show_default=True,
    help="Down-voted answers only (the failures), or up-voted ones too (their cited passages "
    "judged relevant).",
)  # fmt: skip
def export(index: Path, out: Path, votes: str) -> None:
    """Write the voted answers of the knowledge base at --index as a BEIR
    question set in the new folder OUT (corpus.jsonl: the passages retrieval
    found; queries.jsonl: the questions, with vote and comment; qrels/test.tsv),
    which `rag eval --stages OUT` answers again, stage by stage."""
    from team.appdb import open_app_db
    from team.feedback_export import export as write

    settings = Settings()
    if "indexes_root" not in settings.model_fields_set:  # the app database beside the base
        settings = Settings(indexes_root=index.resolve().parent)
    db = open_app_db(settings)
    entries = db.feedback.voted(index.resolve().name, vote="down" if votes == "down" else None)
    report = write(entries, out)
    skipped = f"; {len(report.skipped)} skipped (nothing retrieved)" if report.skipped else ""
    click.echo(
        f"Wrote {report.queries} questions and {report.passages} passages to {out}{skipped}. "
        f"Run: rag eval --stages {out}"
    )
