"""`rag eval --stages`: each answering stage scored against the judgements.
The pure parts (halves, the negative set, the summary) on known answers;
the command itself on a small BEIR dataset against the real CPU server."""

from __future__ import annotations

import json

import pytest
from builders import write_beir
from click.testing import CliRunner

from cli.rag_main import main as rag_main
from rag.answering.profiles import SMALL_MODEL_PROFILE
from rag.evaluation import Dataset, StageRow, half, summarize, without_judged

DOCS = {
    "d1": ("Volcanoes", "Mount Vesuvius erupted in 79 AD and buried Pompeii in volcanic ash."),
    "d2": ("Tea", "Green tea leaves are not oxidised; black tea leaves are fully oxidised."),
    "d3": ("Planets", "Jupiter is the largest planet of the Solar System."),
    "d4": ("Birds", "The Arctic tern has the longest migration of any animal."),
    "d5": ("Fish", "Salmon swim upstream to the river where they hatched to spawn."),
}
QUERIES = {
    "q1": "Which town did Vesuvius bury in ash?",
    "q2": "Which planet is the largest in the Solar System?",
    "q3": "Which bird has the longest migration?",
}
QRELS = {"q1": "d1", "q2": "d3", "q3": "d4"}


def test_the_halves_split_the_queries_by_id_alike_on_every_run():
    ids = [str(n) for n in range(300)]
    tune, test = half(ids, "tune"), half(reversed(ids), "test")
    assert sorted(tune + test) == sorted(ids) and not set(tune) & set(test)
    assert 100 < len(tune) < 200, "a hash of the id splits about evenly"
    assert half(ids, "tune") == tune == sorted(tune)
    assert half(ids, "all") == sorted(ids)


def test_the_negative_set_lacks_exactly_the_judged_documents(tmp_path):
    corpus = [{"_id": d, "title": t, "text": x} for d, (t, x) in DOCS.items()]
    qrels = {q: {d: 1} for q, d in QRELS.items()}
    data = Dataset(tmp_path, corpus, QUERIES, qrels)
    left = [doc.path.rsplit("#", 1)[-1] for doc in without_judged(data, ["q1", "q3"])]
    assert left == ["d2", "d3", "d5"]


def test_the_summary_follows_the_rows():
    rows = [
        StageRow("a", False, retrieved=2, kept=1, kept_total=3, cited=1, cited_total=1,
                 answered=True, seconds={"screen": 2.0}, tokens={"screen": 100}),
        StageRow("b", False, retrieved=1, kept=0, kept_total=2, cited=0, cited_total=2,
                 answered=True, seconds={"screen": 4.0}, tokens={"screen": 300, "read": 50}),
        StageRow("c", False, retrieved=0, answered=False, seconds={"screen": 0.0}),
        StageRow("n", True, answered=False, seconds={"screen": 2.0}),
    ]  # fmt: skip
    summary = summarize(rows)
    assert (summary["queries"], summary["negatives"], summary["errors"]) == (3, 1, 0)
    assert summary["in_retrieved"] == pytest.approx(2 / 3)
    assert summary["in_kept"] == summary["in_cited"] == pytest.approx(1 / 3)
    assert summary["screen_precision"] == pytest.approx(1 / 5)  # 1 relevant of 5 kept
    assert summary["screen_recall"] == pytest.approx(1 / 3)  # 1 of 3 retrieved kept
    assert summary["citation_precision"] == pytest.approx(1 / 3)
    assert summary["not_found_positive"] == pytest.approx(1 / 3)
    assert summary["rejected_negative"] == 1.0
    assert summary["screen_seconds"] == pytest.approx(2.0)
    assert summary["read_tokens"] == pytest.approx(12.5)
    assert summarize(rows[:1])["rejected_negative"] is None, "no negatives: nothing to divide"


@pytest.fixture
def dataset(tmp_path):
    return write_beir(tmp_path / "mini", DOCS, QUERIES, QRELS)


@pytest.fixture
def served(monkeypatch, llm_server):
    """Only the server's address set: model and profile are discovered."""
    import os

    for key in [k for k in os.environ if k.startswith("RAG_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("RAG_LLM_URL", llm_server.base_url)
    return llm_server


ARGS = ["--stages", "--limit", "2", "--negatives", "1"]


@pytest.mark.llm
def test_rag_eval_stages_scores_every_stage_on_the_cpu_server(dataset, tmp_path, served):
    index = tmp_path / "eval-index"
    result = CliRunner().invoke(
        rag_main, ["eval", str(dataset), "--index", str(index), *ARGS, "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["model"] == served.served_model_name
    assert out["settings"]["screen_k"] == SMALL_MODEL_PROFILE["screen_k"], "profile discovered"
    rows = [StageRow(**row) for row in out["queries"]]
    assert [(r.qid, r.negative) for r in rows] == [("q1", False), ("q2", False), ("q3", True)]
    assert not any(r.error for r in rows), [r.error for r in rows]
    assert all(r.retrieved >= 1 for r in rows[:2]), "five documents: retrieval finds each"
    assert rows[2].retrieved == 0, "asked of the index without its judged document"
    assert all(r.kept <= r.kept_total and r.cited <= r.cited_total for r in rows)
    assert all(r.seconds["retrieve"] > 0 for r in rows)
    assert out["summary"] == pytest.approx(summarize(rows))
    assert out["summary"]["in_retrieved"] == 1.0


@pytest.mark.llm
def test_rag_eval_stages_prints_a_row_per_query_and_the_summary(dataset, tmp_path, served):
    index = tmp_path / "eval-index"
    result = CliRunner().invoke(rag_main, ["eval", str(dataset), "--index", str(index), *ARGS])
    assert result.exit_code == 0, result.output
    table = result.stdout
    for column in ("retrieved", "kept", "cited", "answer", "seconds", "tokens"):
        assert column in table, column
    lines = table.splitlines()
    assert [line.split("│")[1].strip() for line in lines if "judged" in line or "negati" in line][
        :3
    ] == ["q1", "q2", "q3"]
    measures = ("in_retrieved", "in_kept", "in_cited", "screen_precision", "screen_recall",
                "citation_precision", "rejected_negative", "read_tokens")  # fmt: skip
    for measure in measures:
        assert measure in table, measure
    assert any("in_retrieved" in line and "1.000" in line for line in lines)
