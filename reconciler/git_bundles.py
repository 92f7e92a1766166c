"""Reading a `git bundle` file's header: the refs it offers, without a repository."""

from __future__ import annotations

import subprocess
from pathlib import Path


class BundleUnreadable(Exception):
    """Git cannot read the file as a bundle; the message is git's own."""


def list_heads(path: Path) -> dict[str, str]:
    """ref name -> object id for every ref the bundle offers."""
    path = path.resolve()
    done = subprocess.run(
        ["git", "bundle", "list-heads", str(path)],
        capture_output=True,
        text=True,
        check=False,
        # Outside any repository on purpose: git reads the header alone.
        cwd=path.parent,
    )
    if done.returncode != 0:
        raise BundleUnreadable(done.stderr.strip() or f"git exited with {done.returncode}")
    heads: dict[str, str] = {}
    for line in done.stdout.splitlines():
        sha, _, ref = line.partition(" ")
        heads[ref] = sha
    return heads
