"""`edgefleet audit`: one verified timeline from the main branch, release tags and status
branches. Reading is here; every decision is `reconciler.audit_trail`'s."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from reconciler.audit_trail import (
    Event,
    ReleaseTagFacts,
    StatusCommit,
    main_events,
    release_events,
    render_text,
    status_events,
)
from reconciler.errors import EdgeFleetError, UsageError
from reconciler.signed_commits import parse_commit, parse_tag
from reconciler.status_doc import STATUS_FILE
from reconciler.status_source import (
    SIGNERS,
    GitFailed,
    StatusRepo,
    cat_batch,
    fleet_identity,
    open_status_repo,
    principal,
    public_keys,
    read_files,
    release_versions,
    status_heads,
)
from reconciler.timestamps import format_timestamp, parse_timestamp
from reconciler.trust_root import parse_root


def _rev_list(repo: StatusRepo, *args: str) -> list[str]:
    try:
        return repo.git("rev-list", "--reverse", *args).decode().split()
    except GitFailed:
        return []


def _earlier_heads(repo: StatusRepo, node: str) -> dict[str, str]:
    """Heads this node's branch had before: from the reflog here and from `audit` folds."""
    seen: dict[str, str] = {}
    try:
        out = repo.git("reflog", "show", "--format=%H %gd", f"{repo.status_prefix}{node}")
        for line in out.decode().splitlines():
            sha, _, where = line.partition(" ")
            seen.setdefault(sha, f"the reflog ({where})")
    except GitFailed:
        pass
    return seen


def _folded_heads(repo: StatusRepo) -> dict[str, dict[str, str]]:
    """node -> {head folded into audit: which fold}, from the fold commits' parents."""
    audit = repo.audit_ref
    try:
        out = repo.git("log", "--first-parent", "--format=%H %P", audit)
    except GitFailed:
        return {}
    pairs = []
    for line in out.decode().splitlines():
        fold, *parents = line.split()
        pairs += [(fold, head) for head in parents[1:]]
    blobs = cat_batch(repo, [f"{head}:{STATUS_FILE}" for _, head in pairs])
    folded: dict[str, dict[str, str]] = {}
    for (fold, head), blob in zip(pairs, blobs, strict=True):
        if blob is None:
            continue
        try:
            node = json.loads(blob)["node"]
        except (ValueError, KeyError, TypeError):
            continue
        folded.setdefault(str(node), {})[head] = f"audit fold {fold[:12]}"
    return folded


def collect(repo: StatusRepo, only_node: str | None) -> list[Event]:
    fleet, signer_lines, nodes = fleet_identity(repo)
    signers = public_keys(signer_lines, SIGNERS)
    events: list[Event] = []
    if only_node is None:
        shas = _rev_list(repo, repo.main_ref)
        raws = cat_batch(repo, shas)
        events += main_events(
            [(s, parse_commit(r)) for s, r in zip(shas, raws, strict=True) if r is not None],
            signers,
        )
    versions = release_versions(repo)
    tag_ids = repo.git(
        "for-each-ref", "--format=%(refname:strip=2) %(objectname)", "refs/tags/release/"
    ).decode()
    tags = dict(line.split() for line in tag_ids.splitlines())
    facts = []
    roots: dict[str, Any] = {}
    for version in sorted(versions):
        raw = cat_batch(repo, [tags[f"release/{version}"]])[0]
        if raw is None:
            continue
        commit = versions[version]
        root_json = read_files(repo, commit, ["trust/root.json"]).get("trust/root.json")
        facts.append(ReleaseTagFacts(version, parse_tag(raw), root_json))
        if root_json is not None:
            roots[commit] = root_json
    key_names = {key.keyid: name for name, key in signers.items()}
    release_keys = {}
    for root_json in roots.values():
        try:
            root = parse_root(root_json)
        except EdgeFleetError:
            continue  # release_events reports a root it cannot read
        release_keys.update({key_names.get(k, k[:16]): root.keys[k] for k in root.release.keyids})
    events += release_events(facts, release_keys, key_names)
    heads = status_heads(repo)
    folded = _folded_heads(repo)
    for node in sorted(set(heads) | set(folded)):
        if only_node is not None and node != only_node:
            continue
        shas = _rev_list(repo, heads[node]) if node in heads else []
        objects = cat_batch(repo, [x for s in shas for x in (s, f"{s}:{STATUS_FILE}")])
        commits = [
            StatusCommit(s, parse_commit(objects[2 * i] or b""), objects[2 * i + 1])
            for i, s in enumerate(shas)
        ]
        earlier = {**folded.get(node, {}), **_earlier_heads(repo, node)}
        events += status_events(
            node, commits, signers.get(principal(node, fleet)), set(versions), earlier
        )
    if only_node is not None and only_node not in heads and only_node not in nodes:
        raise UsageError(f"{only_node}: got a node the fleet does not have, expected one of nodes/")
    return sorted(events, key=lambda e: (e.at, e.kind != "change", e.kind != "release"))


def cmd_audit(args: argparse.Namespace) -> int:
    repo = open_status_repo(args.repo, fetch=not args.no_fetch)
    events = collect(repo, args.node)
    if args.since:
        try:
            text = args.since if "T" in args.since else f"{args.since}T00:00:00Z"
            since = format_timestamp(parse_timestamp(text))
        except ValueError:
            raise UsageError(
                f"--since: got {args.since!r}, expected a date like 2026-11-01 or"
                " 2026-11-01T00:00:00Z"
            ) from None
        events = [e for e in events if e.at >= since]
    if args.format == "json":
        problems = [e.as_json() for e in events if e.problem]
        doc = {"events": [e.as_json() for e in events], "problems": problems}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        print(render_text(events))
    return 1 if any(e.problem for e in events) else 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    audit = sub.add_parser(
        "audit",
        parents=[common],
        help="the verified timeline: changes, releases and what every node did, signatures checked",
        description="Joins the main branch, the release tags and the status branches into one"
        " timeline, checking every signature. Exit 0 when everything verifies, 1 when any"
        " problem (forgery, gap, rewritten branch, unknown release) is flagged.",
    )
    audit.add_argument("--repo", default=".", help="a fleet repository folder or a git URL")
    audit.add_argument("--node", help="only this node's status (and the releases)")
    audit.add_argument("--since", help="only events from this date on (2026-11-01 or a timestamp)")
    audit.add_argument("--format", choices=["text", "json"], default="text")
    audit.add_argument("--no-fetch", action="store_true", help="do not fetch first")
    audit.set_defaults(func=cmd_audit)
