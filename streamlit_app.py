"""The web app: ask questions, watch the stages, check the sources, manage
knowledge bases. A thin view over the core service, `core/service.py`
(drawing helpers in `ui/`), which the HTTP API and MCP call too.

Each run signs the visitor in (ui/account.py) and passes the resulting
`Access` down: the picker lists only the bases the user may read, and every
service call that opens, shows or changes one asks it first."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import streamlit as st

from core.service import KnowledgeService
from rag import telemetry
from rag.answering import screening
from rag.answering.events import Finished, Notice, Retrieved, Rewritten, Screened
from rag.errors import LLMUnreachable, NothingMatches, QuestionTooLong, RagError
from rag.filters import Filters
from rag.knowledge_base import KnowledgeBase
from rag.llm import Delta, OpenAIChat, check_server
from rag.settings import Settings
from rag.types import Answer
from team.access import Access, AccessDenied, Action
from team.appdb import AppDB, open_app_db
from team.conversation import Conversation, Turn
from team.sources import SourceNames
from ui import account, history, render, safe_text, session_cookie, users
from ui import feedback as answer_feedback
from ui.conversation import ConversationStore
from ui.manage import manage_tab, open_kb
from ui.messages import for_user, plural
from ui.scope import filter_controls
from ui.sidebar import kb_stats, kb_summary, sidebar, summary_line

log = logging.getLogger("kbqa.app")

# Each open knowledge base holds its index and embedding model in memory; the
# least recently used one beyond this many is let go.
OPEN_KBS = 4


@st.cache_resource(show_spinner=False)
def knowledge_service(root: str) -> KnowledgeService:
    """The process's one core service for the indexes under `root`, shared
    by every session: its cache of open knowledge bases (OPEN_KBS at most,
    each with its embedding model loaded on opening) and its chat model."""
    settings = Settings().model_copy(update={"indexes_root": Path(root)})
    return KnowledgeService(settings, chat=OpenAIChat(settings), max_open=OPEN_KBS, warm=True)


@st.cache_resource(show_spinner=False)
def app_db(url: str, root: str) -> AppDB:
    """One connection pool per database for all sessions (keyed by the
    settings it is opened from)."""
    return open_app_db(Settings(app_db=url, indexes_root=Path(root)))


@st.cache_data(ttl=10, show_spinner=False)
def llm_problem(url: str, model: str) -> str | None:
    return check_server(Settings(llm_url=url, llm_model=model))


def show_turn(access: Access, kb: KnowledgeBase, names: SourceNames, turn: Turn) -> None:
    """A stored turn, drawn again as it was answered."""
    with st.chat_message("user"):
        st.text(turn.question)
    with st.chat_message("assistant"):
        if turn.error:
            st.error(turn.error)
        if turn.warning:
            st.warning(turn.warning)
        result = turn.answer
        if result is not None and result.text:
            if result.search_query:
                st.caption(f"Searched for: {safe_text.defuse(result.search_query)}")
            st.markdown(safe_text.defuse(result.text))
            details(access, kb, names, result)
        elif result is not None:
            render.hits_only(access, kb, names, result.hits)


def details(access: Access, kb: KnowledgeBase, names: SourceNames, result: Answer) -> None:
    """What follows an answer: notes, the cited passages, the reasoning, the stages."""
    render.notes(replace(result, notes=[for_user(n) for n in result.notes]))
    render.citations(access, kb, names, result.citations, result.text)
    render.reasoning(result.reasoning)
    render.stages(result)


def ask(
    access: Access,
    kb: KnowledgeBase,
    names: SourceNames,
    settings: Settings,
    question: str,
    conversation: Conversation,
    llm_down: str | None,
    filters: Filters | None = None,
) -> Turn:
    """Answer `question` on the page; every outcome is a turn to keep. The
    service asks the policy (svc.stream, svc.search), not this page."""
    with st.chat_message("user"):
        st.text(question)
    with st.chat_message("assistant"):
        scoped = (access, kb, names, settings, question)
        if llm_down:
            why = f"{llm_down} Showing the best passages."
            return retrieval_only(*scoped, why, filters)
        svc = knowledge_service(str(kb.root.parent))
        history = conversation.history()
        try:
            events = svc.stream(access, kb.root.name, question, history, filters, settings)
            result = stream_into_page(events)
        except AccessDenied as exc:
            return refused(question, exc)
        except (QuestionTooLong, NothingMatches) as exc:
            error = names.redact(str(exc))
            st.error(error)
            return Turn(question, error=error)
        except LLMUnreachable as exc:
            why = f"{for_user(str(exc))} Showing the best passages."
            return retrieval_only(*scoped, why, filters)
        except RagError as exc:
            log.warning("answer failed: %s", exc)
            error = for_user(str(exc))
            st.error(error)
            why = "The best passages for the question:"
            turn = retrieval_only(*scoped, why, filters)
            turn.error = error
            return turn
        details(access, kb, names, result)
    return Turn(question, answer=result)


def retrieval_only(
    access: Access, kb: KnowledgeBase, names: SourceNames, settings: Settings,
    question: str, why: str, filters: Filters | None = None,
) -> Turn:  # fmt: skip
    svc = knowledge_service(str(kb.root.parent))
    try:  # through the service: its limits (the question's length) hold here too
        hits = svc.search(
            access, kb.root.name, question, k=settings.screen_k, filters=filters, what="question"
        )
    except AccessDenied as exc:
        return refused(question, exc)
    except (QuestionTooLong, NothingMatches) as exc:
        error = names.redact(str(exc))
        st.error(error)
        return Turn(question, error=error)
    st.warning(why)
    render.hits_only(access, kb, names, hits)
    return Turn(question, answer=Answer(question=question, text="", hits=hits), warning=why)


def refused(question: str, exc: AccessDenied) -> Turn:
    """The service's refusal, shown as the Ask tab shows a base it may not open."""
    error = safe_text.escape(for_user(str(exc)))
    st.error(error)
    return Turn(question, error=error)


