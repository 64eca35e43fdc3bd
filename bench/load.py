"""Load test: N concurrent `answer` calls against a running LLM server, and
M concurrent `search` threads on one shared `KnowledgeBase` (as the app
holds one). Prints p50/p95/max latency, requests, errors and throughput per
concurrency level as a Markdown table. Bounded (--rounds calls per worker)
and loopback-only by intent: point it at your own server.

    python -m serving.launch --cpu --port 8123 &            # SmolLM2 on CPU
    .venv/bin/python bench/load.py --url http://127.0.0.1:8123/v1 \\
        --model smollm2-135m --index indexes/default --answers 1,2,4,8 --searches 1,4,8

`--via api` sends the same questions through `rag serve` instead (started
here, in-process on a free loopback port, over the same index and settings):
answers with the `openai` client's chat completions, searches with
POST /v1/search. `--via both` runs the library, then the API, and prints
them side by side, with the API's overhead (API minus library) per level:

    .venv/bin/python bench/load.py --url http://127.0.0.1:8123/v1 \\
        --model smollm2-135m --index indexes/default --via both --answers 1,4 --searches 1,4

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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

from rag.answering.pipeline import answer
from rag.answering.profiles import small_model
from rag.knowledge_base import KnowledgeBase
from rag.llm import OpenAIChat, check_server
from rag.settings import Settings

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
    via: str = "library"
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


def run_level(
    kind: str, call: Callable[[int], None], concurrency: int, rounds: int, via: str = "library"
) -> Level:
    """`concurrency` workers, each making `rounds` calls back to back."""
    level = Level(kind, concurrency, via, requests=concurrency * rounds)
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


Calls = tuple[Callable[[int], None], Callable[[int], None]]  # (ask, search)


def library_calls(kb: KnowledgeBase, settings: Settings) -> Calls:
    """`answer` and `search` called directly, as the app calls them."""
    chat = OpenAIChat(settings)

    def ask(n: int) -> None:
        result = answer(QUESTIONS[n % len(QUESTIONS)], kb, chat, settings)
        if not result.text.strip():
            raise RuntimeError("empty answer")

    def search(n: int) -> None:
        if not kb.search(QUESTIONS[n % len(QUESTIONS)], k=8):
            raise RuntimeError("no hits")

    return ask, search


def api_calls(url: str, kb_name: str) -> Calls:
    """The same questions through `rag serve` at `url`: the `openai`
    client's chat completions (`model` = the knowledge base) and /v1/search."""
    import httpx
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="EMPTY", max_retries=0, timeout=600)
    http = httpx.Client(base_url=url, timeout=600)

    def ask(n: int) -> None:
        question = QUESTIONS[n % len(QUESTIONS)]
        completion = client.chat.completions.create(
            model=kb_name, messages=[{"role": "user", "content": question}]
        )
        if not (completion.choices[0].message.content or "").strip():
            raise RuntimeError("empty answer")

    def search(n: int) -> None:
        body = {"knowledge_base": kb_name, "query": QUESTIONS[n % len(QUESTIONS)], "k": 8}
        reply = http.post("/v1/search", json=body)
        reply.raise_for_status()
        if not reply.json()["data"]:
            raise RuntimeError("no hits")

    return ask, search


@contextmanager
def served_api(settings: Settings) -> Iterator[str]:
    """`rag serve` (api/) in this process on a free loopback port,
    without login (loopback only) and with its rate limit out of the way."""
    import uvicorn

    from api import create_app
    from serving.launch import free_port

    settings = settings.model_copy(
        update={"auth": "none", "api_requests_per_minute": 1e9, "api_burst": 1_000_000}
    )
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("rag serve did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def measure(calls: Calls, args: argparse.Namespace, via: str) -> list[Level]:
    ask, search = calls
    search(0)  # load the embedding model before timing anything
    ask(0)  # and let the server compile and warm its caches
    levels = [
        run_level("search", search, int(c), args.search_rounds, via)
        for c in args.searches.split(",")
    ]
    levels += [run_level("answer", ask, int(c), args.rounds, via) for c in args.answers.split(",")]
    return levels


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
    parser.add_argument(
        "--via", choices=("library", "api", "both"), default="library",
        help="call the library directly, go through `rag serve`, or both side by side",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    # The small-model profile, generative and with fewer passages and tokens
    # (as tests/conftest.py's llm_settings): the load, not the answers.
    index = Path(args.index).resolve()
    settings = small_model(
        llm_url=args.url, llm_model=args.model, llm_context_tokens=args.context,
        answer_style="generative", screen_k=4, read_max_tokens=200, indexes_root=index.parent,
    )  # fmt: skip
    problem = check_server(settings)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    levels: list[Level] = []
    if args.via in ("library", "both"):
        kb = KnowledgeBase.open(index, settings=settings)
        levels += measure(library_calls(kb, settings), args, "library")
        kb.close()
    if args.via in ("api", "both"):
        with served_api(settings) as url:
            levels += measure(api_calls(url, index.name), args, "api")

    if args.json:
        print(json.dumps({"levels": [asdict(level) for level in levels]}))
        return 0
    via = {"library": "the library", "api": "rag serve", "both": "the library and rag serve"}
    print(f"Load — {args.model} at {args.url}, index {args.index}, via {via[args.via]}; "
          f"{platform.node()}, {date.today()}\n")  # fmt: skip
    if args.via == "both":
        print_side_by_side(levels)
    else:
        print_levels(levels)
    for level in levels:
        for reason in level.reasons[:3]:
            print(f"error ({level.via} {level.kind} x{level.concurrency}): {reason}",
                  file=sys.stderr)  # fmt: skip
    return 1 if any(level.errors for level in levels) else 0


def print_levels(levels: list[Level]) -> None:
    print("| call | concurrency | requests | ok | errors | p50 (s) | p95 (s) | max (s) | "
          "throughput (/s) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for level in levels:
        print(f"| {level.kind} | {level.concurrency} | {level.requests} | {level.ok} | "
              f"{level.errors} | {level.p50:.3f} | {level.p95:.3f} | {level.max:.3f} | "
              f"{level.per_second:.2f} |")  # fmt: skip


def print_side_by_side(levels: list[Level]) -> None:
    """One row per call and concurrency: the library's figures, the API's,
    and the API's overhead (its p50 and p95 minus the library's)."""
    by = {(level.via, level.kind, level.concurrency): level for level in levels}
    print("| call | concurrency | requests | errors (lib / API) | p50 (s) lib / API "
          "| p95 (s) lib / API | throughput (/s) lib / API "
          "| API overhead p50 / p95 (s) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for level in levels:
        if level.via != "library":
            continue
        api = by[("api", level.kind, level.concurrency)]
        print(f"| {level.kind} | {level.concurrency} | {level.requests} | "
              f"{level.errors} / {api.errors} | {level.p50:.3f} / {api.p50:.3f} | "
              f"{level.p95:.3f} / {api.p95:.3f} | "
              f"{level.per_second:.2f} / {api.per_second:.2f} | "
              f"{api.p50 - level.p50:+.3f} / {api.p95 - level.p95:+.3f} |")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
