"""Hostile and broken input, as one real batch through the `ingest` command:
each bad file is reported by name with a clear reason, the good files are
ingested, and what the index held before survives untouched.

Also: parsers that hang, blow their memory cap or crash fail only their
file; OCR; upload names that try to leave the knowledge-base folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import click
import pypdf
import pytest
from builders import (
    LOCAL_ADMIN,
    decompression_bomb_pdf,
    image_only_pdf,
    make_docx,
    make_pdf,
    slow_pdf,
    zip_bomb_docx,
)
from click.testing import CliRunner

from cli.ingest_main import main as ingest_main
from cli.rag_main import main as rag_main
from ingest.pipeline import ingest_paths
from rag.knowledge_base import KnowledgeBase
from rag.settings import Settings
from team.library import UPLOADS, Upload, save_uploads

INGEST = str(Path(sys.executable).parent / "ingest")


def cli(
    main: click.Command, args: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """A command run in this process, the way a process would report it: an
    exception that escapes it lands in stderr as a traceback. Where the
    process itself is not the subject, this spares loading the model again."""
    result = CliRunner().invoke(main, args, env=env)
    stderr = result.stderr
    if result.exc_info and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*result.exc_info))
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, stderr)


# Good files, each with a fact only it contains: (name, query, content).
GOOD = {
    "meeting notes 2024.md": "# Budget meeting\n\nThe budget meeting approved the heliotrope "
    "irrigation project for the northern fields.\n",
    "café résumé.txt": "Amélie's résumé lists fluent Portuguese and professional glassblowing.",
    "cafe\u0301 decomposed.txt": "The decomposed name file is about otters holding hands asleep.",
    "日本語 ノート.html": "<html><head><title>ノート</title></head><body><p>The tea ceremony uses "
    "a bamboo whisk called a chasen.</p></body></html>",
    "sub/nested.md": "A nested folder note: the lighthouse keeper logs every passing ship.",
}
QUERIES = {
    "meeting notes 2024.md": "heliotrope irrigation project",
    "café résumé.txt": "glassblowing Portuguese résumé",
    "cafe\u0301 decomposed.txt": "otters holding hands",
    "日本語 ノート.html": "bamboo whisk chasen",
    "sub/nested.md": "lighthouse keeper passing ship",
    "report.pdf": "quarterly revenue twelve percent",
    "huge markup.html": "cartographer copper engraving",
}
# Bad files and what the report must say about each.
BAD = {
    "truncated.pdf": "not a valid PDF, corrupt or truncated",
    "corrupt.pdf": "not a valid PDF, corrupt or truncated",
    "encrypted.pdf": r"encrypted PDF \(password required\)",
    "scanned.pdf": r"no text layer in 1 page\(s\): a scanned PDF needs OCR "
    r"\(run ingest with --ocr\)",
    "fake.docx": "not a valid DOCX file",
    "empty.txt": r"empty file \(0 bytes\)",
    "junk.txt": "binary content, not text",
    "invalid utf8.md": r"not valid UTF-8 \(bad byte at offset 12\)",
    "huge.txt": r"file is 1\.6 MB, over the 1 MB limit \(RAG_MAX_FILE_MB\)",
    "deep.html": r"HTML nested too deeply \(over 2048 levels\)",
    "self.md": "symbolic link loop",
    "loopdir": "symbolic link loop",
    "dangling.txt": "broken symbolic link",
    "bad-\ufffd-name.txt": "the file name is not valid UTF-8; rename the file",
}
OLD_FACT = "The old archive mentions the zeppelin hangar at Friedrichshafen."


def write_batch(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name, text in GOOD.items():
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    report = make_pdf(folder / "report.pdf", ["Quarterly revenue grew by twelve percent."])
    spans = "".join(f'<span class="c{i}" data-i="{i}"></span>' for i in range(20_000))
    (folder / "huge markup.html").write_text(  # 0.8 MB of markup, one sentence of text
        f"<html><body><p>The cartographer kept a copper engraving of the coast.</p>{spans}"
        "</body></html>",
        encoding="utf-8",
    )

    pdf = report.read_bytes()
    (folder / "truncated.pdf").write_bytes(pdf[: len(pdf) // 2])
    (folder / "corrupt.pdf").write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 8)
    writer = pypdf.PdfWriter(clone_from=str(report))
    writer.encrypt(user_password="pw", owner_password="owner")
    with open(folder / "encrypted.pdf", "wb") as fh:
        writer.write(fh)
    image_only_pdf(folder / "scanned.pdf", "The submarine cable reached Lisbon in 1870.")
    (folder / "fake.docx").write_bytes(b"PK\x03\x04 not really a zip archive")
    (folder / "empty.txt").write_bytes(b"")
    (folder / "junk.txt").write_bytes(bytes(range(256)) * 40)
    (folder / "invalid utf8.md").write_bytes(b"# Notes\n\nCaf\xe9 au lait \xff\xfe\n")
    (folder / "huge.txt").write_bytes(b"word " * 330_000)  # 1.65 MB
    (folder / "deep.html").write_text(
        "<p>Shallow text.</p>" + "<div>" * 3000 + "deep text" + "</div>" * 3000, encoding="utf-8"
    )
    os.symlink("self.md", folder / "self.md")  # a file symlink to itself
    os.symlink("loopdir", folder / "loopdir")  # a folder symlink to itself
    os.symlink("..", folder / "sub" / "up")  # a folder symlink to an ancestor
    os.symlink("missing.txt", folder / "dangling.txt")
    (folder / os.fsdecode(b"bad-\xff-name.txt")).write_text("A badly named file.")
    (folder / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # unsupported: skipped
    return folder


def by_name(entries: list[dict[str, str]], root: Path) -> dict[str, str]:
    return {os.path.relpath(e["path"], root): e["error"] for e in entries}


def state(index: Path) -> dict[str, tuple[str, ...]]:
    kb = KnowledgeBase.open(index)
    snap = kb.snapshot()
    return {d.path: tuple(c.text for c in snap.document_chunks(d.path)) for d in kb.documents()}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, embedder):
    """A seeded index, then the hostile batch through the real CLI."""
    base = tmp_path_factory.mktemp("hostile")
    index = base / "index"
    old = base / "archive" / "old.md"
    old.parent.mkdir()
    old.write_text(OLD_FACT, encoding="utf-8")
    ingest_paths([str(old)], Settings(index=index), embedder=embedder)
    before = state(index)
    batch = write_batch(base / "batch")
    env = {"RAG_MAX_FILE_MB": "1"}
    run = cli(ingest_main, [str(batch), "--index", str(index), "--json"], env)
    return {"index": index, "batch": batch, "old": old, "before": before, "run": run, "env": env}


def test_the_batch_exits_1_and_reports_every_bad_file_by_name(hostile):
    run = hostile["run"]
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    summary = json.loads(run.stdout)
    failed = by_name(summary["failed"], hostile["batch"])
    assert set(failed) == set(BAD)
    for name, reason in BAD.items():
        assert re.search(reason, failed[name]), (name, failed[name])
    assert list(by_name(summary["skipped"], hostile["batch"])) == ["image.png"]


def test_the_good_files_are_ingested_and_found(hostile, embedder):
    summary = json.loads(hostile["run"].stdout)
    assert summary["added"] == len(QUERIES)
    paths = set(state(hostile["index"]))
    batch = hostile["batch"]
    assert paths == {str(hostile["old"])} | {str(batch / name) for name in QUERIES}
    assert not any("/up/" in p for p in paths), "the ancestor symlink was walked into"
    kb = KnowledgeBase.open(hostile["index"], embedder)
    for name, query in QUERIES.items():
        assert kb.search(query, k=1)[0].source == str(batch / name), name


def test_the_existing_documents_survive_unchanged(hostile, embedder):
    old = str(hostile["old"])
    assert state(hostile["index"])[old] == hostile["before"][old]
    hits = KnowledgeBase.open(hostile["index"], embedder).search("zeppelin hangar", k=1)
    assert hits[0].source == old and hits[0].text == OLD_FACT


def test_stats_agree_and_search_prints_non_ascii_names(hostile):
    stats = json.loads(cli(rag_main, ["stats", "--index", str(hostile["index"]), "--json"]).stdout)
    assert stats["documents"] == len(QUERIES) + 1
    assert stats["chunks"] == stats["vectors"] > 0
    result = cli(rag_main, ["search", "bamboo whisk chasen", "--index", str(hostile["index"]),
                            "-k", "1"])  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "日本語 ノート.html" in result.stdout


def test_a_rerun_changes_nothing_and_reports_the_same_failures(hostile):
    generation = KnowledgeBase.open(hostile["index"]).stats().generation
    again = cli(ingest_main, [str(hostile["batch"]), "--index", str(hostile["index"])],
                hostile["env"])  # fmt: skip
    assert again.returncode == 1, again.stderr
    assert "Traceback" not in again.stderr
    # The human-readable summary prints odd names and every reason.
    assert f"unchanged  {len(QUERIES)}" in again.stdout
    assert f"failed     {len(BAD)}" in again.stdout
    assert "bad-\ufffd-name.txt: the file name is not valid UTF-8" in again.stdout
    assert "self.md: symbolic link loop" in again.stdout
    assert KnowledgeBase.open(hostile["index"]).stats().generation == generation


# -- parsers that hang, eat memory or crash ------------------------------------------


def test_parsers_that_hang_crash_or_blow_their_memory_cap_fail_only_their_file(tmp_path, embedder):
    folder = tmp_path / "batch"
    folder.mkdir()
    # 1 MB that inflates to more than the worker's memory cap: pdfium aborts
    # its process (SIGABRT) when an allocation fails.
    decompression_bomb_pdf(folder / "a-bomb.pdf", megabytes=1100)
    # 700 KB that inflates to 700 MB of XML: over the worker's memory cap.
    zip_bomb_docx(folder / "b-bomb.docx", megabytes=700)
    slow_pdf(folder / "c-slow.pdf", pages=1500)  # would parse for ~20 s
    (folder / "d-good.md").write_text("After the bad ones: the good note about kestrels.")
    make_pdf(folder / "e-good.pdf", ["A good PDF page about ferns and mosses."])
    # Whole files (no page ranges): the slow PDF is one parse that overruns,
    # as a hanging parser does; a range that overruns is tests/test_pdf_ranges.py's.
    # 8 s, not less: the bomb must blow the memory cap before the timeout, and
    # on a loaded machine inflating it took pdfium more than 4 s.
    settings = Settings(
        index=tmp_path / "index", parse_timeout=8, parse_memory_mb=1024, pdf_pages_per_range=0
    )
    report = ingest_paths([str(folder)], settings, embedder=embedder)
    failed = {Path(f.path).name: f.error for f in report.failed}
    assert set(failed) == {"a-bomb.pdf", "b-bomb.docx", "c-slow.pdf"}
    assert failed["a-bomb.pdf"].startswith("the parser crashed on this file (exit code")
    assert failed["b-bomb.docx"] == "parsing needed more than 1024 MB of memory"
    assert failed["c-slow.pdf"] == "parsing took longer than 8 s; the file was skipped"
    # Each dead worker was replaced: the files after them parse normally.
    assert report.added == 2
    assert sorted(Path(p).name for p in state(tmp_path / "index")) == ["d-good.md", "e-good.pdf"]


# -- OCR ---------------------------------------------------------------------------------


# The two tests that change tesseract's environment run `ingest` as a process
# of its own: the parser workers inherit the environment of the process that
# started their forkserver, which in this one was started long before.
def ocr_ingest(scan: Path, index: Path, path: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [INGEST, str(scan), "--index", str(index), "--ocr", "--json"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PATH": path, **env},
    )  # fmt: skip


def test_ocr_without_tesseract_says_what_to_install(tmp_path):
    # The same command with tesseract out of reach: PATH holds only the venv.
    scan = image_only_pdf(tmp_path / "scan.pdf", "The submarine cable reached Lisbon in 1870.")
    result = ocr_ingest(scan, tmp_path / "index", str(Path(INGEST).parent))
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["failed"] == [
        {
            "path": str(scan),
            "error": "OCR asked for but tesseract is not installed (apt-get install tesseract-ocr)",
        }
    ]


def test_ocr_reads_a_scanned_pdf(tmp_path, embedder):
    # `make test` installs Debian's tesseract-ocr, so this runs in CI.
    assert shutil.which("tesseract"), "tesseract is missing: run `make system-setup`"
    scan = image_only_pdf(tmp_path / "scan.pdf", "The submarine cable reached Lisbon in 1870.")
    index = tmp_path / "index"
    # In this process: the environment is this one, tesseract on the PATH.
    without = cli(ingest_main, [str(scan), "--index", str(index), "--json"])
    assert "needs OCR (run ingest with --ocr)" in without.stdout
    result = cli(ingest_main, [str(scan), "--index", str(index), "--ocr", "--json"])
    assert result.returncode == 0, result.stdout + result.stderr
    hits = KnowledgeBase.open(index, embedder).search("submarine cable Lisbon", k=1)
    assert "Lisbon" in hits[0].text and hits[0].page == 1


# -- uploads -------------------------------------------------------------------------------


def test_uploads_land_inside_the_uploads_folder_under_sanitized_names(tmp_path):
    kb_dir = tmp_path / "indexes" / "kb"
    docx = make_docx(tmp_path / "d.docx", "T", ["x"]).read_bytes()
    uploads = [
        Upload("../../escape.md", b"# up two"),
        Upload("..\\..\\windows.md", b"# backslashes"),
        Upload("/etc/cron.d/evil.md", b"# absolute"),
        Upload("....//....//dots.md", b"# dots"),
        Upload(".bashrc.md", b"# hidden"),
        Upload("nul\x00byte.md", b"# nul"),
        Upload("rtl\u202egpj.md", b"# right-to-left override"),
        Upload("résumé 2024.docx", docx),
        Upload("..", b"# no name at all"),
        Upload("payload.exe", b"MZ"),
        Upload("notes.md.exe", b"MZ"),
        Upload("big.md", b"x" * 2_000_000),
    ]
    saved = save_uploads(LOCAL_ADMIN, kb_dir, uploads, max_mb=1)
    folder = (kb_dir / UPLOADS).resolve()
    names = sorted(Path(p).name for p in saved.paths)
    assert names == [
        "bashrc.md", "dots.md", "escape.md", "evil.md", "nul_byte.md", "rtl_gpj.md",
        "résumé 2024.docx", "windows.md",
    ]  # fmt: skip
    assert all(Path(p).parent == folder for p in saved.paths)
    refused = dict(saved.refused)
    assert set(refused) == {"..", "payload.exe", "notes.md.exe", "big.md"}
    assert "unsupported type" in refused["payload.exe"] and "1 MB" in refused["big.md"]
    # Nothing was written anywhere but the uploads folder.
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - {tmp_path / "d.docx"}
    assert {p.parent for p in written} == {folder}


def test_a_failing_tesseract_fails_only_its_file(tmp_path):
    # The real tesseract, without its language data: it exits non-zero.
    assert shutil.which("tesseract"), "tesseract is missing: run `make system-setup`"
    scan = image_only_pdf(tmp_path / "scan.pdf", "The submarine cable reached Lisbon in 1870.")
    good = tmp_path / "good.md"
    good.write_text("# Cables\n\nThe first transatlantic cable failed after three weeks.\n")
    index = tmp_path / "index"
    result = subprocess.run(
        [INGEST, str(scan), str(good), "--index", str(index), "--ocr", "--json"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "TESSDATA_PREFIX": str(tmp_path / "no-language-data")},
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert [f["path"] for f in summary["failed"]] == [str(scan)]
    assert summary["failed"][0]["error"].startswith("OCR failed (tesseract: ")
    assert summary["added"] == 1
