"""Load test: N concurrent `answer` calls against a running LLM server, and
M concurrent `search` threads on one shared `KnowledgeBase` (as the app
holds one). Prints p50/p95/max latency, requests, errors and throughput per
concurrency level as a Markdown table. Bounded (--rounds calls per worker)
and loopback-only by intent: point it at your own server.

    python -m serving.launch --cpu --port 8123 &            # SmolLM2 on CPU
    .venv/bin/python bench/load.py --url http://127.0.0.1:8123/v1 \\
        --model smollm2-135m --index indexes/default --answers 1,2,4,8 --searches 1,4,8

`--json` prints one JSON object instead (tests/test_load.py reads it).
Every call either returns a result or counts as an error with its reason:
requests == ok + errors, so nothing is lost silently.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date

from rag.answering import answer
from rag.knowledge_base import KnowledgeBase
from rag.llm import OpenAIChat, check_server
from rag.profiles import small_model

QUESTIONS = [
    "How are broken files reported during ingestion?",
    "How do I serve gpt-oss-20b on two GPUs?",
    "What happens if ingestion is interrupted?",
    "Which file types can be ingested?",
    "How does hybrid search combine BM25 and dense retrieval?",
    "What does the fast screen do?",
]


@dataclass
class Level:
    kind: str
    concurrency: int
    requests: int = 0
    ok: int = 0
    errors: int = 0
    p50: float = 0.0
    p95: float = 0.0
    max: float = 0.0
    wall: float = 0.0
    per_second: float = 0.0
    reasons: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_level(kind: str, call: Callable[[int], None], concurrency: int, rounds: int) -> Level:
    """`concurrency` workers, each making `rounds` calls back to back."""
    level = Level(kind, concurrency, requests=concurrency * rounds)
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(number: int) -> None:
        for round_ in range(rounds):
            started = time.perf_counter()
            try:
                call(number * rounds + round_)
            except Exception as exc:  # counted and reported, never lost
                with lock:
                    level.errors += 1
                    level.reasons.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                continue
            with lock:
                latencies.append(time.perf_counter() - started)
                level.ok += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    level.wall = time.perf_counter() - started
    level.p50 = statistics.median(latencies) if latencies else float("nan")
    level.p95 = percentile(latencies, 0.95)
    level.max = max(latencies, default=float("nan"))
    level.per_second = level.ok / level.wall if level.wall else 0.0
    return level


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="the LLM server's base URL (…/v1)")
    parser.add_argument("--model", required=True, help="the served model name")
    parser.add_argument("--index", default="indexes/default")
    parser.add_argument("--context", type=int, default=2048, help="the server's max-model-len")
    parser.add_argument("--answers", default="1,2,4", help="concurrency levels for `answer`")
    parser.add_argument("--searches", default="1,4,8", help="concurrency levels for `search`")
    parser.add_argument("--rounds", type=int, default=2, help="answer calls per worker")
    parser.add_argument("--search-rounds", type=int, default=50, help="searches per worker")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    # The small-model profile, generative and with fewer passages and tokens
    # (as tests/conftest.py's llm_settings): the load, not the answers.
    settings = small_model(
        llm_url=args.url, llm_model=args.model, llm_context_tokens=args.context,
        answer_style="generative", screen_k=4, read_max_tokens=200,
    )  # fmt: skip
    problem = check_server(settings)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    kb = KnowledgeBase.open(args.index)
    chat = OpenAIChat(settings)

    def ask(n: int) -> None:
        result = answer(QUESTIONS[n % len(QUESTIONS)], kb, chat, settings)
        if not result.text.strip():
            raise RuntimeError("empty answer")

    def search(n: int) -> None:
        if not kb.search(QUESTIONS[n % len(QUESTIONS)], k=8):
            raise RuntimeError("no hits")

    search(0)  # load the embedding model before timing anything
    ask(0)  # and let the server compile and warm its caches
    levels = [
        run_level("search", search, int(c), args.search_rounds) for c in args.searches.split(",")
    ]
    levels += [run_level("answer", ask, int(c), args.rounds) for c in args.answers.split(",")]

    if args.json:
        print(json.dumps({"levels": [asdict(level) for level in levels]}))
        return 0
    print(f"Load — {args.model} at {args.url}, index {args.index}; "
          f"{platform.node()}, {date.today()}\n")  # fmt: skip
    print("| call | concurrency | requests | ok | errors | p50 (s) | p95 (s) | max (s) | "
          "throughput (/s) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for level in levels:
        print(f"| {level.kind} | {level.concurrency} | {level.requests} | {level.ok} | "
              f"{level.errors} | {level.p50:.3f} | {level.p95:.3f} | {level.max:.3f} | "
              f"{level.per_second:.2f} |")  # fmt: skip
    for level in levels:
        for reason in level.reasons[:3]:
            print(f"error ({level.kind} x{level.concurrency}): {reason}", file=sys.stderr)
    return 1 if any(level.errors for level in levels) else 0


if __name__ == "__main__":
    sys.exit(main())
