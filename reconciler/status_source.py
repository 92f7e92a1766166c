"""Where the fleet side reads status from: a repository on disk or a URL, fetched first.

`edgefleet status`, `audit` and `status fold` read the same things: every `status/*` branch
head, the release tags, and the main branch's `trust/allowed_signers` and `nodes/`. A local
repository with an `origin` is fetched into its remote-tracking refs; a URL is fetched into a
bare cache under `$XDG_CACHE_HOME/edgefleet/remotes/`. Both keep a reflog of every status
ref, so that a branch rewritten at the origin is seen by the next read (`audit`).

Reading thousands of heads costs one `git for-each-ref` and one `git cat-file --batch`; a
warm `edgefleet status` runs three git processes in all (`rev-parse`, `for-each-ref`,
`cat-file`), since each one costs as much as reading a few hundred heads.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from reconciler.errors import UsageError

if TYPE_CHECKING:
    from reconciler.keys import PublicKey

STATUS_FETCH = "+refs/heads/status/*:refs/remotes/origin/status/*"
RELEASE_FETCH = "+refs/tags/release/*:refs/tags/release/*"
# The main branch: what the origin's HEAD names, else main, else master.
MAIN_CANDIDATES = ("HEAD", "refs/heads/main", "refs/heads/master")
AUDIT_FETCH = "+refs/heads/audit:refs/remotes/origin/audit"
TRACKING_STATUS = "refs/remotes/origin/status/"
OWN_STATUS = "refs/heads/status/"
TRACKING_MAIN = "refs/remotes/origin/HEAD"
RELEASE_TAGS = "refs/tags/release/"
# Where the main branch may be, besides HEAD: what `status` reads trust and nodes from.
MAIN_REFS = (TRACKING_MAIN, "refs/heads/main", "refs/heads/master")
REV_HEAD = ("--verify", "--quiet", "HEAD^{commit}")


class GitFailed(UsageError):
    """A git command on the repository failed: it names the command and git's message."""


# The records here are NamedTuples, not dataclasses: importing `dataclasses` (which loads
# `inspect`) and building a class's methods cost a warm `edgefleet status` a tenth of its time.
class Refs(NamedTuple):
    """The refs `status` reads, as one `git for-each-ref` listed them."""

    # node id -> head commit of its status branch
    heads: dict[str, str]
    # release version -> its tag's object (peeled by `main_view`)
    tags: dict[int, str]


class MainView(NamedTuple):
    """Who is who on the main branch, and the releases: read by one `git cat-file`."""

    fleet: str
    # principal -> key line, from trust/allowed_signers
    signers: dict[str, str]
    nodes: list[str]
    # release version -> the commit its tag signs
    releases: dict[int, str]


class StatusRepo(NamedTuple):
    git_dir: Path
    # Where the status branches are: refs/remotes/origin/status/ after a fetch, or
    # refs/heads/status/ in the origin itself.
    status_prefix: str
    # The commit whose trust/allowed_signers and nodes/ say who is who.
    main_ref: str
    audit_ref: str
    # The refs as `open_status_repo` found them; code that moves refs reads them again.
    listed: Refs | None = None

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
        # One process for the folder's repository and what its HEAD names (exit 1: no commit).
        found = subprocess.run(
            [*("git", "-C", str(path), "rev-parse", "--absolute-git-dir"), *REV_HEAD],
            capture_output=True,
            text=True,
            check=False,
        )
        lines = found.stdout.split()
        if found.returncode not in (0, 1) or not lines:
            raise UsageError(f"{repo}: got a folder that is not a git repository, expected one")
        git_dir = Path(lines[0])
        head_resolves = found.returncode == 0 and len(lines) > 1
        if not fetch:
            return _as_found(git_dir, head_resolves)
        remotes = git_run(git_dir, "remote").decode().split()
        if "origin" not in remotes:
            return _local(git_dir, head_resolves, list_refs(git_dir, OWN_STATUS))
        url = git_run(git_dir, "remote", "get-url", "origin").decode().strip()
    else:
        url = repo
        import hashlib

        git_dir = cache_dir() / (hashlib.sha256(repo.encode()).hexdigest()[:16] + ".git")
        if not (git_dir / "HEAD").exists():
            git_dir.mkdir(parents=True, exist_ok=True)
            git_run(git_dir, "init", "--bare", "--quiet")
    # Reflogs record every value a status ref had: how a rewrite at the origin is noticed.
    git_run(git_dir, "config", "core.logAllRefUpdates", "always")
    try:
        git_run(git_dir, "fetch", "--quiet", "--no-tags", url, STATUS_FETCH, RELEASE_FETCH)
        listed = git_run(git_dir, "ls-remote", url, *MAIN_CANDIDATES).decode().split("\n")
        offered = {line.split("\t")[1] for line in listed if "\t" in line}
        main = next((r for r in MAIN_CANDIDATES if r in offered), None)
        if main is None:
            raise GitFailed(f"{url} has no HEAD, main or master branch")
        git_run(git_dir, "fetch", "--quiet", "--no-tags", url, f"+{main}:{TRACKING_MAIN}")
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
    return _tracking(git_dir, list_refs(git_dir, TRACKING_STATUS))


