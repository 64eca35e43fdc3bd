"""`rag mcp`: the knowledge bases as MCP tools over stdio, for an assistant
(Claude Desktop, an IDE, an agent) that starts it as a subprocess. The
tools live in api/mcp_tools.py; `rag serve` offers the same at /mcp."""

from __future__ import annotations

from pathlib import Path

import click

from rag.settings import Settings


@click.command()
@click.option(
    "--index-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder holding the knowledge bases  [default: $RAG_INDEXES_ROOT or indexes]",
)
@click.option(
    "--user", default=None, metavar="NAME",
    help="The account whose grants apply (needed when $RAG_AUTH is set; see `rag users`). "
    "Without accounts (RAG_AUTH=none) the caller is the local admin.",
)  # fmt: skip
def mcp(index_root: Path | None, user: str | None) -> None:
    """Serve list_knowledge_bases, search_knowledge_base and
    ask_knowledge_base as MCP tools on stdin/stdout.

    Answers use the LLM server of `rag ask` ($RAG_LLM_URL); standard output
    carries only the protocol."""
    # Imported here: the other commands need no MCP SDK.
    from api.mcp_tools import mcp_server, stdio_access

    settings = Settings() if index_root is None else Settings(indexes_root=index_root)
    mcp_server(settings, stdio_access(settings, user)).run("stdio")
