"""The web app: ask questions, watch the stages, check the sources, manage
knowledge bases. A thin view over `rag` (drawing helpers in `ui/`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import streamlit as st
from streamlit.delta_generator import DeltaGenerator
from streamlit.runtime.uploaded_file_manager import UploadedFile

from ingest.pipeline import IngestReport, Progress, ProgressFn
from rag.answering import stream_answer
from rag.errors import LLMError, LLMUnreachable, RagError, RebuildRefused
from rag.events import Finished, Notice, Retrieved, Rewritten, Screened
from rag.knowledge_base import KnowledgeBase
from rag.llm import Delta, OpenAIChat, check_server
from rag.settings import Settings
from rag.types import Answer
from ui import knowledge, render

# Each open knowledge base holds its index and embedding model in memory; the
# least recently used one beyond this many is let go.
OPEN_KBS = 4


@st.cache_resource(show_spinner="Opening the knowledge base…", max_entries=OPEN_KBS)
def open_kb(path: str) -> KnowledgeBase:
    kb = KnowledgeBase.open(path)
    kb.warm_up()  # load the model now, not during the first question
    return kb


@st.cache_data(ttl=10, show_spinner=False)
def llm_problem(url: str, model: str) -> str | None:
    return check_server(Settings(llm_url=url, llm_model=model))


EFFORTS = ["low", "medium", "high"]


def sidebar(base: Settings) -> tuple[Path, Settings, DeltaGenerator]:
    """Knowledge-base picker and per-question tuning; also returns the slot
    under the picker where `kb_summary` goes once this run's actions are done."""
    with st.sidebar:
        st.header("Knowledge base")
        names = knowledge.list_knowledge_bases(base.indexes_root)
        default = base.index.name if base.index.name in names else None
        choice = st.selectbox(
            "Knowledge base", names,
            index=names.index(default) if default else (0 if names else None),
            placeholder="none yet: add documents in Manage", key="kb",
        )  # fmt: skip
        new = st.text_input("…or a new one", placeholder="name, e.g. contracts")
        if new and not knowledge.valid_name(new):
            st.error("Use letters, digits, '-', '_' or '.' (up to 64).")
            new = ""
        # With no knowledge base yet, the first upload creates the default one.
        kb_dir = base.indexes_root / (new or choice or knowledge.default_name(base))
        summary = st.container()
        st.header("Answering")
        k = st.slider("Passages to screen (k)", 2, 30, base.screen_k)
        screen_on = st.toggle("Fast screen", value=base.screen)
        screen_effort = st.selectbox(
            "Screen reasoning", EFFORTS, index=EFFORTS.index(base.screen_effort)
        )
        read_effort = st.selectbox(
            "Deep-read reasoning", EFFORTS, index=EFFORTS.index(base.read_effort)
        )
        keep_max = st.slider("Passages kept for the answer", 1, 12, base.keep_max)
        if st.session_state.get("history") and st.button("New conversation"):
            st.session_state["history"] = []
    tuned = base.model_copy(
        update={
            "index": kb_dir, "screen_k": k, "screen": screen_on, "keep_max": keep_max,
            "screen_effort": screen_effort, "read_effort": read_effort,
        }
    )  # fmt: skip
    return kb_dir, tuned, summary


def kb_summary(stats: dict[str, Any] | None) -> None:
    if stats is None:
        st.caption("Not built yet: add documents in the **Manage** tab.")
        return
    st.caption(
        f"{stats['documents']} documents · {stats['chunks']} passages · "
        f"generation {stats['generation']}"
    )


def show_turn(kb: KnowledgeBase, names: render.SourceNames, result: Answer) -> None:
    if result.search_query:
        st.caption(f"Searched for: {render.defuse(result.search_query)}")
    st.markdown(render.defuse(result.text))
    details(kb, names, result)


def details(kb: KnowledgeBase, names: render.SourceNames, result: Answer) -> None:
    """What follows an answer: notes, the cited passages, the reasoning, the stages."""
    render.notes(result)
    render.citations(kb, names, result.citations, result.text)
    render.reasoning(result.reasoning)
    render.stages(result)


def ask(
    kb: KnowledgeBase,
    names: render.SourceNames,
    settings: Settings,
    question: str,
    llm_down: str | None,
) -> None:
    history = st.session_state.setdefault("history", [])
    with st.chat_message("user"):
        st.text(question)
    with st.chat_message("assistant"):
        if llm_down:
            why = f"{llm_down} Showing the best passages."
            retrieval_only(kb, names, settings, question, why)
            return
        chat = OpenAIChat(settings)
        pairs = [(t["role"], t["text"]) for t in history]
        try:
            result = stream_into_page(question, pairs, kb, chat, settings)
        except LLMUnreachable as exc:
            retrieval_only(kb, names, settings, question, f"{exc} Showing the best passages.")
            return
        except LLMError as exc:
            st.error(render.escape(str(exc)))
            retrieval_only(kb, names, settings, question, "The best passages for the question:")
            return
        details(kb, names, result)
    history.append({"role": "user", "text": question, "answer": None})
    history.append({"role": "assistant", "text": result.text, "answer": result})


