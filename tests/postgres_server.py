"""A real PostgreSQL server for the tests, from Debian's `postgresql`
package: a throwaway cluster in a temporary folder, listening only on a
unix socket there (no TCP port), run as `nobody` when the tests run as
root (postgres refuses to run as root). `make test` installs the package
(see SYSTEM_PACKAGES in the Makefile)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class NotInstalled(Exception):
    pass


def binaries() -> Path:
    """The newest installed server's bin folder."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts[-3])
    found = [p for p in found if p.parts[-3].isdigit()]
    if not found:
        raise NotInstalled("no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)")
    return max(found, key=lambda p: int(p.parts[-3])).parent


@dataclass
class Server:
    folder: Path  # the data folder's parent, which also holds the socket
    port: int
    _run_as: list[str]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://kbqa@/{database}?host={self.folder}&port={self.port}"

    def create_database(self, name: str) -> str:
        """A fresh, empty database; its URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def psql(self, sql: str, database: str = "postgres") -> str:
        command = [
            str(binaries() / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
            "-h", str(self.folder), "-p", str(self.port), "-U", "kbqa", "-d", database,
            "-c", sql,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
        return done.stdout


@contextlib.contextmanager
def postgres_server(port: int = 5432) -> Iterator[Server]:
    """Starts a cluster (initdb, pg_ctl start), yields it, stops it and
    removes its folder. The port only names the socket file in the
    cluster's own folder, so no two servers clash."""
    bin_dir = binaries()
    # Not pytest's tmp_path: its parents are root's alone, and `nobody`
    # must reach the socket and data folders.
    folder = Path(tempfile.mkdtemp(prefix="kbqa-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "nobody", "nogroup")
        run_as = ["runuser", "-u", "nobody", "--"]
    data = folder / "data"

    def run(*command: str) -> None:
        subprocess.run([*run_as, *command], check=True, capture_output=True, timeout=120)

    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", "kbqa", "--auth=trust",
            "-E", "UTF8", "--no-locale")  # fmt: skip
        options = f"-k {folder} -p {port} -c listen_addresses='' -c fsync=off"
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options,
            "-l", str(folder / "server.log"), "-w", "-t", "60", "start")  # fmt: skip
        try:
            yield Server(folder, port, run_as)
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
