"""Limits on what one user can make the app do: PDF pages rendered in a
capped worker within a pixel budget, text extracted from one file, files
and bytes per upload, question length, knowledge bases kept open."""

from __future__ import annotations

import io
import shutil
import tomllib
from pathlib import Path

from builders import huge_page_pdf, make_pdf, slow_render_pdf, text_bomb_docx
from PIL import Image
from test_app import app

from ingest.discovery import FileTask
from ingest.pipeline import ingest_paths
from ingest.workers import parse_files
from rag.settings import Settings
from ui import pages

ROOT = Path(__file__).resolve().parent.parent


def pixels(png: bytes | None) -> tuple[int, int]:
    assert png is not None
    return Image.open(io.BytesIO(png)).size


# -- PDF page renders --------------------------------------------------------------


def test_a_huge_page_is_rendered_within_the_pixel_budget(tmp_path):
    # 14,400 pt square: at the usual scale 20,160 px a side, about 1.5 GiB.
    huge = huge_page_pdf(tmp_path / "huge.pdf", "Survey of the northern coast")
    shown = pages.render_page(str(huge), 1)
    assert shown.problem == ""
    assert pages.MAX_SIDE_PX - 2 <= max(pixels(shown.png)) <= pages.MAX_SIDE_PX
    # An ordinary page keeps the usual scale.
    a4 = make_pdf(tmp_path / "a4.pdf", ["An ordinary page."])
    # pdfium rounds up: A4 is 595.28 x 841.89 pt
    assert pixels(pages.render_page(str(a4), 1).png) == (834, 1179)


def test_a_page_over_the_memory_cap_gets_a_clear_message(tmp_path):
    huge = huge_page_pdf(tmp_path / "huge.pdf", "Survey of the northern coast")
    shown = pages.render_page(str(huge), 1, max_side_px=20_000, memory_mb=700)
    assert shown.png is None
    assert shown.problem == "This page is too large to render; its text is shown above."


def test_a_page_that_renders_too_slowly_is_given_up(tmp_path):
    slow = slow_render_pdf(tmp_path / "slow.pdf")  # about 30 s of drawing
    shown = pages.render_page(str(slow), 1, timeout=2)
    assert shown.png is None
    assert shown.problem == "This page took over 2 s to render; its text is shown above."


def test_a_missing_or_broken_pdf_says_so(tmp_path):
    missing = pages.render_page(str(tmp_path / "gone.pdf"), 1)
    assert missing.png is None and "no longer at this path" in missing.problem
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    broken = pages.render_page(str(tmp_path / "broken.pdf"), 1)
    assert broken.png is None and broken.problem.startswith("This page could not be rendered")
    a4 = make_pdf(tmp_path / "a4.pdf", ["One page only."])
    assert pages.render_page(str(a4), 7).problem.startswith("This page could not be rendered")


def test_the_app_shows_a_huge_page_scaled_down_with_its_passage(app_env, kb_root, embedder):
    from serving.launch import free_port

    huge = huge_page_pdf(kb_root / "huge.pdf", "Survey of the northern coast by the pilot")
    report = ingest_paths([str(huge)], Settings(index=kb_root / "default"), embedder=embedder)
    assert report.added == 1, report.failed
    app_env.setenv("RAG_LLM_URL", f"http://127.0.0.1:{free_port()}/v1")
    at = app().run()
    at.chat_input[0].set_value("Survey of the northern coast by the pilot").run()
    assert not at.exception, [e.value for e in at.exception]
    first = at.expander[0]
    assert first.label.startswith("1. ") and "huge.pdf, page 1" in first.label, first.label
    assert any("northern coast" in m.value for m in first.markdown)
    assert first.get("image"), "the huge page is shown (scaled down)"


# -- text extracted from one file ------------------------------------------------------


