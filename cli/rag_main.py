"""`rag`: search, inspect, ask and evaluate a knowledge base from the shell.

`search`, `stats` and `ask` go through the core service (core/service.py),
as the app, the HTTP API and MCP do: the name rule, the access policy (the
local operator), the length check, MAX_K and the answering path are its.
They only translate argv into its calls and its errors into one line."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cli.backup import backup, copy, restore
from cli.evaluate import evaluate, json_option, settings_with
from cli.feedback import feedback
from cli.mcp_stdio import mcp
from cli.serve import keys, serve
from cli.users import users
from core.service import MAX_K, KnowledgeService
from rag.errors import IndexMissing, RagError
from rag.filters import Filters
from rag.knowledge_base import MODES
from team.access import KB_NAME_RULE, local_access, valid_kb_name

if TYPE_CHECKING:
    from rag.llm import ChatModel
    from rag.settings import Settings
    from rag.types import Answer

index_option = click.option(
    "--index", type=click.Path(file_okay=False, path_type=Path),
    help="Index folder  [default: $RAG_INDEX or indexes/default]",
)  # fmt: skip


def _types() -> list[str]:
    """Every type the loaders take, as documents are stored (from the
    loaders' own table, so a new loader shows here)."""
    from ingest.loaders import KINDS

    return sorted(set(KINDS.values()))


def filter_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--path-prefix, --type, --tag, --after, --before: search only the
    documents they match (the store applies them before the top k)."""
    options = [
        click.option("--path-prefix", metavar="PATH",
                     help="Only documents whose path starts with PATH (relative to here)."),
        click.option("--type", "types", multiple=True, metavar="TYPE",
                     help=f"Only documents of this type ({', '.join(_types())}). Repeatable."),
        click.option("--tag", "tags", multiple=True, metavar="TAG",
                     help="Only documents carrying this tag (ingest --tag). Repeatable: any."),
        click.option("--after", metavar="DATE",
                     help="Only files modified at or after DATE (ISO, e.g. 2025-01-31; UTC)."),
        click.option("--before", metavar="DATE",
                     help="Only files modified before DATE (ISO; UTC)."),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


def filters_from(
    path_prefix: str | None, types: tuple[str, ...], tags: tuple[str, ...],
    after: str | None, before: str | None,
) -> Filters:  # fmt: skip
    """The filters the options ask for; a relative path prefix is made absolute
    (documents are stored by absolute path), keeping a trailing separator."""
    if path_prefix:
        trailing = os.sep if path_prefix.endswith(os.sep) else ""
        path_prefix = os.path.abspath(path_prefix) + trailing
    return Filters.parse(path_prefix, types, tags, after, before)


def kb_settings(index: Path | None, **overrides: Any) -> Settings:
    """The settings of a command on the index folder --index (default
    $RAG_INDEX): the folder holding it is the service's indexes root, and
    its name the knowledge base's, under the one name rule."""
    folder = Path(os.path.abspath(settings_with(index=index).index))
    if not valid_kb_name(folder.name):
        raise click.BadParameter(
            f"{folder}: the folder name {folder.name!r} cannot name a knowledge base. "
            + KB_NAME_RULE,
            param_hint="'--index'" if index is not None else "$RAG_INDEX",
        )
    return settings_with(index=folder, indexes_root=folder.parent.resolve(), **overrides)


@contextmanager
def knowledge_service(
    settings: Settings, chat: ChatModel | None = None
) -> Iterator[KnowledgeService]:
    """The core service for one command (closed after it); a missing base
    gets the service's message and where the command looked."""
    service = KnowledgeService(settings, chat=chat)
    try:
        yield service
    except IndexMissing as exc:
        raise IndexMissing(f"{exc} (looked in {settings.index})") from None
    finally:
        service.close()


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
    """Search and question a knowledge base built with `ingest`; manage the
    app's users and API keys; serve the knowledge bases over HTTP (`rag
    serve`) and as MCP tools (`rag mcp`)."""


main.add_command(users)
main.add_command(keys)
main.add_command(serve)
main.add_command(mcp)
main.add_command(evaluate)
main.add_command(backup)
main.add_command(restore)
main.add_command(copy)
main.add_command(feedback)


@main.command()
@click.argument("query")
@index_option
@click.option(
    "-k", "k", type=int, default=8, show_default=True,
    help=f"Passages to print, 1 to {MAX_K} (the limit of the API and MCP too).",
)  # fmt: skip
@click.option("--mode", type=click.Choice(MODES), default="hybrid", show_default=True)
@filter_options
@json_option
def search(query: str, index: Path | None, k: int, mode: str, as_json: bool, **scope: Any) -> None:
    """Print the passages that best match QUERY (of the documents the
    filters match, when given)."""
    filters = filters_from(**scope)
    settings = kb_settings(index)
    with knowledge_service(settings) as service:
        hits = service.search(local_access(), settings.index.name, query, k, mode, filters)
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
        page = "" if hit.page is None else str(hit.page)
        passage = text[:300] + ("…" if len(text) > 300 else "")
        source = short_path(hit.source) + (f", {hit.locator}" if hit.locator else "")
        table.add_row(str(rank), f"{hit.score:.4f}", source, page, passage)
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
    """Store, documents, chunks, vectors, model and disk size of an index."""
    settings = kb_settings(index)
    with knowledge_service(settings) as service:
        figures = service.stats(local_access(), settings.index.name)
    info = figures.to_dict()
    if as_json:
        click.echo(json.dumps(info))
        return
    del info["disk_bytes"]
    disk = figures.disk_bytes
    info["disk"] = "unknown" if disk is None else f"{disk / 1e6:.1f} MB"
    updated = datetime.fromtimestamp(figures.updated_at, tz=UTC)
    info["updated_at"] = updated.strftime("%Y-%m-%d %H:%M:%S UTC")  # --json keeps the epoch
    width = max(len(key) for key in info)
    for key, value in info.items():
        click.echo(f"{key:<{width}}  {value}")


@main.command()
@click.argument("question")
@index_option
@click.option(
    "-k",
    "k",
    type=click.IntRange(1, 50),
    default=None,
    help="Passages retrieved for the screen  [default: $RAG_SCREEN_K or 12]",
)
@click.option(
    "--keep",
    type=click.IntRange(1, 50),
    default=None,
    help="Most passages kept for the deep read  [default: $RAG_KEEP_MAX or 6]",
)
@click.option("--screen/--no-screen", default=None, help="Run the fast screen (default on).")
@click.option("--url", default=None, help="LLM server base URL  [default: $RAG_LLM_URL]")
@click.option(
    "--model",
    default=None,
    help="Served model name  [default: $RAG_LLM_MODEL, else the one the server serves]",
)
@click.option(
    "--reasoning", "show_reasoning", is_flag=True, help="Also print the model's reasoning."
)
@filter_options
@json_option
def ask(
    question: str,
    index: Path | None,
    k: int | None,
    keep: int | None,
    screen: bool | None,
    url: str | None,
    model: str | None,
    show_reasoning: bool,
    as_json: bool,
    **scope: Any,
) -> None:
    """Answer QUESTION from the knowledge base, citing passages as [n]
    (from the documents the filters match, when given).

    Stage 1 screens the retrieved passages concurrently (reasoning effort low);
    stage 2 answers from the kept ones (reasoning effort high).

    The model and its context length come from the server's /v1/models unless
    set ($RAG_LLM_MODEL, --model, $RAG_LLM_CONTEXT_TOKENS); the small CPU
    model gets its profile (rag/answering/profiles.py), as in `make run`."""
    from rag.answering.profiles import discover
    from rag.llm import OpenAIChat

    filters = filters_from(**scope)  # a bad date fails before the server is asked
    settings = discover(
        kb_settings(index, screen_k=k, keep_max=keep, screen=screen, llm_url=url, llm_model=model)
    )
    with knowledge_service(settings, OpenAIChat(settings)) as service:
        events = service.stream(local_access(), settings.index.name, question, filters=filters)
        result, streamed = _answer(events, streaming=not as_json)
    if as_json:
        click.echo(json.dumps(result.to_dict(), ensure_ascii=False))
        return
    _print_answer(result, streamed, show_reasoning)


def _answer(events: Iterator[Any], streaming: bool) -> tuple[Answer, str]:
    """The answer of the service's `events`, and the text streamed to stdout
    on the way (with its stages on stderr) when `streaming`."""
    from rag.answering.events import Finished, Retrieved, Screened
    from rag.answering.screening import summary
    from rag.llm import Delta

    streamed = ""
    for event in events:
        if isinstance(event, Retrieved) and streaming:
            click.echo(f"[retrieved {len(event.hits)} passages in {event.seconds:.2f} s]", err=True)
        elif isinstance(event, Screened) and streaming:
            said = summary(event.verdicts, event.kept)
            click.echo(f"[{said} in {event.seconds:.2f} s]", err=True)
        elif isinstance(event, Delta) and streaming and event.channel == "content":
            click.echo(event.text, nl=False)
            streamed += event.text
        elif isinstance(event, Finished):
            result = event.answer
    return result, streamed


def _print_answer(result: Answer, streamed: str, show_reasoning: bool) -> None:
    """After the streamed text: the answer as resolved (when it differs),
    its notes, citations, reasoning when asked, and time and tokens."""
    if not result.found:
        click.echo(result.text)
    elif streamed.strip() != result.text.strip():
        # Citations are numbered in order of first use (and dead ones
        # dropped) once the answer is complete: the text they refer to.
        click.echo("\n\nWith its citations resolved:\n" + result.text, nl=False)
    click.echo("\n")
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    for citation in result.citations:
        hit = citation.hit
        page = f", page {hit.page}" if hit.page else ""
        where = f", {hit.locator}" if hit.locator else ""
        click.echo(f"[{citation.n}] {short_path(hit.source)}{page}{where}")
    if show_reasoning and result.reasoning:
        click.echo("\nReasoning:\n" + result.reasoning)
    timing = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in result.timings.items())
    tokens = sum(u.prompt_tokens + u.completion_tokens for u in result.usage.values())
    click.echo(f"\n({timing}; {tokens} tokens)", err=True)


if __name__ == "__main__":  # python -m cli.rag_main, as the entry point
    main()
