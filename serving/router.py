"""Start vllm-router (PyPI `vllm-router`, a Rust load balancer) in front of
several vLLM servers, so the app reaches N replicas through one URL.

Stdlib only, like `serving.launch`, whose process handling it reuses: the
router is one more server process that `start()` waits for and `stop()`
ends. The `vllm-router` binary is a dependency of the app's environment
(`make setup`); it does not need vLLM.

    python -m serving.router http://gpu1:8000 http://gpu2:8000 [--port 8100]
                             [--host 127.0.0.1] [--policy round_robin] [--print]

From Python (a pytest fixture, say):

    config = router_config(["http://127.0.0.1:8001", "http://127.0.0.1:8002"], port=free_port())
    with serve(config) as router:
        client = OpenAI(base_url=router.base_url, api_key="unused")
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import urllib.parse
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from serving.config import ServeConfig
from serving.launch import (
    HEALTH_TIMEOUT_S,
    LaunchError,
    free_port,
    run_foreground,
    serve,
    split_passthrough,
    start,
)
from serving.models import NotSetUpError

ROUTER_PORT = 8100
ROUTER_METRICS_PORT = 29000
# round_robin spreads evenly. vllm-router's default, cache_aware, sends a
# prompt to the replica holding its longest prefix; every request of ours
# starts with the same instructions, so it keeps one replica busy until the
# load imbalance passes its thresholds.
POLICIES = ("round_robin", "power_of_two", "cache_aware", "random", "consistent_hash")
DEFAULT_POLICY = "round_robin"
# How often the router probes each replica's /health (its default is 60 s),
# and after how many failed probes in a row a replica leaves the rotation: a
# dead one is out within about 2 s (a refused connection fails at once).
HEALTH_INTERVAL_S = 1
HEALTH_FAILURES = 2
# Until then round robin keeps offering the dead replica, to a request's
# retries too, and requests arriving together share its turns: with 3 tries,
# 8 requests at once lost one (8 -> 4 -> 2 -> 1 sent to the dead replica).
# 8 tries, backing off 0.1, 0.2, 0.4, 0.8 then 1 s, span about 4.5 s, past
# the health check's 2 s; halving at each try, they would also carry a burst
# of 256 without it.
ATTEMPTS = 8
BACKOFF_MS = (100, 1000)  # first, longest

__all__ = ["DEFAULT_POLICY", "POLICIES", "ROUTER_PORT", "free_port", "main", "router_binary",
           "router_config", "serve", "start"]  # fmt: skip


def router_binary() -> Path | None:
    """`vllm-router` next to this Python (the app's venv), else on PATH."""
    beside = Path(sys.executable).parent / "vllm-router"
    if beside.exists():
        return beside
    found = shutil.which("vllm-router")
    return Path(found) if found else None


def replica_url(url: str) -> str:
    """A replica as vllm-router wants it: `http(s)://host:port`, no path.

    A pasted `.../v1` (the form RAG_LLM_URL takes) is accepted and trimmed.
    """
    parsed = urllib.parse.urlsplit(url.strip())
    path = parsed.path.rstrip("/")
    if path == "/v1":
        path = ""
    if parsed.scheme not in ("http", "https") or not parsed.hostname or path or parsed.query:
        raise LaunchError(f"replica {url!r}: expected http://HOST:PORT (a vLLM server)")
    return f"{parsed.scheme}://{parsed.netloc}"


def router_config(
    replicas: Sequence[str],
    *,
    host: str = "127.0.0.1",
    port: int = ROUTER_PORT,
    policy: str = DEFAULT_POLICY,
    metrics_port: int = ROUTER_METRICS_PORT,
    served_model_name: str = "",
    extra_args: Sequence[str] = (),
) -> ServeConfig:
    """The router command for `replicas`, as a `ServeConfig` `start()` runs.

    `served_model_name` is only what the printed `export` line suggests: the
    router forwards whatever model name the replicas serve.
    """
    if not replicas:
        raise LaunchError("no replicas: give the vLLM servers' URLs (http://HOST:PORT ...)")
    if policy not in POLICIES:
        raise LaunchError(f"--policy {policy}: one of {', '.join(POLICIES)}")
    urls = [replica_url(u) for u in replicas]
    if len(set(urls)) != len(urls):
        raise LaunchError(f"a replica is listed twice: {' '.join(urls)}")
    binary = router_binary()
    argv = [
        str(binary or "vllm-router"),
        "--worker-urls", *urls,
        "--policy", policy,
        "--host", host,
        "--port", str(port),
        # Its metrics listen on loopback only, on their own port.
        "--prometheus-host", "127.0.0.1",
        "--prometheus-port", str(metrics_port),
        "--health-check-interval-secs", str(HEALTH_INTERVAL_S),
        "--health-failure-threshold", str(HEALTH_FAILURES),
        # At start it waits for every replica's /health; poll often, not every 30 s.
        "--worker-startup-check-interval", "1",
        # A request the router could not deliver (a replica gone, or a 5xx)
        # goes to the next replica; the count includes the first try.
        "--retry-max-retries", str(ATTEMPTS),
        "--retry-initial-backoff-ms", str(BACKOFF_MS[0]),
        "--retry-max-backoff-ms", str(BACKOFF_MS[1]),
        "--retry-backoff-multiplier", "2",
        # The health check takes a dead replica out. The circuit breaker (10
        # failed requests in a row on a replica -> out for 60 s) counts a 500
        # a live replica gives one request too; with 8 tries a few such
        # requests would take every replica out: "No available workers".
        "--disable-circuit-breaker",
        *extra_args,
    ]  # fmt: skip
    config = ServeConfig(tuple(argv), {}, host, port, served_model_name, " ".join(urls))
    if binary is None:
        missing = "vllm-router not found beside this Python or on PATH; run `make setup`."
        return dataclasses.replace(
            config, pending=partial(_fail, missing), pending_note=f"not ready: {missing}"
        )
    return config


def _fail(message: str) -> None:
    raise NotSetUpError(message)


# --------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m serving.router",
        description="Start vllm-router in front of several vLLM servers (replicas).",
        epilog="Arguments after `--` go to vllm-router unchanged (see `vllm-router --help`).",
    )
    p.add_argument("replicas", nargs="+", metavar="URL",
                   help="a vLLM server, http://HOST:PORT (each one a `make llm`)")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="where the router listens")
    p.add_argument("--port", type=int, default=ROUTER_PORT)
    p.add_argument("--policy", choices=POLICIES, default=DEFAULT_POLICY)
    p.add_argument("--metrics-port", type=int, default=ROUTER_METRICS_PORT,
                   help="the router's Prometheus metrics, on 127.0.0.1")  # fmt: skip
    p.add_argument("--model", default="", help="the replicas' served model name (for the hint)")
    p.add_argument("--print", action="store_true", help="print the command and exit")
    p.add_argument("--log", type=Path, help="write router output here, not to the terminal")
    p.add_argument("--timeout", type=float, default=HEALTH_TIMEOUT_S,
                   help="seconds to wait for the router and its replicas")  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list, extra = split_passthrough(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(args_list)
    try:
        config = router_config(
            args.replicas, host=args.host, port=args.port, policy=args.policy,
            metrics_port=args.metrics_port, served_model_name=args.model, extra_args=extra,
        )  # fmt: skip
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if config.pending_note:
        print(f"# {config.pending_note}")
    print(config.shell_command(), flush=True)
    if args.print:
        return 0
    model = f" RAG_LLM_MODEL={args.model}" if args.model else ""
    ready = f"export RAG_LLM_URL={config.base_url}{model}"
    return run_foreground(config, args.log, args.timeout, "vllm-router", ready)


if __name__ == "__main__":
    sys.exit(main())
