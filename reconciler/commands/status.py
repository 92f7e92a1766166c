"""`edgefleet status`: the fleet at a glance, read from the signed status branches.

`status fold` (one branch for auditors) lives here too; the reading is `status_source`, the
deciding `fleet_status`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from reconciler.atomic import write_atomic
from reconciler.fleet_status import NodeStatus, assess, render_table, summarize
from reconciler.keyfiles import load_signing_key
from reconciler.keys import SigningKey
from reconciler.push_policy import ZERO
from reconciler.release_tags import principal
from reconciler.signed_commits import commit_object, person
from reconciler.status_doc import STATUS_FILE
from reconciler.status_source import (
    StatusRepo,
    cat_batch,
    fleet_identity,
    open_status_repo,
    release_versions,
    status_heads,
)
from reconciler.timestamps import format_timestamp, now

LOCAL_AUDIT = "refs/heads/audit"


def fleet_report(repo: StatusRepo, label: str) -> tuple[list[NodeStatus], dict[str, Any]]:
    """Every node's row, and everything `status` shows as the JSON `--format json` prints."""
    when = now()
    fleet, signers, nodes = fleet_identity(repo)
    heads = status_heads(repo)
    releases = release_versions(repo)
    expected = max(releases, default=None)
    names = sorted(set(nodes) | set(heads))
    with_head = [n for n in names if n in heads]
    objects = cat_batch(
        repo,
        [x for n in with_head for x in (heads[n], f"{heads[n]}:{STATUS_FILE}")],
    )
    found = {n: (objects[2 * i], objects[2 * i + 1]) for i, n in enumerate(with_head)}
    rows: list[NodeStatus] = []
    for node in names:
        raw, blob = found.get(node, (None, None))
        rows.append(
            assess(
                node,
                head=heads.get(node),
                raw_commit=raw,
                blob=blob,
                key=signers.get(principal(node, fleet)),
                fleet=fleet,
                expected=expected,
                now=when,
                releases=frozenset(releases),
            )
        )
    summary = summarize(rows, expected)
    return rows, {
        "fleet": fleet,
        "repo": label,
        "generatedAt": format_timestamp(when),
        "expectedRelease": expected,
        "summary": summary,
        "releases": _per_release(rows, releases),
        "nodes": [r.as_json() for r in rows],
    }


def _per_release(rows: list[NodeStatus], releases: dict[int, str]) -> list[dict[str, Any]]:
    """For each release a node runs, targets or failed: how far its rollout got."""
    running = Counter(r.release for r in rows if r.healthy)
    targeting = Counter(r.target for r in rows if r.shown not in ("unverified", "unreported"))
    failed = Counter(
        (r.last_error or {}).get("release") for r in rows if r.shown in ("rolled-back", "rejected")
    )
    versions = sorted(
        {v for v in (*running, *targeting, *failed) if v is not None} | set(sorted(releases)[-1:]),
        reverse=True,
    )
    return [
        {
            "version": v,
            "commit": releases.get(v),
            "nodes": len(rows),
            "converged": running[v],
            "targeting": targeting[v],
            "failed": failed[v],
        }
        for v in versions
    ]


def cmd_status(args: argparse.Namespace) -> int:
    repo = open_status_repo(args.repo, fetch=not args.no_fetch)
    rows, report = fleet_report(repo, args.repo)
    if args.format == "json":
        text = json.dumps(report, indent=2) + "\n"
    elif args.format == "html":
        from reconciler.status_html import render_html

        text = render_html(report)
    else:
        text = render_table(rows, report["summary"]) + "\n"
    if args.out:
        write_atomic(Path(args.out), text.encode())
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


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


def cmd_fold(args: argparse.Namespace) -> int:
    repo = open_status_repo(args.repo, fetch=not args.no_fetch)
    fleet, _, _ = fleet_identity(repo)
    signer = load_signing_key(Path(args.key)) if args.key else None
    commit, nodes = fold(repo, fleet, signer, now())
    if commit is None:
        base = fold_base(repo)
        print(f"nothing moved since the last fold (audit at {base[:12] if base else 'none'})")
    else:
        shown = ", ".join(nodes[:10]) + (f" and {len(nodes) - 10} more" if len(nodes) > 10 else "")
        print(f"folded {len(nodes)} node(s) into audit at {commit[:12]}: {shown}")
    if args.push:
        if repo.audit_ref == LOCAL_AUDIT:
            print(f"{args.repo} is the origin itself: the fold is in place, nothing to push")
            return 0
        local, remote = repo.resolve(LOCAL_AUDIT), repo.resolve(repo.audit_ref)
        # Only a local fold ahead of the origin's is pushed; one behind is the origin's past.
        if (
            local is not None
            and local != remote
            and (remote is None or repo.is_ancestor(remote, local))
        ):
            repo.git("push", "--quiet", "origin", f"{LOCAL_AUDIT}:{LOCAL_AUDIT}")
            print("pushed audit to origin")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    status = sub.add_parser(
        "status",
        parents=[common],
        help="the fleet at a glance from the signed status branches; stale and forged status"
        " shown as such",
        description="Reads every status/<node> branch (fetching them first), checks each head's"
        " signature against trust/allowed_signers, and shows per node the release it runs and"
        " should run, its state, components, last error and last report. Exit 0.",
    )
    status.add_argument(
        "--repo", default=".", help="a fleet repository folder or a git URL (default: .)"
    )
    status.add_argument("--format", choices=["table", "json", "html"], default="table")
    status.add_argument("--out", help="write to this file instead of standard output")
    status.add_argument(
        "--no-fetch", action="store_true", help="read the refs already here; do not fetch"
    )
    status.set_defaults(func=cmd_status)
    actions = status.add_subparsers(dest="action", metavar="ACTION")
    fold_p = actions.add_parser(
        "fold",
        parents=[common],
        help="merge every node's status head into the branch `audit` (one merge commit)",
        description="For a scheduled CI job: `git log audit` then shows every node's signed"
        " status commits in one history, `git log --first-parent audit` when each fold"
        " happened. Never rewrites a node's commits; a no-op when nothing moved.",
    )
    fold_p.add_argument("--repo", default=".", help="the fleet repository (default: .)")
    fold_p.add_argument("--push", action="store_true", help="push the audit branch to origin")
    fold_p.add_argument("--key", help="sign the fold's merge commit with this key")
    fold_p.add_argument("--no-fetch", action="store_true", help="do not fetch first")
    fold_p.set_defaults(func=cmd_fold)
