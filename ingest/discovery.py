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
    # unsupported (found by walking), or a symbolic link leading out of the roots
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # named by the user, unusable
    outside: list[str] = field(default_factory=list)  # the links skipped as leading out


UNSUPPORTED = "unsupported file type"
OUTSIDE = "outside the folders given"
FOLLOW_HINT = "--follow-links follows it"


def outside_reason(what: str) -> str:
    """Why a link was skipped; `what` is "file" or "folder"."""
    return f"symbolic link to a {what} {OUTSIDE} ({FOLLOW_HINT})"


def _task(path: str, kind: str) -> FileTask:
    st = os.stat(path)
    return FileTask(path=path, kind=kind, size=st.st_size, mtime=st.st_mtime)


def discover(paths: list[str], roots: list[str] | None = None, follow_links: bool = False) -> Found:
    """Walk folders and collect supported files. Hidden files and folders are
    left alone. A symbolic link is followed (never around a loop) where its
    resolved path lies under one of `roots` (by default `paths` themselves:
    a file named here is its own root); one leading elsewhere is skipped and
    reported, unless `follow_links`. Someone who can only drop files into a
    watched folder must not pull in `~/.ssh/id_rsa` by a link."""
    real_roots = [os.path.realpath(r) for r in (paths if roots is None else roots)]
    walk = _Walk(Found(), real_roots, follow_links)
    for given in paths:
        path = os.path.abspath(given)
        if _dead_link(path):
            walk.found.failed.append((path, _dead_link(path)))
        elif os.path.exists(path) and walk.leads_out(path):
            continue
        elif os.path.isdir(path):
            walk.folder(path)
        elif os.path.isfile(path):
            walk.add(path, explicit=True)
        elif os.path.exists(path):
            walk.found.failed.append((path, "not a regular file or folder"))
        else:
            walk.found.failed.append((path, "no such file or folder"))
    walk.found.files.sort(key=lambda f: f.path)
    return walk.found


@dataclass
class _Walk:
    found: Found
    real_roots: list[str]
    follow_links: bool = False
    seen_dirs: set[tuple[int, int]] = field(default_factory=set)
    seen_files: set[str] = field(default_factory=set)

    def leads_out(self, path: str) -> bool:
        """True (and reported) if `path` resolves outside the roots."""
        if self.follow_links or is_under(os.path.realpath(path), self.real_roots):
            return False
        what = "folder" if os.path.isdir(path) else "file"
        self.found.skipped.append((path, outside_reason(what)))
        self.found.outside.append(path)
        return True

    def folder(self, top: str) -> None:
        found = self.found
        for folder, dirs, files in os.walk(top, followlinks=True):
            try:
                st = os.stat(folder)
            except OSError as exc:
                found.failed.append((folder, f"cannot read the folder ({exc.strerror or exc})"))
                dirs[:] = []
                continue
            if (st.st_dev, st.st_ino) in self.seen_dirs:  # a symlink loop or a second way in
                dirs[:] = []
                continue
            self.seen_dirs.add((st.st_dev, st.st_ino))
            # `folder` resolves under a root, so only a link can lead out of it.
            dirs[:] = [d for d in sorted(dirs) if not d.startswith(".") and self._stays(folder, d)]
            for name in sorted(files):
                full = os.path.join(folder, name)
                if name.startswith(".") or not self._stays(folder, name):
                    continue
                if _dead_link(full):
                    found.failed.append((full, _dead_link(full)))
                elif os.path.isfile(full):
                    self.add(full, explicit=False)

    def _stays(self, folder: str, name: str) -> bool:
        full = os.path.join(folder, name)
        return not (os.path.islink(full) and not _dead_link(full) and self.leads_out(full))

    def add(self, path: str, explicit: bool) -> None:
        found = self.found
        if path in self.seen_files:
            return
        self.seen_files.add(path)
        if not _utf8(path):  # SQLite, JSON and the app all need text
            shown = os.fsencode(path).decode("utf-8", "replace")
            found.failed.append((shown, "the file name is not valid UTF-8; rename the file"))
            return
        kind = kind_of(path)
        if kind is None:
            suffix = Path(path).suffix or "(no extension)"
            reason = f"{UNSUPPORTED} {suffix}; supported: {', '.join(sorted(KINDS))}"
            (found.failed if explicit else found.skipped).append((path, reason))
            return
        try:
            found.files.append(_task(path, kind))
        except OSError as exc:
            found.failed.append((path, f"cannot read the file ({exc.strerror or exc})"))


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