def test_a_small_docx_that_expands_past_the_text_cap_is_refused_in_its_worker(tmp_path):
    # ~1 MB on disk, ~175 MB of text: refused by the default cap inside the
    # parser process, so the text never reaches the app's process.
    bomb = text_bomb_docx(tmp_path / "bomb.docx", megabytes=175)
    assert bomb.stat().st_size < 1.5e6
    settings = Settings()
    task = FileTask(str(bomb), "docx", bomb.stat().st_size, bomb.stat().st_mtime)
    [(_, result)] = parse_files(
        [(task, "digest")], timeout=120, memory_mb=settings.parse_memory_mb,
        max_text_chars=settings.max_text_chars,
    )  # fmt: skip
    assert result == (
        f"the text extracted from this file is over the {settings.max_text_chars:,}-character "
        "limit (RAG_MAX_TEXT_CHARS)"
    )


def test_a_file_over_the_text_cap_is_reported_by_name_and_the_rest_ingested(tmp_path, embedder):
    folder = tmp_path / "batch"
    folder.mkdir()
    text_bomb_docx(folder / "bomb.docx", megabytes=3)
    (folder / "long.txt").write_text("word " * 400_000)  # 2 MB of text
    (folder / "good.md").write_text("The good note is about kestrels hovering over fields.")
    settings = Settings(index=tmp_path / "index", max_text_chars=1_000_000)
    report = ingest_paths([str(folder)], settings, embedder=embedder)
    failed = {Path(f.path).name: f.error for f in report.failed}
    assert set(failed) == {"bomb.docx", "long.txt"}
    assert all("1,000,000-character limit (RAG_MAX_TEXT_CHARS)" in e for e in failed.values())
    assert report.added == 1


def test_the_default_limits_are_consistent():
    settings = Settings()
    # A long book is a few MB of text; the cap leaves room for far more,
    # but not for a zip bomb's hundreds of MB.
    assert 10_000_000 <= settings.max_text_chars <= 100_000_000
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == settings.max_file_mb
    assert 1 <= settings.max_upload_files <= 100
    # A question fits many times over in the smallest context we serve.
    assert 200 <= settings.max_question_chars <= 2048 * 2


# -- the app's own limits ---------------------------------------------------------------------


def test_an_upload_of_too_many_files_is_refused_with_a_clear_message(app_env, kb_root):
    app_env.setenv("RAG_MAX_UPLOAD_FILES", "2")
    at = app().run()
    at.file_uploader[0].set_value(
        [(f"note{i}.md", f"# Note {i}\n\nText {i}.".encode(), "text/markdown") for i in range(3)]
    ).run()
    next(b for b in at.button if b.label == "Ingest").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert [e.value for e in at.error] == [
        "3 files chosen; at most 2 can be added at once (RAG_MAX_UPLOAD_FILES): "
        "add them in smaller groups."
    ]
    assert not (kb_root / "default" / "uploads").exists()
    assert not at.success


def test_a_question_is_cut_at_the_question_limit(app_env):
    from serving.launch import free_port

    app_env.setenv("RAG_LLM_URL", f"http://127.0.0.1:{free_port()}/v1")
    app_env.setenv("RAG_MAX_QUESTION_CHARS", "300")
    at = app().run()
    assert at.chat_input[0].proto.max_chars == 300
    at.chat_input[0].set_value("How do I serve gpt-oss-20b on two GPUs? " * 50).run()
    assert not at.exception, [e.value for e in at.exception]
    asked = at.chat_message[0].children[0].value
    assert len(asked) == 300


def test_open_knowledge_bases_are_kept_within_a_bound(tmp_path, built_index, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    import streamlit_app
    from team.access import LOCAL_USER, Access, AccessPolicy

    streamlit_app.knowledge_service.clear()
    svc = streamlit_app.knowledge_service(str(tmp_path / "indexes"))
    local = Access(LOCAL_USER, AccessPolicy(None))
    paths = []
    for n in range(streamlit_app.OPEN_KBS + 1):
        paths.append(f"kb{n}")
        shutil.copytree(built_index, tmp_path / "indexes" / paths[-1])
    first = svc.open(local, paths[0])
    assert svc.open(local, paths[0]) is first
    for path in paths[1:]:
        svc.open(local, path)
    last = svc.open(local, paths[-1])
    assert svc.open(local, paths[-1]) is last
    assert svc.open(local, paths[0]) is not first, "the oldest one was let go"
    streamlit_app.knowledge_service.clear()
