"""The Manage tab: uploads, deletions, rebuilds, and the base's numbers.
Each action is a call to the core service (core/service.py) with the
session's `Access`, as the HTTP API's and MCP's are: the service holds the
rules (the policy, the name rule, the limits) and refuses there; this tab
turns widgets into calls and the service's errors into messages.

What an action reports is kept for the next run as a "flash" message: after
an ingest or a delete the page runs again, so every part of it (the Ask tab,
the picker, the uploader, the delete list) shows the new state."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import streamlit as st
from streamlit.delta_generator import DeltaGenerator
from streamlit.runtime.uploaded_file_manager import UploadedFile

from core.service import KnowledgeService, TooManyFiles, Uploaded
from ingest.loaders import KINDS
from ingest.pipeline import IngestReport, Progress, ProgressFn
from rag.errors import RagError, RebuildRefused
from rag.knowledge_base import KnowledgeBase
from rag.store import StoreStats
from team.access import Access, Action
from team.sources import SourceNames
from ui import safe_text
from ui.messages import for_user, plural
from ui.sidebar import forget_chosen

log = logging.getLogger(__name__)


def open_kb(
    svc: KnowledgeService, access: Access, name: str, action: Action = Action.READ
) -> KnowledgeBase:
    """The knowledge base `name` from the service's cache, once the user may
    do `action` there; a spinner while a base not yet open loads."""
    if svc.is_open(name):
        return svc.open(access, name, action)
    with st.spinner("Opening the knowledge base…"):
        return svc.open(access, name, action)


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


def manage_tab(svc: KnowledgeService, access: Access, name: str) -> StoreStats | None:
    """Returns the index's stats once the actions are done (None while it
    has no index yet)."""
    kb_dir = svc.kb_dir(access, name, Action.WRITE)
    show_flashes()
    summary = st.container()  # filled last, so never stale
    st.subheader("Add documents")
    files = st.file_uploader(
        # The types are listed once, by the uploader itself, from the loaders' list.
        "Documents to add", accept_multiple_files=True,
        type=[k.lstrip(".") for k in KINDS], key=_fresh("uploads", kb_dir),
    )  # fmt: skip
    if files and st.button("Ingest", type="primary"):
        save_and_ingest(svc, access, kb_dir, files)
        _done("uploads")
    stats = _documents(svc, access, kb_dir, summary) if svc.has_index(access, name) else None
    if access.role_allows(Action.ADMIN):
        delete_knowledge_base(svc, access, kb_dir)
    return stats


def _documents(
    svc: KnowledgeService, access: Access, kb_dir: Path, summary: DeltaGenerator
) -> StoreStats:
    """The documents with their actions, and the base's numbers in `summary`."""
    name = kb_dir.name
    kb = open_kb(svc, access, name, Action.WRITE)
    st.subheader("Documents")
    names = SourceNames.of(kb)
    delete_documents(svc, access, kb_dir, names)
    rebuild_controls(svc, access, kb_dir, names)
    names = SourceNames.of(kb)  # after a rebuild
    st.dataframe(
        [
            {
                "document": names.show(d.path), "kind": d.kind,
                "pages": str(d.pages) if d.pages else "", "passages": d.chunks,
            }
            for d in svc.documents(access, name)
        ],
        hide_index=True,
    )  # fmt: skip
    stats = svc.stats(access, name)
    # One line, not four big numbers: on a phone those filled the screen.
    disk = "" if stats.disk_bytes is None else f" · {stats.disk_bytes / 1e6:.1f} MB on disk"
    summary.caption(
        f"{plural(stats.documents, 'document')} · {plural(stats.chunks, 'passage')} · "
        f"{plural(stats.vectors, 'vector')}{disk} · "
        f"model {safe_text.plain(stats.model)} · generation {stats.generation}"
    )
    return stats


def delete_documents(
    svc: KnowledgeService, access: Access, kb_dir: Path, names: SourceNames
) -> None:
    documents = svc.documents(access, kb_dir.name)
    paths = {names.show(d.path): d.path for d in documents}  # shown -> real
    doomed = st.multiselect("Delete documents", list(paths), key=_fresh("doomed", kb_dir))
    if not doomed:
        return
    sure = st.checkbox(f"Yes, delete {len(doomed)} document(s): this cannot be undone")
    if st.button("Delete selected", disabled=not sure) and sure:
        try:
            report = svc.delete(access, kb_dir.name, [paths[p] for p in doomed])
        except RagError as exc:
            log.warning("delete failed: %s", exc)
            st.error(safe_text.escape(names.redact(for_user(str(exc)))))
            return
        flash("success", f"Deleted {plural(report.deleted, 'document')}.")
        _done("doomed")


