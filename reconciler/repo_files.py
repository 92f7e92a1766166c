"""Read-only access to the files of a fleet repository: a working tree now, a git commit later.

The core reads the repository only through `RepoFiles`, so that the same checks run on a
folder in CI and on the tree of a signed commit on a node. Links are reported as links and
never followed: a link can point anywhere on the machine that reads it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Literal, Protocol

EntryKind = Literal["file", "dir", "link", "other"]


class RepoFiles(Protocol):
    def entry(self, path: str) -> EntryKind | None:
        """What `path` (relative, '/'-separated) is, or None when nothing is there.

        A path any of whose folders is a link is a "link" itself.
        """

    def listdir(self, folder: str) -> list[tuple[str, EntryKind]]:
        """The names in a folder with their kinds, sorted; empty when the folder is absent."""

    def read(self, path: str) -> bytes:
        """The bytes of a regular file; raises FileNotFoundError for anything else."""


class DirectoryFiles:
    """A fleet repository checked out in a folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._prefix = f"{root}/"
        # Folders already found to be real folders (not links): a 10,000-file read checks
        # "nodes" once, not 10,000 times.
        self._folders: set[str] = set()

    def _kind(self, mode: int) -> EntryKind:
        if stat.S_ISLNK(mode):
            return "link"
        if stat.S_ISREG(mode):
            return "file"
        if stat.S_ISDIR(mode):
            return "dir"
        return "other"

    def entry(self, path: str) -> EntryKind | None:
        current = self.root
        parts = [p for p in path.split("/") if p]
        for index, part in enumerate(parts):
            current = current / part
            try:
                kind = self._kind(current.lstat().st_mode)
            except (FileNotFoundError, NotADirectoryError):
                return None
            if kind == "link" or index == len(parts) - 1:
                return kind
            if kind != "dir":
                return None
        return "dir"

    def listdir(self, folder: str) -> list[tuple[str, EntryKind]]:
        if self.entry(folder) != "dir":
            return []
        out: list[tuple[str, EntryKind]] = []
        with os.scandir(self.root / folder) as entries:
            for item in entries:
                out.append((item.name, _scandir_kind(item)))
        return sorted(out)

    def read(self, path: str) -> bytes:
        folder = path.rpartition("/")[0]
        if folder and folder not in self._folders:
            if self.entry(folder) != "dir":
                raise FileNotFoundError(path)
            self._folders.add(folder)
        try:
            # O_NOFOLLOW refuses a link in the last place; the folders were checked above.
            fd = os.open(self._prefix + path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            raise FileNotFoundError(path) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise FileNotFoundError(path)
            # Unbuffered reads sized from fstat: a buffered reader per file costs as much as
            # hashing it. The loop still ends at EOF if the file grew or shrank meanwhile.
            chunks = []
            while chunk := os.read(fd, max(info.st_size, 65536) + 1):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)


def _scandir_kind(item: os.DirEntry[str]) -> EntryKind:
    # DirEntry answers from the directory listing itself, saving a stat call per file.
    if item.is_symlink():
        return "link"
    if item.is_file(follow_symlinks=False):
        return "file"
    if item.is_dir(follow_symlinks=False):
        return "dir"
    return "other"
