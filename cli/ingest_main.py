"""`ingest`: add, update, sync and delete documents in a knowledge base."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from types import FrameType

import click
from tqdm import tqdm

from ingest.discovery import UNSUPPORTED
from ingest.pipeline import Engine, IngestOptions, IngestReport, Progress, ingest_paths
from ingest.watch import Batch, watch_folders
from rag.errors import RagError, RebuildRefused
from rag.settings import Settings
from rag.synced import record_sync

EXIT_OK, EXIT_FAILED_FILES, EXIT_USAGE, EXIT_FATAL = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # --watch stopped by a second signal


@click.command(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit codes: 0 all good; 1 some files failed (the rest were ingested); "
    "2 usage error; 3 nothing done (index busy, incompatible, in another store or model "
    "missing, unknown store, rebuild refused); --watch: 0 when stopped, 130 when a second "
    "Ctrl-C abandoned the batch being written.",
)
@click.argument("paths", nargs=-1, type=click.Path(path_type=str))
@click.option(
    "--index",
    "index",
    type=click.Path(file_okay=False, path_type=Path),
    help="Index folder  [default: $RAG_INDEX or indexes/default]",
)
@click.option(
    "--sync",
    is_flag=True,
    help="Also remove documents whose files are gone from the given folders.",
)
@click.option(
    "--delete",
    "delete",
    multiple=True,
    metavar="PATH",
    help="Remove this file (or every file under this folder) from the index. Repeatable.",
)
@click.option(
    "--rebuild",
    is_flag=True,
    help="Build the index afresh from PATHS (e.g. after changing the model), each "
    "document with the options it was ingested with; the old one serves searches until "
    "the new one is complete, and stays if the rebuild stops. Refused if it would be empty, "
    "or would drop documents PATHS do not yield again (see --allow-drop).",
)
@click.option(
    "--allow-drop",
    is_flag=True,
    help="With --rebuild: drop the documents PATHS do not yield again (files gone, "
    "unreadable or elsewhere) instead of refusing.",
)
@click.option(
    "--store",
    "store",
    metavar="URI",
    default=None,
    help="Where a new knowledge base keeps its chunks and vectors: local (files in the "
    "index folder), milvus-lite:///path/file.db (Milvus Lite, one process at a time) or "
    "milvus+tls://host:19530 (a Milvus cluster over TLS; token in $RAG_MILVUS_TOKEN; "
    "milvus:// without TLS). An existing one "
    "stays in its own store; naming another is an error  [default: $RAG_STORE or local]",
)
@click.option(
    "--watch",
    is_flag=True,
    help="Keep watching the folders PATHS and apply their changes (added, changed, "
    "deleted, renamed files) as they happen, a line per batch, until Ctrl-C or SIGTERM. "
    "Starts with a --sync pass, catching up on what changed while nobody watched.",
)
@click.option(
    "--settle",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="With --watch: ingest a changed file once its size and time have held still "
    "this long (a file still being written waits).",
)
@click.option(
    "--follow-links",
    is_flag=True,
    help="Also follow symbolic links that lead out of the folders PATHS (by default such a "
    "link is skipped and reported: whoever can drop a file in a folder could link it to "
    "any file this user can read). With --sync, without it, documents such links brought "
    "in before are removed, each reported.",
)
@click.option("--ocr", is_flag=True, help="OCR PDF pages without a text layer (needs tesseract).")
@click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="TAG",
    help="Tag the documents under PATHS (unchanged ones too) for `rag search --tag`; "
    "repeatable. Replaces their earlier tags; without --tag they keep theirs.",
)
@click.option(
    "--wait",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Wait this long for another ingest on the same index to finish.",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="auto",
    default=None,
    metavar="[ADDRESS]",
    help="Parse and embed on Ray: tasks parse, actors embed (one per GPU, or one per node on "
    "CPUs); this process writes the index. No ADDRESS or auto: the cluster RAY_ADDRESS names, "
    "else the local Ray instance if it answers within seconds, else a private one started for "
    "the run; ray://HOST:10001 or HOST:6379: a cluster whose workers see the same paths. An "
    "address that does not answer is an error. Put it after the paths.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def main(
    paths: tuple[str, ...],
    index: Path | None,
    sync: bool,
    delete: tuple[str, ...],
    rebuild: bool,
    allow_drop: bool,
    store: str | None,
    watch: bool,
    settle: float,
    follow_links: bool,
    ocr: bool,
    tags: tuple[str, ...],
    wait: float | None,
    ray_address: str | None,
    as_json: bool,
) -> None:
    """Ingest PDF, Markdown, text, HTML, DOCX, XLSX, CSV/TSV, PPTX, EPUB and
    e-mail (.eml, .msg) files (or folders of them) into a knowledge base.
    Unchanged files are skipped by content hash; broken files are reported by
    name and the rest of the batch is ingested."""
    options = IngestOptions(
        sync=sync, delete=delete, rebuild=rebuild, allow_drop=allow_drop, ocr=ocr,
        tags=tags or None, follow_links=follow_links,
    )  # fmt: skip
    _check_usage(list(paths), options, watch, ray_address)
    settings = _settings(index, wait, store)
    if watch:
        _watch(list(paths), settings, settle, ocr, as_json, follow_links)
    engine: AbstractContextManager[Engine | None] = nullcontext()
    if ray_address is not None:
        from ingest.distributed import ray_engine

        engine = ray_engine(ray_address, settings)
    report = _ingest(list(paths), settings, options, engine)
    if sync:
        record_sync(settings.index, time.time(), [str(Path(p).absolute()) for p in paths])
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        _print_summary(report)
    sys.exit(EXIT_FAILED_FILES if report.failed else EXIT_OK)


def _check_usage(
    paths: list[str], options: IngestOptions, watch: bool, ray_address: str | None
) -> None:
    """Refuse option combinations that make no sense, before any work."""
    if ray_address is not None:  # first: a folder after a bare --ray lands here
        from ingest.distributed import check_address

        try:
            check_address(ray_address)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    o = options
    if not paths and not o.delete:
        raise click.UsageError("give at least one PATH to ingest, or --delete PATH")
    if o.sync and not paths:
        raise click.UsageError("--sync needs the folders to sync against")
    if o.allow_drop and not o.rebuild:
        raise click.UsageError("--allow-drop only applies to --rebuild")
    if o.rebuild and o.delete:
        raise click.UsageError("--rebuild takes no --delete: rebuild from the paths to keep")
    if watch and (o.delete or o.rebuild or not paths):
        raise click.UsageError("--watch takes the folders to watch, and no --delete or --rebuild")


def _settings(index: Path | None, wait: float | None, store: str | None) -> Settings:
    """The settings, with the options given on the command line."""
    overrides: dict[str, object] = {}
    if index is not None:
        overrides["index"] = index
    if wait is not None:
        overrides["lock_timeout"] = wait
    if store is not None:
        overrides["store"] = store
    return Settings(**overrides)  # type: ignore[arg-type]


def _ingest(
    paths: list[str],
    settings: Settings,
    options: IngestOptions,
    engine: AbstractContextManager[Engine | None],
) -> IngestReport:
    """One ingest run with a progress bar on stderr; a `RagError` exits
    with its message."""
    with tqdm(total=0, unit="file", disable=None, file=sys.stderr, dynamic_ncols=True) as bar:
        try:
            with engine as on:
                return ingest_paths(paths, settings, options, progress=_bar_progress(bar),
                                    engine=on)  # fmt: skip
        except RagError as exc:
            bar.close()
            hint = ""
            if isinstance(exc, RebuildRefused) and exc.dropped:
                hint = " To rebuild without them, add --allow-drop."
            click.echo(f"error: {exc}{hint}", err=True)
            sys.exit(EXIT_FATAL)


def _bar_progress(bar: tqdm) -> Callable[[Progress], None]:
    """Progress shown on `bar` in two phases: files hashed, then the work to
    ingest in percent, which moves with the chunks embedded (files read say
    little while one long PDF embeds)."""
    shown = [""]  # the bar's phase

    def progress(p: Progress) -> None:
        phase = "scan" if p.stage == "scan" else "ingest"
        if shown[0] != phase:
            shown[0] = phase
            bar.set_description(phase, refresh=False)
            bar.unit = "file" if phase == "scan" else "%"
            bar.reset(total=p.total if phase == "scan" else 100)
        bar.n = p.done if phase == "scan" else round(100 * p.fraction, 1)
        bar.set_postfix(chunks=p.chunks, refresh=False)
        bar.refresh()

    return progress


def _print_summary(report: IngestReport) -> None:
    where = report.index + (f" (generation {report.generation})" if report.generation else "")
    lines = [
        f"Index {where}",
        f"  added      {report.added}",
        f"  updated    {report.updated}",
        f"  unchanged  {report.unchanged}",
        f"  deleted    {report.deleted}",
        *(
            [f"  renamed    {report.renamed} (moved: counted above, not embedded again)"]
            if report.renamed
            else []
        ),
        f"  failed     {len(report.failed)}",
    ]
    lines += [f"    {f.path}: {f.error}" for f in report.failed]
    # Links are named with their reason, every one; unsupported types by name, a few.
    links = [f for f in report.skipped if not f.error.startswith(UNSUPPORTED)]
    unsupported = [f for f in report.skipped if f.error.startswith(UNSUPPORTED)]
    if links:
        lines.append(f"  skipped    {len(links)} (symbolic links out of the folders)")
        lines += [f"    {f.path}: {f.error}" for f in links]
    if unsupported:
        lines.append(f"  skipped    {len(unsupported)} (unsupported types)")
        lines += [f"    {f.path}" for f in unsupported[:10]]
        if len(unsupported) > 10:
            lines.append(f"    ... and {len(unsupported) - 10} more")
    copied = (
        f" (+{report.chunks_copied} copied from identical files)" if report.chunks_copied else ""
    )
    lines.append(
        f"  {report.chunks_embedded} chunks embedded{copied}, {report.pages} PDF pages, "
        f"{report.seconds:.1f} s"
    )
    if report.phases:
        spent = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in report.phases.items())
        lines.append(f"  time: {spent}")
    click.echo("\n".join(lines))


def _watch(
    folders: list[str],
    settings: Settings,
    settle: float,
    ocr: bool,
    as_json: bool,
    follow_links: bool,
) -> None:
    """`--watch` until a signal: the first Ctrl-C (or SIGTERM) stops after
    the batch being written, a second abandons it. The index is whole either way."""
    not_folders = [f for f in folders if not Path(f).is_dir()]
    if not_folders:
        raise click.UsageError(f"--watch watches folders; not a folder: {', '.join(not_folders)}")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        click.echo("stopping after the current batch (again to abandon it)", err=True)

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, on_signal)

    def show(batch: Batch) -> None:
        click.echo(json.dumps(batch.to_dict()) if as_json else batch.line())

    click.echo(f"Watching {', '.join(folders)} into {settings.index} (Ctrl-C to stop)", err=True)
    try:
        watch_folders(
            folders, settings, stop, show, settle=settle, ocr=ocr, follow_links=follow_links
        )
    except RagError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FATAL)
    except KeyboardInterrupt:
        click.echo("stopped; the batch being written was abandoned, the index is whole", err=True)
        sys.exit(EXIT_INTERRUPTED)
    click.echo("stopped", err=True)
    sys.exit(EXIT_OK)


if __name__ == "__main__":  # python -m cli.ingest_main, as the entry point
    main()
