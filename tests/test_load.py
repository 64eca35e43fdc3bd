"""A bounded load test against the real vLLM CPU server: concurrent
`answer` calls and concurrent searches, all served, none lost. (No timing
thresholds here; the measured table is in BENCHMARKS.md, "Load".)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.llm

LOAD = Path(__file__).resolve().parent.parent / "bench" / "load.py"


def test_concurrent_answers_and_searches_are_all_served(llm_server, built_index):
    result = subprocess.run(
        [
            sys.executable, str(LOAD), "--url", llm_server.base_url,
            "--model", llm_server.served_model_name, "--index", str(built_index),
            "--answers", "4", "--rounds", "2", "--searches", "8", "--search-rounds", "20",
            "--json",
        ],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    levels = {level["kind"]: level for level in json.loads(result.stdout)["levels"]}
    assert levels["answer"]["requests"] == 8 and levels["search"]["requests"] == 160
    for level in levels.values():
        assert level["errors"] == 0, level["reasons"]
        assert level["ok"] == level["requests"]


def test_the_load_script_through_rag_serve_serves_every_request(llm_server, built_index, tmp_path):
    """bench/load.py --via api: the same questions through `rag serve` (the
    openai client and /v1/search), bounded, none lost."""
    index = tmp_path / "kb"
    shutil.copytree(built_index, index)
    result = subprocess.run(
        [
            sys.executable, str(LOAD), "--url", llm_server.base_url,
            "--model", llm_server.served_model_name, "--index", str(index), "--via", "api",
            "--answers", "2", "--rounds", "1", "--searches", "2", "--search-rounds", "5",
            "--json",
        ],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    levels = json.loads(result.stdout)["levels"]
    assert {(level["via"], level["kind"]) for level in levels} == {
        ("api", "answer"), ("api", "search"),
    }  # fmt: skip
    for level in levels:
        assert level["errors"] == 0 and level["ok"] == level["requests"] > 0, level["reasons"]