def _as_found(git_dir: Path, head_resolves: bool) -> StatusRepo:
    """Without a fetch: the remote-tracking status branches when there are any, else the
    repository's own (a server's repository, even one that was itself cloned)."""
    found = _for_each_ref(git_dir, TRACKING_STATUS, *MAIN_REFS, OWN_STATUS, RELEASE_TAGS)
    if _refs_under(found, TRACKING_STATUS):
        return _tracking(git_dir, found)
    if _refs_under(found, OWN_STATUS):
        return _local(git_dir, head_resolves, found)
    # No status at all: where it would be depends on whether there is an origin.
    if "origin" in git_run(git_dir, "remote").decode().split():
        return _tracking(git_dir, found)
    return _local(git_dir, head_resolves, found)


def _tracking(git_dir: Path, found: dict[str, str]) -> StatusRepo:
    main = TRACKING_MAIN if TRACKING_MAIN in found else "HEAD"
    refs = Refs(_refs_under(found, TRACKING_STATUS), _tag_objects(found))
    return StatusRepo(git_dir, TRACKING_STATUS, main, "refs/remotes/origin/audit", refs)


def _local(git_dir: Path, head_resolves: bool, found: dict[str, str]) -> StatusRepo:
    main = "HEAD" if head_resolves else next((r for r in MAIN_REFS[1:] if r in found), "HEAD")
    refs = Refs(_refs_under(found, OWN_STATUS), _tag_objects(found))
    return StatusRepo(git_dir, OWN_STATUS, main, "refs/heads/audit", refs)


def list_refs(git_dir: Path, status_prefix: str) -> dict[str, str]:
    """The status branches under `status_prefix`, the main branch candidates and the release
    tags (unpeeled: peeling in this listing would read every head's object)."""
    return _for_each_ref(git_dir, status_prefix, *MAIN_REFS, RELEASE_TAGS)


def _tag_objects(found: dict[str, str]) -> dict[int, str]:
    versions: dict[int, str] = {}
    for ref, sha in found.items():
        number = ref.removeprefix(RELEASE_TAGS)
        if ref.startswith(RELEASE_TAGS) and number.isdigit():
            versions[int(number)] = sha
    return versions


def _for_each_ref(git_dir: Path, *patterns: str) -> dict[str, str]:
    """ref name -> the object it names."""
    out = git_run(git_dir, "for-each-ref", "--format=%(objectname) %(refname)", *patterns)
    found: dict[str, str] = {}
    for line in out.decode().splitlines():
        sha, _, ref = line.partition(" ")
        found[ref] = sha
    return found


def _refs_under(found: dict[str, str], prefix: str) -> dict[str, str]:
    return {ref[len(prefix) :]: sha for ref, sha in found.items() if ref.startswith(prefix)}


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


def read_refs(repo: StatusRepo) -> Refs:
    """The status heads and release tags as they are now."""
    found = list_refs(repo.git_dir, repo.status_prefix)
    return Refs(_refs_under(found, repo.status_prefix), _tag_objects(found))


def status_heads(repo: StatusRepo) -> dict[str, str]:
    """node id -> head commit of its status branch."""
    return _refs_under(_for_each_ref(repo.git_dir, repo.status_prefix), repo.status_prefix)


def cat_batch(repo: StatusRepo, names: Sequence[str]) -> list[bytes | None]:
    """The contents of each object name (`<sha>`, `<rev>:<path>`), None where missing: one
    `git cat-file --batch` for all of them."""
    return [None if found is None else found[1] for found in cat_objects(repo, names)]


def cat_objects(repo: StatusRepo, names: Sequence[str]) -> list[tuple[str, bytes] | None]:
    """(object id, contents) of each object name, None where missing."""
    if not names:
        return []
    out = repo.git("cat-file", "--batch", data="".join(f"{n}\n" for n in names).encode())
    found: list[tuple[str, bytes] | None] = []
    pos = 0
    for _ in names:
        end = out.index(b"\n", pos)
        header = out[pos:end].split()
        pos = end + 1
        if len(header) != 3 or header[1] == b"missing":
            found.append(None)
            continue
        size = int(header[2])
        found.append((header[0].decode(), out[pos : pos + size]))
        pos += size + 1
    return found


