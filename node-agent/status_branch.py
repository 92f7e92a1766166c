"""The node's signed status branch, `status/<node-id>`: committed locally, pushed when it can be.

Each commit holds one file, `status.json`, and is signed with the node's identity key so that
`git verify-commit` checks it with the fleet's `allowed_signers`. Commits are made in the
node's own clone (`<stateDir>/repo`) whether or not the origin answers; the local branch is
the queue. A push sends every commit not yet delivered, in order, and only ever
fast-forwards the origin's branch.

When the origin's branch has commits the node does not (its state directory was restored from
a backup, or re-provisioned), the commits not yet delivered are re-made on top of the
origin's head, provided that head is signed by this node's own key. They were never
published, so nothing anyone has seen is rewritten; a head signed by anyone else is left
alone and reported, and the queue waits.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from node_agent.errors import OriginUnreachable
from node_agent.transport import PushRejected, Transport

from reconciler.keys import SigningKey
from reconciler.signed_commits import (
    CommitFields,
    check_commit,
    commit_object,
    parse_commit,
    person,
)
from reconciler.status_doc import (
    STATUS_FILE,
    StatusInvalid,
    branch,
    commit_message,
    encode,
    is_change,
    parse_status,
)
from reconciler.timestamps import format_timestamp, now, parse_timestamp

# Commit times come from the node's own clock, which may step back a little (NTP).
_CLOCK_SLACK_S = 3600
# Undelivered commits kept before the oldest heartbeats are coalesced: ten days of hourly
# heartbeats, or a month offline at the default with a few changes a day.
DEFAULT_MAX_QUEUED = 256


class StatusBranchError(Exception):
    """A local git plumbing command failed (a full disk, a damaged repository)."""


@dataclass(frozen=True)
class Delivery:
    """What a push did: commits delivered, commits still queued, and why not, if not."""

    delivered: int
    queued: int
    problem: str | None = None


class StatusBranch:
    def __init__(
        self,
        transport: Transport,
        node: str,
        fleet: str,
        signer: SigningKey,
        log: Callable[..., Any],
        warn: Callable[..., Any] | None = None,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        self.transport = transport
        self.max_queued = max_queued
        self.node = node
        self.fleet = fleet
        self.signer = signer
        self.log = log
        # A status that cannot be delivered is worth an alert, not just a line.
        self.warn = warn or log
        self.ref = f"refs/heads/{branch(node)}"
        # The origin's head as last seen: what a push does not need to send again.
        self.pushed_ref = f"refs/remotes/origin/{branch(node)}"
        # The head last written by `export`: carried away on a stick, so never rewritten.
        self.exported_ref = f"refs/edgefleet/exported/{branch(node)}"

    # --- local plumbing ------------------------------------------------------------------

    def _run(self, *args: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["git", "--git-dir", str(self.transport.repo.git_dir), *args],
            input=data,
            capture_output=True,
            check=False,
        )

    def _git(self, *args: str, data: bytes | None = None, check: bool = True) -> str:
        done = self._run(*args, data=data)
        if check and done.returncode != 0:
            raise StatusBranchError(
                f"git {args[0]} in {self.transport.repo.git_dir}: {done.stderr.decode().strip()}"
            )
        return done.stdout.decode().strip() if done.returncode == 0 else ""

    def _resolve(self, ref: str) -> str | None:
        return (
            self._git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False) or None
        )

    def head(self) -> str | None:
        return self._resolve(self.ref)

    def refs(self) -> tuple[str | None, str | None]:
        """The local head and the origin's head as last pushed, in one git call."""
        out = self._git(
            "for-each-ref", "--format=%(refname) %(objectname)", self.ref, self.pushed_ref
        )
        found = dict(line.split(" ", 1) for line in out.splitlines())
        return found.get(self.ref), found.get(self.pushed_ref)

    def document(self, commit: str) -> dict[str, Any] | None:
        raw = self._run("cat-file", "blob", f"{commit}:{STATUS_FILE}")
        if raw.returncode != 0:
            return None
        try:
            return parse_status(raw.stdout, f"{branch(self.node)}@{commit[:12]}:{STATUS_FILE}")
        except StatusInvalid as exc:
            # A document an older agent wrote differently: the next commit is a change.
            self.warn("status.unreadable_head", reason=str(exc))
            return None

    def queued(self) -> int:
        head = self.head()
        if head is None:
            return 0
        pushed = self._resolve(self.pushed_ref)
        span = f"{pushed}..{head}" if pushed else head
        return int(self._git("rev-list", "--count", span) or 0)

    def _write_commit(
        self, doc: Mapping[str, Any], parent: str | None, when: datetime, note: str = ""
    ) -> str:
        blob = self._git("hash-object", "-w", "--stdin", data=encode(doc))
        tree = self._git("mktree", data=f"100644 blob {blob}\t{STATUS_FILE}\n".encode())
        raw = commit_object(
            tree=tree,
            parents=(parent,) if parent else (),
            author=person(self.node, f"{self.node}@{self.fleet}", when),
            message=commit_message(doc) + (f"{note}\n" if note else ""),
            signer=self.signer,
        )
        return self._git("hash-object", "-t", "commit", "-w", "--stdin", data=raw)

    def _move(self, new: str, old: str | None) -> None:
        # The old value makes the update a compare-and-swap: never a lost commit.
        self._git("update-ref", "-m", "edgefleet status", self.ref, new, old or "0" * 40)

    # --- recording -------------------------------------------------------------------------

    def record(
        self, doc: dict[str, Any], now: datetime, heartbeat_interval: int, head: str | None
    ) -> str | None:
        """Commit `doc` (its `sequence` and `event` are set here) on top of `head` when it
        differs from the head's document, or as a heartbeat when the head is
        `heartbeat_interval` old; returns the new commit, or None when neither is due."""
        previous = self.document(head) if head else None
        if is_change(previous, doc):
            event = "change"
        else:
            assert previous is not None
            age = (now - parse_timestamp(previous["observedAt"])).total_seconds()
            if age < heartbeat_interval:
                return None
            event = "heartbeat"
        doc = {
            **doc,
            "sequence": (previous["sequence"] + 1) if previous else self._next_sequence(head),
            "event": event,
            "observedAt": format_timestamp(now),
        }
        commit = self._write_commit(doc, head, now)
        self._move(commit, head)
        self.log(
            "status.committed",
            commit=commit,
            state=doc["state"],
            kind=event,
            sequence=doc["sequence"],
        )
        return self._bound_queue() or commit

    # --- the bounded queue -----------------------------------------------------------------

    def _queue_base(self, head: str) -> str | None:
        """The newest commit that left this node (pushed, or exported on a stick): the queue
        is what follows it, and only that may be rewritten."""
        base: str | None = None
        for ref in (self.pushed_ref, self.exported_ref):
            sha = self._resolve(ref)
            if sha is None or not self._is_ancestor(sha, head):
                continue
            if base is None or self._is_ancestor(base, sha):
                base = sha
        return base

    def _is_ancestor(self, old: str, new: str) -> bool:
        return self._run("merge-base", "--is-ancestor", old, new).returncode == 0

    def _bound_queue(self) -> str | None:
        """Keep the undelivered commits at most `max_queued` by coalescing the oldest runs of
        heartbeats, each into its last one; a change of state is never dropped. Returns the
        new head when the queue was rewritten (it was never published, so nothing anyone has
        seen changes), else None."""
        head = self.head()
        if head is None:
            return None
        base = self._queue_base(head)
        span = (head, f"^{base}") if base else (head,)
        if int(self._git("rev-list", "--count", *span) or 0) <= self.max_queued:
            return None
        queue = self._git("rev-list", "--reverse", *span).split()
        docs = [self.document(c) for c in queue]
        # Coalesce well below the bound, so a long outage rewrites the queue now and then,
        # not on every heartbeat.
        target = max(1, self.max_queued * 3 // 4)
        excess = len(queue) - target
        dropped: set[int] = set()
        for i in range(len(queue) - 1):
            if len(dropped) >= excess:
                break
            here, after = docs[i], docs[i + 1]
            if (
                here is not None
                and after is not None
                and here.get("event") == "heartbeat"
                and after.get("event") == "heartbeat"
            ):
                dropped.add(i)
        if not dropped:
            self.warn(
                "status.queue_full",
                queued=len(queue),
                limit=self.max_queued,
                reason="every undelivered commit is a change of state; none is dropped",
            )
            return None
        kept: list[tuple[str, str]] = []
        run: list[int] = []
        for i, commit in enumerate(queue):
            if i in dropped:
                run.append(i)
                continue
            note = ""
            if run:
                first = docs[run[0]]
                assert first is not None
                note = (
                    f"Edgefleet-Coalesced: {len(run)} earlier heartbeat(s) from"
                    f" {first['observedAt']}"
                )
            kept.append((commit, note))
            run = []
        new_head = self._remake(kept, base)
        self._move(new_head, head)
        self.log("status.coalesced", heartbeats=len(dropped), queued=len(kept), head=new_head)
        return new_head

    def _remake(self, commits: list[tuple[str, str]], parent: str | None) -> str:
        """Re-make `commits` (oldest first, each with a note for its message) on `parent`,
        numbered on from it, each keeping its own time; returns the last one made."""
        previous = self.document(parent) if parent else None
        sequence = previous["sequence"] if previous else 0
        made = parent
        for commit, note in commits:
            doc = self.document(commit)
            if doc is None:
                continue
            sequence += 1
            fields = self._commit_fields(commit)
            when = datetime.fromtimestamp(fields.committed_at, UTC) if fields else now()
            made = self._write_commit({**doc, "sequence": sequence}, made, when, note)
        assert made is not None
        return made

    # --- carrying it by hand ---------------------------------------------------------------

    def export(self, out: Path) -> int:
        """The commits not known to be at the origin, as a git bundle of this branch written
        atomically to `out`; returns how many (0: nothing queued, nothing written). A commit
        carried before is carried again until a push or a fetch shows the origin has it:
        `edgefleet status import` lands each commit once however often it arrives."""
        head, pushed = self.refs()
        if head is None:
            return 0
        count = int(self._git("rev-list", "--count", head, *((f"^{pushed}",) if pushed else ())))
        if count == 0:
            return 0
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
        try:
            self._git("bundle", "create", "-q", tmp, self.ref, *((f"^{pushed}",) if pushed else ()))
            with open(tmp, "rb") as written:
                os.fsync(written.fileno())
            Path(tmp).replace(out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._git("update-ref", self.exported_ref, head)
        self.log("status.exported", commits=count, head=head, out=str(out))
        return count

    def _next_sequence(self, head: str | None) -> int:
        return int(self._git("rev-list", "--count", head) or 0) + 1 if head else 1

    # --- delivering ------------------------------------------------------------------------

    def adopt_origin(self) -> None:
        """Before the first commit of a state directory: continue the origin's branch, if it
        has one, so that a re-provisioned node never starts a second history."""
        if self.head() is not None:
            return
        remote = self.transport.fetch_ref(self.ref, self.pushed_ref)
        if remote is None:
            return
        if self._signed_by_me(remote):
            self._move(remote, None)
            self.log("status.adopted", commit=remote)
        else:
            self.warn(
                "status.foreign_head",
                commit=remote,
                reason="the origin's status branch head is not signed by this node's key",
            )

    def push(self) -> Delivery:
        """Deliver every queued commit in order; never forces."""
        head = self.head()
        if head is None or head == self._resolve(self.pushed_ref):
            return Delivery(0, 0)
        waiting = self.queued()
        try:
            self.transport.push(self.ref)
        except OriginUnreachable as exc:
            self.warn("status.push_failed", queued=waiting, reason=str(exc))
            return Delivery(0, waiting, str(exc))
        except PushRejected as exc:
            if not exc.behind:
                self.warn("status.push_refused", queued=waiting, reason=str(exc))
                return Delivery(0, waiting, str(exc))
            try:
                if not self._rebuild_on_origin():
                    return Delivery(0, waiting, str(exc))
                head = self.head()
                waiting = self.queued()
                self.transport.push(self.ref)
            except (OriginUnreachable, PushRejected) as again:
                self.warn("status.push_failed", queued=waiting, reason=str(again))
                return Delivery(0, waiting, str(again))
        assert head is not None
        self._git("update-ref", self.pushed_ref, head)
        self.log("status.pushed", commits=waiting, head=head)
        return Delivery(waiting, 0)

    def _commit_fields(self, commit: str) -> CommitFields | None:
        raw = self._run("cat-file", "commit", commit)
        if raw.returncode != 0:
            return None
        try:
            return parse_commit(raw.stdout)
        except ValueError:
            return None

    def _signed_by_me(self, commit: str) -> bool:
        fields = self._commit_fields(commit)
        return fields is not None and check_commit(fields, {self.node: self.signer.public}).ok

    def _rebuild_on_origin(self) -> bool:
        """Re-make the undelivered commits on top of the origin's head (see the module)."""
        head = self.head()
        assert head is not None
        pushed = self._resolve(self.pushed_ref)
        undelivered = self._git("rev-list", "--reverse", head, *((f"^{pushed}",) if pushed else ()))
        oldest = self._commit_fields(undelivered.split()[0]) if undelivered else None
        # The origin's commits from the oldest one not known to be delivered on: enough to tell
        # which of ours it already has (a node restored from a backup pushed some after it),
        # without fetching the branch's whole history.
        since = oldest.committed_at - _CLOCK_SLACK_S if oldest is not None else None
        remote = self.transport.fetch_ref(self.ref, self.pushed_ref, since=since)
        if remote is None or not self._signed_by_me(remote):
            self.warn(
                "status.foreign_head",
                commit=remote,
                reason="the origin's status branch moved, and its head is not signed by"
                " this node's key; the queue waits",
            )
            return False
        mine = self._git("rev-list", "--reverse", head, f"^{remote}").split()
        parent = self._remake([(c, "") for c in mine], remote)
        self._move(parent, head)
        self.log("status.rebuilt", commits=len(mine), onto=remote)
        return True
