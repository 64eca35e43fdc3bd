"""The answering bench's corpus (bench/qa/corpus.py) must not hold the
question set: docs/answering.md quotes the bench's questions, unanswerable
ones included, so ingesting it would put their words into the knowledge base."""

import importlib.util
from pathlib import Path

# bench/ is scripts, not an installed package: loaded by path, as CI's
# pytest does not put the repository root on sys.path.
_CORPUS = Path(__file__).resolve().parent.parent / "bench" / "qa" / "corpus.py"
_spec = importlib.util.spec_from_file_location("bench_qa_corpus", _CORPUS)
assert _spec is not None and _spec.loader is not None
corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(corpus)
build = corpus.build


def test_corpus_leaves_out_the_pages_that_quote_the_questions(tmp_path: Path) -> None:
    kb = build(tmp_path / "kb")
    assert (kb / "docs" / "getting-started.md").exists()  # the sample base is still there
    names = {p.name for p in kb.rglob("*")}
    assert "answering.md" not in names
    assert "BENCHMARKS.md" not in names
