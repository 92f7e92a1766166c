"""`edgefleet status`: the fleet at a glance, read from the signed status branches.

The reading is `status_source`, the verdict on each head `status_verdicts` (cached between
runs), the judging `fleet_status`; `status fold` is `status_fold`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from reconciler.atomic import write_atomic
from reconciler.fleet_status import NodeStatus, judge, render_table, summarize
from reconciler.status_source import (
    StatusRepo,
    fleet_identity,
    open_status_repo,
    principal,
    release_versions,
    status_heads,
)
from reconciler.status_verdicts import head_verdicts
from reconciler.timestamps import format_timestamp, now


def fleet_report(
    repo: StatusRepo, label: str, recheck: bool = False
) -> tuple[list[NodeStatus], dict[str, Any]]:
    """Every node's row, and everything `status` shows as the JSON `--format json` prints."""
    when = now()
    fleet, signers, nodes = fleet_identity(repo)
    heads = status_heads(repo)
    releases = release_versions(repo)
    expected = max(releases, default=None)
    keys = {node: signers.get(principal(node, fleet)) for node in heads}
    verdicts = head_verdicts(repo, heads, keys, recheck)
    known = frozenset(releases)
    rows = [
        judge(
            node,
            heads.get(node),
            verdicts.get(node),
            fleet=fleet,
            expected=expected,
            now=when,
            releases=known,
        )
        for node in sorted(set(nodes) | set(heads))
    ]
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


def report_json(report: dict[str, Any]) -> str:
    """The report as JSON, one node to a line: readable, greppable, and written by json's C
    encoder (an indented dump of 2,000 nodes takes the pure-Python one, most of a run)."""
    head = {k: v for k, v in report.items() if k != "nodes"}
    text = json.dumps(head, indent=2)
    # json.dumps with no options reuses one encoder; any option would build one per node.
    nodes = ",\n".join("    " + json.dumps(n) for n in report["nodes"])
    body = f"[\n{nodes}\n  ]" if nodes else "[]"
    return f'{text[:-2]},\n  "nodes": {body}\n}}\n'


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
    rows, report = fleet_report(repo, args.repo, recheck=args.recheck)
    if args.format == "json":
        text = report_json(report)
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


def cmd_status_import(args: argparse.Namespace) -> int:
    # Imported here: checking signatures and policy is not what plain `status` pays for.
    from reconciler.commands.status_import import cmd_status_import as import_files

    return import_files(args)


def cmd_fold(args: argparse.Namespace) -> int:
    # Imported here: folding signs and writes commits, which plain `status` never loads.
    from reconciler.keyfiles import load_signing_key
    from reconciler.status_fold import LOCAL_AUDIT, fold, fold_base

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
    status.add_argument(
        "--recheck",
        action="store_true",
        help="check every head's signature and schema again, not trusting verdicts cached by"
        " earlier runs",
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
    imp = actions.add_parser(
        "import",
        parents=[common],
        help="land status carried back from offline nodes (`edgefleet-agent export-status`)",
        description="Checks every commit as the pre-receive hook would (signed by its node,"
        " valid status, fast-forward only) and lands them on status/<node>: in place when"
        " --repo is the origin's own repository, else by a push to its origin. Commits already"
        " there are not added again. Exit 0 landed (or nothing new), 1 refused, 2 usage.",
    )
    imp.add_argument("files", nargs="+", metavar="FILE", help="bundles from export-status")
    imp.add_argument("--repo", default=".", help="the fleet repository (default: .)")
    imp.add_argument("--no-fetch", action="store_true", help="do not fetch from origin first")
    imp.set_defaults(func=cmd_status_import)
