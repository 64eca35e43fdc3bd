"""Ingestion's start-up: the seconds to import the embedding libraries, load
the model and embed a first batch, for the embedder `load_embedder` picks
(`rag.embedding_bert.BertEmbedder` on plain PyTorch for the default model),
for `rag.embedding_hf.TransformersEmbedder` (transformers, the route of
other architectures) and for `SentenceTransformerEmbedder`. Each measure is
a fresh Python process (imports are cached within one), repeated; the table
gives the median of each step.

    .venv/bin/python bench/startup.py
    .venv/bin/python bench/startup.py --device cuda --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Run in a child: each step's seconds, as JSON on the last line.
PROBE = r"""
import json, sys, time
marks = {}
def step(name, fn):
    started = time.perf_counter()
    out = fn()
    marks[name] = time.perf_counter() - started
    return out
which, model, device = sys.argv[1:4]
step("import torch", lambda: __import__("torch"))
if which == "load_embedder":
    from rag.embedding import load_embedder as make
else:
    step("import transformers", lambda: __import__("transformers"))
    if which == "sentence-transformers":
        step("import sentence_transformers", lambda: __import__("sentence_transformers"))
        from rag.embedding import SentenceTransformerEmbedder as make
    else:
        from rag.embedding_hf import TransformersEmbedder as make
embedder = step("load the model", lambda: make(model, "auto", device))
texts = ["A first passage to embed, of a few words."] * 64
step("first embed (64 passages)", lambda: embedder.embed_batch(texts))
marks["embedder"] = type(embedder).__name__
marks["imported"] = sorted({m.split(".")[0] for m in sys.modules}
                          & {"transformers", "sentence_transformers"})
print(json.dumps(marks))
"""

STEPS = (
    "import torch",
    "import transformers",
    "import sentence_transformers",
    "load the model",
    "first embed (64 passages)",
)


def measure(which: str, model: str, device: str) -> dict[str, object]:
    # This checkout first, then whatever path the caller set (the device
    # machine's carried packages live on PYTHONPATH).
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", PROBE, which, model, device],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
        env={**os.environ, "PYTHONPATH": path},
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"the {which} probe failed:\n{done.stderr[-3000:]}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", default=os.environ.get("RAG_EMBEDDING_MODEL", "all-MiniLM-L6-v2")
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per embedder")
    args = parser.parse_args()
    print(f"Start-up — {platform.node()}, {os.cpu_count()} cores, {date.today()}; "
          f"{args.model} on {args.device}, median of {args.repeats} fresh processes\n")  # fmt: skip
    print("| embedder | " + " | ".join(STEPS) + " | import + load |")
    print("|---" * (len(STEPS) + 2) + "|")
    for which in ("load_embedder", "transformers", "sentence-transformers"):
        runs = [measure(which, args.model, args.device) for _ in range(args.repeats)]
        cells = []
        for name in STEPS:
            values = [float(r[name]) for r in runs if name in r]  # type: ignore[arg-type]
            cells.append(f"{statistics.median(values):.2f}" if values else "-")
        total = statistics.median(
            sum(float(r[n]) for n in STEPS[:4] if n in r)  # type: ignore[arg-type]
            for r in runs
        )
        label = f"{which} ({runs[0]['embedder']})"
        if which == "load_embedder" and runs[0]["imported"]:
            label += f", {' and '.join(runs[0]['imported'])} imported"  # type: ignore[arg-type]
        print(f"| {label} | " + " | ".join(cells) + f" | {total:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
