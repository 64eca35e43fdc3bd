"""`make run`: the Streamlit app plus an LLM server, stopped together by Ctrl-C.

    python -m serving.run [--index indexes/default] [--host 127.0.0.1] [--port 8501]
                          [--llm-port 8000] [--insecure-no-auth]

The app starts first (searches work at once) and the LLM server after it:
gpt-oss-20b on GPU machines, SmolLM2 on the vLLM CPU build otherwise. When
RAG_LLM_URL is set, that server is used and none is started; so is a server
already answering on --llm-port.

The app listens on the loopback address unless --host says otherwise. With
no login (RAG_AUTH=none, the default) anyone who reaches its port can read
and delete every knowledge base, so another address is refused unless
RAG_AUTH=oidc or local configures a login, or --insecure-no-auth insists
(for an app behind an authenticating proxy or firewall). So is no login
over an app database that holds accounts (`rag users add`): set
RAG_AUTH=local or oidc to use them. The start-up line names the login mode.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from rag.answering import profiles
from rag.errors import RagError
from rag.llm import display_url
from rag.settings import Settings
from serving import config as serve_config
from serving import launch
from team.exposure import accounts_refusal, is_loopback, login_mode, refusal

# The small CPU model's settings, as environment variables for the app;
# defined once in rag/answering/profiles.py (`rag ask` applies the same profile).
CPU_PROFILE = profiles.as_env(profiles.SMALL_MODEL_PROFILE)
GPU_PROFILE = {"RAG_LLM_CONTEXT_TOKENS": str(serve_config.GPU_MAX_MODEL_LEN)}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/models", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


NO_LOGIN_WARNING = (
    "WARNING: the app listens on {host}, and there is no login: anyone who can reach "
    "port {port} can read, upload and delete every knowledge base. Put it behind an "
    "authenticating proxy or firewall, configure a login (RAG_AUTH=oidc or local), or "
    "leave --host at 127.0.0.1."
)


def main(argv: Sequence[str] | None = None) -> int:
    # The environment is read once, here, through the one settings object.
    settings = Settings()
    args = _arguments(settings).parse_args(argv)
    if args.insecure_no_auth:
        settings = settings.model_copy(update={"insecure_no_auth": True})
    try:  # before anything starts
        why = refusal(settings, args.host) or accounts_refusal(settings, "the app")
    except RagError as exc:
        print(f"Cannot start: {exc}", file=sys.stderr)
        return 1
    if why:
        print(f"Refusing to start: {why}", file=sys.stderr)
        return 2
    # Ctrl-C stops both even where the shell started us with SIGINT ignored
    # (a background job), and so does `kill` (SIGTERM), which would
    # otherwise end this process alone and leave the app running.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    env, config = _llm_plan(args, settings)
    app = _start_app(args, env, settings)
    server: launch.Server | None = None
    try:
        if config is not None:
            print(f"Starting the LLM server (log under {launch.Paths.from_env().cache / 'logs'}):")
            print(f"  {config.shell_command()}\n")
            server = launch.start(config)
            print(
                f"LLM ready at {server.base_url} ({server.served_model_name}). Ctrl-C stops both."
            )
        return app.wait()
    except KeyboardInterrupt:
        return 130
    except launch.LaunchError as exc:
        print(f"The LLM server did not start: {exc}")
        print("The app keeps running (search only); Ctrl-C stops it.")
        try:
            return app.wait()
        except KeyboardInterrupt:
            return 130
    finally:
        _stop(app)
        if server is not None:
            server.stop()


def _arguments(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--index", default=str(settings.index), help="[default: $RAG_INDEX]")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address the app listens on (default: loopback only; 0.0.0.0 for every "
        "interface, refused while RAG_AUTH=none: see --insecure-no-auth)",
    )
    parser.add_argument("--port", type=int, default=8501, help="the app's port")
    parser.add_argument("--llm-port", type=int, default=8000)
    parser.add_argument("--no-llm", action="store_true", help="start only the app")
    parser.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve another --host, or over an app database with accounts, with no login "
        "(RAG_AUTH=none) all the same, with a warning: only behind an authenticating "
        "proxy or firewall",
    )
    return parser


def _llm_plan(
    args: argparse.Namespace, settings: Settings
) -> tuple[dict[str, str], launch.ServeConfig | None]:
    """The app's environment, and the LLM server to start (None: none, or
    one is there already)."""
    env = {**os.environ, "RAG_INDEX": args.index}
    if settings.insecure_no_auth:  # the app checks the address again
        env["RAG_INSECURE_NO_AUTH"] = "1"
    if args.no_llm:
        return env, None
    if "llm_url" in settings.model_fields_set:
        print(f"Using the LLM server at {display_url(settings.llm_url)} (RAG_LLM_URL).")
        return env, None
    config = launch.build_config(port=args.llm_port)
    on_gpu = config.served_model_name == serve_config.GPU_SERVED_NAME
    profile = GPU_PROFILE if on_gpu else CPU_PROFILE
    env = {
        **profile,
        **env,
        "RAG_LLM_URL": config.base_url,
        "RAG_LLM_MODEL": config.served_model_name,
    }
    if _answers(config.base_url):
        print(f"An LLM server already answers at {config.base_url}; using it.")
        return env, None
    return env, config


def _start_app(
    args: argparse.Namespace, env: dict[str, str], settings: Settings
) -> subprocess.Popen[bytes]:
    script = Path(__file__).resolve().parent.parent / "streamlit_app.py"
    app = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(args.port),
         "--server.address", args.host, "--server.headless", "true",
         "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        env=env,
    )  # fmt: skip
    print(f"\n  The app: http://{args.host}:{args.port} (login: {login_mode(settings)})\n")
    if settings.auth == "none" and not is_loopback(args.host):
        print(NO_LOGIN_WARNING.format(host=args.host, port=args.port) + "\n", flush=True)
    return app


def _stop(app: subprocess.Popen[bytes]) -> None:
    if app.poll() is None:
        app.send_signal(signal.SIGTERM)
        try:
            app.wait(timeout=10)
        except subprocess.TimeoutExpired:
            app.kill()


if __name__ == "__main__":
    sys.exit(main())
