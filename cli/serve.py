"""`rag serve` (the HTTP API, api/) and `rag keys` (its bearer keys,
kept in the app database as hashes)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from cli.users import _by, _db
from rag.settings import Settings


@click.command()
@click.option(
    "--index-root", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Folder of the knowledge bases  [default: $RAG_INDEXES_ROOT or indexes]",
)  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--url", default=None, help="LLM server base URL  [default: $RAG_LLM_URL]")
@click.option(
    "--model", default=None,
    help="Served model name  [default: $RAG_LLM_MODEL, else the one the server serves]",
)  # fmt: skip
@click.option(
    "--insecure-no-auth", is_flag=True,
    help="With RAG_AUTH=none, start all the same on another address than loopback or over "
    "an app database that holds accounts (only behind an authenticating proxy or firewall).",
)  # fmt: skip
def serve(
    index_root: Path | None, host: str, port: int, url: str | None, model: str | None,
    insecure_no_auth: bool,
) -> None:  # fmt: skip
    """Serve the knowledge bases over HTTP: OpenAI-compatible chat completions
    with citations (`model` = knowledge base), search, uploads, and the MCP
    tools at /mcp (streamable HTTP); OpenAPI docs at /docs.

    Requests carry `Authorization: Bearer KEY` (`rag keys create NAME`); the
    key's account and grants apply, as in the app: set RAG_AUTH=local (or
    oidc). With RAG_AUTH=none a request without a key is the local admin, so
    the server then listens on loopback only, like the app, and refuses to
    start over an app database that holds accounts. The Host header must
    name the address served (or one of RAG_API_ALLOWED_HOSTS); requests from
    other web pages may change nothing. The LLM model and context come from
    the server's /v1/models unless set, as for `rag ask`."""
    import uvicorn

    from api import create_app, served_hosts
    from rag.answering.profiles import discover
    from rag.errors import RagError
    from team.exposure import accounts_refusal, login_mode, refusal

    overrides: dict[str, Any] = {"indexes_root": index_root, "llm_url": url, "llm_model": model}
    if insecure_no_auth:
        overrides["insecure_no_auth"] = True
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    try:  # before anything else is opened
        why = refusal(settings, host) or accounts_refusal(settings, "the API")
    except RagError as exc:
        raise click.ClickException(str(exc)) from None
    if why:
        click.echo(f"Refusing to start: {why}", err=True)
        sys.exit(2)
    settings = discover(settings)
    where = f"http://{host}:{port}"
    click.echo(
        f"Serving {settings.indexes_root} on {where}; login: {login_mode(settings)}; "
        f"answers to Host {served_hosts(settings, host).shown()} (RAG_API_ALLOWED_HOSTS); "
        "docs: /docs, MCP: /mcp",
        err=True,
    )
    uvicorn.run(create_app(settings, host=host), host=host, port=port, log_level="info")


@click.group()
def keys() -> None:
    """API keys for `rag serve`: each belongs to an account (`rag users`) and
    carries its role and grants. Only a hash of a key is stored."""


@keys.command()
@click.argument("name")
@click.option("--label", default="", help="What the key is for (shown by `rag keys list`).")
def create(name: str, label: str) -> None:
    """A new key for the account NAME, printed once: keep it."""
    row, key = _db().keys.create(name, label, by=_by())
    click.echo(f"Created key {row.key_id} for {name}. It is shown only now:", err=True)
    click.echo(key)


@keys.command()
@click.argument("key_id")
def revoke(key_id: str) -> None:
    """Revoke the key KEY_ID (from `rag keys list`); it stops working at once."""
    row = _db().keys.revoke(key_id, by=_by())
    click.echo(f"Revoked key {row.key_id} of {row.user}.")


@keys.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_keys(as_json: bool) -> None:
    """The keys: id, account, label, created, revoked (never the key)."""
    rows = _db().keys.list()
    if as_json:
        click.echo(json.dumps([row.__dict__ for row in rows], ensure_ascii=False))
        return
    if not rows:
        click.echo("No API keys yet: create one with `rag keys create NAME`.")
    for row in rows:
        created = datetime.fromtimestamp(row.created, UTC).strftime("%Y-%m-%d")
        state = " (revoked)" if row.revoked is not None else ""
        click.echo(f"{row.key_id:<14} {row.user:<24} {created}  {row.label}{state}")
