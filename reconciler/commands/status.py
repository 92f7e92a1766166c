"""`edgefleet status`: the fleet at a glance, read from the signed status branches.

The reading is `status_source`, the verdict on each head `status_verdicts` (cached between
runs, with each node's row), the judging `fleet_status`; `status fold` is `status_fold`.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any, NamedTuple

from reconciler.atomic import write_atomic
from reconciler.fleet_status import (
    NodeStatus,
    Row,
    judge,
    per_release,
    render_table,
    reuse,
    row_of,
    summarize,
)
from reconciler.status_source import (
    MainFiles,
    StatusRepo,
    fleet_identity,
    main_view,
    open_status_repo,
    principal,
    read_main,
    read_refs,
)
from reconciler.status_verdicts import Kept, StatusCache, check_heads
from reconciler.timestamps import format_timestamp, now


class FleetReport(NamedTuple):
    """What `status` shows: `head` is everything but the nodes (fleet, summary, releases),
    `rows` each node's row in node order."""

    head: dict[str, Any]
    rows: list[Row]

    def statuses(self) -> list[NodeStatus]:
        return [NodeStatus.from_json(json.loads(r.text)) for r in self.rows]

    def as_json(self) -> dict[str, Any]:
        return {**self.head, "nodes": [json.loads(r.text) for r in self.rows]}

    def json_text(self) -> str:
        """The report as JSON, one node to a line: readable, greppable, and each row written
        as the cache kept it (encoding 2,000 rows again was a tenth of a warm run)."""
        text = json.dumps(self.head, indent=2)
        nodes = ",\n".join("    " + r.text for r in self.rows)
        body = f"[\n{nodes}\n  ]" if nodes else "[]"
        return f'{text[:-2]},\n  "nodes": {body}\n}}\n'


def fleet_report(repo: StatusRepo, label: str, recheck: bool = False) -> FleetReport:
    """Every node's row and the counts. A node whose head, key and main branch are those of
    the last run, and that has not turned stale since, gets that run's row with its age
    brought up to date; every other node is judged (and checked, if its head is new)."""
    when = now()
    refs = repo.listed or read_refs(repo)
    # git reads the main branch while this process reads the cache: each took about as long.
    read: list[MainFiles | Exception] = []
    reader = threading.Thread(target=_read_main, args=(repo, refs.tags, read))
    reader.start()
    try:
        cache = StatusCache.load(repo.git_dir, recheck)
    finally:
        reader.join()
    if isinstance(read[0], Exception):
        raise read[0]
    fleet, signers, nodes, releases = main_view(repo, cache.fleet_names, files=read[0])
    heads = refs.heads
    expected = max(releases, default=None)
    context = json.dumps([fleet, expected, sorted(releases)])
    keys = {node: signers.get(principal(node, fleet)) for node in heads}
    rows: dict[str, Row] = {}
    kept: dict[str, Kept] = {}
    todo: list[str] = []
    clock = when.timestamp()
    for node, head in heads.items():
        record = cache.row(node, head, keys[node]) if cache.context == context else None
        row = reuse(node, record, clock) if record else None
        if row is not None:
            rows[node] = row
            kept[node] = cache.rows[node]
        else:
            todo.append(node)
    checked = check_heads(repo, {n: heads[n] for n in todo}, keys, cache)
    verdicts: dict[str, Kept] = {}
    known = frozenset(releases)
    for node in todo:
        (verdict, text), head, key = checked[node], heads[node], keys[node]
        status = judge(
            node, head, verdict, fleet=fleet, expected=expected, now=when, releases=known
        )
        rows[node], record = row_of(status, verdict.doc)
        if text is not None and key is not None:
            kept[node], verdicts[node] = Kept(head, key, record), Kept(head, key, text)
    for node in set(nodes) - set(heads):
        status = judge(node, None, None, fleet=fleet, expected=expected, now=when)
        rows[node] = row_of(status, None)[0]
    if kept != cache.rows or cache.names_added or cache.context != context:
        # The verdicts of the rows reused are the cache's own (decoded only now).
        for node in kept.keys() - verdicts.keys():
            found = cache.verdict(node, kept[node].head, kept[node].key)
            if found is not None:
                verdicts[node] = Kept(kept[node].head, kept[node].key, found[1])
        cache.save({n: kept[n] for n in verdicts}, verdicts, context)
    ordered = [rows[node] for node in sorted(rows)]
    tallies = [r.tally for r in ordered]
    top: dict[str, Any] = {
        "fleet": fleet,
        "repo": label,
        "generatedAt": format_timestamp(when),
        "expectedRelease": expected,
        "summary": summarize(tallies, expected),
        "releases": per_release(tallies, releases),
    }
    return FleetReport(top, ordered)


def _read_main(repo: StatusRepo, tags: dict[int, str], into: list[MainFiles | Exception]) -> None:
    try:
        into.append(read_main(repo, tags))
    except Exception as exc:  # raised again by the thread that waits for it
        into.append(exc)


def cmd_status(args: argparse.Namespace) -> int:
    repo = open_status_repo(args.repo, fetch=not args.no_fetch)
    report = fleet_report(repo, args.repo, recheck=args.recheck)
    if args.format == "json":
        data = report.json_text().encode()
    elif args.format == "html":
        from reconciler.status_html import render_html

        data = render_html(report.as_json()).encode()
    else:
        data = (render_table(report.statuses(), report.head["summary"]) + "\n").encode()
    if args.out:
        write_atomic(Path(args.out), data)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
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
