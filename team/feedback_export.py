"""Voted answers as a question set for `rag eval --stages` (issue 34, part 4).

`rag eval` reads a BEIR folder (rag/evaluation.py, `load_dataset`):
`corpus.jsonl` ({"_id", "title", "text"} a line), `queries.jsonl`
({"_id", "text"}) and `qrels/test.tsv` (query-id, corpus-id, score, with a
header). The corpus is the passages retrieval found for the exported
questions, each once (the eval ingests them into an index of its own);
each question is judged against its own passages: the ones an up-voted
answer cited are relevant (1), every other retrieved passage, and all of a
down-voted answer's, are judged not relevant (0). A down-voted question so
stays in the set; marking its right passage 1 in qrels/test.tsv makes it a
retrieval test too. The vote and the comment ride along in queries.jsonl
(ignored by the eval) for whoever reads the set.

Feedback text is a user's and treated as hostile: every string written is
neutralised against spreadsheet formulas (a leading = + - @ gets a ').
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from rag.errors import RagError
from rag.types import Hit
from team.appdb.feedback import FeedbackEntry

_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def no_formula(text: str) -> str:
    """`text` as a spreadsheet shows it literally, never as a formula."""
    return "'" + text if text.startswith(_FORMULA) else text


def passage_id(hit: Hit) -> str:
    """A corpus id from the passage's source and text: the same passage in
    several answers is one corpus entry ('#' never appears: rag eval splits
    sources on it)."""
    return "p" + hashlib.sha256(f"{hit.source}\0{hit.text}".encode()).hexdigest()[:16]


@dataclass
class ExportReport:
    folder: Path
    queries: int
    passages: int
    skipped: list[str]  # answer ids with nothing retrieved (nothing to judge against)


def export(
    entries: list[FeedbackEntry],
    out: Path,
    show_source: Callable[[str], str] = lambda s: Path(s).name,
) -> ExportReport:
    """Writes the BEIR folder `out` (which must not exist or be empty), whole
    or not at all: written aside, then renamed into place."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RagError(f"{out} exists and is not an empty folder: name a new one.")
    corpus: dict[str, dict[str, str]] = {}
    queries: list[dict[str, str]] = []
    qrels: list[tuple[str, str, int]] = []
    skipped: list[str] = []
    for entry in entries:
        if not entry.retrieved:
            skipped.append(entry.answer_id)
            continue
        qid = "fb-" + hashlib.sha256(entry.answer_id.encode()).hexdigest()[:16]
        cited = (
            {c.hit.chunk_id for c in entry.turn.answer.citations} if entry.turn.answer else set()
        )
        for hit in entry.retrieved:
            pid = passage_id(hit)
            corpus.setdefault(
                pid,
                {
                    "_id": pid,
                    "title": no_formula(show_source(hit.source)),
                    "text": no_formula(hit.text),
                },
            )
            relevant = int(entry.vote == "up" and hit.chunk_id in cited)
            qrels.append((qid, pid, relevant))
        queries.append({
            "_id": qid, "text": no_formula(entry.turn.question), "vote": entry.vote,
            "comment": no_formula(entry.comment), "answer_id": entry.answer_id,
        })  # fmt: skip
    if not queries:
        raise RagError("No voted answers with retrieved passages to export.")
    _write(out, corpus, queries, qrels)
    return ExportReport(out, len(queries), len(corpus), skipped)


def _write(
    out: Path, corpus: dict[str, dict[str, str]], queries: list[dict[str, str]],
    qrels: list[tuple[str, str, int]],
) -> None:  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        _lines(aside / "corpus.jsonl", corpus.values())
        _lines(aside / "queries.jsonl", queries)
        (aside / "qrels").mkdir()
        rows = ["query-id\tcorpus-id\tscore"] + [
            f"{q}\t{p}\t{s}" for q, p, s in dict.fromkeys(qrels)
        ]
        (aside / "qrels" / "test.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(aside, out)
    except BaseException:
        shutil.rmtree(aside, ignore_errors=True)
        raise


def _lines(path: Path, rows: Iterable[dict[str, str]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