def retrieval_only(
    kb: KnowledgeBase, names: render.SourceNames, settings: Settings, question: str, why: str
) -> None:
    st.warning(why)
    render.hits_only(kb, names, kb.search(question, k=settings.screen_k))


def stream_into_page(
    question: str,
    history: list[tuple[str, str]],
    kb: KnowledgeBase,
    chat: OpenAIChat,
    settings: Settings,
) -> Answer:
    first = "Rewriting the follow-up as a search…" if history else "Retrieving passages…"
    status = st.status(first, expanded=False)
    thinking = st.empty()
    body = st.empty()
    text, thought = "", ""
    for event in stream_answer(question, kb, chat, settings, history):
        if isinstance(event, Rewritten):
            status.update(label="Retrieving passages…")
            status.caption(f"Searched for: {render.defuse(event.query)}")
        elif isinstance(event, Retrieved):
            status.update(label=f"Retrieved {len(event.hits)} passages; screening…")
        elif isinstance(event, Screened):
            status.update(
                label=f"Screen kept {len(event.kept)} of {len(event.verdicts)} passages "
                f"({event.seconds:.1f} s); reading…"
            )
            status.dataframe(render.verdict_rows(event.verdicts, event.kept), hide_index=True)
        elif isinstance(event, Notice):
            status.write(event.text)
        elif isinstance(event, Delta) and event.channel == "reasoning":
            thought += event.text
            thinking.caption(f"Reasoning… ({len(thought.split())} words)")
        elif isinstance(event, Delta):
            text += event.text
            body.markdown(render.defuse(text) + " ▌")
        elif isinstance(event, Finished):
            result = event.answer
    thinking.empty()
    body.markdown(render.defuse(result.text))
    status.update(label=f"Answered — {render.stage_summary(result)}", state="complete")
    return result


def ask_tab(kb_dir: Path, settings: Settings) -> None:
    try:
        kb = open_kb(str(kb_dir))
    except RagError as exc:
        shown = render.escape(str(exc).replace(str(kb_dir), kb_dir.name))
        st.info(f"{shown}\n\nUpload documents in the **Manage** tab to create it.")
        return
    llm_down = llm_problem(settings.llm_url, settings.llm_model)
    if llm_down:
        st.warning(f"{llm_down} Answers are off; searches still work. Start it with `make llm`.")
    # The conversation sits above the box, in the order it was asked, the
    # new turn included (the box is drawn first only to read its value).
    conversation = st.container()
    question = st.chat_input(
        "Ask a question about your documents", max_chars=settings.max_question_chars
    )
    names = render.SourceNames.of(kb)
    with conversation:
        for turn in st.session_state.get("history", []):
            with st.chat_message(turn["role"]):
                if turn["answer"] is None:
                    st.text(turn["text"])
                else:
                    show_turn(kb, names, turn["answer"])
        if question:
            ask(kb, names, settings, question, llm_down)


def manage_tab(kb_dir: Path, settings: Settings) -> dict[str, Any] | None:
    """Uploads, deletions, rebuilds; returns the index's stats once they are
    done (None while it has no index yet)."""
    # Drawn last, after any action below, so they never show stale numbers.
    summary = st.container()
    st.subheader("Add documents")
    files = st.file_uploader(
        "PDF, Markdown, text, HTML or DOCX", accept_multiple_files=True,
        type=[k.lstrip(".") for k in knowledge.KINDS], key="uploads",
    )  # fmt: skip
    if files and st.button("Ingest", type="primary"):
        save_and_ingest(kb_dir, files, settings)
    if not knowledge.has_index(kb_dir):
        return None
    kb = open_kb(str(kb_dir))
    st.subheader("Documents")
    names = render.SourceNames.of(kb)
    paths = {names.show(d.path): d.path for d in kb.documents()}  # shown -> real
    doomed = st.multiselect("Delete documents", list(paths))
    if doomed:
        sure = st.checkbox(f"Yes, delete {len(doomed)} document(s): this cannot be undone")
        if st.button("Delete selected", disabled=not sure) and sure:
            try:
                report = knowledge.delete_documents(kb_dir, [paths[p] for p in doomed], settings)
            except RagError as exc:
                st.error(render.escape(names.redact(str(exc))))
            else:
                st.success(f"Deleted {report.deleted} document(s).")
    rebuild_controls(kb_dir, names, settings)
    names = render.SourceNames.of(kb)  # after a deletion or a rebuild
    st.dataframe(
        [
            {"document": names.show(d.path), "kind": d.kind, "pages": d.pages, "chunks": d.chunks}
            for d in kb.documents()
        ],
        hide_index=True,
    )
    stats = kb.stats()
    with summary:
        cols = st.columns(4)
        cols[0].metric("Documents", stats["documents"])
        cols[1].metric("Chunks", stats["chunks"])
        cols[2].metric("Vectors", stats["vectors"])
        cols[3].metric("On disk", f"{stats['disk_bytes'] / 1e6:.1f} MB")
        st.caption(
            f"Model {render.plain(stats['model'])} · generation {stats['generation']} · "
            f"{render.plain(kb_dir.name)}"
        )
    return stats


