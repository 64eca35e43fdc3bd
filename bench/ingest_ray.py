"""Ingestion in one process against `ingest --ray`, on the same files: chunks
per second and where the time goes (the seconds of each phase as the
`ingest` process waited for it, and the work summed over Ray's tasks and
actors). On a GPU, the embedding stage's rate beside the model's raw
forward pass on the same passages (`bench/embed_throughput.py`) as a
ratio, and how busy the GPU was while ingestion embedded (nvidia-smi's
utilisation, sampled every 100 ms, integrated over the run and divided by
the embed phase's seconds). `--parse-workers 2,8,16` adds a one-process run
per number of parser processes.

The phase columns, each second of the `ingest` process counted once:
scan (hashing the files, checking them against the index), parse (waiting
for the parser processes' next file), chunk (splitting in this process:
only documents that come unsplit), model (waiting for the embedding model
to be loaded and warmed up, wherever it loads: a thread, a child process
or Ray's actors), embed (waiting for the embedded vectors of each flush),
write (storing them, and publishing). "embed stage" is chunks over the
embed column's seconds (over the actors' summed seconds with Ray).

CORPUS is a folder of files, or a BEIR folder (with corpus.jsonl, e.g.
../shared/data/scifact), turned into one text file per document as
bench/corpora.py does for SciFact. Each run is a fresh process with a fresh
index; wall time includes loading the model and starting Ray.

    .venv/bin/python bench/ingest_ray.py ../shared/data/scifact
    .venv/bin/python bench/ingest_ray.py ../shared/data/scifact --limit 500 --ray-address auto
    .venv/bin/python bench/ingest_ray.py PDF_FOLDER --pipelines one --parse-workers 2,8,16
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
import embed_throughput

PHASES = ("scan", "parse", "chunk", "model", "embed", "write")


def files_of(corpus: Path, limit: int | None, into: Path) -> Path:
    """A folder of the corpus's files (the first `limit` of them)."""
    if (corpus / "corpus.jsonl").exists():
        for name, text in corpora.beir_texts(corpus, limit):
            (into / f"{name}.txt").write_text(text, encoding="utf-8")
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


def measure(folder: Path, address: str | None, workers: int | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    if workers is not None:
        env["RAG_PARSE_WORKERS"] = str(workers)
    with tempfile.TemporaryDirectory() as tmp, GpuSampler() as gpu:
        argv = [sys.executable, __file__, "--child", str(folder), str(Path(tmp) / "i")]
        if address is not None:
            argv += ["--ray-address", address]
        out = subprocess.run(argv, capture_output=True, text=True, cwd=corpora.ROOT, env=env)
        if out.returncode:
            raise SystemExit(f"run failed ({out.returncode}):\n{out.stderr[-3000:]}")
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line[len("RESULT ") :])
    result["gpu_busy_seconds"] = gpu.busy_seconds
    return result


class GpuSampler:
    """nvidia-smi's utilisation every 100 ms while a run lasts; nothing
    where there is no nvidia-smi. `busy_seconds` integrates it: the seconds
    a kernel was running."""

    def __init__(self) -> None:
        self.busy_seconds: float | None = None
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi"):
            query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
            self._proc = subprocess.Popen(
                [*query, "-lms", "100", "-i", "0"], stdout=subprocess.PIPE, text=True
            )
        return self

    def __exit__(self, *_: object) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        out, _ = self._proc.communicate()
        samples = [float(x) for x in out.split() if x.replace(".", "", 1).isdigit()]
        self.busy_seconds = sum(samples) / 100 * 0.1


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


