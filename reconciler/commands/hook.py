"""`edgefleet hook pre-receive`: the fleet's rules, enforced by any Git server that runs hooks.

Git runs it in the repository with the pushed objects in quarantine and one line per update on
standard input (`<old> <new> <ref>`); exit 1 refuses the whole push, and what it prints on
standard error reaches the pusher as `remote:` lines. The pusher's name comes from the
environment: `EDGEFLEET_USER` (set by an SSH forced command), else `REMOTE_USER` (set by the
web server for smart HTTP). The rules are `reconciler.push_policy`'s.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from reconciler.push_policy import ZERO, PushFacts, RefUpdate, Trust, check_push
from reconciler.status_source import (
    SIGNERS,
    GitFailed,
    StatusRepo,
    cat_batch,
    fleet_identity,
    local_status_repo,
    principal,
    public_keys,
    read_files,
)
from reconciler.trust_root import parse_root

USER_VARIABLES = ("EDGEFLEET_USER", "REMOTE_USER")
MAIN_BRANCHES = ("refs/heads/main", "refs/heads/master")


class RepositoryFacts(PushFacts):
    def __init__(self, repo: StatusRepo) -> None:
        self.repo = repo

    def is_ancestor(self, old: str, new: str) -> bool:
        return self.repo.is_ancestor(old, new)

    def new_commits(self, update: RefUpdate) -> list[str]:
        # New to this ref, not to the repository: a commit already on another branch must
        # still meet this branch's rules before it joins its history.
        since = () if update.old == ZERO else (f"^{update.old}",)
        out = self.repo.git("rev-list", "--reverse", update.new, *since)
        return out.decode().split()

    def raw_object(self, name: str) -> tuple[str, bytes] | None:
        try:
            kind = self.repo.git("cat-file", "-t", name).decode().strip()
        except GitFailed:
            return None
        data = cat_batch(self.repo, [name])[0]
        return None if data is None else (kind, data)


def load_trust(repo: StatusRepo, updates: list[RefUpdate]) -> Trust:
    """Node ids, node keys and release keys from the server's main branch, or, for the push
    that creates the repository's first main branch, from the main branch it brings."""
    if not read_files(repo, repo.main_ref, ["fleet.yaml"]):
        brought = [u.new for u in updates if u.ref in MAIN_BRANCHES and u.new != ZERO]
        if not brought:
            return Trust("", frozenset(), {}, {})
        repo = repo._replace(main_ref=brought[0])
    fleet, signer_lines, nodes = fleet_identity(repo)
    signers = public_keys(signer_lines, SIGNERS)
    root_file = read_files(repo, repo.main_ref, ["trust/root.json"]).get("trust/root.json")
    release_keys = {}
    if root_file is not None:
        root = parse_root(root_file, f"{repo.main_ref}:trust/root.json")
        names = {key.keyid: name for name, key in signers.items()}
        release_keys = {names.get(k, k[:16]): root.keys[k] for k in root.release.keyids}
    node_keys = {n: signers[principal(n, fleet)] for n in nodes if principal(n, fleet) in signers}
    return Trust(fleet, frozenset(nodes), node_keys, release_keys)


def read_updates(text: str) -> list[RefUpdate]:
    updates = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            updates.append(RefUpdate(*parts))
    return updates


def cmd_pre_receive(args: argparse.Namespace) -> int:
    git_dir = Path(os.environ.get("GIT_DIR", ".")).resolve()
    repo = local_status_repo(git_dir)
    user = next((os.environ[v] for v in USER_VARIABLES if os.environ.get(v)), None)
    updates = read_updates(sys.stdin.read())
    if args.require_user and user is None:
        print(
            f"edgefleet: refused: got a push with no user, expected one of"
            f" {', '.join(USER_VARIABLES)} set by the server's authentication",
            file=sys.stderr,
        )
        return 1
    if not updates:
        return 0
    refusals = check_push(user, updates, load_trust(repo, updates), RepositoryFacts(repo))
    for refusal in refusals:
        print(f"edgefleet: refused {refusal}", file=sys.stderr)
    if refusals:
        who = f"user {user!r}" if user else "an anonymous user"
        print(f"edgefleet: the whole push by {who} was refused; nothing changed", file=sys.stderr)
        return 1
    created = [u.ref for u in updates if u.old == ZERO]
    if created and args.verbose_accept:
        print(f"edgefleet: accepted {', '.join(created)}", file=sys.stderr)
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    hook = sub.add_parser(
        "hook",
        parents=[common],
        help="server-side Git hooks: a node writes only status/<its id>; only release signers"
        " tag releases",
    )
    kinds = hook.add_subparsers(dest="hook", required=True, metavar="HOOK")
    pre = kinds.add_parser(
        "pre-receive",
        parents=[common],
        help="run as the repository's pre-receive hook (reads the updates on standard input)",
        description="Exit 0 accepts the push, 1 refuses all of it, saying why on standard error."
        " The pusher is $EDGEFLEET_USER, else $REMOTE_USER.",
    )
    pre.add_argument(
        "--require-user",
        action="store_true",
        help="refuse pushes that arrive without a user (no authentication configured)",
    )
    pre.add_argument(
        "--verbose-accept", action="store_true", help="say which refs an accepted push created"
    )
    pre.set_defaults(func=cmd_pre_receive)
