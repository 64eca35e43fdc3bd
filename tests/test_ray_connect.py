"""`ingest --ray auto` against a Ray instance that does not answer: a
socket that accepts and never speaks (a hung or half-dead GCS, another
user's) or nothing listening. Ray itself retries such an address for about
15 minutes; `ingest` gives up within seconds. Named by RAY_ADDRESS, the
address is an error naming it; found on its own (Ray's address file), a
private local instance is started instead, as `auto` promises."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray._private import services

ROOT = Path(__file__).resolve().parent.parent
# Seconds an `ingest` process may take to give up on the address, Python and
# its imports included (Ray's own wait is minutes).
GIVE_UP_SECONDS = 60


@pytest.fixture
def silent_address() -> Iterator[str]:
    """127.0.0.1:PORT of a socket that takes connections (the kernel's
    backlog) and never answers. It listens on every interface: Ray may turn
    127.0.0.1 into the machine's outward address."""
    with socket.socket() as server:
        server.bind(("", 0))
        server.listen(64)
        yield f"127.0.0.1:{server.getsockname()[1]}"


@pytest.fixture
def closed_address() -> str:
    """127.0.0.1:PORT where nothing listens, on any interface."""
    with socket.socket() as probe:
        probe.bind(("", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def _port(address: str) -> str:
    return ":" + address.rsplit(":", 1)[1]


@pytest.fixture
def ray_home() -> Iterator[Path]:
    """A home and a Ray temp folder of the test's own (Ray's socket paths
    must stay short: not under pytest's tmp_path)."""
    with tempfile.TemporaryDirectory(prefix="rc", dir="/tmp") as home:
        yield Path(home)


def _ingest(folder: Path, index: Path, env: dict[str, str], limit: float):
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "cli.ingest_main", str(folder), "--index", str(index),
         "--json", "--ray", "auto"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=limit,
    )  # fmt: skip
    return run, time.monotonic() - started


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "HOME": str(home), "RAY_TMPDIR": str(home), **extra}
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        env.pop(name, None)
    if "RAY_ADDRESS" not in extra:
        env.pop("RAY_ADDRESS", None)
    return env


@pytest.mark.parametrize("where", ["silent_address", "closed_address"])
def test_ray_address_that_does_not_answer_fails_fast(
    where: str, request: pytest.FixtureRequest, ray_home: Path, tmp_path: Path
) -> None:
    address = request.getfixturevalue(where)
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("A short note about proteins and membranes.")
    env = _env(ray_home, RAY_ADDRESS=address)
    run, seconds = _ingest(folder, tmp_path / "i", env, GIVE_UP_SECONDS)
    assert run.returncode == 3, run.stderr[-3000:]  # EXIT_FATAL
    assert seconds < GIVE_UP_SECONDS
    error = run.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and address in error, run.stderr[-3000:]
    assert "did not answer" in error and "RAY_ADDRESS" in error
    if where == "silent_address":  # asked, and no answer came before the deadline
        assert "(no answer)" in error


def test_found_instance_that_does_not_answer_starts_a_private_one(
    silent_address: str, ray_home: Path, tmp_path: Path
) -> None:
    # The address file `ray start` leaves behind, pointing at the silent socket.
    (ray_home / "ray").mkdir()
    (ray_home / "ray" / "ray_current_cluster").write_text(silent_address)
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("A short note about proteins and membranes.")
    others = services.find_gcs_addresses()
    run, _ = _ingest(folder, tmp_path / "i", _env(ray_home), 4 * GIVE_UP_SECONDS)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1])["added"] == 1
    warning = [line for line in run.stderr.splitlines() if "did not answer within 10 s" in line]
    assert warning and "starting a private local Ray instance" in warning[0], run.stderr[-3000:]
    # Ray's `auto` prefers a GCS it sees running on the machine (another
    # user's, here another test run's, listening on loopback only) to its
    # address file: with none, the file's silent socket is the one passed over.
    if not others:
        assert _port(silent_address) in warning[0] and "(no answer)" in warning[0]