def print_ceiling(corpus: Path, limit: int | None, rates: list[float]) -> None:
    """The model's raw forward pass on the same passages, and each run's
    embedding stage as a share of it."""
    from rag.embedding import load_embedder, load_token_counter, resolve_device
    from rag.settings import Settings

    settings = Settings()
    device = resolve_device(settings.embed_device)
    embedder = load_embedder(settings.embedding_model, settings.embed_precision, device)
    texts = embed_throughput.passages(corpus, settings.embedding_model, limit)
    ids = load_token_counter(settings.embedding_model).encode(texts)
    seconds = embed_throughput.timed(embed_throughput.raw_forward(embedder, ids, device), device)
    ceiling = len(texts) / seconds
    print(f"\nThe model's raw forward pass on the same {len(texts)} passages "
          f"(batches of 512, inputs already on the device): {ceiling:,.0f} passages/s. "
          "Embedding stage against it (ceiling / stage): "
          + ", ".join(f"{ceiling / r:.2f}x" for r in rates if r) + ".")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("corpus", type=Path, nargs="?", help="a folder of files, or a BEIR folder")
    parser.add_argument("--limit", type=int, default=None, help="only the first N documents")
    parser.add_argument("--ray-address", default="auto", help="--ray's address [auto]")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument(
        "--pipelines", default="one,ray", help="one, ray or both (one,ray) [one,ray]"
    )
    parser.add_argument(
        "--parse-workers", type=lambda v: [int(x) for x in v.split(",")], default=[],
        help="also one-process runs with these numbers of parser processes, e.g. 2,8,16",
    )  # fmt: skip
    parser.add_argument(
        "--ceiling", action="store_true", help="time the raw forward pass too (a BEIR corpus)"
    )
    args = parser.parse_args()
    if args.child:
        address = args.ray_address if "--ray-address" in sys.argv else None
        child(Path(args.child[0]), Path(args.child[1]), address)
        return 0

    print(f"Ingestion, one process vs --ray — {platform.node()}, {os.cpu_count()} cores, "
          f"{date.today()}; corpus {args.corpus}" + (f" (first {args.limit})" if args.limit else "")
          + "\n")  # fmt: skip
    print(describe_embedding() + "\n")
    print("| pipeline | files | pages | chunks | seconds | chunks/s | pages/s | "
          + " | ".join(f"{p} (s)" for p in PHASES)
          + " | embed stage (chunks/s) | GPU busy while embedding "
          + "| Ray tasks parse / chunk (s, summed) | Ray actors embed (s, summed) |")  # fmt: skip
    print("|---" * (7 + len(PHASES) + 4) + "|")
    runs: list[tuple[str, str | None, int | None]] = []
    if "one" in args.pipelines:
        runs += [("one process", None, None)]
        runs += [(f"one process, {n} parsers", None, n) for n in args.parse_workers]
    if "ray" in args.pipelines:
        runs += [(f"--ray {args.ray_address}", args.ray_address, None)]
    rates: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = files_of(args.corpus, args.limit, Path(tmp))
        for name, address, workers in runs:
            r = measure(folder, address, workers)
            work = r["worker_seconds"]
            tasks = f"{work['parse']:.1f} / {work['chunk']:.1f}" if work else "—"
            embed = f"{work['embed']:.1f}" if work else "—"
            phases = " | ".join(f"{r['phases'].get(p, 0.0):.1f}" for p in PHASES)
            rate = r["chunks_embedded"] / r["wall"]
            embed_s = work["embed"] if work else r["phases"].get("embed", 0.0)
            stage = r["chunks_embedded"] / embed_s if embed_s else 0.0
            rates.append(stage)
            busy = r["gpu_busy_seconds"]
            busy_share = f"{min(busy / embed_s, 1.0):.0%}" if busy is not None and embed_s else "—"
            print(f"| {name} | {r['added']} | {r['pages']} | {r['chunks_embedded']} | "
                  f"{r['wall']:.1f} | {rate:.1f} | {r['pages'] / r['wall']:.1f} | {phases} | "
                  f"{stage:.0f} | {busy_share} | {tasks} | {embed} |")  # fmt: skip
            sys.stdout.flush()
    if args.ceiling and (args.corpus / "corpus.jsonl").exists():
        print_ceiling(args.corpus, args.limit, rates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
