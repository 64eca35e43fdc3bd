"""Uploads never silently replace a different file: the same bytes again
are "unchanged", a different file with the same name (or a name that
sanitises the same) is saved under a name of its own."""

from __future__ import annotations

from pathlib import Path

from builders import LOCAL_ADMIN
from test_app import app

from team.library import UPLOADS, Upload, save_uploads


def folder_contents(kb_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (kb_dir / UPLOADS).iterdir()}


def test_the_same_file_uploaded_again_is_unchanged_and_not_rewritten(tmp_path):
    first = save_uploads(
        LOCAL_ADMIN, tmp_path, [Upload("report.md", b"# Q1\n\nRevenue grew.")], max_mb=1
    )
    target = Path(first.paths[0])
    before = target.stat()
    again = save_uploads(
        LOCAL_ADMIN, tmp_path, [Upload("report.md", b"# Q1\n\nRevenue grew.")], max_mb=1
    )
    after = target.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert folder_contents(tmp_path) == {"report.md": b"# Q1\n\nRevenue grew."}
    assert again.unchanged == [("report.md", "report.md")] and not again.renamed
    assert again.paths == [str(target)], "still handed to ingest, which finds it unchanged"


def test_a_different_file_with_the_same_name_gets_a_unique_name(tmp_path):
    save_uploads(LOCAL_ADMIN, tmp_path, [Upload("report.md", b"version one")], max_mb=1)
    second = save_uploads(LOCAL_ADMIN, tmp_path, [Upload("report.md", b"version two")], max_mb=1)
    assert folder_contents(tmp_path) == {
        "report.md": b"version one",
        "report (2).md": b"version two",
    }
    assert second.renamed == [("report.md", "report (2).md")]
    assert second.paths == [str((tmp_path / UPLOADS / "report (2).md").resolve())]
    # The second version again is unchanged under its own name; a third is (3).
    assert save_uploads(
        LOCAL_ADMIN, tmp_path, [Upload("report.md", b"version two")], 1
    ).unchanged == [("report.md", "report (2).md")]
    third = save_uploads(LOCAL_ADMIN, tmp_path, [Upload("report.md", b"version three")], max_mb=1)
    assert third.renamed == [("report.md", "report (3).md")]
    assert len(folder_contents(tmp_path)) == 3


def test_names_that_sanitise_alike_in_one_batch_both_survive(tmp_path):
    saved = save_uploads(
        LOCAL_ADMIN,
        tmp_path,
        [Upload("a?.md", b"question"), Upload("a!.md", b"exclamation")],
        max_mb=1,
    )
    assert folder_contents(tmp_path) == {"a.md": b"question", "a (2).md": b"exclamation"}
    assert saved.renamed == [("a!.md", "a (2).md")]
    assert len(saved.paths) == 2


def test_the_app_says_which_upload_was_renamed_or_unchanged(app_env, kb_root):
    at = app().run()

    def ingest(data: bytes) -> None:
        at.file_uploader[0].set_value([("notes.md", data, "text/markdown")]).run()
        next(b for b in at.button if b.label == "Ingest").click().run()
        assert not at.exception, [e.value for e in at.exception]

    ingest(b"# Notes\n\nThe first notes are about herons.")
    ingest(b"# Notes\n\nOther notes, about egrets.")
    shown = lambda: [i.value.replace("\\", "") for i in at.info]  # noqa: E731 - as read
    assert "notes.md: a different file has this name; saved as notes (2).md." in shown(), shown()
    ingest(b"# Notes\n\nOther notes, about egrets.")
    assert "notes.md: already uploaded as notes (2).md, unchanged." in shown(), shown()
    assert sorted(folder_contents(kb_root / "default")) == ["notes (2).md", "notes.md"]
