"""Start vLLM's OpenAI-compatible server: gpt-oss-20b on GPUs, SmolLM2 on CPU.

Stdlib only: the app's venv, pytest fixtures and `python -m serving.launch`
all import this, while vLLM itself lives in `.venv-llm` and runs as a
subprocess.

    python -m serving.launch [--port 8000] [--host 127.0.0.1] [--model M]
                             [--parallel tp|dp] [--cpu|--gpu|--tiny-gpt-oss]
                             [--print] [--prepare] [-- EXTRA VLLM ARGS]

From Python (a pytest fixture, say):

    config = build_config(device="cpu", port=free_port())
    with serve(config, log_path=tmp / "vllm.log") as server:
        client = OpenAI(base_url=server.base_url, api_key="unused")

Model weights are never downloaded here: `make llm-setup` fetches them, and a
missing model is a `LaunchError` that says what to run.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

from serving.config import ServeConfig, build_config, client_host
from serving.models import SETUP_HINT, LaunchError, NotSetUpError, Paths

HEALTH_TIMEOUT_S = 240.0

__all__ = [
    "HEALTH_TIMEOUT_S", "LaunchError", "NotSetUpError", "Paths", "ServeConfig", "Server",
    "build_config", "free_port", "main", "port_in_use", "serve", "start",
]  # fmt: skip


# --------------------------------------------------------------------------
# Running it


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for tests; racy by nature)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """Does something already listen on host:port?"""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.settimeout(1)
        return s.connect_ex((client_host(host), port)) == 0


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGTERM the child when we die.

    If the Python that started the server is killed outright (SIGKILL, a
    crashed test run), the server then stops instead of living on as an
    orphan holding the port and 4 GB of memory. Linux ties this to the
    starting *thread*, so start servers from a thread that outlives them.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        # Resolved here: loading a library between fork and exec can deadlock.
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, signal.SIGTERM)


class Server:
    """A running server process group; `stop()` ends all of it."""

    def __init__(
        self, config: ServeConfig, process: subprocess.Popen[bytes], log_path: Path | None
    ) -> None:
        self.config = config
        self.process = process
        self.log_path = log_path

    @property
    def base_url(self) -> str:
        return self.config.base_url

    @property
    def served_model_name(self) -> str:
        return self.config.served_model_name

    def healthy(self) -> bool:
        # No proxies: an exported http_proxy must not intercept loopback.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.config.health_url, timeout=5) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT_S) -> float:
        """Block until /health answers 200; return the seconds it took."""
        started = time.monotonic()
        while True:
            if self.process.poll() is not None:
                raise LaunchError(
                    f"vLLM exited with code {self.process.returncode} before it was "
                    f"healthy.\n{self.log_tail()}"
                )
            if self.healthy():
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise LaunchError(f"vLLM not healthy after {timeout:.0f} s.\n{self.log_tail()}")
            time.sleep(0.25)

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None:
            return "(its output went to the terminal)"
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return f"(no log at {self.log_path})"
        return f"Last lines of {self.log_path}:\n" + "\n".join(text[-lines:])

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM the whole process group, SIGKILL whatever is left after `grace`."""
        pgid = self.process.pid  # the server leads its own session and group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace)
        # Engine workers may outlive the leader: wait for the group to empty.
        deadline = time.monotonic() + grace
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def _group_alive(pgid: int) -> bool:
    """Is any process of the group still running (zombies do not count)?"""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    # Orphaned workers that already exited stay zombies until init reaps
    # them, which takes seconds in some containers; they hold nothing.
    for stat in proc.glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid pgrp ...": comm may contain spaces.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def start(
    config: ServeConfig,
    *,
    log_path: Path | None = None,
    timeout: float = HEALTH_TIMEOUT_S,
    terminal_output: bool = False,
) -> Server:
    """Start the server and return once it is healthy.

    Output goes to `log_path` (default: `<cache>/logs/vllm-<port>.log`), or to
    this terminal with `terminal_output=True`. Fails with the log's tail if
    the server dies or is not healthy within `timeout` seconds.
    """
    config.prepare()
    if not Path(config.argv[0]).exists():
        raise NotSetUpError(f"{config.argv[0]} not found; {SETUP_HINT}.")
    if port_in_use(config.host, config.port):
        # Checked now, not after a minute of loading: and another server
        # answering /health there would pass for ours.
        raise LaunchError(f"port {config.port} is already in use (another vLLM?); use --port")
    if not terminal_output and log_path is None:
        log_path = Paths.from_env().cache / "logs" / f"vllm-{config.port}.log"
    if terminal_output:
        log_path = None
    env = {**os.environ, **config.env}
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            process = _popen(config.argv, env, stdout=log)
    else:
        process = _popen(config.argv, env, stdout=None)
    server = Server(config, process, log_path)
    try:
        server.wait_healthy(timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _popen(
    argv: Sequence[str], env: dict[str, str], stdout: IO[bytes] | None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        # Own session = own process group: a terminal's Ctrl-C does not reach
        # it half-way, and stop() can signal the API server and its engine
        # workers together.
        start_new_session=True,
        preexec_fn=_die_with_parent_hook(),
    )


@contextlib.contextmanager
def serve(
    config: ServeConfig, *, log_path: Path | None = None, timeout: float = HEALTH_TIMEOUT_S
) -> Iterator[Server]:
    """`with serve(config) as server:` starts, waits for health, always stops."""
    server = start(config, log_path=log_path, timeout=timeout)
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m serving.launch",
        description="Start the vLLM server for the app (GPU: gpt-oss-20b, CPU: SmolLM2-135M).",
        epilog="Arguments after `--` go to vLLM unchanged.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", help="hub id or local folder (default: per device)")
    p.add_argument("--served-model-name", help="name clients use (RAG_LLM_MODEL)")
    p.add_argument("--parallel", choices=["tp", "dp"], default="tp",
                   help="with several GPUs: tensor (default) or data parallel")  # fmt: skip
    p.add_argument("--gpus", type=int, help="GPUs to use (default: all nvidia-smi lists)")
    p.add_argument("--max-model-len", type=int)
    device = p.add_mutually_exclusive_group()
    device.add_argument("--gpu", dest="device", action="store_const", const="gpu")
    device.add_argument("--cpu", dest="device", action="store_const", const="cpu")
    device.add_argument("--tiny-gpt-oss", dest="device", action="store_const",
                        const="tiny-gpt-oss",
                        help="CPU: tiny random gpt-oss whose output requests script")  # fmt: skip
    p.add_argument("--print", action="store_true", help="print the command and exit")
    p.add_argument("--prepare", action="store_true",
                   help="convert/build the model if needed, print its path, and exit")  # fmt: skip
    p.add_argument("--log", type=Path, help="write server output here, not to the terminal")
    p.add_argument("--timeout", type=float, default=HEALTH_TIMEOUT_S)
    return p


