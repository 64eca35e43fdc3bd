"""Who can get in (issue 19): with no login (RAG_AUTH=none) the app serves a
loopback address only, unless told --insecure-no-auth; with RAG_AUTH=oidc
it shows nothing but a login page until Streamlit's st.login has signed the
visitor in, and refuses to run without the [auth] secrets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_secure_defaults import listening_addresses, make_run

from serving import launch

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "streamlit_app.py")

# What Streamlit documents for its [auth] section (secrets.toml).
AUTH_SECRETS = {
    "redirect_uri": "http://localhost:8501/oauth2callback",
    "cookie_secret": "a-long-random-test-secret-0123456789",
    "client_id": "kbqa",
    "client_secret": "test-secret",
    "server_metadata_url": "http://127.0.0.1:9400/.well-known/openid-configuration",
}


# -- serving.run: the refusal --------------------------------------------------------


def _serving_run(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """`python -m serving.run --no-llm ARGS` to its end (30 s at most: a run
    that starts the app instead of refusing is stopped and fails the test)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    runner = subprocess.Popen(
        [sys.executable, "-m", "serving.run", "--no-llm", *args],
        env={**env, **settings}, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = runner.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(runner.pid, signal.SIGKILL)
        output, _ = runner.communicate()
        pytest.fail(f"serving.run did not refuse; it ran on:\n{output}")
    return subprocess.CompletedProcess(runner.args, runner.returncode, output)


def test_serving_run_refuses_another_host_without_a_login(docs_index: Path) -> None:
    port = launch.free_port()
    done = _serving_run("--host", "0.0.0.0", "--port", str(port), "--index", str(docs_index))
    assert done.returncode == 2, done.stdout
    assert "RAG_AUTH=oidc" in done.stdout and "RAG_AUTH=local" in done.stdout
    assert "--insecure-no-auth" in done.stdout
    assert "Traceback" not in done.stdout
    assert not listening_addresses(port), "the app was started"


def test_serving_run_takes_another_host_when_a_login_is_configured(docs_index: Path) -> None:
    with make_run(docs_index, "--host", "0.0.0.0", RAG_AUTH="oidc") as (port, runner):
        assert listening_addresses(port) & {"0.0.0.0", "::"}
        os.killpg(runner.pid, signal.SIGTERM)
        output, _ = runner.communicate(timeout=30)
    assert "no login" not in output, output


def test_the_refusal_rule() -> None:
    from rag.exposure import is_loopback, refusal
    from rag.settings import Settings

    for host in ["127.0.0.1", "127.0.0.2", "::1", "localhost", "unix:///run/kbqa.sock"]:
        assert is_loopback(host), host
        assert refusal(Settings(auth="none"), host) is None, host
    for host in ["0.0.0.0", "::", "192.168.1.10", "example.org", "", None]:
        assert not is_loopback(host), host
        assert refusal(Settings(auth="none"), host), host
        assert refusal(Settings(auth="none", insecure_no_auth=True), host) is None
        assert refusal(Settings(auth="oidc"), host) is None
        assert refusal(Settings(auth="local"), host) is None
