"""The `ingest` and `rag` command lines: exit codes, messages, JSON."""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner

from cli.ingest_main import main as ingest_main
from cli.rag_main import main as rag_main


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def mixed(tmp_path, corpus_dir):
    folder = tmp_path / "mixed"
    shutil.copytree(corpus_dir, folder)
    (folder / "broken.pdf").write_bytes(b"%PDF-1.7\n" + b"\x00garbage" * 20)
    (folder / "empty.md").write_bytes(b"")
    (folder / "image.png").write_bytes(b"\x89PNG\r\n")
    return folder


def test_ingest_json_summary_and_exit_code_1_for_failed_files(runner, mixed, tmp_path):
    index = tmp_path / "index"
    result = runner.invoke(ingest_main, [str(mixed), "--index", str(index), "--json"])
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert {"added", "updated", "unchanged", "failed", "chunks_embedded", "seconds"} <= set(summary)
    assert summary["added"] == 5
    failed = {f["path"].rsplit("/", 1)[1]: f["error"] for f in summary["failed"]}
    assert set(failed) == {"broken.pdf", "empty.md"}
    assert "PDF" in failed["broken.pdf"] and "empty" in failed["empty.md"]
    assert [s["path"].rsplit("/", 1)[1] for s in summary["skipped"]] == ["image.png"]

    again = json.loads(
        runner.invoke(ingest_main, [str(mixed), "--index", str(index), "--json"]).stdout
    )
    assert (again["unchanged"], again["added"], again["chunks_embedded"]) == (5, 0, 0)


def test_ingest_clean_folder_exits_0_with_readable_summary(runner, corpus_dir, tmp_path):
    result = runner.invoke(ingest_main, [str(corpus_dir), "--index", str(tmp_path / "i")])
    assert result.exit_code == 0, result.output
    assert "added      5" in result.stdout and "failed     0" in result.stdout


def test_ingest_usage_errors_exit_2(runner, tmp_path):
    assert runner.invoke(ingest_main, []).exit_code == 2
    assert runner.invoke(ingest_main, ["--sync", "--delete", "x"]).exit_code == 2
    assert runner.invoke(ingest_main, ["--bogus"]).exit_code == 2


def test_ingest_into_an_unknown_store_names_it_with_exit_3(runner, corpus_dir, tmp_path):
    index = tmp_path / "i"
    args = [str(corpus_dir), "--index", str(index), "--store", "cassandra://db:9042"]
    result = runner.invoke(ingest_main, args)
    assert result.exit_code == 3, result.output
    assert "'cassandra'" in result.stderr and "Traceback" not in result.output
    assert not (index / "CURRENT").exists()


def test_ingest_refuses_incompatible_index_with_exit_3(
    runner, built_index, corpus_dir, monkeypatch
):
    monkeypatch.setenv("RAG_CHUNK_TOKENS", "99")
    result = runner.invoke(ingest_main, [str(corpus_dir), "--index", str(built_index)])
    assert result.exit_code == 3
    assert "--rebuild" in result.stderr


def test_rag_search_json(runner, built_index):
    result = runner.invoke(
        rag_main, ["search", "largest planet", "--index", str(built_index), "--json", "-k", "3"]
    )
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert len(hits) == 3
    assert set(hits[0]) == {"text", "source", "page", "locator", "score", "chunk_id"}
    assert hits[0]["source"].endswith("astronomy.pdf") and hits[0]["page"] == 2


@pytest.mark.parametrize("mode", ["hybrid", "dense", "bm25"])
def test_rag_search_table_in_every_mode(runner, built_index, mode):
    result = runner.invoke(
        rag_main, ["search", "Pompeii ash", "--index", str(built_index), "--mode", mode]
    )
    assert result.exit_code == 0, result.output
    assert "volcanoes.md" in result.stdout


