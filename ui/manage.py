"""The Manage tab: uploads, deletions, rebuilds, and the base's numbers.
Each action goes through team/library.py with the session's `Access`,
which refuses it there for a user who may not change the base.

What an action reports is kept for the next run as a "flash" message: after
an ingest or a delete the page runs again, so every part of it (the Ask tab,
the picker, the uploader, the delete list) shows the new state."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import streamlit as st
from streamlit.runtime.uploaded_file_manager import UploadedFile

from ingest.pipeline import IngestReport, Progress, ProgressFn
from rag.errors import RagError, RebuildRefused
from rag.knowledge_base import KnowledgeBase
from rag.settings import Settings
from rag.store import StoreStats
from team import library
from team.access import Access, Action
from ui import render
from ui.messages import for_user, plural

log = logging.getLogger(__name__)
OpenKb = Callable[[str], KnowledgeBase]


def flash(kind: str, text: str) -> None:
    st.session_state.setdefault("flash", []).append((kind, text))


def show_flashes() -> None:
    for kind, text in st.session_state.pop("flash", []):
        getattr(st, kind)(text)


def _fresh(widget: str, kb_dir: Path) -> str:
    """A key that changes after each action and with the knowledge base, so
    the widget comes back empty (Streamlit keeps a widget's value per key)."""
    return f"{widget}-{kb_dir.name}-{st.session_state.get(widget + '_n', 0)}"


def _done(widget: str) -> None:
    st.session_state[widget + "_n"] = st.session_state.get(widget + "_n", 0) + 1
    st.rerun()


def manage_tab(
    kb_dir: Path, settings: Settings, open_kb: OpenKb, access: Access
) -> StoreStats | None:
    """Returns the index's stats once the actions are done (None while it
    has no index yet)."""
    access.require(Action.WRITE, kb_dir.name)
    show_flashes()
    summary = st.container()  # filled last, so never stale
    st.subheader("Add documents")
    files = st.file_uploader(
        # The types are listed once, by the uploader itself, from the loaders' list.
        "Documents to add", accept_multiple_files=True,
        type=[k.lstrip(".") for k in library.KINDS], key=_fresh("uploads", kb_dir),
    )  # fmt: skip
    if files and st.button("Ingest", type="primary"):
        save_and_ingest(access, kb_dir, files, settings)
        _done("uploads")
    if not library.has_index(kb_dir, settings):
        return None
    kb = library.open_kb(access, kb_dir, open_kb, Action.WRITE)
    st.subheader("Documents")
    names = render.SourceNames.of(kb)
    delete_documents(access, kb_dir, kb, names, settings)
    rebuild_controls(access, kb_dir, names, settings)
    names = render.SourceNames.of(kb)  # after a rebuild
    st.dataframe(
        [
            {
                "document": names.show(d.path), "kind": d.kind,
                "pages": str(d.pages) if d.pages else "", "passages": d.chunks,
            }
            for d in kb.documents()
        ],
        hide_index=True,
    )  # fmt: skip
    stats = kb.stats()
    # One line, not four big numbers: on a phone those filled the screen.
    disk = "" if stats.disk_bytes is None else f" · {stats.disk_bytes / 1e6:.1f} MB on disk"
    summary.caption(
        f"{plural(stats.documents, 'document')} · {plural(stats.chunks, 'passage')} · "
        f"{plural(stats.vectors, 'vector')}{disk} · "
        f"model {render.plain(stats.model)} · generation {stats.generation}"
    )
    return stats


def delete_documents(
    access: Access, kb_dir: Path, kb: KnowledgeBase, names: render.SourceNames,
    settings: Settings,
) -> None:  # fmt: skip
    paths = {names.show(d.path): d.path for d in kb.documents()}  # shown -> real
    doomed = st.multiselect("Delete documents", list(paths), key=_fresh("doomed", kb_dir))
    if not doomed:
        return
    sure = st.checkbox(f"Yes, delete {len(doomed)} document(s): this cannot be undone")
    if st.button("Delete selected", disabled=not sure) and sure:
        try:
            report = library.delete_documents(access, kb_dir, [paths[p] for p in doomed], settings)
        except RagError as exc:
            log.warning("delete failed: %s", exc)
            st.error(render.escape(names.redact(for_user(str(exc)))))
            return
        flash("success", f"Deleted {plural(report.deleted, 'document')}.")
        _done("doomed")


def rebuild_controls(
    access: Access, kb_dir: Path, names: render.SourceNames, settings: Settings
) -> None:
    """The Rebuild button. A rebuild that would drop documents (files gone
    or unreadable) changes nothing; it names them and asks before dropping."""
    # The pending question outlives the rerun that the answer's click starts.
    asking = f"rebuild-would-drop:{kb_dir}"
    if st.button("Rebuild this knowledge base"):
        refused = run_ingest(
            kb_dir, lambda progress: library.rebuild(access, kb_dir, settings, progress)
        )
        st.session_state[asking] = refused.dropped if isinstance(refused, RebuildRefused) else []
        if not st.session_state[asking]:
            st.rerun()
    dropped = st.session_state.get(asking)
    if not dropped:
        return
    question = st.empty()
    with question.container():
        st.warning(
            f"A rebuild would drop {len(dropped)} document(s) whose files are gone or "
            "unreadable (listed below). Nothing changes until you confirm."
        )
        more = f"\n… and {len(dropped) - 20} more" if len(dropped) > 20 else ""
        # plain text: file names are not markdown
        st.text("\n".join(names.show(p) for p in dropped[:20]) + more)
        confirmed = st.button(f"Rebuild without these {len(dropped)} document(s)", type="primary")
    if confirmed:
        question.empty()
        st.session_state[asking] = []
        run_ingest(
            kb_dir,
            lambda progress: library.rebuild(access, kb_dir, settings, progress, allow_drop=True),
        )
        st.rerun()


def save_and_ingest(
    access: Access, kb_dir: Path, files: list[UploadedFile], settings: Settings
) -> None:
    if len(files) > settings.max_upload_files:
        flash(
            "error",
            f"{len(files)} files chosen; at most {settings.max_upload_files} can be added "
            "at once: add them in smaller groups.",
        )
        return
    uploads = [library.Upload(f.name, f.getvalue()) for f in files]
    try:
        saved = library.save_uploads(access, kb_dir, uploads, settings.max_file_mb)
    except RagError as exc:  # AccessDenied: the user may no longer change this base
        flash("error", render.escape(for_user(str(exc))))
        return
    for name, reason in saved.refused:
        flash("error", f"{render.plain(name)}: {reason}")
    for name, new_name in saved.renamed:
        flash(
            "info",
            f"{render.plain(name)}: a different file has this name; "
            f"saved as {render.plain(new_name)}.",
        )
    for name, old_name in saved.unchanged:
        flash(
            "info",
            f"{render.plain(name)}: already uploaded as {render.plain(old_name)}, unchanged.",
        )
    if saved.paths:
        run_ingest(
            kb_dir,
            lambda progress: library.ingest_files(access, kb_dir, saved.paths, settings, progress),
        )


_STAGES = {
    "scan": ("Checking", "files"),
    "ingest": ("Reading", "files"),
    "embed": ("Embedding", "passages"),
}


def run_ingest(kb_dir: Path, job: Callable[[ProgressFn], IngestReport]) -> RagError | None:
    """Run an ingest with a progress bar; keep its summary for the next run,
    or the error it raised (also returned)."""
    bar = st.progress(0.0, text="Starting…")

    def progress(p: Progress) -> None:
        # The fraction moves with the chunks embedded, not the files read,
        # so a long PDF does not sit at full while it embeds.
        doing, unit = _STAGES.get(p.stage, (p.stage, ""))
        name = render.plain(Path(p.path).name)
        bar.progress(min(p.fraction, 1.0), text=f"{doing} {p.done}/{p.total} {unit} · {name}")

    try:
        report = job(progress)
    except RagError as exc:
        bar.empty()
        log.warning("ingest failed: %s", exc)
        if not isinstance(exc, RebuildRefused):  # that one asks below instead
            flash("error", render.escape(for_user(str(exc)).replace(str(kb_dir), kb_dir.name)))
        return exc
    bar.progress(1.0, text="Done")
    flash(
        "success",
        f"Added {report.added}, updated {report.updated}, unchanged {report.unchanged}; "
        f"{plural(report.chunks_embedded, 'passage')} embedded in {report.seconds:.1f} s.",
    )
    # In the knowledge base's own terms: no server folder in a message.
    names = render.SourceNames(os.path.realpath(kb_dir), None)
    for failure in report.failed:
        shown = names.show(failure.path)
        message = names.redact(for_user(failure.error).replace(failure.path, shown))
        flash("error", f"{render.plain(shown)}: {render.escape(message)}")
    return None