def save_and_ingest(kb_dir: Path, files: list[UploadedFile], settings: Settings) -> None:
    if len(files) > settings.max_upload_files:
        st.error(
            f"{len(files)} files chosen; at most {settings.max_upload_files} can be added "
            "at once (RAG_MAX_UPLOAD_FILES)."
        )
        return
    uploads = [knowledge.Upload(f.name, f.getvalue()) for f in files]
    saved = knowledge.save_uploads(kb_dir, uploads, settings.max_file_mb)
    for name, reason in saved.refused:
        st.error(f"{render.plain(name)}: {reason}")
    for name, new_name in saved.renamed:
        st.info(
            f"{render.plain(name)}: a different file has this name; "
            f"saved as {render.plain(new_name)}."
        )
    for name, old_name in saved.unchanged:
        st.info(f"{render.plain(name)}: already uploaded as {render.plain(old_name)}, unchanged.")
    if saved.paths:
        run_ingest(
            kb_dir,
            lambda progress: knowledge.ingest_files(kb_dir, saved.paths, settings, progress),
        )


def rebuild_controls(kb_dir: Path, names: render.SourceNames, settings: Settings) -> None:
    """The Rebuild button. A rebuild that would drop documents (files gone
    or unreadable) changes nothing; it names them and asks before dropping."""
    # The pending question outlives the rerun that the answer's click starts.
    asking = f"rebuild-would-drop:{kb_dir}"
    if st.button("Rebuild this knowledge base"):
        refused = run_ingest(kb_dir, lambda progress: knowledge.rebuild(kb_dir, settings, progress))
        st.session_state[asking] = refused.dropped if isinstance(refused, RebuildRefused) else []
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
        st.text(
            "\n".join(names.show(p) for p in dropped[:20]) + more
        )  # plain text: file names are not markdown
        confirmed = st.button(f"Rebuild without these {len(dropped)} document(s)", type="primary")
    if confirmed:
        question.empty()
        st.session_state[asking] = []
        run_ingest(
            kb_dir,
            lambda progress: knowledge.rebuild(kb_dir, settings, progress, allow_drop=True),
        )


def run_ingest(kb_dir: Path, job: Callable[[ProgressFn], IngestReport]) -> RagError | None:
    """Run an ingest with a progress bar; show its summary, or the error it
    raised (also returned)."""
    bar = st.progress(0.0, text="Starting…")

    def progress(p: Progress) -> None:
        fraction = p.done / p.total if p.total else 1.0
        name = render.plain(Path(p.path).name)
        bar.progress(min(fraction, 1.0), text=f"{p.stage}: {p.done}/{p.total} {name}")

    try:
        report = job(progress)
    except RagError as exc:
        bar.empty()
        st.error(render.escape(str(exc).replace(str(kb_dir), kb_dir.name)))
        return exc
    bar.progress(1.0, text="Done")
    st.success(
        f"Added {report.added}, updated {report.updated}, unchanged {report.unchanged}; "
        f"{report.chunks_embedded} chunks embedded in {report.seconds:.1f} s."
    )
    # In the knowledge base's own terms: no server folder in a message.
    names = render.SourceNames(os.path.realpath(kb_dir), None)
    for failure in report.failed:
        shown = names.show(failure.path)
        message = names.redact(failure.error.replace(failure.path, shown))
        st.error(f"{render.plain(shown)}: {render.escape(message)}")
    return None


def main() -> None:
    st.set_page_config(page_title="kbqa", page_icon="📚", layout="wide")
    base = Settings()
    kb_dir, settings, summary = sidebar(base)
    st.title("Ask your documents")
    ask_view, manage_view = st.tabs(["Ask", "Manage"])
    with ask_view:
        ask_tab(kb_dir, settings)
    with manage_view:
        stats = manage_tab(kb_dir, settings)
    with summary:  # after the Manage tab's actions, so never stale
        kb_summary(stats)


# Streamlit runs this file as __main__. The guard keeps the app from running
# again inside every parser worker: those start with forkserver, which
# re-imports the parent's __main__ (as __mp_main__) in each new process.
if __name__ == "__main__":
    main()
