"""The node's copy of the fleet repository: release tags fetched from any git URL, nothing else.

A cycle first asks the origin for its release tags (`git ls-remote`, one round trip) and
fetches only when they differ from the local ones, so that a node with nothing to do costs
the origin about what `git ls-remote` costs. A fetch takes only `refs/tags/release/*` at depth
one: the signed commits, not the history behind them or any branch.

The copy is a partial clone (`--filter=blob:none`): a fetch brings commits and trees, and the
node then fetches, in one request, only the blobs of the files it renders from. So what a node
downloads for a release does not grow with the number of nodes in the fleet. An origin that
does not allow filters sends everything instead; the fetch says so in the log.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import git
from node_agent.errors import OriginUnreachable

from reconciler.errors import EdgeFleetError
from reconciler.ref_names import RELEASE_REF

RELEASE_REFS = "refs/tags/release/*"
# The promisor remote: lazy fetches of a partial clone go to a named remote, not to a URL.
REMOTE = "origin"
FILTER = "blob:none"
_NO_FILTER = "filtering not recognized by server"


class PushRejected(EdgeFleetError):
    """The origin answered and refused a push: `behind` when the branch moved there first
    (non-fast-forward), otherwise a refusal by a hook or a permission."""

    def __init__(self, message: str, behind: bool) -> None:
        super().__init__(message)
        self.behind = behind


@dataclass(frozen=True)
class TransportLimits:
    # A whole fetch, end to end: a node on a slow link still finishes, a hung origin does not
    # hold the agent forever.
    fetch_timeout_s: float = 300.0
    ls_remote_timeout_s: float = 60.0
    # Below this many bytes per second for `low_speed_time_s`, git's HTTP transport gives up.
    low_speed_limit: int = 1000
    low_speed_time_s: int = 30
    ssh_connect_timeout_s: int = 15


def _git_env(limits: TransportLimits) -> dict[str, str]:
    env = {
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_HTTP_LOW_SPEED_LIMIT": str(limits.low_speed_limit),
        "GIT_HTTP_LOW_SPEED_TIME": str(limits.low_speed_time_s),
        # An agent has no one to answer a prompt: fail instead of waiting for one.
        "GIT_ASKPASS": "true",
        "SSH_ASKPASS": "true",
    }
    if "GIT_SSH_COMMAND" not in os.environ:
        env["GIT_SSH_COMMAND"] = (
            f"ssh -o BatchMode=yes -o ConnectTimeout={limits.ssh_connect_timeout_s}"
            " -o ServerAliveInterval=15 -o ServerAliveCountMax=4"
        )
    return env


_GIT_ADVICE = (
    "fatal: Could not read from remote repository",
    "Please make sure you have the correct access rights",
    "and the repository exists",
)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, git.GitCommandError):
        lines = [
            ln.strip().removeprefix("stderr: ").strip("'")
            for ln in str(exc.stderr or "").splitlines()
            if ln.strip().strip("'")
        ]
        # git ends with generic advice ("Could not read from remote repository", "Please
        # make sure you have the correct access rights"); the cause is the line before it:
        # ssh's "Connection refused", a TLS error, git daemon's "access denied".
        useful = [ln for ln in lines if not ln.startswith(_GIT_ADVICE)]
        return "; ".join(useful[-2:]) if useful else f"git exited with {exc.status}"
    return str(exc) or type(exc).__name__


class Transport:
    """Fetches release tags from `url` into the bare repository `repo_dir`."""

    def __init__(
        self,
        repo_dir: Path,
        url: str,
        limits: TransportLimits | None = None,
        log: Callable[..., Any] | None = None,
        bundle: bool = False,
    ) -> None:
        self.repo_dir = repo_dir
        self.url = url
        # A git bundle file (an offline import): it holds what it holds, so it is fetched
        # whole, and tags it lacks stay (it is not the origin's full list).
        self.bundle = bundle
        self.limits = limits or TransportLimits()
        self.env = _git_env(self.limits)
        self.log = log or (lambda event, **fields: None)
        self._repo: git.Repo | None = None

    @property
    def repo(self) -> git.Repo:
        if self._repo is None:
            if (self.repo_dir / "HEAD").is_file():
                self._repo = git.Repo(self.repo_dir)
            else:
                self.repo_dir.mkdir(parents=True, exist_ok=True)
                self._repo = git.Repo.init(self.repo_dir, bare=True)
            if not self.bundle:
                self._promise(self._repo)
        return self._repo

    def _promise(self, repo: git.Repo) -> None:
        """Make the copy a partial clone of `url`, whatever it was before: a full copy made
        by an older agent keeps its objects and fetches partially from now on, and a changed
        `repo` in the configuration moves the remote."""
        wanted = {
            "core.repositoryformatversion": "1",
            "extensions.partialclone": REMOTE,
            f"remote.{REMOTE}.url": self.url,
            f"remote.{REMOTE}.promisor": "true",
            f"remote.{REMOTE}.partialclonefilter": FILTER,
        }
        listed: str = repo.git.config("--local", "--list")
        have = dict(line.split("=", 1) for line in listed.splitlines() if "=" in line)
        if all(have.get(k) == v for k, v in wanted.items()):
            return
        for key, value in wanted.items():
            repo.git.config(key, value)

    def _git(self, *args: str, timeout: float) -> str:
        out: str = self.repo.git.execute(
            ["git", *args],
            env=self.env,
            kill_after_timeout=timeout,
            with_extended_output=False,
        )
        return out

    def _git_err(self, *args: str, timeout: float, stdin: str | None = None) -> str:
        """Run git; returns what it said on standard error (a fetch's warnings)."""
        done = subprocess.run(
            ["git", "--git-dir", str(self.repo.git_dir), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env},
            check=False,
        )
        if done.returncode != 0:
            raise git.GitCommandError(["git", *args], done.returncode, done.stderr, done.stdout)
        return done.stderr

    def remote_tags(self) -> dict[str, str]:
        """The origin's release tags, name -> object id (one round trip)."""
        try:
            out = self._git(
                "ls-remote",
                "--refs",
                # Makes git ask the server for refs/tags/ only (protocol v2's ref-prefix); a
                # pattern alone is matched here, after the server listed every ref, one status
                # branch per node included.
                "--tags",
                self.url,
                RELEASE_REFS,
                timeout=self.limits.ls_remote_timeout_s,
            )
        except (git.GitCommandError, OSError) as exc:
            reason = _reason(exc)
            what = (
                "the origin refused this node's credential"
                if "Authentication failed" in reason or "401" in reason
                else "got no answer from the origin"
            )
            raise OriginUnreachable(
                f"{self.url}: {what} ({reason}), expected its release tags; the node keeps"
                " running what it runs"
            ) from None
        return _parse_refs(out)

    def local_tags(self) -> dict[str, str]:
        refs: dict[str, str] = {}
        for ref in self.repo.tags:
            name = f"refs/tags/{ref.name}"
            if RELEASE_REF.match(name):
                refs[name] = ref.object.hexsha
        return refs

    def sync(self) -> dict[str, str]:
        """Bring the local release tags level with the origin's; returns them, name -> id."""
        remote = self.remote_tags()
        local = self.local_tags()
        if remote == local or (self.bundle and remote.items() <= local.items()):
            return local
        self.clear_stale_locks()
        how = () if self.bundle else ("--depth=1", "--prune", f"--filter={FILTER}")
        said = self._fetch_tags(self.url if self.bundle else REMOTE, *how, what="release tags")
        if _NO_FILTER in said:
            self.log(
                "fetch.full",
                origin=self.url,
                reason="the origin does not allow partial clones (uploadpack.allowFilter);"
                " it sent every file of the fleet, not only this node's",
            )
        after = self.local_tags()
        self.log(
            "fetch.done",
            origin=self.url,
            new=sorted(set(after) - set(local)),
            changed=sorted(n for n in after if n in local and local[n] != after[n]),
        )
        return after

    def missing(self, oids: Iterable[str], commit: str) -> list[str]:
        """Which of `oids` (objects of `commit`'s tree) are not here yet; asks no one."""
        wanted = set(oids)
        if not wanted:
            return []
        listed = self._git(
            "rev-list",
            "--objects",
            "--missing=print",
            "--no-object-names",
            commit,
            timeout=self.limits.fetch_timeout_s,
        )
        gone = {ln[1:] for ln in listed.splitlines() if ln.startswith("?")}
        return sorted(wanted & gone)

    def fetch_blobs(self, oids: Iterable[str], commit: str) -> int:
        """Fetch, in one request, whichever of these blobs of `commit` are not here; returns
        how many were missing. Without this, each file read would fetch its blob alone.

        An origin that refuses to send single objects gets a full fetch instead (logged).
        Raises OriginUnreachable when neither works."""
        need = self.missing(oids, commit)
        if not need or self.bundle:
            return len(need)
        try:
            self._git_err(
                "-c",
                "fetch.negotiationAlgorithm=noop",
                "fetch",
                REMOTE,
                "--no-tags",
                "--no-write-fetch-head",
                "--recurse-submodules=no",
                f"--filter={FILTER}",
                "--stdin",
                timeout=self.limits.fetch_timeout_s,
                stdin="".join(f"{oid}\n" for oid in need),
            )
        except (git.GitCommandError, OSError, subprocess.TimeoutExpired) as exc:
            reason = _reason(exc)
            self.log("fetch.full", origin=self.url, reason=f"fetching files failed ({reason})")
            self.refetch_all()
        self.log("fetch.files", origin=self.url, blobs=len(need))
        return len(need)

    def refetch_all(self) -> None:
        """Every object of the release tags, as a fresh full clone would fetch them."""
        self._fetch_tags(self.url, "--refetch", "--depth=1", what="the release's files")

    def _fetch_tags(self, source: str, *how: str, what: str) -> str:
        """Fetch the release tags from `source`; returns git's warnings. Raises
        OriginUnreachable."""
        try:
            return self._git_err(
                "fetch",
                *how,
                "--no-tags",
                "--no-write-fetch-head",
                source,
                f"+{RELEASE_REFS}:{RELEASE_REFS}",
                timeout=self.limits.fetch_timeout_s,
            )
        except (git.GitCommandError, OSError, subprocess.TimeoutExpired) as exc:
            raise OriginUnreachable(
                f"{self.url}: fetching {what} failed ({_reason(exc)}); the node keeps running"
                " what it runs"
            ) from None

    def fetch_ref(self, remote_ref: str, local_ref: str, since: int | None = None) -> str | None:
        """The origin's `remote_ref` fetched into `local_ref`, at depth one, or with every
        commit made since the Unix time `since`; None when the origin has no such ref. Raises
        OriginUnreachable."""
        # No `ls-remote` first: git asks the server for a listing filtered by prefix only for
        # the refs a fetch names, and an exact name in `ls-remote` would list every node's
        # status branch.
        self.clear_stale_locks()
        try:
            self._git(
                "fetch",
                "--depth=1" if since is None else f"--shallow-since=@{since}",
                "--no-tags",
                "--no-write-fetch-head",
                self.url,
                f"+{remote_ref}:{local_ref}",
                timeout=self.limits.fetch_timeout_s,
            )
        except (git.GitCommandError, OSError) as exc:
            if "couldn't find remote ref" in str(getattr(exc, "stderr", "")):
                return None
            raise OriginUnreachable(
                f"{self.url}: fetching {remote_ref} failed ({_reason(exc)})"
            ) from None
        sha: str = self.repo.git.rev_parse(local_ref)
        return sha

    def push(self, ref: str) -> None:
        """Push the local `ref` to the same name at the origin, fast-forward only.

        Raises OriginUnreachable when the origin does not answer, PushRejected when it refuses.
        """
        try:
            done = subprocess.run(
                [
                    "git",
                    "--git-dir",
                    str(self.repo.git_dir),
                    "push",
                    "--porcelain",
                    "--quiet",
                    self.url,
                    f"{ref}:{ref}",
                ],
                capture_output=True,
                text=True,
                timeout=self.limits.fetch_timeout_s,
                env={**os.environ, **self.env},
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise OriginUnreachable(f"{self.url}: pushing {ref} failed ({exc})") from None
        if done.returncode == 0:
            return
        refused = [ln for ln in done.stdout.splitlines() if ln.startswith("!")]
        if not refused:
            detail = "; ".join(ln.strip() for ln in done.stderr.splitlines() if ln.strip())
            raise OriginUnreachable(
                f"{self.url}: pushing {ref} failed ({detail or done.returncode})"
            )
        why = refused[0].split("\t")[-1]
        hook = [
            ln.removeprefix("remote: ").strip()
            for ln in done.stderr.splitlines()
            if ln.startswith("remote: ") and ln.strip() != "remote:"
        ]
        behind = "[rejected]" in why and ("non-fast-forward" in why or "fetch first" in why)
        detail = f"{why}: {'; '.join(hook)}" if hook else why
        raise PushRejected(f"{self.url}: the origin refused {ref} ({detail})", behind=behind)

    def clear_stale_locks(self) -> None:
        """Remove lock files a git killed mid-fetch left behind (a power cut, `kill -9` of
        the agent's process group): git refuses to fetch while they exist, and would leave
        the node unable to update until someone deleted them by hand.

        The caller holds the state directory's lock, so no other agent fetches here; a lock
        is left alone while any git process not started by this one works in the repository.
        """
        git_dir = Path(self.repo.git_dir)
        locks = [
            p for p in (*git_dir.glob("*.lock"), *(git_dir / "refs").rglob("*.lock")) if p.is_file()
        ]
        if not locks or _foreign_git_in(git_dir):
            return
        for lock in locks:
            lock.unlink(missing_ok=True)
        self.log(
            "fetch.stale_locks_removed", locks=sorted(str(p.relative_to(git_dir)) for p in locks)
        )


def _foreign_git_in(git_dir: Path) -> bool:
    """Whether a process other than this one's children has its working folder in `git_dir`."""
    me = os.getpid()
    target = str(git_dir.resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if str((entry / "cwd").readlink()) != target:
                continue
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The parent pid is the 4th field, after the command name in parentheses.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid != me:
            return True
    return False


def _parse_refs(out: str) -> dict[str, str]:
    refs: dict[str, str] = {}
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        if RELEASE_REF.match(name):
            refs[name] = sha
    return refs


def fingerprint(tags: Mapping[str, str]) -> str:
    """One string for a set of tags: what a node last evaluated, to skip re-deciding."""
    text = "".join(f"{name} {sha}\n" for name, sha in sorted(tags.items()))
    return hashlib.sha256(text.encode()).hexdigest()