def delete_knowledge_base(svc: KnowledgeService, access: Access, kb_dir: Path) -> None:
    """An admin's: the whole base, once its name is typed again."""
    name = kb_dir.name
    shown = safe_text.plain(name)
    with st.expander("Delete this knowledge base"):
        # A caption, not st.warning: the expander is drawn, folded, on every
        # run of an admin's Manage tab, and a warning there would read as one.
        st.caption(
            f"This removes “{shown}” whole: its documents, its index, the files uploaded "
            "to it and every grant to it. It cannot be undone."
        )
        typed = st.text_input(f"Type “{shown}” to confirm", key=_fresh("drop-kb", kb_dir))
        clicked = st.button("Delete knowledge base", disabled=typed != name, key="drop-kb-go")
        if not (clicked and typed == name):
            return
        try:
            svc.delete_knowledge_base(access, name)
        except RagError as exc:
            log.warning("deleting knowledge base %s failed: %s", name, exc)
            st.error(safe_text.escape(for_user(str(exc)).replace(str(kb_dir), name)))
            return
    flash("success", f"Deleted knowledge base “{safe_text.plain(name)}”.")
    forget_chosen()
    _done("drop-kb")


def rebuild_controls(
    svc: KnowledgeService, access: Access, kb_dir: Path, names: SourceNames
) -> None:
    """The Rebuild button. A rebuild that would drop documents (files gone
    or unreadable) changes nothing; it names them and asks before dropping."""
    # The pending question outlives the rerun that the answer's click starts.
    asking = f"rebuild-would-drop:{kb_dir}"
    if st.button("Rebuild this knowledge base"):
        refused = run_ingest(kb_dir, lambda progress: svc.rebuild(access, kb_dir.name, progress))
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
            lambda progress: svc.rebuild(access, kb_dir.name, progress, allow_drop=True),
        )
        st.rerun()


def save_and_ingest(
    svc: KnowledgeService, access: Access, kb_dir: Path, files: list[UploadedFile]
) -> None:
    """The service's upload: it counts the files (one message for too
    many), saves them (each read when its turn comes) and ingests them."""
    incoming = [(f.name, f.getvalue) for f in files]

    def job(progress: ProgressFn) -> IngestReport | None:
        uploaded = svc.upload(access, kb_dir.name, incoming, progress)
        flash_saved(uploaded)  # before the ingest's summary, as it happened
        return uploaded.report

    run_ingest(kb_dir, job)


def flash_saved(uploaded: Uploaded) -> None:
    """What happened to each file that was not simply added."""
    saved = uploaded.saved
    for name, reason in saved.refused:
        flash("error", f"{safe_text.plain(name)}: {reason}")
    for name, new_name in saved.renamed:
        flash(
            "info",
            f"{safe_text.plain(name)}: a different file has this name; "
            f"saved as {safe_text.plain(new_name)}.",
        )
    for name, old_name in saved.unchanged:
        flash(
            "info",
            f"{safe_text.plain(name)}: already uploaded as {safe_text.plain(old_name)}, unchanged.",
        )


_STAGES = {
    "scan": ("Checking", "files"),
    "ingest": ("Reading", "files"),
    "embed": ("Embedding", "passages"),
}


def run_ingest(kb_dir: Path, job: Callable[[ProgressFn], IngestReport | None]) -> RagError | None:
    """Run an ingest with a progress bar; keep its summary for the next run
    (none when there was nothing to ingest), or the error it raised (also
    returned)."""
    bar = st.progress(0.0, text="Starting…")

    def progress(p: Progress) -> None:
        # The fraction moves with the chunks embedded, not the files read,
        # so a long PDF does not sit at full while it embeds.
        doing, unit = _STAGES.get(p.stage, (p.stage, ""))
        name = safe_text.plain(Path(p.path).name)
        bar.progress(min(p.fraction, 1.0), text=f"{doing} {p.done}/{p.total} {unit} · {name}")

    try:
        report = job(progress)
    except RagError as exc:
        bar.empty()
        log.warning("ingest failed: %s", exc)
        if isinstance(exc, TooManyFiles):  # a limit: the service's words, as the API's
            flash("error", str(exc))
        elif not isinstance(exc, RebuildRefused):  # that one asks below instead
            flash("error", safe_text.escape(for_user(str(exc)).replace(str(kb_dir), kb_dir.name)))
        return exc
    if report is None:
        bar.empty()
        return None
    bar.progress(1.0, text="Done")
    flash(
        "success",
        f"Added {report.added}, updated {report.updated}, unchanged {report.unchanged}; "
        f"{plural(report.chunks_embedded, 'passage')} embedded in {report.seconds:.1f} s.",
    )
    # In the knowledge base's own terms: no server folder in a message.
    names = SourceNames(os.path.realpath(kb_dir), None)
    for failure in report.failed:
        shown = names.show(failure.path)
        message = names.redact(for_user(failure.error).replace(failure.path, shown))
        flash("error", f"{safe_text.plain(shown)}: {safe_text.escape(message)}")
    return None
