"""The answering bench's corpus (bench/qa/corpus.py) must not hold the
question set: docs/answering.md quotes the bench's questions, unanswerable
ones included, so ingesting it would put their words into the knowledge base."""

from pathlib import Path

from bench.qa.corpus import build


def test_corpus_leaves_out_the_pages_that_quote_the_questions(tmp_path: Path) -> None:
    kb = build(tmp_path / "kb")
    assert (kb / "docs" / "getting-started.md").exists()  # the sample base is still there
    names = {p.name for p in kb.rglob("*")}
    assert "answering.md" not in names
    assert "BENCHMARKS.md" not in names
