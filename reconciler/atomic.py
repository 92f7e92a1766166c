"""Files replaced atomically: a reader sees the old file or the new one, never a part of one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_output(path: Path, mode: int = 0o644) -> Iterator[IO[bytes]]:
    """A file written beside `path` that replaces it only once complete and synced to disk:
    temp file in the same folder, fsync, rename, fsync of the folder (power-cut safe)."""
    # Imported here, as hashlib below: commands that only read (a warm `edgefleet status`)
    # should not load them at start-up.
    import tempfile

    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as sink:
            os.fchmod(sink.fileno(), mode)
            yield sink
            sink.flush()
            os.fsync(sink.fileno())
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(tmp).unlink()
        raise
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    with atomic_output(path, mode) as out:
        out.write(data)


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, read in chunks: artifacts may be far larger than memory allows."""
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
