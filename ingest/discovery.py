"""Finding the files to ingest under the paths a user gave."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

from ingest.loaders import KINDS, kind_of


@dataclass(frozen=True)
class FileTask:
    path: str  # absolute, symlinks kept as the user sees them
    kind: str
    size: int
    mtime: float


@dataclass
class Found:
    files: list[FileTask] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # unsupported, found by walking
    failed: list[tuple[str, str]] = field(default_factory=list)  # named by the user, unusable


def _task(path: str, kind: str) -> FileTask:
    st = os.stat(path)
    return FileTask(path=path, kind=kind, size=st.st_size, mtime=st.st_mtime)


def discover(paths: list[str]) -> Found:
    """Walk folders (following symlinks, but never around a loop) and collect
    supported files. Hidden files and folders are left alone."""
    found = Found()
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[str] = set()

    def add(path: str, explicit: bool) -> None:
        if path in seen_files:
            return
        seen_files.add(path)
        if not _utf8(path):  # SQLite, JSON and the app all need text
            shown = os.fsencode(path).decode("utf-8", "replace")
            found.failed.append((shown, "the file name is not valid UTF-8; rename the file"))
            return
        kind = kind_of(path)
        if kind is None:
            suffix = Path(path).suffix or "(no extension)"
            reason = f"unsupported file type {suffix}; supported: {', '.join(sorted(KINDS))}"
            (found.failed if explicit else found.skipped).append((path, reason))
            return
        try:
            found.files.append(_task(path, kind))
        except OSError as exc:
            found.failed.append((path, f"cannot read the file ({exc.strerror or exc})"))

    for given in paths:
        path = os.path.abspath(given)
        if _dead_link(path):
            found.failed.append((path, _dead_link(path)))
        elif os.path.isdir(path):
            for folder, dirs, files in os.walk(path, followlinks=True):
                try:
                    st = os.stat(folder)
                except OSError as exc:
                    found.failed.append((folder, f"cannot read the folder ({exc.strerror or exc})"))
                    dirs[:] = []
                    continue
                if (st.st_dev, st.st_ino) in seen_dirs:  # a symlink loop or a second way in
                    dirs[:] = []
                    continue
                seen_dirs.add((st.st_dev, st.st_ino))
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if name.startswith("."):
                        continue
                    full = os.path.join(folder, name)
                    if _dead_link(full):
                        found.failed.append((full, _dead_link(full)))
                    elif os.path.isfile(full):
                        add(full, explicit=False)
        elif os.path.isfile(path):
            add(path, explicit=True)
        elif os.path.exists(path):
            found.failed.append((path, "not a regular file or folder"))
        else:
            found.failed.append((path, "no such file or folder"))
    found.files.sort(key=lambda f: f.path)
    return found


def _dead_link(path: str) -> str:
    """Why a symbolic link cannot be followed; "" if it can, or is no link."""
    if not os.path.islink(path):
        return ""
    try:
        os.stat(path)
    except OSError as exc:
        return "symbolic link loop" if exc.errno == errno.ELOOP else "broken symbolic link"
    return ""


def _utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept as surrogates by Python
        return False
    return True


def is_under(path: str, roots: list[str]) -> bool:
    """True if `path` is one of `roots` or inside one of them."""
    for root in roots:
        root = os.path.abspath(root)
        if path == root or path.startswith(root.rstrip(os.sep) + os.sep):
            return True
    return False
