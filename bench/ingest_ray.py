"""Ingestion in one process against `ingest --ray`, on the same files: chunks
per second and where the time goes (the seconds of each phase as the
`ingest` process waited for it, and the work summed over Ray's tasks and
actors).

CORPUS is a folder of files, or a BEIR folder (with corpus.jsonl, e.g.
../shared/data/scifact), turned into one text file per document as
bench/corpora.py does for SciFact. Each run is a fresh process with a fresh
index; wall time includes loading the model and starting Ray.

    .venv/bin/python bench/ingest_ray.py ../shared/data/scifact
    .venv/bin/python bench/ingest_ray.py ../shared/data/scifact --limit 500 --ray-address auto
"""

from __future__ import annotations

import argparse
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

PHASES = ("scan", "parse", "chunk", "embed", "write")


def files_of(corpus: Path, limit: int | None, into: Path) -> Path:
    """A folder of the corpus's files (the first `limit` of them)."""
    if (corpus / "corpus.jsonl").exists():
        with open(corpus / "corpus.jsonl", encoding="utf-8") as fh:
            for n, line in enumerate(fh):
                if limit is not None and n >= limit:
                    break
                doc = json.loads(line)
                text = f"{doc['title']}\n\n{doc['text']}"
                (into / f"{doc['_id']}.txt").write_text(text, encoding="utf-8")
        return into
    if limit is None:
        return corpus
    for path in sorted(p for p in corpus.rglob("*") if p.is_file())[:limit]:
        shutil.copy(path, into / path.name)
    return into


def child(folder: Path, index: Path, address: str | None) -> None:
    from ingest.pipeline import ingest_paths
    from rag.settings import Settings

    settings = Settings(index=index)
    started = time.perf_counter()
    if address is None:
        report = ingest_paths([str(folder)], settings)
    else:
        from ingest.distributed import ray_engine

        with ray_engine(address, settings) as engine:
            report = ingest_paths([str(folder)], settings, engine=engine)
    result = report.to_dict()
    result["wall"] = time.perf_counter() - started
    print("RESULT " + json.dumps(result))


def measure(folder: Path, address: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, __file__, "--child", str(folder), str(Path(tmp) / "i")]
        if address is not None:
            argv += ["--ray-address", address]
        out = subprocess.run(argv, capture_output=True, text=True, cwd=corpora.ROOT)
        if out.returncode:
            raise SystemExit(f"run failed ({out.returncode}):\n{out.stderr[-3000:]}")
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line[len("RESULT ") :])
    return result


def describe_embedding() -> str:
    """Where ingestion embeds here, as the settings resolve it."""
    import torch

    from rag.embedding import resolve_device, resolve_precision
    from rag.settings import Settings

    settings = Settings()
    device = resolve_device(settings.embed_device)
    name = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "CPU"
    precision = resolve_precision(settings.embed_precision, device)
    return f"Embedding on {device} ({name}), {precision}; torch {torch.__version__}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("corpus", type=Path, nargs="?", help="a folder of files, or a BEIR folder")
    parser.add_argument("--limit", type=int, default=None, help="only the first N documents")
    parser.add_argument("--ray-address", default="auto", help="--ray's address [auto]")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        address = args.ray_address if "--ray-address" in sys.argv else None
        child(Path(args.child[0]), Path(args.child[1]), address)
        return 0

    print(f"Ingestion, one process vs --ray — {platform.node()}, {os.cpu_count()} cores, "
          f"{date.today()}; corpus {args.corpus}" + (f" (first {args.limit})" if args.limit else "")
          + "\n")  # fmt: skip
    print(describe_embedding() + "\n")
    print("| pipeline | files | chunks | seconds | chunks/s | "
          + " | ".join(f"{p} (s)" for p in PHASES)
          + " | Ray tasks parse / chunk (s, summed) | Ray actors embed (s, summed) |")  # fmt: skip
    print("|---" * (5 + len(PHASES) + 2) + "|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = files_of(args.corpus, args.limit, Path(tmp))
        for name, address in (
            ("one process", None),
            (f"--ray {args.ray_address}", args.ray_address),
        ):
            r = measure(folder, address)
            work = r["worker_seconds"]
            tasks = f"{work['parse']:.1f} / {work['chunk']:.1f}" if work else "—"
            embed = f"{work['embed']:.1f}" if work else "—"
            phases = " | ".join(f"{r['phases'].get(p, 0.0):.1f}" for p in PHASES)
            rate = r["chunks_embedded"] / r["wall"]
            print(f"| {name} | {r['added']} | {r['chunks_embedded']} | {r['wall']:.1f} | "
                  f"{rate:.1f} | {phases} | {tasks} | {embed} |")  # fmt: skip
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
