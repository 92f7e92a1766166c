"""Where the fleet side reads status from: a repository on disk or a URL, fetched first.

`edgefleet status`, `audit` and `status fold` read the same things: every `status/*` branch
head, the release tags, and the main branch's `trust/allowed_signers` and `nodes/`. A local
repository with an `origin` is fetched into its remote-tracking refs; a URL is fetched into a
bare cache under `$XDG_CACHE_HOME/edgefleet/remotes/`. Both keep a reflog of every status
ref, so that a branch rewritten at the origin is seen by the next read (`audit`).

Reading thousands of heads costs one `git for-each-ref` and one `git cat-file --batch`.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.errors import UsageError
from reconciler.yaml_loader import load_yaml

if TYPE_CHECKING:
    from reconciler.keys import PublicKey

STATUS_FETCH = "+refs/heads/status/*:refs/remotes/origin/status/*"
RELEASE_FETCH = "+refs/tags/release/*:refs/tags/release/*"
# The main branch: what the origin's HEAD names, else main, else master.
MAIN_CANDIDATES = ("HEAD", "refs/heads/main", "refs/heads/master")
AUDIT_FETCH = "+refs/heads/audit:refs/remotes/origin/audit"


class GitFailed(UsageError):
    """A git command on the repository failed: it names the command and git's message."""


@dataclass(frozen=True)
class StatusRepo:
    git_dir: Path
    # Where the status branches are: refs/remotes/origin/status/ after a fetch, or
    # refs/heads/status/ in the origin itself.
    status_prefix: str
    # The commit whose trust/allowed_signers and nodes/ say who is who.
    main_ref: str
    audit_ref: str

    def git(self, *args: str, data: bytes | None = None) -> bytes:
        return git_run(self.git_dir, *args, data=data)

    def resolve(self, ref: str) -> str | None:
        """The commit `ref` names, or None when there is no such ref."""
        return resolve(self.git_dir, ref)

    def is_ancestor(self, old: str, new: str) -> bool:
        try:
            self.git("merge-base", "--is-ancestor", old, new)
        except GitFailed:
            return False
        return True


def git_run(git_dir: Path, *args: str, data: bytes | None = None) -> bytes:
    done = subprocess.run(
        ["git", "--git-dir", str(git_dir), *args],
        input=data,
        capture_output=True,
        check=False,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
    )
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        raise GitFailed(
            f"git {' '.join(args[:2])} in {git_dir}: {message[-1] if message else done.returncode}"
        )
    return done.stdout


def _is_local(repo: str) -> bool:
    return "://" not in repo and ":" not in repo.split("/", 1)[0]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgefleet"


def cache_dir() -> Path:
    return cache_root() / "remotes"


def open_status_repo(repo: str, fetch: bool = True) -> StatusRepo:
    """The repository to read status from; fetched from its origin (or the URL) unless not
    `fetch`. Raises UsageError when it is not a git repository or the fetch fails."""
    if _is_local(repo):
        path = Path(repo)
        if not path.exists():
            raise UsageError(f"{repo}: no such folder, expected a fleet repository or a git URL")
        found = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--absolute-git-dir"],
            capture_output=True,
            text=True,
            check=False,
        )
        if found.returncode != 0:
            raise UsageError(f"{repo}: got a folder that is not a git repository, expected one")
        git_dir = Path(found.stdout.strip())
        remotes = git_run(git_dir, "remote").decode().split()
        if "origin" not in remotes:
            return local_status_repo(git_dir)
        url = git_run(git_dir, "remote", "get-url", "origin").decode().strip()
    else:
        url = repo
        git_dir = cache_dir() / (hashlib.sha256(repo.encode()).hexdigest()[:16] + ".git")
        if not (git_dir / "HEAD").exists():
            git_dir.mkdir(parents=True, exist_ok=True)
            git_run(git_dir, "init", "--bare", "--quiet")
        fetch = True
    if not fetch:
        tracking = git_run(git_dir, "for-each-ref", "--count=1", "refs/remotes/origin/status/")
        own = git_run(git_dir, "for-each-ref", "--count=1", "refs/heads/status/")
        if own and not tracking:
            # A server's repository that was itself cloned (it keeps an origin remote).
            return local_status_repo(git_dir)
    else:
        # Reflogs record every value a status ref had: how a rewrite at the origin is noticed.
        git_run(git_dir, "config", "core.logAllRefUpdates", "always")
        try:
            git_run(git_dir, "fetch", "--quiet", "--no-tags", url, STATUS_FETCH, RELEASE_FETCH)
            listed = git_run(git_dir, "ls-remote", url, *MAIN_CANDIDATES).decode().split("\n")
            offered = {line.split("\t")[1] for line in listed if "\t" in line}
            main = next((r for r in MAIN_CANDIDATES if r in offered), None)
            if main is None:
                raise GitFailed(f"{url} has no HEAD, main or master branch")
            git_run(
                git_dir, "fetch", "--quiet", "--no-tags", url, f"+{main}:refs/remotes/origin/HEAD"
            )
        except GitFailed as exc:
            raise UsageError(
                f"{url}: fetching status failed ({exc}); expected a reachable origin"
            ) from None
        # The audit branch is optional: a fleet that never folded has none.
        subprocess.run(
            ["git", "--git-dir", str(git_dir), "fetch", "--quiet", "--no-tags", url, AUDIT_FETCH],
            capture_output=True,
            check=False,
        )
    main = "refs/remotes/origin/HEAD" if resolve(git_dir, "refs/remotes/origin/HEAD") else "HEAD"
    return StatusRepo(git_dir, "refs/remotes/origin/status/", main, "refs/remotes/origin/audit")