def split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Our options, and those after the first `--`, which go to the server
    (vLLM or vllm-router) unread."""
    args = list(argv)
    if "--" not in args:
        return args, []
    split = args.index("--")
    return args[:split], args[split + 1 :]


def main(argv: Sequence[str] | None = None) -> int:
    args_list, extra = split_passthrough(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(args_list)
    try:
        config = build_config(
            device=args.device or ("gpu" if args.gpus else None),
            port=args.port,
            host=args.host,
            model=args.model,
            parallel=args.parallel,
            gpus=args.gpus,
            max_model_len=args.max_model_len,
            served_model_name=args.served_model_name,
            extra_args=extra,
        )
        if args.prepare:
            config.prepare()
            print(config.model)
            return 0
        if config.pending_note:
            print(f"# {config.pending_note}")
        print(config.shell_command(), flush=True)
        if args.print:
            return 0
        ready = f"export RAG_LLM_URL={config.base_url} RAG_LLM_MODEL={config.served_model_name}"
        return run_foreground(config, args.log, args.timeout, "vLLM", ready)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run_foreground(
    config: ServeConfig, log: Path | None, timeout: float, name: str, ready: str
) -> int:
    """Start `config`'s server (vLLM, or vllm-router), print `ready` once it
    answers, and wait; Ctrl-C or SIGTERM stops it."""
    # SIGTERM (from `kill`, CI, a supervisor) must clean up like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    server = None
    try:
        began = time.monotonic()
        server = start(config, log_path=log, timeout=timeout, terminal_output=log is None)
        print(
            f"\n{name} is ready after {time.monotonic() - began:.0f} s at {config.base_url} "
            f"(model {config.served_model_name!r}). Ctrl-C stops it.\n{ready}",
            flush=True,
        )
        return server.process.wait()
    except KeyboardInterrupt:
        print(f"\nStopping {name}...", file=sys.stderr)
        return 130
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
