"""Two vLLM replicas behind vllm-router: a bounded concurrent load through the
router, how the requests spread (each replica's own `/metrics`), latency,
and each replica's memory; with `--kill`, one replica is killed mid-load and
every request must still complete (the router and our client retry).

    .venv/bin/python bench/router.py                  # starts 2 CPU replicas + the router
    .venv/bin/python bench/router.py --kill           # ... and kills replica 2 mid-load
    .venv/bin/python bench/router.py --requests 24 --concurrency 4 --max-tokens 64

Everything it starts listens on loopback and is stopped at the end. Prints
a Markdown table (`--json`: one JSON object); tests/test_router.py uses its
functions. Exit status 1 when any request failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, also when a test imports this

from stats import p50_p95  # bench/stats.py

from rag.llm import OpenAIChat, Request, complete
from rag.settings import Settings
from serving import launch, router

PROMPTS = [
    "List three uses of a knowledge base.",
    "Explain what a load balancer does.",
    "Why cite sources in an answer?",
    "Name two ways to split a document into passages.",
]
_SUCCESS = re.compile(r'^vllm:request_success_total\{[^}]*finished_reason="(\w+)"[^}]*\} (\S+)$')
_RUNNING = re.compile(r"^vllm:num_requests_running\{[^}]*\} (\S+)$")


def _metrics(base: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(base.removesuffix("/v1") + "/metrics", timeout=10) as response:
        return str(response.read().decode())


def finished(base: str) -> int:
    """Requests a vLLM server finished normally (stop or length), from its /metrics."""
    return int(
        sum(
            float(m[2])
            for line in _metrics(base).splitlines()
            if (m := _SUCCESS.match(line)) and m[1] in ("stop", "length")
        )
    )


def running(base: str) -> int:
    """Requests a vLLM server is generating right now."""
    return int(sum(float(m[1]) for ln in _metrics(base).splitlines() if (m := _RUNNING.match(ln))))


def memory_mib(pid: int) -> tuple[float, float]:
    """RSS and PSS of a process and its children, in MiB (PSS shares what
    processes share, so replicas' PSS can be added up)."""
    import psutil

    rss = pss = 0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return rss / 2**20, pss / 2**20


@dataclass
class Load:
    requests: int
    ok: int = 0
    failed: int = 0
    p50: float = float("nan")
    p95: float = float("nan")
    wall: float = 0.0
    reasons: list[str] = field(default_factory=list)


def run_load(
    chat: OpenAIChat,
    requests: int,
    concurrency: int,
    max_tokens: int,
    during: Callable[[], None] | None = None,
) -> Load:
    """`requests` chat requests, `concurrency` at a time, through our client;
    `during` runs in parallel (a replica killed mid-load, say)."""
    load = Load(requests)
    latencies: list[float] = []
    lock = threading.Lock()

    def one(n: int) -> None:
        messages = [{"role": "user", "content": PROMPTS[n % len(PROMPTS)]}]
        started = time.perf_counter()
        try:
            completion = complete(chat, Request(messages, "low", max_tokens))
            if not (completion.content or "").strip():
                raise RuntimeError("empty answer")
        except Exception as exc:  # counted and reported, never lost
            with lock:
                load.failed += 1
                load.reasons.append(f"{type(exc).__name__}: {str(exc)[:200]}")
            return
        with lock:
            load.ok += 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as aside, ThreadPoolExecutor(concurrency) as pool:
        side = aside.submit(during) if during else None
        list(pool.map(one, range(requests)))
        if side:
            side.result()  # its failure (no replica killed) is the run's failure
    load.wall = time.perf_counter() - started
    load.p50, load.p95 = p50_p95(latencies)
    return load


def kill_when_busy(server: launch.Server, timeout: float = 120.0) -> Callable[[], None]:
    """A `during` that SIGKILLs `server`'s whole process group as soon as it
    is generating (so requests are in flight on it when it dies)."""

    def kill() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if running(server.base_url) > 0:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        os.killpg(server.process.pid, signal.SIGKILL)

    return kill


def client(url: str, model: str, retries: int = 1) -> OpenAIChat:
    # Our client's one retry is what saves an answer cut off mid-stream.
    return OpenAIChat(Settings(llm_url=url, llm_model=model, llm_timeout=120, llm_retries=retries))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--policy", default=router.DEFAULT_POLICY, choices=router.POLICIES)
    parser.add_argument("--kill", action="store_true", help="kill replica 2 mid-load")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    replicas: list[launch.Server] = []
    front = None
    try:
        for _ in range(2):
            config = launch.build_config(device="cpu", port=launch.free_port())
            replicas.append(launch.start(config))
        front = launch.start(
            router.router_config(
                [r.base_url for r in replicas],
                port=launch.free_port(),
                metrics_port=launch.free_port(),
                policy=args.policy,
            ),
            timeout=120,
        )
        chat = client(front.base_url, replicas[0].served_model_name)
        complete(chat, Request([{"role": "user", "content": "hi"}], "low", 8))  # warm up
        complete(chat, Request([{"role": "user", "content": "hi"}], "low", 8))
        memory = [memory_mib(r.process.pid) for r in replicas]
        before = [finished(r.base_url) for r in replicas]
        during = kill_when_busy(replicas[1]) if args.kill else None
        load = run_load(chat, args.requests, args.concurrency, args.max_tokens, during)
        served = [
            finished(r.base_url) - b if r.process.poll() is None else None
            for r, b in zip(replicas, before, strict=True)
        ]
    finally:
        for server in [front, *replicas]:
            if server is not None:
                server.stop()

    report = {"load": asdict(load), "served": served, "memory_mib": memory, "policy": args.policy,
              "killed": args.kill}  # fmt: skip
    if args.json:
        print(json.dumps(report))
        return 1 if load.failed else 0
    print(f"Two SmolLM2 CPU replicas behind vllm-router ({args.policy}); {args.requests} "
          f"requests, {args.concurrency} at a time, max {args.max_tokens} tokens"
          f"{', replica 2 killed mid-load' if args.kill else ''}; "
          f"{platform.node()}, {date.today()}\n")  # fmt: skip
    print("| replica | served (its /metrics) | RSS (MiB) | PSS (MiB) |")
    print("|---|---|---|---|")
    for n, (count, (rss, pss)) in enumerate(zip(served, memory, strict=True), 1):
        shown = "killed (metrics gone)" if count is None else str(count)
        print(f"| {n} | {shown} | {rss:,.0f} | {pss:,.0f} |")
    print("\n| requests | completed | failed | p50 (s) | p95 (s) | wall (s) |")
    print("|---|---|---|---|---|---|")
    print(f"| {load.requests} | {load.ok} | {load.failed} | {load.p50:.2f} | {load.p95:.2f} | "
          f"{load.wall:.1f} |")  # fmt: skip
    for reason in load.reasons[:5]:
        print(f"failed: {reason}", file=sys.stderr)
    return 1 if load.failed else 0


if __name__ == "__main__":
    sys.exit(main())
