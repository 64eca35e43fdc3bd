"""Two real vLLM CPU replicas behind the real vllm-router: `rag ask` through
the router, a concurrent load spread over both (each replica's own
`/metrics`), and one replica killed mid-load with no answer lost.

Replica 1 is the session's server (tests/conftest.py); replica 2 is started
here, and it is the one killed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.rag_main import main as rag_main
from serving import launch, router

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_router", REPO / "bench" / "router.py")
assert _spec and _spec.loader
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_router"] = bench  # dataclasses look their module up there
_spec.loader.exec_module(bench)

QUESTION = "How are broken files reported during ingestion?"


def test_the_router_command_is_printed_and_bad_replicas_are_refused():
    printed = subprocess.run(
        [sys.executable, "-m", "serving.router", "http://10.0.0.1:8000",
         "http://10.0.0.2:8000/v1", "--print"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    assert "--worker-urls http://10.0.0.1:8000 http://10.0.0.2:8000 " in printed.stdout
    assert "--host 127.0.0.1 " in printed.stdout  # loopback unless told otherwise
    assert "--policy round_robin" in printed.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "serving.router", "10.0.0.1:8000", "--print"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "replica '10.0.0.1:8000': expected http://HOST:PORT" in bad.stderr


@pytest.fixture(scope="module")
def second_replica(llm_server):
    server = launch.start(launch.build_config(device="cpu", port=launch.free_port()))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def front(llm_server, second_replica):
    config = router.router_config(
        [llm_server.base_url, second_replica.base_url],
        port=launch.free_port(), metrics_port=launch.free_port(),
    )  # fmt: skip
    with launch.serve(config, timeout=120) as running:
        yield running


@pytest.mark.llm
def test_rag_ask_answers_through_the_router(front, llm_server, second_replica, built_index,
                                            llm_settings, monkeypatch):  # fmt: skip
    replicas = [llm_server.base_url, second_replica.base_url]
    before = sum(bench.finished(url) for url in replicas)
    for key, value in llm_settings.model_dump().items():
        monkeypatch.setenv(f"RAG_{key.upper()}", str(value))
    monkeypatch.setenv("RAG_LLM_URL", front.base_url)
    result = CliRunner().invoke(rag_main, ["ask", QUESTION, "--index", str(built_index), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["answer"].strip()
    assert sum(bench.finished(url) for url in replicas) > before  # the replicas answered


@pytest.mark.llm
def test_a_load_through_the_router_is_spread_over_both_replicas(front, llm_server,
                                                                second_replica):  # fmt: skip
    replicas = [llm_server.base_url, second_replica.base_url]
    before = [bench.finished(url) for url in replicas]
    chat = bench.client(front.base_url, llm_server.served_model_name)
    load = bench.run_load(chat, requests=12, concurrency=4, max_tokens=32)
    assert (load.ok, load.failed) == (12, 0), load.reasons
    served = [bench.finished(url) - b for url, b in zip(replicas, before, strict=True)]
    assert sum(served) >= 12
    assert min(served) >= 3, served  # round robin: about half each


@pytest.mark.llm
def test_a_replica_killed_mid_load_loses_no_answer(front, llm_server, second_replica):
    # Runs last in this module: replica 2 stays dead.
    before = bench.finished(llm_server.base_url)
    chat = bench.client(front.base_url, llm_server.served_model_name)
    kill = bench.kill_when_busy(second_replica)
    # Requests that reach the router just as replica 2 dies, all at once and
    # without our client's retry: the router alone must deliver each one, though
    # its round robin keeps offering the dead replica until it is taken out.
    bare = bench.client(front.base_url, llm_server.served_model_name, retries=0)
    burst: list[bench.Load] = []

    def kill_then_burst() -> None:
        kill()
        burst.append(bench.run_load(bare, requests=8, concurrency=8, max_tokens=8))

    load = bench.run_load(chat, requests=12, concurrency=4, max_tokens=48, during=kill_then_burst)
    assert second_replica.process.wait(timeout=30) is not None  # it really died
    assert (burst[0].ok, burst[0].failed) == (8, 0), burst[0].reasons
    assert (load.ok, load.failed) == (12, 0), load.reasons
    # What replica 2 could not finish, replica 1 did.
    assert bench.finished(llm_server.base_url) - before >= 6
