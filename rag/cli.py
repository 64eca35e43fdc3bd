"""`rag`: search, inspect, ask and evaluate a knowledge base from the shell."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from rag.errors import RagError
from rag.knowledge_base import MODES, KnowledgeBase
from rag.settings import Settings

index_option = click.option(
    "--index", type=click.Path(file_okay=False, path_type=Path),
    help="Index folder  [default: $RAG_INDEX or indexes/default]",
)  # fmt: skip
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


class _Group(click.Group):
    """Turns the errors a user can cause into one line and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RagError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Search and question a knowledge base built with `ingest`."""


def settings_with(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


@main.command()
@click.argument("query")
@index_option
@click.option("-k", "k", type=click.IntRange(1, 1000), default=8, show_default=True)
@click.option("--mode", type=click.Choice(MODES), default="hybrid", show_default=True)
@json_option
def search(query: str, index: Path | None, k: int, mode: str, as_json: bool) -> None:
    """Print the passages that best match QUERY."""
    settings = settings_with(index=index)
    kb = KnowledgeBase.open(settings.index)
    hits = kb.search(query, k=k, mode=mode)
    if as_json:
        click.echo(json.dumps([h.to_dict() for h in hits], ensure_ascii=False))
        return
    if not hits:
        click.echo("No passages matched.")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=True, caption="full paths: --json")
    for column in ("#", "score", "source", "page", "passage"):
        table.add_column(column, overflow="fold")
    for rank, hit in enumerate(hits, start=1):
        text = " ".join(hit.text.split())
        table.add_row(
            str(rank), f"{hit.score:.4f}", short_path(hit.source), "" if hit.page is None else str(hit.page),
            text[:300] + ("…" if len(text) > 300 else ""),
        )  # fmt: skip
    Console(markup=False, highlight=False).print(table)


def short_path(path: str) -> str:
    """Relative to the working directory when inside it, else the last two
    parts: tables are for reading, --json has the full path."""
    p = Path(path)
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(Path("…", *p.parts[-2:])) if len(p.parts) > 3 else path


@main.command()
@index_option
@json_option
def stats(index: Path | None, as_json: bool) -> None:
    """Documents, chunks, vectors, model and disk size of an index."""
    settings = settings_with(index=index)
    info = KnowledgeBase.open(settings.index).stats()
    if as_json:
        click.echo(json.dumps(info))
        return
    info["disk"] = f"{info.pop('disk_bytes') / 1e6:.1f} MB"
    width = max(len(key) for key in info)
    for key, value in info.items():
        click.echo(f"{key:<{width}}  {value}")
