"""Benchmark corpora: real documents, fetched once and cached under
~/.cache/kbqa/bench (override with KBQA_CACHE)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("KBQA_CACHE", Path.home() / ".cache" / "kbqa")) / "bench"
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
DEBIAN_DOCS = {
    "python3.11-doc": "usr/share/doc/python3.11/html",
    "postgresql-doc-15": "usr/share/doc/postgresql-doc-15/html",
    "linux-doc-6.1": "usr/share/doc/linux-doc-6.1/html",
}


def _unpack(package: str, target: Path) -> Path:
    """apt-get download PACKAGE and dpkg -x it into target/x."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", package], cwd=tmp, check=True)
        deb = next(Path(tmp).glob(f"{package}_*.deb"))
        subprocess.run(["dpkg", "-x", str(deb), str(target / "x")], check=True)
    return target / "x"


def r_manuals() -> Path:
    """The R manuals as PDFs: apt-get download + dpkg -x, cached."""
    target = CACHE / "r-doc-pdf"
    if not (target / "done").exists():
        shutil.rmtree(target, ignore_errors=True)
        (target / "pdf").mkdir(parents=True)
        unpacked = _unpack("r-doc-pdf", target)
        for pdf in sorted((unpacked / "usr/share/R/doc/manual").glob("*.pdf")):
            if pdf.name != "fullrefman.pdf":  # byte-identical to refman.pdf
                shutil.copy(pdf, target / "pdf" / pdf.name)
        shutil.rmtree(unpacked)
        (target / "done").touch()
    return target / "pdf"


def beir_texts(corpus: Path, limit: int | None = None) -> Iterator[tuple[str, str]]:
    """(id, text) of a BEIR folder's documents (title, blank line, text),
    the first `limit` of them: what each becomes as a text file."""
    with open(corpus / "corpus.jsonl", encoding="utf-8") as fh:
        for n, line in enumerate(fh):
            if limit is not None and n >= limit:
                return
            doc = json.loads(line)
            yield str(doc["_id"]), f"{doc['title']}\n\n{doc['text']}"


def scifact_texts() -> Path:
    target = CACHE / "scifact-txt"
    if not (target / "done").exists():
        shutil.rmtree(target, ignore_errors=True)
        (target / "txt").mkdir(parents=True)
        for name, text in beir_texts(SCIFACT):
            (target / "txt" / f"{name}.txt").write_text(text, encoding="utf-8")
        (target / "done").touch()
    return target / "txt"


def debian_html(package: str) -> Path:
    """The HTML documentation a Debian package ships."""
    target = CACHE / package
    if not (target / "done").exists():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        _unpack(package, target)
        (target / "done").touch()
    return target / "x" / DEBIAN_DOCS[package]
