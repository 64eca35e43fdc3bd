"""The `rag` command reaches the core service (core/service.py) as the app,
the HTTP API and MCP do (issue 32): the same length check and message, the
same MAX_K, the same name rule, the same missing-base message and the one
open-base cache. Real FAISS, SQLite and embedding model; the LLM is a
closed port (answers are not the subject here)."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from cli.rag_main import main as rag_main
from core.service import MAX_K, KnowledgeService, passage_count_message, too_long_message
from rag import telemetry
from rag.settings import Settings
from serving.launch import free_port
from team.access import KB_NAME_RULE, LOCAL_USER, Access, AccessPolicy

LONG = "why " * 60  # 240 characters


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def short_limit(monkeypatch):
    """Questions of at most 200 characters, and no LLM server (a closed port)."""
    monkeypatch.setenv("RAG_MAX_QUESTION_CHARS", "200")
    monkeypatch.setenv("RAG_LLM_URL", f"http://127.0.0.1:{free_port()}/v1")
    monkeypatch.setenv("RAG_LLM_RETRIES", "0")


def test_an_over_long_query_or_question_gets_the_core_message(runner, built_index, short_limit):
    for command, what in (("search", "query"), ("ask", "question")):
        result = runner.invoke(rag_main, [command, LONG, "--index", str(built_index)])
        assert result.exit_code == 1, (command, result.output)
        assert result.stderr == f"error: {too_long_message(what, 240, 200)}\n", command
        assert result.stdout == ""


def test_search_k_is_capped_by_max_k_with_the_core_message(runner, built_index):
    args = ["search", "planet", "--index", str(built_index), "--json", "-k"]
    over = runner.invoke(rag_main, [*args, str(MAX_K + 1)])
    assert over.exit_code == 1, over.output
    assert over.stderr == f"error: {passage_count_message(MAX_K + 1, MAX_K)}\n"
    at_most = runner.invoke(rag_main, [*args, str(MAX_K)])
    assert at_most.exit_code == 0, at_most.output
    assert 0 < len(json.loads(at_most.stdout)) <= MAX_K


@pytest.mark.parametrize("folder", ["my index", "_hidden", "n" * 65])
def test_a_folder_name_that_breaks_the_name_rule_is_a_clear_usage_error(
    runner, built_index, tmp_path, folder
):
    index = tmp_path / folder
    shutil.copytree(built_index, index)
    for command in (["search", "planet"], ["stats"], ["ask", "Which planet is largest?"]):
        result = runner.invoke(rag_main, [*command, "--index", str(index)])
        assert result.exit_code == 2, (command, result.output)
        assert repr(folder) in result.stderr and KB_NAME_RULE in result.stderr, result.stderr
        assert "Traceback" not in result.output


def test_a_missing_base_gets_the_core_message_and_where_it_looked(runner, tmp_path, short_limit):
    where = tmp_path / "none"
    said = "The knowledge base 'none' does not exist or has no documents yet."
    for command in (["search", "x"], ["stats"], ["ask", "x?"]):
        result = runner.invoke(rag_main, [*command, "--index", str(where)])
        assert result.exit_code == 1, (command, result.output)
        assert result.stderr == f"error: {said} (looked in {where})\n", command


def cache_misses() -> float:
    sample = telemetry.metrics().registry.get_sample_value(
        "kbqa_cache_lookups_total", {"cache": "knowledge_base", "result": "miss"}
    )
    return sample or 0.0


def test_search_and_stats_are_the_services(runner, built_index):
    """The CLI's results are the service's for the same base, and each
    command opens the base through the service's cache (its lookups count)."""
    svc = KnowledgeService(Settings(indexes_root=built_index.parent))
    local = Access(LOCAL_USER, AccessPolicy(None))
    query = "Pompeii ash"
    before = cache_misses()
    result = runner.invoke(rag_main, ["search", query, "--index", str(built_index), "--json"])
    assert result.exit_code == 0, result.output
    assert cache_misses() == before + 1
    expected = svc.search(local, built_index.name, query, k=8)
    assert json.loads(result.stdout) == [h.to_dict() for h in expected]
    stats = runner.invoke(rag_main, ["stats", "--index", str(built_index), "--json"])
    assert stats.exit_code == 0, stats.output
    assert cache_misses() == before + 3  # the service's own open above, then the CLI's
    assert json.loads(stats.stdout) == svc.stats(local, built_index.name).to_dict()
