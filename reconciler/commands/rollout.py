"""`edgefleet rollout status|advance|halt`: waves and their gates, decided from Git alone.

Every decision is a signed release: `advance` signs the rollout's commit for the next wave,
`halt` signs the baseline's commit for every node. Both read the nodes' signed status
branches, so a scheduled CI job running `rollout advance --auto` is the whole control loop,
with no server of ours on the path. The deciding is `reconciler.rollout_gate`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any

import git

from reconciler.commands.release import (
    head_root,
    open_repo,
    release_keys_for,
    sign_next_release,
    signing_arguments,
)
from reconciler.commands.status import fleet_report
from reconciler.errors import EdgeFleetError
from reconciler.fleet_repo import load_fleet_repo
from reconciler.git_tree import GitTreeFiles
from reconciler.release import Accepted, envelope_from_message, unverified_payload, verify_release
from reconciler.release_tags import ReleaseTag, release_tags
from reconciler.rollout_gate import CATEGORIES, Gate, ReleaseInfo, assess_rollout, rollout_of
from reconciler.status_source import open_status_repo
from reconciler.timestamps import now, parse_timestamp
from reconciler.trust_root import TrustRoot
from reconciler.verify import sigstore_check


class GateClosed(EdgeFleetError):
    """The gate does not allow what was asked: it says which threshold and by how much."""

    exit_code = 1


def verified_info(tag: ReleaseTag, root: TrustRoot) -> ReleaseInfo:
    """The rollout fields of a release tag whose signatures the root accepts.

    Checked as of when it was signed: whether it has expired since decides whether nodes
    apply it, not what it was. A rollout's baseline is usually older than a release's 30
    days, and is still the commit every node outside the rollout runs."""
    envelope = envelope_from_message(tag.message, tag.name)
    try:
        issued = parse_timestamp(str(unverified_payload(envelope)["issuedAt"]))
    except (KeyError, TypeError, ValueError):
        issued = now()  # verify_release names what is wrong with the payload
    release = verify_release(
        root, envelope, tag.name, Accepted(), issued, sigstore_check, tag.target
    )
    return ReleaseInfo(
        release.version, release.commit, release.wave, release.baseline, release.halts
    )


def current_releases(repo: git.Repo, root: TrustRoot) -> list[ReleaseInfo]:
    """The newest release and, when it is part of a rollout, the rest of that rollout; each
    one's signatures checked. Raises when one does not verify (the error names it)."""
    found: list[ReleaseInfo] = []
    for tag in release_tags(repo):
        info = verified_info(tag, root)
        if found and (info.wave is None or info.commit != found[0].commit):
            break
        found.append(info)
        if info.wave is None:
            break
    return found


def fleet_at(repo: git.Repo, commit: str) -> tuple[dict[str, Any], str, dict[str, dict[str, str]]]:
    """fleet.yaml's spec, the fleet's name and every node's labels at `commit`."""
    fleet, _ = load_fleet_repo(GitTreeFiles(repo, commit))
    spec = fleet.fleet.spec if fleet.fleet is not None else {}
    return spec, fleet.fleet_name, {n.name: dict(n.labels) for n in fleet.nodes}


def assess(args: argparse.Namespace) -> tuple[git.Repo, TrustRoot, Gate]:
    status_repo = open_status_repo(args.repo, fetch=not args.no_fetch)
    repo = open_repo(args.repo)
    root = head_root(repo)
    releases = current_releases(repo, root)
    ours = rollout_of(releases)
    commit = (ours[0] if ours else releases[0]).commit if releases else "HEAD"
    spec, fleet, labels = fleet_at(repo, commit)
    rows = fleet_report(status_repo, args.repo).statuses()
    gate = assess_rollout(spec, fleet, labels, releases, {r.node: r for r in rows})
    return repo, root, gate


def render_text(gate: Gate) -> str:
    lines: list[str] = []
    current = gate.current
    if current is not None:
        lines.append(
            f"rollout of {current.commit[:12]}: release {current.version}, wave {gate.wave}"
            f" (releases {', '.join(str(r.version) for r in gate.releases)});"
            f" baseline release {current.baseline or 'none'}"
        )
    if gate.waves:
        header = ("WAVE", "NODES", *(c.upper() for c in CATEGORIES))
        table = [header]
        for row in gate.waves:
            mark = "*" if row.name == gate.wave else " "
            table.append(
                (
                    f"{mark}{row.name}",
                    str(len(row.nodes)),
                    *(str(row.counts[c]) for c in CATEGORIES),
                )
            )
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        lines += [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table
        ]
        lines.append("(* the current wave; it and the waves above it have the release)")
        waiting = Counter(gate.nodes.values())
        others = sorted((c, n) for n, c in gate.nodes.items() if c != "converged")
        if others:
            lines.append("")
            lines += [f"  {node}: {cat}" for cat, node in others[:50]]
            if len(others) > 50:
                lines.append(f"  ... and {len(others) - 50} more")
        lines.append("")
        lines.append(
            f"healthy {gate.healthy_percent:.1f}% (min {gate.min_healthy:g}%), failed"
            f" {gate.failure_percent:.1f}% (max {gate.max_failure:g}%) over"
            f" {sum(waiting.values())} node(s)"
        )
    lines.append(f"gate: {gate.decision}: {gate.reason}")
    return "\n".join(lines)


