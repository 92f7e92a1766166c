"""The branch `audit`: every node's status head merged in, one merge commit per fold.

`git log audit` then shows every node's signed status commits in one history, and
`git log --first-parent audit` when each fold happened. A fold never rewrites a node's
commits (they are parents, not copies) and is a no-op when nothing moved.
"""

from __future__ import annotations

from datetime import datetime

from reconciler.keys import SigningKey
from reconciler.push_policy import ZERO
from reconciler.signed_commits import commit_object, person
from reconciler.status_doc import STATUS_FILE
from reconciler.status_source import StatusRepo, status_heads

LOCAL_AUDIT = "refs/heads/audit"


def fold_base(repo: StatusRepo) -> str | None:
    """The audit branch to build on: the local one when it contains the origin's (a fold not
    pushed yet), else the origin's."""
    local = repo.resolve(LOCAL_AUDIT)
    remote = repo.resolve(repo.audit_ref) if repo.audit_ref != LOCAL_AUDIT else None
    if remote is None or (local is not None and repo.is_ancestor(remote, local)):
        return local
    return remote


def fold(
    repo: StatusRepo, fleet: str, signer: SigningKey | None, when: datetime
) -> tuple[str | None, list[str]]:
    """One merge commit on `audit` joining every status head that moved since the last fold;
    (None, []) when nothing moved. Its tree holds each node's latest status as <node>.json."""
    base = fold_base(repo)
    args = ["for-each-ref", "--format=%(objectname) %(refname)"]
    if base is not None:
        args.append(f"--no-merged={base}")
    moved_out = repo.git(*args, repo.status_prefix).decode().split("\n")
    moved = sorted(
        (ref.removeprefix(repo.status_prefix), sha)
        for sha, _, ref in (line.partition(" ") for line in moved_out if line)
    )
    if not moved:
        return None, []
    heads = status_heads(repo)
    names = sorted(heads)
    check = (
        repo.git(
            "cat-file",
            "--batch-check",
            data="".join(f"{heads[n]}:{STATUS_FILE}\n" for n in names).encode(),
        )
        .decode()
        .splitlines()
    )
    entries = [
        f"100644 blob {line.split()[0]}\t{node}.json\n"
        for node, line in zip(names, check, strict=True)
        if not line.endswith("missing")
    ]
    tree = repo.git("mktree", data="".join(entries).encode()).decode().strip()
    author = person("EdgeFleet fold", f"fold@{fleet}", when)
    first = base
    if first is None:
        # A root of its own, so that `git log --first-parent audit` lists folds only.
        empty = repo.git("mktree", data=b"").decode().strip()
        start = commit_object(
            tree=empty, parents=(), author=author, message="audit: start", signer=signer
        )
        first = (
            repo.git("hash-object", "-t", "commit", "-w", "--stdin", data=start).decode().strip()
        )
    lines = [f"audit: fold {len(moved)} node(s)", ""]
    lines += [f"{node}: {sha[:12]}" for node, sha in moved]
    raw = commit_object(
        tree=tree,
        parents=(first, *(sha for _, sha in moved)),
        author=author,
        message="\n".join(lines) + "\n",
        signer=signer,
    )
    commit = repo.git("hash-object", "-t", "commit", "-w", "--stdin", data=raw).decode().strip()
    # The local branch's own value, which may lag the origin's fold the new one builds on.
    current = repo.resolve(LOCAL_AUDIT)
    repo.git("update-ref", "-m", "edgefleet status fold", LOCAL_AUDIT, commit, current or ZERO)
    return commit, [node for node, _ in moved]
