"""Secure defaults of the app as `make run` starts it: loopback only unless
told otherwise (with a warning while there is no login), no error details or
credentials shown to visitors, secrets kept secret."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from builders import delete_box

from rag.settings import Settings
from serving import launch

ROOT = Path(__file__).resolve().parent.parent


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on `port` (from
    /proc/net/tcp and tcp6, so no tool is needed)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as fh:
            next(fh)
            for line in fh:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.add(_address(address))
    return found


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return ".".join(str(b) for b in raw[::-1])
    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
    import ipaddress

    return str(ipaddress.IPv6Address(b"".join(words)))


@contextlib.contextmanager
def make_run(docs_index: Path, *args: str, **settings: str):
    """`python -m serving.run --no-llm` on a free port, with no RAG_ variable
    but `settings`; yields (port, the runner process)."""
    port = launch.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env.update(settings)
    runner = subprocess.Popen(
        [sys.executable, "-m", "serving.run", "--no-llm", "--port", str(port),
         "--index", str(docs_index), *args],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not listening_addresses(port):
            assert runner.poll() is None, runner.stdout.read() if runner.stdout else ""
            assert time.monotonic() < deadline, "the app did not start"
            time.sleep(0.05)
        yield port, runner
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(runner.pid, signal.SIGTERM)
        try:
            runner.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(runner.pid, signal.SIGKILL)


def test_the_app_listens_on_loopback_only_by_default(docs_index: Path) -> None:
    with make_run(docs_index) as (port, _runner):
        assert listening_addresses(port) == {"127.0.0.1"}
        urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5)


def test_another_host_without_a_login_is_served_with_a_warning_only_when_insisted(
    docs_index: Path,
) -> None:
    with make_run(docs_index, "--host", "0.0.0.0", "--insecure-no-auth") as (port, runner):
        assert listening_addresses(port) & {"0.0.0.0", "::"}
        os.killpg(runner.pid, signal.SIGTERM)
        output, _ = runner.communicate(timeout=30)
    assert "WARNING" in output and "no login" in output, output
    assert f"http://0.0.0.0:{port}" in output


def test_credentials_in_the_llm_url_are_never_displayed() -> None:
    from rag.llm import display_url

    shown = display_url("https://alice:s3cret@llm.example:8443/v1?api_key=s3cret")
    assert "s3cret" not in shown and "alice" not in shown
    assert shown == "https://llm.example:8443/v1"
    assert display_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"


def test_the_api_key_is_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_LLM_API_KEY", "sk-very-secret")
    settings = Settings()
    assert "sk-very-secret" not in repr(settings) and "sk-very-secret" not in str(settings)
    assert settings.llm_api_key.get_secret_value() == "sk-very-secret"


def test_the_browser_gets_no_error_details() -> None:
    config = (ROOT / ".streamlit" / "config.toml").read_text()
    import tomllib

    parsed = tomllib.loads(config)
    assert parsed["client"]["showErrorDetails"] == "none"
    assert parsed["server"]["address"] == "127.0.0.1"


# -- the app, through AppTest -------------------------------------------------------


APP = str(ROOT / "streamlit_app.py")


def _app():
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(APP, default_timeout=120)


def _delete_button(at):
    return next(b for b in at.button if b.label == "Delete selected")


def test_delete_asks_for_confirmation_first(app_env: pytest.MonkeyPatch) -> None:
    at = _app().run()
    doomed = next(p for p in delete_box(at).options if p.endswith("searching.md"))
    delete_box(at).set_value([doomed]).run()
    assert _delete_button(at).disabled, "a delete was offered without confirmation"
    next(c for c in at.checkbox if c.label.startswith("Yes, delete 1")).check().run()
    _delete_button(at).click().run()
    assert any("Deleted 1" in s.value for s in at.success)


def test_deleting_while_an_ingest_writes_is_a_message_not_a_traceback(
    app_env: pytest.MonkeyPatch, kb_root: Path
) -> None:
    from rag import layout

    at = _app().run()
    doomed = next(p for p in delete_box(at).options if p.endswith("searching.md"))
    delete_box(at).set_value([doomed]).run()
    next(c for c in at.checkbox if c.label.startswith("Yes, delete")).check().run()
    with layout.write_lock(kb_root / "default"):  # as a running ingest holds it
        _delete_button(at).click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Another ingest is writing" in e.value for e in at.error)


def test_knowledge_base_names_are_matched_whole() -> None:
    from team.access import valid_kb_name as valid_name

    assert valid_name("contracts-2025")
    for bad in ["kb\n", "kb\nother", "../kb", "kb/x", "", ".", "(none yet)", "a" * 65]:
        assert not valid_name(bad), bad


def test_with_no_knowledge_base_yet_the_first_upload_creates_the_default_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = tmp_path / "indexes"
    monkeypatch.setenv("RAG_INDEXES_ROOT", str(root))
    monkeypatch.setenv("RAG_INDEX", str(root / "default"))
    at = _app().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.sidebar.selectbox[0].options == []
    assert "(none yet)" not in str(at.sidebar.selectbox[0].options)
    at.file_uploader[0].set_value(
        [("note.md", b"# Note\n\nThe pump runs at night.", "text/markdown")]
    ).run()
    next(b for b in at.button if b.label == "Ingest").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["default"]


def test_the_manage_tab_shows_no_server_path(app_env: pytest.MonkeyPatch, kb_root: Path) -> None:
    at = _app().run()
    shown = [c.value for c in at.caption] + [m.value for m in at.markdown]
    assert not [line for line in shown if str(kb_root) in line]
