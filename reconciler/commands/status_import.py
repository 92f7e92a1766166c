"""`edgefleet status import FILE...`: status carried back on a stick lands on its branch.

Each file is what `edgefleet-agent export-status` wrote: a git bundle of `status/<node>`. Its
commits land under the same rules the server's `pre-receive` hook applies to a node's own
push (`reconciler.push_policy`): signed by that node's key, holding its valid status, only
ever fast-forwarding the branch. A commit the branch already has is never added twice (Git
names commits by content), so carrying the same file twice, or a file holding commits a later
push already delivered, lands nothing new. All or nothing across the files given.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from reconciler.commands.hook import RepositoryFacts, load_trust
from reconciler.errors import EdgeFleetError, UsageError
from reconciler.git_bundles import BundleUnreadable, list_heads
from reconciler.push_policy import STATUS_REF, ZERO, RefUpdate, check_push
from reconciler.status_source import GitFailed, StatusRepo, open_status_repo

INCOMING = "refs/edgefleet/incoming/"


class StatusImportRefused(EdgeFleetError):
    """The carried status breaks the fleet's rules; nothing landed."""

    exit_code = 1


@dataclass(frozen=True)
class Landing:
    node: str
    old: str | None
    new: str
    commits: int  # new to the branch; 0 when it already had them all


def _bundle_heads(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise UsageError(f"{path}: no such file, expected a bundle from `edgefleet-agent export`")
    try:
        listed = list_heads(path)
    except BundleUnreadable as exc:
        raise StatusImportRefused(
            f"{path}: git cannot read it ({exc}), expected a git bundle written by"
            " `edgefleet-agent export-status`; it is damaged or another file"
        ) from None
    heads: dict[str, str] = {}
    for ref, sha in listed.items():
        if not ref.startswith(STATUS_REF) or ref == STATUS_REF:
            raise StatusImportRefused(
                f"{path}: carries {ref}, expected only {STATUS_REF}<node> branches"
            )
        heads[ref.removeprefix(STATUS_REF)] = sha
    return heads


def plan_landings(repo: StatusRepo, files: list[Path]) -> tuple[list[RefUpdate], list[Landing]]:
    """Fetch every file's commits under `refs/edgefleet/incoming/` and work out, per node,
    the update that lands them; raises before anything moves when a file cannot be used."""
    incoming: dict[str, str] = {}
    for path in files:
        heads = _bundle_heads(path)
        try:
            repo.git("bundle", "verify", "--quiet", str(path.resolve()))
        except GitFailed as exc:
            raise StatusImportRefused(
                f"{path}: the repository lacks the status commits this file builds on ({exc});"
                " import the node's earlier export first, or fetch its branch from the origin"
            ) from None
        refspecs = [f"+{STATUS_REF}{n}:{INCOMING}{n}" for n in heads]
        repo.git("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", str(path), *refspecs)
        for node, sha in heads.items():
            if incoming.get(node, sha) != sha:
                older, newer = sorted((incoming[node], sha), key=lambda c: _depth(repo, c))
                if not repo.is_ancestor(older, newer):
                    raise StatusImportRefused(
                        f"{path}: status/{node}: got head {sha[:12]}, which does not continue"
                        f" {incoming[node][:12]} from another file; expected one history"
                    )
                sha = newer
            incoming[node] = sha
    updates: list[RefUpdate] = []
    landings: list[Landing] = []
    for node, new in sorted(incoming.items()):
        old = repo.resolve(f"{repo.status_prefix}{node}")
        if old is not None and repo.is_ancestor(new, old):
            landings.append(Landing(node, old, new, 0))
            continue
        span = (new, f"^{old}") if old else (new,)
        count = int(repo.git("rev-list", "--count", *span).decode().strip() or 0)
        updates.append(RefUpdate(old or ZERO, new, f"{STATUS_REF}{node}"))
        landings.append(Landing(node, old, new, count))
    return updates, landings


def _depth(repo: StatusRepo, commit: str) -> int:
    return int(repo.git("rev-list", "--count", commit).decode().strip() or 0)


def land(repo: StatusRepo, updates: list[RefUpdate]) -> None:
    """Move the branches: in place when `repo` is the origin itself, else by one push to its
    origin (whose own hook checks the same rules again)."""
    if not updates:
        return
    if repo.status_prefix == STATUS_REF:
        for update in updates:
            old = "" if update.old == ZERO else update.old
            repo.git("update-ref", "-m", "edgefleet status import", update.ref, update.new, old)
        return
    repo.git("push", "--quiet", "--atomic", "origin", *(f"{u.new}:{u.ref}" for u in updates))
    for update in updates:
        tracking = repo.status_prefix + update.ref.removeprefix(STATUS_REF)
        repo.git("update-ref", tracking, update.new)


def import_status(repo: StatusRepo, files: list[Path]) -> list[Landing]:
    try:
        updates, landings = plan_landings(repo, files)
        refusals = check_push(None, updates, load_trust(repo, updates), RepositoryFacts(repo))
        if refusals:
            raise StatusImportRefused(
                "refused, nothing landed:\n" + "\n".join(f"  {r}" for r in refusals)
            )
        land(repo, updates)
    finally:
        listed = repo.git("for-each-ref", "--format=%(refname)", INCOMING).decode().split()
        for ref in listed:
            repo.git("update-ref", "-d", ref)
    return landings


def cmd_status_import(args: argparse.Namespace) -> int:
    repo = open_status_repo(args.repo, fetch=not args.no_fetch)
    landings = import_status(repo, [Path(f) for f in args.files])
    for landing in landings:
        if landing.commits == 0:
            print(f"status/{landing.node}: already has every commit ({landing.new[:12]})")
        else:
            print(
                f"status/{landing.node}: landed {landing.commits} commit(s),"
                f" {landing.old[:12] if landing.old else 'new branch'} -> {landing.new[:12]}"
            )
    return 0
