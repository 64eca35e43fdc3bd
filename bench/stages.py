"""Stage timings of two-stage answering against a running LLM server.

For k = 4, 8, 16 retrieved passages: the screen's wall time with all
requests in flight at once vs one at a time (and grouped requests), and
the deep read of the passages the screen kept at that k (how many, time to
first token, total). Prints a Markdown table.

    python -m serving.launch --cpu --port 8000 &          # or any vLLM server
    .venv/bin/python bench/stages.py --url http://127.0.0.1:8000/v1 \\
        --model smollm2-135m --index indexes/default --context 2048

On GPUs (gpt-oss-20b, `make llm`):
    .venv/bin/python bench/stages.py --url http://127.0.0.1:8000/v1 \\
        --model gpt-oss-20b --index indexes/default --context 32768
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from datetime import date

from rag.answering.events import Read
from rag.answering.profiles import small_model
from rag.answering.reading import read
from rag.answering.screening import keep, screen
from rag.knowledge_base import KnowledgeBase
from rag.llm import OpenAIChat, check_server

QUESTIONS = [
    "How are broken files reported during ingestion?",
    "How do I serve gpt-oss-20b on two GPUs?",
    "What happens if ingestion is interrupted?",
]


def timed_screen(kb, chat, settings, k, concurrency):  # type: ignore[no-untyped-def]
    walls = []
    for question in QUESTIONS:
        hits = kb.search(question, k=k)
        started = time.perf_counter()
        screen(question, hits, chat, settings, concurrency=concurrency)
        walls.append(time.perf_counter() - started)
    return statistics.median(walls)


def timed_read(kb, chat, settings, k):  # type: ignore[no-untyped-def]
    """The deep read of what the screen kept out of `k` passages, as the
    pipeline does: more passages screened can mean other (or more) kept.
    Returns the median first-token and total seconds and passages read."""
    firsts, totals, counts = [], [], []
    for question in QUESTIONS:
        verdicts, _usage = screen(question, kb.search(question, k=k), chat, settings)
        hits = keep(verdicts, settings)
        counts.append(len(hits))
        started = time.perf_counter()
        for event in read(question, hits, chat, settings):
            if isinstance(event, Read) and event.completion is not None:
                completion = event.completion
                if completion.first_token:
                    firsts.append(completion.first_token - completion.started)
        totals.append(time.perf_counter() - started)
    first = statistics.median(firsts) if firsts else float("nan")
    return first, statistics.median(totals), statistics.median(counts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--index", default="indexes/default")
    parser.add_argument("--context", type=int, default=2048, help="the server's max-model-len")
    parser.add_argument("--ks", default="4,8,16")
    args = parser.parse_args()
    # The small-model profile, generative (read() is timed without the
    # extractive step's embedder), with the screen on: it is what is timed,
    # and what it keeps is what the read gets.
    settings = small_model(
        llm_url=args.url, llm_model=args.model, llm_context_tokens=args.context,
        read_max_tokens=256, answer_style="generative", screen=True,
    )  # fmt: skip
    problem = check_server(settings)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    kb = KnowledgeBase.open(args.index)
    chat = OpenAIChat(settings)
    kb.search("warm up", k=1)
    screen("warm up", kb.search("warm up", k=2), chat, settings)  # first requests pay setup costs

    print(f"Stage timings — {args.model} at {args.url}; {platform.node()}, {date.today()}; "
          f"median of {len(QUESTIONS)} questions\n")  # fmt: skip
    print("| k | screen, concurrent (s) | screen, sequential (s) | speed-up | screen, groups "
          "of 4 (s) | passages kept | read: first token (s) | read: total (s) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    grouped = settings.model_copy(update={"screen_group": 4})
    for k in (int(x) for x in args.ks.split(",")):
        concurrent = timed_screen(kb, chat, settings, k, None)
        sequential = timed_screen(kb, chat, settings, k, 1)
        groups = timed_screen(kb, chat, grouped, k, None)
        first, total, kept = timed_read(kb, chat, settings, k)
        print(f"| {k} | {concurrent:.2f} | {sequential:.2f} | {sequential / concurrent:.1f}x | "
              f"{groups:.2f} | {kept:g} | {first:.2f} | {total:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