def tree_names(oid: str, tree: bytes) -> list[str]:
    """The entry names of a raw tree object (`<mode> <name>\\0<binary id>` each), the id as
    long as the tree's own: what `git ls-tree --name-only` prints, without its own process."""
    width = len(oid) // 2
    names: list[str] = []
    pos = 0
    while pos < len(tree):
        space = tree.index(b" ", pos)
        nul = tree.index(b"\0", space)
        names.append(tree[space + 1 : nul].decode(errors="surrogateescape"))
        pos = nul + 1 + width
    return names


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


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def principal(name: str, fleet: str) -> str:
    """The name a key has in `trust/allowed_signers`: `<node or key name>@<fleet>`."""
    clean = _UNSAFE.sub("-", name).strip("-") or "key"
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
    found = cat_objects(repo, [f"{rev}:nodes"])[0]
    return [] if found is None else _node_ids(*found)


def _node_ids(oid: str, tree: bytes) -> list[str]:
    return sorted(n.removesuffix(".yaml") for n in tree_names(oid, tree) if n.endswith(".yaml"))


SIGNERS = "trust/allowed_signers"


def fleet_identity(
    repo: StatusRepo, names: MutableMapping[str, str] | None = None
) -> tuple[str, dict[str, str], list[str]]:
    """The fleet's name, its allowed signers (principal -> key line) and its node ids, from
    the main branch head (see `main_view`)."""
    view = main_view(repo, names)
    return view.fleet, view.signers, view.nodes


class MainFiles(NamedTuple):
    """The objects `main_view` reads: (id, bytes) of fleet.yaml, allowed_signers and the
    nodes/ tree at `rev`, and of the commit each tag signs (None where missing)."""

    rev: str
    fleet: tuple[str, bytes] | None
    signers: tuple[str, bytes] | None
    nodes: tuple[str, bytes] | None
    peeled: dict[int, tuple[str, bytes] | None]


def read_main(repo: StatusRepo, tags: Mapping[int, str] = {}) -> MainFiles:
    """One `git cat-file` of what `main_view` needs (the git half, apart so that a caller
    can run it while it does something else)."""
    rev = repo.main_ref
    versions = sorted(tags)
    fleet, signers, nodes, *peeled = cat_objects(
        repo,
        [f"{rev}:fleet.yaml", f"{rev}:{SIGNERS}", f"{rev}:nodes"]
        + [f"{tags[v]}^{{commit}}" for v in versions],
    )
    return MainFiles(rev, fleet, signers, nodes, dict(zip(versions, peeled, strict=True)))


def main_view(
    repo: StatusRepo,
    names: MutableMapping[str, str] | None = None,
    tags: Mapping[int, str] = {},
    files: MainFiles | None = None,
) -> MainView:
    """The fleet's name, allowed signers and node ids from the main branch head, and the
    commit each of `tags` (version -> tag object) signs, from `files` or read by one
    `git cat-file`. `names` (fleet.yaml's blob id -> the name in it) spares a caller that
    keeps it between runs the YAML parser."""
    files = read_main(repo, tags) if files is None else files
    if files.fleet is None:
        raise UsageError(
            f"{repo.git_dir}: {files.rev} has no fleet.yaml, expected a fleet repository"
        )
    blob, text = files.fleet
    fleet = None if names is None else names.get(blob)
    if fleet is None:
        # Imported here: the YAML parser is a sixth of a warm `status`, which knows the name.
        from reconciler.yaml_loader import load_yaml

        loaded = load_yaml(text, f"{files.rev}:fleet.yaml")
        fleet = str(((loaded.data or {}).get("metadata") or {}).get("name", ""))
        if names is not None:
            names[blob] = fleet
    signers = allowed_signers(
        "" if files.signers is None else files.signers[1].decode(errors="replace")
    )
    releases = {v: found[0] for v, found in files.peeled.items() if found is not None}
    nodes = [] if files.nodes is None else _node_ids(*files.nodes)
    return MainView(fleet, signers, nodes, releases)


def release_versions(repo: StatusRepo) -> dict[int, str]:
    """version -> commit of every release tag."""
    out = repo.git("for-each-ref", "--format=%(refname:strip=2) %(*objectname)", RELEASE_TAGS)
    found: dict[int, str] = {}
    for line in out.decode().splitlines():
        name, _, commit = line.partition(" ")
        number = name.removeprefix("release/")
        if number.isdigit():
            found[int(number)] = commit
    return found