def stream_into_page(events: Iterator[Any]) -> Answer:
    """The answer's events (KnowledgeService.stream) drawn as they come."""
    status = st.status("Reading the question…", expanded=False)
    try:
        return _stream(events, status)
    except RagError as exc:
        # A failed turn ends its status too: it never spins on.
        status.update(label=f"Failed: {for_user(str(exc))[:120]}", state="error")
        raise


def _stream(events: Iterator[Any], status: Any) -> Answer:
    thinking = st.empty()
    body = st.empty()
    text, thought = "", ""
    for event in events:
        if isinstance(event, Rewritten):
            status.update(label="Retrieving passages…")
            status.caption(f"Searched for: {safe_text.defuse(event.query)}")
        elif isinstance(event, Retrieved):
            status.update(label=f"Retrieved {plural(len(event.hits), 'passage')}; screening…")
        elif isinstance(event, Screened):
            said = screening.summary(event.verdicts, event.kept)
            status.update(label=f"{said[:1].upper()}{said[1:]} passages; reading…")
            status.dataframe(render.verdict_rows(event.verdicts, event.kept), hide_index=True)
        elif isinstance(event, Notice):
            status.write(for_user(event.text))
        elif isinstance(event, Delta) and event.channel == "reasoning":
            thought += event.text
            thinking.caption(f"Reasoning… ({len(thought.split())} words)")
        elif isinstance(event, Delta):
            text += event.text
            body.markdown(safe_text.defuse(text) + " ▌")
        elif isinstance(event, Finished):
            result = event.answer
    thinking.empty()
    body.markdown(safe_text.defuse(result.text))
    # Timings and tokens are in the Stages expander below: shown once.
    # A refusal is not an answer: the status says which it is.
    status.update(label="Answered" if result.found else "Not found", state="complete")
    return result


