"""`rag backup`, `rag restore` and `rag copy`: one archive of a knowledge
base (or the app database), brought back anywhere, and a knowledge base
moved between stores without embedding it again (team/backup.py,
rag/store/copying.py do the work)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cli.evaluate import json_option, settings_with
from rag.errors import CopyDiffers, RagError

_index = click.option(
    "--index", type=click.Path(file_okay=False, path_type=Path),
    help="Index folder  [default: $RAG_INDEX or indexes/default]",
)  # fmt: skip
_force = click.option("--force", is_flag=True, help="Replace what is there.")


@click.command()
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@_index
@click.option(
    "--app-db", is_flag=True,
    help="Back up the app database ($RAG_APP_DB; SQLite) instead of a knowledge base.",
)  # fmt: skip
@_force
@json_option
def backup(out: Path, index: Path | None, app_db: bool, force: bool, as_json: bool) -> None:
    """Write one archive OUT (.tar.zst or .tar.gz) of a knowledge base as
    published now: chunks, vectors, BM25, manifest, tags and sync record.
    It is consistent while an ingest runs. With --app-db, OUT is a copy of
    the app's SQLite database (users, grants, conversations, audit, keys)."""
    from team import backup as backups

    settings = settings_with(index=index)
    if app_db:
        if index is not None:
            raise click.UsageError("Give --index or --app-db, not both.")
        written = backups.backup_app_db(settings, out, force=force)
        click.echo(json.dumps({"app_db": str(written)}) if as_json else f"Wrote {written}.")
        return
    header = backups.backup_index(settings.index, out, settings, force=force)
    if as_json:
        figures = {"archive": str(out), "generation": header.generation,
                   "documents": header.documents, "chunks": header.chunks}  # fmt: skip
        click.echo(json.dumps(figures))
        return
    click.echo(
        f"Wrote {out}: generation {header.generation} of {settings.index} "
        f"({header.documents} documents, {header.chunks} passages, {header.params.model_id}, "
        f"from the {header.source_store} store)."
    )


@click.command()
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_index
@click.option(
    "--to-store", metavar="URI",
    help="Keep it in this store (local, milvus-lite:///path/file.db, milvus://host:port) "
    "[default: the one the folder records, else $RAG_STORE or local]",
)  # fmt: skip
@_force
def restore(archive: Path, index: Path | None, to_store: str | None, force: bool) -> None:
    """Bring the knowledge base in ARCHIVE (made by `rag backup`) back into
    the folder --index, on this machine or another. A base already there is
    replaced only with --force. The archive is checked first: its header,
    every member's name and type, and every file's checksum."""
    from team import backup as backups

    settings = settings_with(index=index, store=to_store)
    done = backups.restore(archive, settings.index, settings, force=force)
    header = done.header
    click.echo(
        f"Restored {settings.index} ({done.store}) as generation {done.generation}: "
        f"{header.documents} documents, {header.chunks} passages, {header.params.model_id}."
    )


@click.command()
@_index
@click.option(
    "--to-store", metavar="URI", required=True,
    help="The store to copy into: local, milvus-lite:///path/file.db, milvus://host:port",
)  # fmt: skip
@click.option(
    "--to", "to_index", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="The index folder of the copy (it records the store; open the copy with --index TO).",
)  # fmt: skip
@click.option(
    "--probe", "probes", multiple=True, metavar="QUERY",
    help="A search to compare on both (repeatable)  [default: drawn from the base]",
)  # fmt: skip
@click.option("--probes", "count", type=click.IntRange(1, 500), default=20, show_default=True,
              help="How many searches to draw from the base when no --probe is given.")  # fmt: skip
@_force
def copy(
    index: Path | None, to_store: str, to_index: Path, probes: tuple[str, ...], count: int,
    force: bool,
) -> None:  # fmt: skip
    """Copy a knowledge base into another store (local <-> Milvus) without
    embedding it again, then check the copy: the same searches on both must
    give the same top 10, or the command fails. The original is untouched."""
    from rag.store import open_store
    from rag.store.copying import copy as copy_base
    from rag.store.copying import open_target, probe_queries, unpinned, verify

    settings = settings_with(index=index)
    source_root = settings.index
    if to_index.resolve() == source_root.resolve():
        raise click.UsageError("--to must be another folder than --index.")
    source = open_store(source_root, settings)
    snap = source.snapshot()
    target = open_target(to_index, to_store, unpinned(settings))
    try:
        if target.exists() and not force:
            raise RagError(
                f"{to_index} ({target.uri}) holds a knowledge base already; "
                "pass --force to replace it."
            )
        done = copy_base(snap, target, replace=target.exists())
        queries = list(probes) or probe_queries(snap, count)
    finally:
        snap.close()
        for store in (target, source):
            getattr(store, "close", lambda: None)()
    click.echo(
        f"Copied {done.documents} documents, {done.chunks} passages from {source_root} "
        f"({source.uri}) to {to_index} ({target.uri}) in {done.seconds:.1f} s; "
        "nothing embedded again."
    )
    results = verify(source_root, to_index, settings, queries)
    differing = [p for p in results if p.difference]
    for probe in differing:
        click.echo(f"DIFFERS: {probe.query!r}: {probe.difference}", err=True)
    if differing:
        raise CopyDiffers(
            f"The copy differs from the original in {len(differing)} of {len(results)} "
            f"probe searches. Do not use {to_index}; it is left for inspection."
        )
    click.echo(f"Checked: {len(results)} probe searches give the same top 10 on both.")