def local_status_repo(git_dir: Path) -> StatusRepo:
    """The origin itself (a bare server repository): its own branches are the status."""
    main = next((r for r in MAIN_CANDIDATES if resolve(git_dir, r)), "HEAD")
    return StatusRepo(git_dir, "refs/heads/status/", main, "refs/heads/audit")


def resolve(git_dir: Path, ref: str) -> str | None:
    done = subprocess.run(
        ["git", "--git-dir", str(git_dir), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def status_heads(repo: StatusRepo) -> dict[str, str]:
    """node id -> head commit of its status branch."""
    out = repo.git("for-each-ref", "--format=%(objectname) %(refname)", repo.status_prefix)
    heads: dict[str, str] = {}
    for line in out.decode().splitlines():
        sha, _, ref = line.partition(" ")
        heads[ref.removeprefix(repo.status_prefix)] = sha
    return heads


def cat_batch(repo: StatusRepo, names: Sequence[str]) -> list[bytes | None]:
    """The contents of each object name (`<sha>`, `<rev>:<path>`), None where missing: one
    `git cat-file --batch` for all of them."""
    if not names:
        return []
    out = repo.git("cat-file", "--batch", data="".join(f"{n}\n" for n in names).encode())
    found: list[bytes | None] = []
    pos = 0
    for _ in names:
        end = out.index(b"\n", pos)
        header = out[pos:end].split()
        pos = end + 1
        if len(header) != 3 or header[1] == b"missing":
            found.append(None)
            continue
        size = int(header[2])
        found.append(out[pos : pos + size])
        pos += size + 1
    return found


def allowed_signers(text: str) -> dict[str, str]:
    """principal -> key line (`ssh-ed25519 AAAA...`) from an OpenSSH allowed_signers file
    (options other than `namespaces` are not used by EdgeFleet's generated file, and lines
    with them are kept). The keys are parsed by whoever checks a signature with them."""
    keys: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        principals, _, key_part = line.partition(" ")
        while key_part and not key_part.startswith("ssh-"):
            # Options such as namespaces="git" come before the key.
            key_part = key_part.partition(" ")[2]
        if key_part:
            for principal in principals.split(","):
                keys[principal] = key_part
    return keys


def principal(name: str, fleet: str) -> str:
    """The name a key has in `trust/allowed_signers`: `<node or key name>@<fleet>`."""
    clean = re.sub(r"[^A-Za-z0-9._+-]+", "-", name).strip("-") or "key"
    return f"{clean}@{fleet}"


def public_keys(signers: dict[str, str], where: str) -> dict[str, PublicKey]:
    """The keys of `allowed_signers` as keys, leaving out lines that hold no valid key."""
    from reconciler.keys import KeyError_, PublicKey

    keys: dict[str, PublicKey] = {}
    for principal, line in signers.items():
        try:
            keys[principal] = PublicKey.from_openssh(line, f"{where}: {principal}")
        except KeyError_:
            continue
    return keys


def read_files(repo: StatusRepo, rev: str, paths: Iterable[str]) -> dict[str, bytes]:
    """The files of `rev` that exist among `paths`."""
    wanted = list(paths)
    return {
        path: data
        for path, data in zip(wanted, cat_batch(repo, [f"{rev}:{p}" for p in wanted]), strict=True)
        if data is not None
    }


def node_files(repo: StatusRepo, rev: str) -> list[str]:
    """The node ids that `rev` has a `nodes/<id>.yaml` for."""
    try:
        out = repo.git("ls-tree", "--name-only", f"{rev}:nodes")
    except GitFailed:
        return []
    return sorted(
        name.removesuffix(".yaml") for name in out.decode().splitlines() if name.endswith(".yaml")
    )


SIGNERS = "trust/allowed_signers"


def fleet_identity(repo: StatusRepo) -> tuple[str, dict[str, str], list[str]]:
    """The fleet's name, its allowed signers (principal -> key line) and its node ids, from
    the main branch head."""
    files = read_files(repo, repo.main_ref, ["fleet.yaml", SIGNERS])
    if "fleet.yaml" not in files:
        raise UsageError(
            f"{repo.git_dir}: {repo.main_ref} has no fleet.yaml, expected a fleet repository"
        )
    loaded = load_yaml(files["fleet.yaml"], f"{repo.main_ref}:fleet.yaml")
    fleet = str(((loaded.data or {}).get("metadata") or {}).get("name", ""))
    signers = allowed_signers(files.get(SIGNERS, b"").decode(errors="replace"))
    return fleet, signers, node_files(repo, repo.main_ref)


def release_versions(repo: StatusRepo) -> dict[int, str]:
    """version -> commit of every release tag."""
    out = repo.git(
        "for-each-ref", "--format=%(refname:strip=2) %(*objectname)", "refs/tags/release/"
    )
    found: dict[int, str] = {}
    for line in out.decode().splitlines():
        name, _, commit = line.partition(" ")
        number = name.removeprefix("release/")
        if number.isdigit():
            found[int(number)] = commit
    return found
