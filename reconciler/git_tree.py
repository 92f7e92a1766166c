"""The files of one git commit, read through the same `RepoFiles` interface as a folder.

Validation, signing and verification then read exactly the committed bytes, never a working
tree that may hold uncommitted changes.
"""

from __future__ import annotations

import git

from reconciler.repo_files import EntryKind

_KINDS: dict[str, EntryKind] = {"100644": "file", "100755": "file", "120000": "link"}


class GitTreeFiles:
    def __init__(self, repo: git.Repo, rev: str) -> None:
        self.repo = repo
        self.commit = repo.commit(rev).hexsha
        self.entries: dict[str, tuple[EntryKind, str]] = {}
        self.folders: set[str] = {""}
        listing = repo.git.ls_tree("-r", "-z", "--full-tree", self.commit)
        for record in listing.split("\0"):
            if not record:
                continue
            meta, path = record.split("\t", 1)
            mode, _, sha = meta.split(" ")
            self.entries[path] = (_KINDS.get(mode, "other"), sha)
            parts = path.split("/")
            self.folders.update("/".join(parts[:i]) for i in range(1, len(parts)))

    def entry(self, path: str) -> EntryKind | None:
        parts = [p for p in path.split("/") if p]
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            found = self.entries.get(prefix)
            if found is not None:
                return "link" if found[0] == "link" else None
        clean = "/".join(parts)
        found = self.entries.get(clean)
        if found is not None:
            return found[0]
        return "dir" if clean in self.folders else None

    def listdir(self, folder: str) -> list[tuple[str, EntryKind]]:
        prefix = f"{folder}/" if folder else ""
        names: dict[str, EntryKind] = {}
        for path, (kind, _) in self.entries.items():
            if path.startswith(prefix):
                name, _, deeper = path[len(prefix) :].partition("/")
                names[name] = "dir" if deeper else kind
        return sorted(names.items())

    def read(self, path: str) -> bytes:
        found = self.entries.get(path)
        if found is None or found[0] != "file":
            raise FileNotFoundError(path)
        data: bytes = self.repo.odb.stream(bytes.fromhex(found[1])).read()
        return data

    def paths(self) -> list[str]:
        return sorted(self.entries)
