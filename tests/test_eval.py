"""`rag eval` on a small BEIR-format dataset built by the test."""

from __future__ import annotations

import json

import pytest
from builders import write_beir
from click.testing import CliRunner

from cli.rag_main import main as rag_main
from rag.evaluation import parse_published, score

DOCS = {
    "d1": ("Volcanoes", "Mount Vesuvius erupted in 79 AD and buried Pompeii in ash."),
    "d2": ("Tea", "Green tea leaves are not oxidised; black tea leaves are."),
    "d3": ("Planets", "Jupiter is the largest planet of the Solar System."),
    "d4": ("Birds", "The Arctic tern has the longest migration of any animal."),
    "d5": ("Fish", "Salmon swim upstream to the river where they hatched to spawn."),
}
QUERIES = {"q1": "Which town did Vesuvius bury?", "q2": "largest planet", "q3": "bird migration"}
QRELS = {"q1": "d1", "q2": "d3", "q3": "d4"}


@pytest.fixture
def dataset(tmp_path):
    return write_beir(tmp_path / "mini", DOCS, {**QUERIES, "q-unjudged": "ignored"}, QRELS)


def test_score_known_answers():
    qrels = {"a": {"d1": 1}, "b": {"d2": 1, "d3": 1}}
    run = {"a": {"d9": 3.0, "d1": 2.0}, "b": {"d2": 2.0, "d3": 1.0}}
    metrics = score(qrels, run)
    assert metrics["mrr@10"] == pytest.approx((1 / 2 + 1) / 2)
    assert metrics["recall@100"] == pytest.approx(1.0)
    ndcg_a = (1 / 1.5849625007211563) / 1.0  # relevant at rank 2: 1/log2(3)
    assert metrics["ndcg@10"] == pytest.approx((ndcg_a + 1.0) / 2)


def test_published_rows_are_read_from_the_readme():
    readme = "\n".join(
        ["| system | nDCG@10 | source |", "| --- | --- | --- |", "| BM25 flat | 0.6789 | x |",
         "| dense | 0.645 | y |"]
    )  # fmt: skip
    assert parse_published(readme) == [("BM25 flat", 0.6789), ("dense", 0.645)]


def test_rag_eval_json_and_reuse(dataset, tmp_path):
    index = tmp_path / "eval-index"
    runner = CliRunner()
    first = runner.invoke(rag_main, ["eval", str(dataset), "--index", str(index), "--json"])
    assert first.exit_code == 0, first.output
    out = json.loads(first.stdout)
    assert out["queries"] == 3 and out["chunks_embedded"] == 5
    assert set(out["modes"]) == {"bm25", "dense", "hybrid"}
    for metrics in out["modes"].values():
        assert set(metrics) == {"ndcg@10", "recall@100", "mrr@10"}
        assert metrics["recall@100"] == 1.0  # five documents: all retrieved
    assert out["modes"]["hybrid"]["ndcg@10"] > 0.9
    assert out["published"] == {"BM25": 0.5}

    again = json.loads(
        runner.invoke(
            rag_main, ["eval", str(dataset), "--index", str(index), "--json", "--mode", "bm25"]
        ).stdout
    )
    assert again["chunks_embedded"] == 0
    assert list(again["modes"]) == ["bm25"]


def test_rag_eval_builds_its_index_in_the_store_asked(dataset, tmp_path):
    from rag.store.milvus import schema as milvus_schema

    uri = f"milvus-lite://{tmp_path}/eval.db"
    results = {}
    try:
        for store in ("local", uri):
            index = tmp_path / f"eval-{len(results)}"
            args = ["eval", str(dataset), "--index", str(index), "--store", store, "--json"]
            result = CliRunner().invoke(rag_main, args)
            assert result.exit_code == 0, result.output
            results[store] = json.loads(result.stdout)
            assert results[store]["store"] == store
    finally:
        milvus_schema.release(milvus_schema.parse_uri(uri))
    for mode, metrics in results["local"]["modes"].items():
        assert results[uri]["modes"][mode] == pytest.approx(metrics, abs=1e-6), mode


def test_rag_eval_table(dataset, tmp_path):
    result = CliRunner().invoke(rag_main, ["eval", str(dataset), "--index", str(tmp_path / "i")])
    assert result.exit_code == 0, result.output
    assert "kbqa hybrid" in result.stdout and "published: BM25" in result.stdout


def test_rag_eval_refuses_a_folder_that_is_not_beir(tmp_path):
    result = CliRunner().invoke(rag_main, ["eval", str(tmp_path)])
    assert result.exit_code == 1 and "Not a BEIR dataset" in result.stderr
