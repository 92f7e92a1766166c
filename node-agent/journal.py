"""The journal, `<stateDir>/state.json`: at every instant it names a good bank for every component.

It is the node's memory outside the banks: the root it trusts, the last release it accepted
(the floor against rollback, and the newest signed time it has seen, the floor for its
clock), the releases that failed here (never retried until a newer one arrives), the banks
that are complete, and the transaction in progress, so that a restart after a power cut
knows what to finish or undo. It is replaced atomically (temp file, fsync, rename, fsync of
the folder) and written before each step that depends on it.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from reconciler.atomic import write_atomic
from reconciler.errors import EdgeFleetError
from reconciler.node_plan import Installed
from reconciler.release import Accepted
from reconciler.timestamps import format_timestamp, parse_timestamp

JOURNAL_FORMAT = 1
Bank = Literal["a", "b"]
Phase = Literal["staging", "trial", "rolling-back"]
State = Literal["converged", "applying", "rolled-back", "rejected", "deferred", "offline", "new"]


class JournalError(EdgeFleetError):
    """The journal cannot be read: the agent stops rather than guess what is installed."""

    exit_code = 2


@dataclass
class BankRecord:
    """A complete bank: staged, fsynced and checked against `digest`."""

    artifact: str
    sha256: str
    file: str
    unpack: str
    digest: str

    def installed(self) -> Installed:
        return Installed(self.artifact, self.sha256, self.file, self.unpack)


@dataclass
class ComponentRecord:
    current: Bank | None = None
    banks: dict[str, BankRecord] = field(default_factory=dict)
    health: str = "unknown"
    # The health checks and hooks of the committed release: what a restart re-runs and what
    # a rollback calls, even when the repository has moved on.
    spec: dict[str, Any] = field(default_factory=dict)
    # The last run of its health checks (name, ok, detail, seconds): metrics and status.
    checks: list[dict[str, Any]] = field(default_factory=list)

    def installed(self) -> Installed | None:
        if self.current is None or self.current not in self.banks:
            return None
        return self.banks[self.current].installed()


@dataclass
class Step:
    """One component's part of a transaction: the bank it leaves and the bank it moves to."""

    action: str
    previous: Bank | None
    target: Bank | None
    spec: dict[str, Any] = field(default_factory=dict)


@dataclass
class Transaction:
    release: int
    commit: str
    digest: str
    phase: Phase
    steps: dict[str, Step]
    # Trial starts only: an ordinary restart of a healthy node never counts.
    attempts: int = 0
    started: str = ""
    # Why a rollback began, so that one finished after a restart reports the same reason.
    reason: str = ""


@dataclass
class Journal:
    node: str
    trusted_root: bytes | None = None
    accepted_version: int | None = None
    accepted_digest: str | None = None
    newest_signed_time: str | None = None
    release: int | None = None
    commit: str | None = None
    components: dict[str, ComponentRecord] = field(default_factory=dict)
    failed: dict[str, dict[str, str]] = field(default_factory=dict)
    transaction: Transaction | None = None
    state: str = "new"
    last_error: dict[str, Any] | None = None
    last_sync: str | None = None
    evaluated: str | None = None
    # The last apply's bytes: `bytes` read from sources, `fullBytes` what full downloads would
    # have read; `patches` and `deltaFallback` per component when patches were used or failed.
    transfer: dict[str, Any] = field(default_factory=lambda: {"bytes": 0, "fullBytes": 0})
    # The fleet's spec.pollInterval in seconds, from the newest verified release's fleet.yaml.
    poll_interval: int | None = None
    # The release this node last decided it should run: {release, commit, wave, inWave}.
    target: dict[str, Any] | None = None
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def accepted(self) -> Accepted:
        newest = self.newest_signed_time
        return Accepted(
            self.accepted_version,
            self.accepted_digest,
            parse_timestamp(newest) if newest else None,
        )

    def see_signed_time(self, when: str) -> None:
        """Raise the clock floor to a time signed by a threshold of release keys."""
        if self.newest_signed_time is None or parse_timestamp(when) > parse_timestamp(
            self.newest_signed_time
        ):
            self.newest_signed_time = format_timestamp(parse_timestamp(when))

    def is_failed(self, version: int) -> bool:
        return str(version) in self.failed

    def count(self, name: str, by: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + by

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["trusted_root"] = (
            base64.b64encode(self.trusted_root).decode() if self.trusted_root else None
        )
        return {"format": JOURNAL_FORMAT, **{_camel(k): v for k, v in data.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Journal:
        fields = {_snake(k): v for k, v in data.items() if k != "format"}
        root = fields.get("trusted_root")
        fields["trusted_root"] = base64.b64decode(root) if root else None
        fields["components"] = {
            name: ComponentRecord(
                current=c["current"],
                banks={b: BankRecord(**r) for b, r in c["banks"].items()},
                health=c["health"],
                spec=c["spec"],
                checks=c.get("checks", []),
            )
            for name, c in fields.get("components", {}).items()
        }
        txn = fields.get("transaction")
        if txn is not None:
            txn["steps"] = {name: Step(**s) for name, s in txn["steps"].items()}
            fields["transaction"] = Transaction(**txn)
        return cls(**fields)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


class JournalFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self, node: str) -> Journal:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return Journal(node=node)
        except OSError as exc:
            raise JournalError(f"{self.path}: cannot read the journal ({exc.strerror})") from None
        try:
            data = json.loads(raw)
            if data.get("format") != JOURNAL_FORMAT:
                raise ValueError(f"got format {data.get('format')!r}, expected {JOURNAL_FORMAT}")
            journal = Journal.from_json(data)
        except (ValueError, KeyError, TypeError) as exc:
            raise JournalError(
                f"{self.path}: not a journal this agent can read ({exc}); expected the state"
                " file an edgefleet-agent wrote. Move it aside to start this node afresh"
            ) from None
        if journal.node != node:
            raise JournalError(
                f"{self.path}: got the journal of node {journal.node!r}, expected {node!r}"
                " (the configuration's node); each node needs its own state directory"
            )
        return journal

    def save(self, journal: Journal) -> None:
        data = json.dumps(journal.to_json(), indent=2, sort_keys=True) + "\n"
        write_atomic(self.path, data.encode(), mode=0o600)