def test_rag_stats(runner, built_index):
    result = runner.invoke(rag_main, ["stats", "--index", str(built_index), "--json"])
    stats = json.loads(result.stdout)
    assert stats["documents"] == 5
    assert stats["chunks"] == stats["vectors"] > 0
    assert stats["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert stats["disk_bytes"] > 0
    assert stats["store"] == "local" and stats["generation"] >= 1
    text = runner.invoke(rag_main, ["stats", "--index", str(built_index)]).stdout
    assert "chunks" in text
    when = datetime.fromtimestamp(stats["updated_at"], tz=UTC)
    assert re.search(rf"updated_at +{when:%Y-%m-%d %H:%M:%S} UTC\n", text), text


def test_rag_on_missing_index_is_one_clear_line(runner, tmp_path):
    where = tmp_path / "none"
    result = runner.invoke(rag_main, ["search", "x", "--index", str(where)])
    assert result.exit_code == 1
    assert result.stderr == (
        "error: The knowledge base 'none' does not exist or has no documents yet. "
        f"(looked in {where})\n"
    )
    assert "Traceback" not in result.output


def test_rag_bad_mode_is_a_usage_error(runner, built_index):
    assert runner.invoke(rag_main, ["search", "x", "--mode", "magic"]).exit_code == 2


def test_ingest_search_and_stats_with_milvus_lite(runner, corpus_dir, tmp_path):
    from rag.store.milvus import schema as milvus_schema

    index, uri = tmp_path / "m", f"milvus-lite://{tmp_path}/m.db"
    try:
        args = [str(corpus_dir), "--index", str(index), "--store", uri, "--json"]
        result = runner.invoke(ingest_main, args)
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert (summary["added"], summary["generation"]) == (5, 1)
        for mode in ("hybrid", "dense", "bm25"):
            args = ["search", "Pompeii ash", "--index", str(index), "--mode", mode, "--json"]
            result = runner.invoke(rag_main, args)
            assert result.exit_code == 0, result.output
            assert json.loads(result.stdout)[0]["source"].endswith("volcanoes.md"), mode
        result = runner.invoke(rag_main, ["stats", "--index", str(index), "--json"])
        stats = json.loads(result.stdout)
        assert (stats["store"], stats["documents"], stats["generation"]) == (uri, 5, 1)
        assert stats["chunks"] == stats["vectors"] > 0
        again = runner.invoke(ingest_main, [str(corpus_dir), "--index", str(index), "--json"])
        assert json.loads(again.stdout)["unchanged"] == 5  # the store found from --index alone
        args = [str(corpus_dir), "--index", str(index), "--store", "local"]
        other = runner.invoke(ingest_main, args)
        assert other.exit_code == 3 and f"kept in the store '{uri}'" in other.stderr
    finally:
        milvus_schema.release(milvus_schema.parse_uri(uri))


def test_ingest_tags_and_search_filters(runner, corpus_dir, tmp_path, monkeypatch):
    index = tmp_path / "index"
    result = runner.invoke(ingest_main, [str(corpus_dir), "--index", str(index), "--tag", "Ops"])
    assert result.exit_code == 0, result.output
    monkeypatch.chdir(corpus_dir.parent)

    def search(*options, k="3"):
        args = ["search", "Pompeii ash", "--index", str(index), "-k", k, "--json", *options]
        return runner.invoke(rag_main, args)

    everything = json.loads(search().stdout)
    assert everything[0]["source"].endswith("volcanoes.md")
    scoped = search("--tag", "ops", "--type", "pdf", "--after", "2000-01-01", k="2")
    assert scoped.exit_code == 0, scoped.output
    sources = {h["source"] for h in json.loads(scoped.stdout)}
    assert len(json.loads(scoped.stdout)) == 2 and all(s.endswith(".pdf") for s in sources)
    prefix = search("--path-prefix", f"{corpus_dir.name}/", "--type", "md")
    assert all(h["source"].startswith(str(corpus_dir)) for h in json.loads(prefix.stdout))
    nothing = search("--tag", "travel")
    assert nothing.exit_code == 1
    assert nothing.stderr.startswith("error: No document matches the filters (tagged travel)")
    future = search("--before", "1999-12-31", "--type", "md")
    assert "modified before 1999-12-31" in future.stderr and future.exit_code == 1
    bad = search("--after", "yesterday")
    assert bad.exit_code == 1 and "'yesterday' is not an ISO date" in bad.stderr
    assert "--path-prefix" in runner.invoke(rag_main, ["ask", "--help"]).stdout