def cmd_rollout_status(args: argparse.Namespace) -> int:
    _, _, gate = assess(args)
    if args.format == "json":
        print(json.dumps(gate.as_json(), indent=2))
    else:
        print(render_text(gate))
    return 0


def _signed(made: dict[str, Any], what: str) -> None:
    print(json.dumps(made, indent=2))
    print(what, file=sys.stderr)


def halt(args: argparse.Namespace, repo: git.Repo, root: TrustRoot, gate: Gate) -> int:
    current = gate.current
    if gate.decision == "halted":
        print(f"nothing to do: {gate.reason}")
        return 0
    if current is None:
        raise GateClosed(f"nothing to halt: {gate.reason}")
    if current.baseline is None:
        raise GateClosed(
            f"release {current.version} has no baseline release to go back to (it was the"
            " fleet's first rollout); release a fixed commit instead"
        )
    tag = next((t for t in release_tags(repo) if t.version == current.baseline), None)
    if tag is None:
        raise GateClosed(
            f"release {current.version}'s baseline, release/{current.baseline}, is missing from"
            f" {args.repo}; expected the tag (fetch it from the origin)"
        )
    baseline = verified_info(tag, root)
    keys = release_keys_for(root, args.key, args.sigstore)
    made = sign_next_release(
        repo,
        baseline.commit,
        root,
        keys,
        expires=args.expires,
        wave=None,
        baseline=None,
        halts=current.version,
        sigstore=args.sigstore,
        push_to=args.remote if args.push else None,
    )
    _signed(
        made,
        f"halted: release {made['version']} sends every node back to release"
        f" {baseline.version}'s commit {baseline.commit[:12]} ({gate.reason})",
    )
    return 0


def cmd_rollout_advance(args: argparse.Namespace) -> int:
    repo, root, gate = assess(args)
    if gate.decision == "advance":
        current = gate.current
        assert current is not None and gate.next_wave is not None
        keys = release_keys_for(root, args.key, args.sigstore)
        made = sign_next_release(
            repo,
            current.commit,
            root,
            keys,
            expires=args.expires,
            wave=gate.next_wave,
            baseline=current.baseline,
            sigstore=args.sigstore,
            push_to=args.remote if args.push else None,
        )
        _signed(made, f"advanced to wave {gate.next_wave}: {gate.reason}")
        return 0
    if gate.decision == "halt":
        if args.auto:
            return halt(args, repo, root, gate)
        raise GateClosed(f"refused: {gate.reason}; halt the rollout with `edgefleet rollout halt`")
    if gate.decision == "wait":
        if args.auto:
            print(f"waiting: {gate.reason}")
            return 0
        raise GateClosed(f"refused: {gate.reason}")
    print(f"nothing to advance: {gate.reason}")
    return 0


def cmd_rollout_halt(args: argparse.Namespace) -> int:
    repo, root, gate = assess(args)
    return halt(args, repo, root, gate)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    rollout = sub.add_parser(
        "rollout",
        parents=[common],
        help="progressive rollouts: each wave's nodes, the gate, advance and halt",
        description="Reads the signed status branches and the release tags; advance and halt"
        " sign the next release (exit 0 done or nothing to do, 1 refused by the gate).",
    )
    actions = rollout.add_subparsers(dest="action", metavar="ACTION", required=True)

    def common_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--repo", default=".", help="a clone of the fleet repository (default: .)")
        p.add_argument(
            "--no-fetch", action="store_true", help="read the refs already here; do not fetch"
        )

    status = actions.add_parser(
        "status",
        parents=[common],
        help="each wave's nodes: converged, failed, rolled back, pending, stale; the gate",
    )
    common_args(status)
    status.add_argument("--format", choices=["text", "json"], default="text")
    status.set_defaults(func=cmd_rollout_status)

    advance = actions.add_parser(
        "advance",
        parents=[common],
        help="sign the rollout's commit for the next wave, when the current wave passes its gate",
        description="Advances when the current wave has at least minHealthyPercent converged"
        " and at most maxFailurePercent failed or rolled back; otherwise refuses (exit 1) and"
        " says why. With --auto (for a scheduled CI job) it halts over the failure limit and"
        " does nothing (exit 0) while the wave is pending. Running it twice does one thing.",
    )
    common_args(advance)
    signing_arguments(advance)
    advance.add_argument(
        "--auto", action="store_true", help="halt over the failure limit; wait quietly otherwise"
    )
    advance.set_defaults(func=cmd_rollout_advance)

    halt_p = actions.add_parser(
        "halt",
        parents=[common],
        help="sign the baseline's commit for every node: a fleet-wide rollback",
        description="Nodes that took the rollout switch back through the normal apply path;"
        " the baseline is still in their other bank, so nothing is downloaded.",
    )
    common_args(halt_p)
    signing_arguments(halt_p)
    halt_p.set_defaults(func=cmd_rollout_halt)