def ask_tab(
    svc: KnowledgeService, kb_dir: Path, settings: Settings, store: ConversationStore,
    access: Access, db: AppDB,
) -> Conversation | None:  # fmt: skip
    if not svc.has_index(access, kb_dir.name):
        where = "add some in the **Manage** tab" if access.allows(Action.WRITE, kb_dir.name) else (
            "an editor adds them"
        )  # fmt: skip
        st.info(f"**{safe_text.plain(kb_dir.name)}** has no documents yet: {where}.")
        return None
    try:
        kb = open_kb(svc, access, kb_dir.name)
    except RagError as exc:
        log.warning("cannot open %s: %s", kb_dir, exc)
        st.error(safe_text.escape(for_user(str(exc)).replace(str(kb_dir), kb_dir.name)))
        return None
    llm_down = llm_problem(settings.llm_url, settings.llm_model)
    if llm_down:
        st.warning(f"{for_user(llm_down)} Answers are off; searches still work.")
    conversation = history.shown(store, kb_dir.name)
    heading = st.empty()  # filled once this run's question is in the conversation
    # The conversation sits above the box, in the order it was asked, the
    # new turn included (the box is drawn first only to read its value).
    shown = st.container()
    names = SourceNames.of(kb)
    filters = filter_controls(kb, names)
    limit = settings.max_question_chars
    question = st.chat_input("Ask a question about your documents", max_chars=limit)
    st.caption(f"Questions up to {limit:,} characters.")
    with shown:
        for n, turn in enumerate(conversation.turns):
            show_turn(access, kb, names, turn)
            answer_feedback.thumbs(db, access, conversation, n, turn)
        if question is not None and not question.strip():
            st.warning("Type a question: the box was empty.")
        elif question:  # its length is the core's to check (the box cuts it there too)
            turn = ask(access, kb, names, settings, question, conversation, llm_down, filters)
            turn.filters = filters  # kept with the turn: the export says what was searched
            store.add(conversation, turn)
            answer_feedback.remember(db, access, conversation, len(conversation.turns) - 1, turn)
            answer_feedback.thumbs(db, access, conversation, len(conversation.turns) - 1, turn)
    asked = plural(len(conversation.turns), "question")
    heading.caption(f"Conversation in **{safe_text.plain(kb_dir.name)}** · {asked}")
    return conversation


def main() -> None:
    st.set_page_config(page_title="kbqa", page_icon="📚", layout="wide")
    base = Settings()
    telemetry.serve_metrics(base.app_metrics_port)  # once per process; off unless set
    db = app_db(base.app_db.get_secret_value(), str(base.indexes_root))
    access = account.sign_in(base, db)  # a login page, and nothing else, until signed in
    svc = knowledge_service(str(base.indexes_root))
    side = sidebar(svc, base, access)
    kb = side.kb_dir.name
    store = ConversationStore(db, user=access.user.name)
    st.title("Ask your documents")
    if side.notice:
        st.warning(safe_text.plain(side.notice))
    if not access.allows(Action.READ, kb):  # none of the bases is theirs
        st.info(account.NO_KNOWLEDGE_BASE)
        return
    # The active base in the main area too: on a phone the sidebar is folded.
    active = st.empty()
    labels = account.views(access, kb) + answer_feedback.views(access)
    views = dict(zip(labels, st.tabs(labels), strict=True))
    if "Manage" in views:
        with views["Manage"]:  # first: its actions change what the Ask tab shows
            stats = manage_tab(svc, access, kb)
    else:
        stats = kb_stats(svc, access, kb)
    with views["Ask"]:
        conversation = ask_tab(svc, side.kb_dir, side.settings, store, access, db)
    if "Users" in views:
        with views["Users"]:
            users.users_tab(access, db, svc.names(access))
    if "Audit" in views:
        with views["Audit"]:
            account.audit_tab(access, db)
    if "Feedback" in views:
        with views["Feedback"]:
            answer_feedback.feedback_tab(access, db, kb)
    active.caption(f"Knowledge base **{safe_text.plain(kb)}** · {summary_line(stats)}")
    with side.summary:
        kb_summary(stats, svc.last_synced(access, kb))
    names = SourceNames.of(open_kb(svc, access, kb)) if conversation else None
    history.panel(side.conversation, store, kb, conversation, names)


# Streamlit runs this file as __main__ for each run of the page. The guard
# keeps the app from running again inside every parser worker: those start
# with forkserver, which re-imports the parent's __main__ (as __mp_main__) in
# each new process. `streamlit run` finds `app` below and serves it (ASGI
# mode), importing this file once as the module `streamlit_app`: Streamlit's
# server with the login cookie's route beside it (ui/session_cookie.py).
if __name__ == "__main__":
    main()
elif __name__ == "streamlit_app":
    app = st.App(__file__, routes=session_cookie.routes(st.get_option("server.baseUrlPath")))
