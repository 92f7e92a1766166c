"""One cycle of the node agent: fetch, decide, stage, switch, check, commit or roll back.

The decisions are the core's (`reconciler.verify`, `reconciler.render`, `reconciler.node_plan`);
this module is the shell that fetches, writes banks and the journal, and runs hooks and checks.
The journal is written before every step that a power cut could interrupt, so that `recover`
always knows whether to discard a half-staged bank, re-run a trial, or finish a rollback.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from node_agent.banks import ComponentBanks
from node_agent.bundle_import import missing_prerequisites, unpack_bundle
from node_agent.busy import busy_reason
from node_agent.cli import summary
from node_agent.config import AgentConfig, ConfigError
from node_agent.download import Fetcher
from node_agent.errors import ApplyFailed, ArtifactUnavailable, OriginUnreachable, UnsafeArchive
from node_agent.health import CheckContext, CheckResult, run_checks, run_hook
from node_agent.journal import (
    BankRecord,
    ComponentRecord,
    Journal,
    JournalFile,
    Step,
    Transaction,
)
from node_agent.metrics import render as render_metrics
from node_agent.metrics import write as write_metrics
from node_agent.status_branch import (
    DEFAULT_MAX_QUEUED,
    Delivery,
    StatusBranch,
    StatusBranchError,
)
from node_agent.transport import Transport, fingerprint

from reconciler import __version__
from reconciler.atomic import sha256_file
from reconciler.durations import parse_duration
from reconciler.errors import EdgeFleetError, ReleaseInvalid, RenderError, TrustError
from reconciler.fleet_repo import FleetRepo, root_chain_file
from reconciler.git_tree import GitTreeFiles
from reconciler.keyfiles import load_signing_key
from reconciler.maintenance import WindowInvalid, window_state
from reconciler.node_plan import Desired, choose_patch, desired_components, plan
from reconciler.offline_bundle import BLOBS, GIT_BUNDLE, BundleInvalid, Manifest, check_fits
from reconciler.release import VerifiedFiles, VerifiedRelease
from reconciler.release_tags import ReleaseTag, payload_loader, release_tags
from reconciler.render import render_node
from reconciler.rollout import in_wave
from reconciler.status_doc import status_document
from reconciler.timestamps import format_timestamp, now
from reconciler.trust_root import TrustRoot, advance_root, load_pinned_root
from reconciler.verify import reads, verify_for_node

# Trial starts a release may have before a restart gives up on it and rolls back: enough for
# a power cut or two during a slow health check, not enough to loop on a crashing one.
MAX_TRIAL_ATTEMPTS = 3
FINAL_STATES = ("converged", "rolled-back", "rejected")


class AgentBusy(EdgeFleetError):
    """Another agent process holds this state directory."""

    exit_code = 75


@dataclass(frozen=True)
class Candidate:
    tag: ReleaseTag
    root: TrustRoot
    root_bytes: bytes | None
    release: VerifiedRelease
    files: VerifiedFiles
    repo: FleetRepo


@dataclass
class Outcome:
    exit_code: int
    journal: Journal
    checks: list[tuple[str, CheckResult]] = field(default_factory=list)
    # Whether this cycle staged anything (the journal's `transfer` is the last apply's).
    staged: bool = False


def _error(release: int | None, exc: BaseException, at: datetime) -> dict[str, Any]:
    entry: dict[str, Any] = {"release": release, "reason": str(exc), "at": format_timestamp(at)}
    rule = getattr(exc, "rule", None)
    if rule:
        entry["rule"] = rule
    return entry


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        log: Any,
        clock: Callable[[], datetime] = now,
        status_queue_limit: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        self.config = config
        self.status_queue_limit = status_queue_limit
        self.log = log
        self.clock = clock
        state = config.state_dir
        self.journal_file = JournalFile(state / "state.json")
        self.transport = Transport(state / "repo", config.repo, log=self._event)
        self.components_dir = state / "components"
        self.metrics_path = state / "metrics.prom"
        self.checks: list[tuple[str, CheckResult]] = []
        self._status: StatusBranch | None = None
        # Set when this cycle found the origin down: status is committed, not pushed.
        self.origin_down = False
        self.fetched_bytes = 0
        self.staged = False
        # An unpacked offline bundle's blobs, while `import_bundle` runs.
        self.local_blobs: Path | None = None

    def _event(self, event: str, **fields: Any) -> None:
        self.log.info(event, **fields)

    # --- the cycle ---------------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One agent per state directory: a `once` run by hand never races the service."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.config.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AgentBusy(
                    f"{self.config.state_dir}: another edgefleet-agent is working on this state"
                    " directory, expected it free; try again when it is done"
                ) from None
            yield
        finally:
            os.close(fd)

    def once(self) -> Outcome:
        with self.locked():
            journal = self.journal_file.load(self.config.node)
            self.checks = []
            self.fetched_bytes = 0
            self.staged = False
            self.origin_down = False
            code = self._cycle(journal)
            self._write_metrics(journal, code)
            self.report(journal)
            return Outcome(code, journal, self.checks, self.staged)

    def import_bundle(self, bundle: Path) -> Outcome:
        """One cycle from an offline bundle instead of the origin: the same verification,
        decisions, exit codes and rollback as `once`. A bundle that is damaged, another
        fleet's, older than what the node runs, or builds on commits the node lacks is refused
        before anything changes."""
        with self.locked():
            journal = self.journal_file.load(self.config.node)
            self.checks = []
            self.fetched_bytes = 0
            self.staged = False
            work = self.config.state_dir / "import"
            try:
                try:
                    manifest, news = self._admit_bundle(bundle, work, journal)
                except BundleInvalid as exc:
                    # Only logged: nothing happened to the node, so its journal and status
                    # stay as they were, but the log records that someone tried this stick.
                    self.log.warning(
                        "import.refused", bundle=str(bundle), rule=exc.rule, reason=str(exc)
                    )
                    raise
                self.log.info(
                    "import.start",
                    bundle=str(bundle),
                    releases=list(manifest.releases),
                    since=manifest.since,
                    news=news,
                )
                if not news:
                    self.log.info("import.nothing_new", release=journal.release)
                    code = 3 if journal.state == "rejected" else 0
                    return Outcome(code, journal, [], False)
                origin = self.transport
                # Bound to the origin before the swap: status is never pushed to a bundle.
                self.status_branch(journal)
                self.transport = Transport(
                    origin.repo_dir, str(work / GIT_BUNDLE), log=self._event, bundle=True
                )
                self.local_blobs = work / BLOBS
                # No route to the origin is assumed: status is committed and queued for
                # `export-status` or the next push.
                self.origin_down = True
                try:
                    code = self._cycle(journal)
                finally:
                    self.transport = origin
                    self.local_blobs = None
                self._write_metrics(journal, code)
                self.report(journal)
                self.log.info("import.done", exit_code=code, release=journal.release)
                return Outcome(code, journal, self.checks, self.staged)
            finally:
                shutil.rmtree(work, ignore_errors=True)

    def _admit_bundle(self, bundle: Path, work: Path, journal: Journal) -> tuple[Manifest, bool]:
        """The bundle unpacked under `work` and checked against this node, and whether it
        brings a release newer than the node's; raises BundleInvalid otherwise."""
        manifest = unpack_bundle(bundle, work)
        fleet = self.pinned_root(journal).fleet
        news = check_fits(manifest, fleet, journal.accepted_version, str(bundle))
        repo_dir = self.config.state_dir / "repo"
        problem = (
            missing_prerequisites(repo_dir, work / GIT_BUNDLE)
            if (repo_dir / "HEAD").is_file()
            else ("the node has no repository yet" if manifest.since else None)
        )
        if problem is not None:
            raise BundleInvalid(
                f"{bundle}: it was made --since {manifest.since} and this node lacks the"
                f" commits it builds on ({problem}); expected a bundle made --since the release"
                f" the node runs ({journal.release}) or without --since. Nothing was changed",
                rule="prerequisite",
            )
        return manifest, news

    def export_status(self, out: Path) -> int:
        """Write the status commits not known to be delivered as a git bundle to `out`;
        returns how many it holds (0: nothing written)."""
        with self.locked():
            journal = self.journal_file.load(self.config.node)
            branch = self.status_branch(journal)
            if branch is None:
                raise ConfigError(
                    f"{self.config.identity_key}: this node cannot sign status, so it has none"
                    " to export; see the log's status.disabled"
                )
            return branch.export(out)

    def _cycle(self, journal: Journal) -> int:
        recovered = self.recover(journal)
        if recovered is not None:
            return recovered
        try:
            tags = self.transport.sync()
        except OriginUnreachable as exc:
            return self._offline(journal, exc)
        journal.last_sync = format_timestamp(self.clock())
        seen = fingerprint(tags)
        if (
            seen == journal.evaluated
            and journal.state in FINAL_STATES
            and journal.transaction is None
        ):
            return 3 if journal.state == "rejected" else 0
        try:
            return self._decide_and_apply(journal, seen)
        except OriginUnreachable as exc:
            # The origin went away between the tags and the files they sign.
            return self._offline(journal, exc)

    def _offline(self, journal: Journal, exc: OriginUnreachable) -> int:
        self.origin_down = True
        self.log.warning("fetch.unreachable", origin=self.config.repo, reason=str(exc))
        journal.state = "offline"
        journal.last_error = _error(None, exc, self.clock())
        self.journal_file.save(journal)
        return exc.exit_code

    def _decide_and_apply(self, journal: Journal, seen: str) -> int:
        candidate, refusal = self.decide(journal)
        if refusal is not None:
            journal.count("rejections")
        if candidate is not None:
            release = candidate.release
            journal.target = {
                "release": release.version,
                "commit": release.commit,
                "wave": release.wave,
                "inWave": True,
            }
        elif journal.release is not None and journal.commit is not None:
            journal.target = {"release": journal.release, "commit": journal.commit}
        if candidate is None:
            journal.evaluated = seen
            if refusal is not None:
                journal.state = "rejected"
                journal.last_error = refusal
            else:
                self._settle(journal)
            self.journal_file.save(journal)
            self.log.info("cycle.nothing_to_apply", release=journal.release, state=journal.state)
            return 3 if journal.state == "rejected" else 0
        try:
            rendered = render_node(candidate.repo, self.config.node)
        except RenderError as exc:
            self._refuse(journal, candidate.release, exc)
            journal.evaluated = seen
            self.journal_file.save(journal)
            return 3
        deferral = self._deferral(rendered)
        if deferral is not None:
            rule, reason = deferral
            journal.state = "deferred"
            journal.last_error = {
                "release": candidate.release.version,
                "reason": reason,
                "at": format_timestamp(self.clock()),
                "rule": rule,
            }
            self.journal_file.save(journal)
            self.log.info(
                "apply.deferred", release=candidate.release.version, rule=rule, reason=reason
            )
            return 0
        try:
            self.apply(journal, candidate, rendered)
        except ArtifactUnavailable as exc:
            journal.state = "deferred"
            journal.last_error = _error(candidate.release.version, exc, self.clock())
            self.journal_file.save(journal)
            self.log.warning("apply.deferred", release=candidate.release.version, reason=str(exc))
            return exc.exit_code
        except ApplyFailed as exc:
            journal.evaluated = seen
            self.journal_file.save(journal)
            return exc.exit_code
        except (UnsafeArchive, RenderError) as exc:
            self._refuse(journal, candidate.release, exc)
            journal.evaluated = seen
            self.journal_file.save(journal)
            return 3
        journal.evaluated = seen
        if refusal is not None:
            journal.state = "rejected"
            journal.last_error = refusal
        self.journal_file.save(journal)
        return 3 if refusal is not None else 0

    def _settle(self, journal: Journal) -> None:
        """The state of a node with nothing to apply: what it runs, and whether the newest
        release it tried failed here (that stays visible until a newer one is applied)."""
        newest_failed = max((int(v) for v in journal.failed), default=0)
        if newest_failed > (journal.release or 0):
            failure = journal.failed[str(newest_failed)]
            journal.state = failure.get("outcome", "rolled-back")
            journal.last_error = {
                "release": newest_failed,
                "reason": failure["reason"],
                "at": failure["at"],
            }
        else:
            journal.state = "converged" if journal.release is not None else "new"
            journal.last_error = None

    # --- deciding ------------------------------------------------------------------------

    def pinned_root(self, journal: Journal) -> TrustRoot:
        if journal.trusted_root is not None:
            return load_pinned_root(journal.trusted_root, "the journal's trusted root")
        path = self.config.trust_root
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the trust root ({exc.strerror})") from None
        return load_pinned_root(data, str(path))

    def decide(self, journal: Journal) -> tuple[Candidate | None, dict[str, Any] | None]:
        """The newest release above the floor that verifies, and the refusal of a newer one."""
        repo = self.transport.repo
        floor = journal.accepted_version or 0
        every = release_tags(repo)
        tags = [t for t in every if t.version > floor]
        checked_at = self.clock()
        refusal: dict[str, Any] | None = None
        try:
            root, root_bytes = advance_root(
                self.pinned_root(journal), lambda v: self._offered_roots(tags, v)
            )
        except TrustError as exc:
            return None, _error(tags[0].version if tags else None, exc, checked_at)
        for tag in tags:
            if journal.is_failed(tag.version):
                self.log.info("decide.skip_failed", release=tag.version)
                continue
            try:
                tree, (walked, release, files, fleet) = self._verify(
                    journal, root, tag, checked_at, every
                )
            except (TrustError, ReleaseInvalid) as exc:
                self.log.warning(
                    "verify.refused",
                    release=tag.version,
                    rule=getattr(exc, "rule", "validation"),
                    reason=str(exc),
                )
                if refusal is None:
                    refusal = _error(tag.version, exc, checked_at)
                continue
            if walked.version != root.version:
                root_bytes = tree.read(root_chain_file(walked.version))
            journal.see_signed_time(release.payload["issuedAt"])
            if fleet.fleet is not None and "pollInterval" in fleet.fleet.spec:
                journal.poll_interval = parse_duration(fleet.fleet.spec["pollInterval"])
            if not self._in_wave(fleet, release):
                self.log.info("decide.not_in_wave", release=release.version, wave=release.wave)
                continue
            self.log.info(
                "verify.accepted",
                release=release.version,
                commit=release.commit,
                signers=len(release.signers),
                root=walked.version,
            )
            return Candidate(tag, walked, root_bytes, release, files, fleet), refusal
        if root_bytes is not None:
            # A newer root reached through the chain is trusted even with nothing to apply.
            journal.trusted_root = root_bytes
        return None, refusal

    def _verify(
        self,
        journal: Journal,
        root: TrustRoot,
        tag: ReleaseTag,
        checked_at: datetime,
        tags: list[ReleaseTag],
    ) -> tuple[GitTreeFiles, tuple[TrustRoot, VerifiedRelease, VerifiedFiles, FleetRepo]]:
        tree = GitTreeFiles(self.transport.repo, tag.target)
        node = self.config.node
        # The files this node reads, in one request; other nodes' files are never fetched.
        self.transport.fetch_blobs(
            (sha for path, (_, sha) in tree.entries.items() if reads(path, node)), tag.target
        )
        return tree, verify_for_node(
            root,
            tag.name,
            tag.message,
            tag.target,
            tree,
            tree.paths(),
            journal.accepted,
            node,
            checked_at,
            payload_loader(tags),
        )

    def _in_wave(self, fleet: FleetRepo, release: VerifiedRelease) -> bool:
        node = fleet.node(self.config.node)
        spec = fleet.fleet.spec if fleet.fleet is not None else {}
        labels = node.labels if node is not None else {}
        return in_wave(spec, release.fleet, release.wave, self.config.node, labels, release.commit)

    def _offered_roots(self, tags: list[ReleaseTag], version: int) -> list[bytes]:
        path = root_chain_file(version)
        found: list[bytes] = []
        for tag in tags:
            try:
                blob = self.transport.repo.commit(tag.target).tree / path
            except (KeyError, ValueError):
                continue
            data: bytes = blob.data_stream.read()
            if data not in found:
                found.append(data)
        return found

    # --- applying ------------------------------------------------------------------------

    def banks(self, name: str) -> ComponentBanks:
        return ComponentBanks(self.components_dir, name)

    def fetcher(self, candidate: Candidate) -> Fetcher:
        fleet = candidate.repo.fleet
        fleet_sources = fleet.spec.get("artifactSources", []) if fleet is not None else []
        return Fetcher(
            self.config.state_dir / "cache",
            [*self.config.artifact_sources, *fleet_sources],
            backoff_file=self.config.state_dir / "sources.json",
            log=self._event,
            local_blobs=self.local_blobs,
        )

    def _deferral(self, rendered: dict[str, Any]) -> tuple[str, str] | None:
        """(rule, reason) when this node must not apply now: it says it is busy, or its
        desired state's maintenance window is closed."""
        busy = busy_reason(self.config)
        if busy is not None:
            return "busy", busy
        try:
            is_open, why = window_state(rendered["spec"].get("maintenance"), self.clock())
        except WindowInvalid as exc:
            return "maintenance", str(exc)
        return None if is_open else ("maintenance", why)

    def apply(self, journal: Journal, candidate: Candidate, rendered: dict[str, Any]) -> None:
        release = candidate.release
        desired = desired_components(rendered)
        installed = {
            name: found
            for name, rec in journal.components.items()
            if (found := rec.installed()) is not None
        }
        changes = plan(desired, installed)
        steps: dict[str, Step] = {}
        for change in changes:
            rec = journal.components.get(change.name)
            current = rec.current if rec else None
            spec = change.desired.as_json() if change.desired else {}
            if change.action == "keep":
                steps[change.name] = Step("keep", current, current, spec)
            elif change.action == "remove":
                steps[change.name] = Step("remove", current, None, spec)
            else:
                steps[change.name] = Step(
                    change.action, current, self.banks(change.name).inactive(), spec
                )
        self.log.info(
            "plan",
            release=release.version,
            **{a: sorted(n for n, s in steps.items() if s.action == a) for a in _ACTIONS},
        )
        journal.transaction = Transaction(
            release=release.version,
            commit=release.commit,
            digest=release.digest,
            phase="staging",
            steps=steps,
            started=format_timestamp(self.clock()),
        )
        if candidate.root_bytes is not None:
            journal.trusted_root = candidate.root_bytes
        moving = {n: s for n, s in steps.items() if s.action in ("add", "change")}
        # The other bank may already hold exactly what is wanted (a halt or a rollback to the
        # release before): switching back to it moves no byte.
        held = {n for n, s in moving.items() if self._bank_holds(journal, n, s, desired[n])}
        for name, step in moving.items():
            if name in held:
                continue
            # Forget the bank before overwriting it: a power cut mid-write must never leave
            # the journal calling a half-written bank complete.
            journal.components.setdefault(name, ComponentRecord()).banks.pop(str(step.target), None)
        journal.state = "applying"
        journal.transfer = {"bytes": 0, "fullBytes": 0}
        self.journal_file.save(journal)
        # Auditors see when each node began a release, not only how it ended.
        self.report(journal)
        for name in sorted(held):
            journal.transfer["fullBytes"] += desired[name].size
            self.log.info(
                "stage.reused",
                release=release.version,
                component=name,
                artifact=desired[name].artifact,
                bank=moving[name].target,
                bytes=0,
            )
        to_stage = {n: s for n, s in moving.items() if n not in held}
        if to_stage:
            fetcher = self.fetcher(candidate)
            try:
                for name, step in to_stage.items():
                    self._stage(journal, fetcher, desired[name], step)
            except (ArtifactUnavailable, UnsafeArchive):
                self._discard_staging(journal)
                raise
            except OSError as exc:
                # A full or failing disk: nothing was switched, so the node runs what it ran
                # and the next cycle tries again once space is freed.
                self._discard_staging(journal)
                raise ArtifactUnavailable(
                    f"staging release {release.version} failed on this node's disk"
                    f" ({exc.strerror or exc}: {exc.filename or self.config.state_dir}),"
                    " expected room in the state directory; nothing was switched"
                ) from None
        journal.transaction.phase = "trial"
        journal.transaction.attempts = 1
        self.journal_file.save(journal)
        self.trial(journal, candidate.files.read)

    def _bank_holds(self, journal: Journal, name: str, step: Step, want: Desired) -> bool:
        """Whether the bank `step` stages into already holds `want`, by the journal's record
        and by the digest of what is on disk now."""
        rec = journal.components.get(name)
        if rec is None or step.target is None:
            return False
        bank = rec.banks.get(step.target)
        if bank is None or (bank.sha256, bank.file, bank.unpack) != want.content:
            return False
        try:
            found = self.banks(name).digest(step.target, want.unpack, want.file)
        except OSError:
            return False
        return found == bank.digest

    def _stage(self, journal: Journal, fetcher: Fetcher, want: Desired, step: Step) -> None:
        assert step.target is not None
        started = time.monotonic()
        source, transferred = self._patched(journal, fetcher, want)
        if source is None:
            fetched = fetcher.fetch(want.url, want.sha256, want.size)
            source, transferred = fetched.path, transferred + fetched.bytes_transferred
        banks = self.banks(want.name)
        banks.clear(step.target)
        if want.unpack == "tar":
            banks.stage_tar(step.target, source)
        else:
            banks.stage_file(step.target, source, want.file)
        digest = banks.digest(step.target, want.unpack, want.file)
        if want.unpack != "tar" and digest != want.sha256:
            raise ArtifactUnavailable(
                f"{want.name}: the staged bank {step.target} has SHA-256 {digest[:16]}...,"
                f" expected {want.sha256[:16]}...; the disk may be failing"
            )
        journal.components[want.name].banks[step.target] = BankRecord(
            want.artifact, want.sha256, want.file, want.unpack, digest
        )
        self.staged = True
        journal.transfer["bytes"] += transferred
        journal.transfer["fullBytes"] += want.size
        journal.count("downloadedBytes", transferred)
        self.fetched_bytes += transferred
        self.journal_file.save(journal)
        self.log.info(
            "stage.done",
            release=journal.transaction.release if journal.transaction else None,
            component=want.name,
            artifact=want.artifact,
            bank=step.target,
            bytes=transferred,
            seconds=round(time.monotonic() - started, 3),
        )

    def _bases(self, journal: Journal, want: Desired) -> dict[str, list[Path]]:
        """Files this node holds that a patch for `want` may start from, by SHA-256: the
        running bank's file first, then the cache's copy, so that a bank edited on disk still
        leaves the cached bytes to patch from."""
        bases: dict[str, list[Path]] = {}
        rec = journal.components.get(want.name)
        if rec is not None and rec.current is not None and rec.current in rec.banks:
            bank = rec.banks[rec.current]
            if bank.unpack == "none":
                path = self.banks(want.name).path(rec.current) / bank.file
                bases.setdefault(bank.sha256, []).append(path)
        cache = self.config.state_dir / "cache"
        for delta in want.deltas:
            cached = cache / str(delta.get("from"))
            if cached.is_file():
                bases.setdefault(str(delta["from"]), []).append(cached)
        return bases

    def _patched(
        self, journal: Journal, fetcher: Fetcher, want: Desired
    ) -> tuple[Path | None, int]:
        """The new artifact rebuilt from a base at hand and a patch, verified, in the cache;
        (None, bytes spent) when no patch applies or every try failed, so the caller
        downloads it in full. A failure is reported in `transfer.deltaFallback`, never
        silent."""
        if fetcher.cached(want.sha256) is not None:
            return None, 0
        bases = self._bases(journal, want)
        patch = choose_patch(want, {d: str(p[0]) for d, p in bases.items()})
        if patch is None:
            return None, 0
        from reconciler.deltas import DeltaError, apply_patch

        spent = 0
        failures: list[str] = []
        out = self.config.state_dir / "cache" / f"{want.sha256}.patched"
        final = self.config.state_dir / "cache" / want.sha256
        try:
            fetched = fetcher.fetch(str(patch["url"]), str(patch["sha256"]), int(patch["size"]))
            spent = fetched.bytes_transferred
        except ArtifactUnavailable as exc:
            failures.append(
                "; ".join(f"{src}: {why}" for src, why in exc.reasons.items()) or str(exc)
            )
        else:
            for base in bases[str(patch["from"])]:
                try:
                    # Checked again right before patching: a bank edited on disk (or a cache
                    # file gone bad) must not be the starting point of an artifact.
                    got = sha256_file(base)
                    if got != patch["from"]:
                        raise DeltaError(
                            f"the base {base} has drifted: got SHA-256 {got[:16]}..., expected"
                            f" {str(patch['from'])[:16]}..."
                        )
                    apply_patch(str(patch["format"]), base, fetched.path, out, want.size)
                    got = sha256_file(out)
                    if got != want.sha256:
                        raise DeltaError(
                            f"the patched file has SHA-256 {got[:16]}..., expected"
                            f" {want.sha256[:16]}..."
                        )
                    out.replace(final)
                    break
                except (DeltaError, OSError) as exc:
                    out.unlink(missing_ok=True)
                    failures.append(str(exc))
            else:
                failures.append("no base gave the expected bytes")
        if not final.is_file():
            reason = f"{patch['format']} patch from {str(patch['from'])[:12]}: " + "; ".join(
                failures
            )
            journal.transfer.setdefault("deltaFallback", {})[want.name] = reason
            self.log.warning("delta.fallback", component=want.name, reason=reason)
            return None, spent
        if failures:
            journal.transfer.setdefault("deltaFallback", {})[want.name] = (
                "patched from a second copy of the base after: " + "; ".join(failures)
            )
        journal.transfer.setdefault("patches", {})[want.name] = {
            "format": patch["format"],
            "from": patch["from"],
            "bytes": int(patch["size"]),
            "fullBytes": want.size,
        }
        self.log.info(
            "delta.applied",
            component=want.name,
            format=patch["format"],
            bytes=int(patch["size"]),
            full_bytes=want.size,
        )
        return final, spent

    def _discard_staging(self, journal: Journal) -> None:
        txn = journal.transaction
        assert txn is not None
        to_clear: list[tuple[str, str]] = []
        for name, step in txn.steps.items():
            if step.action in ("add", "change") and step.target is not None:
                rec = journal.components.get(name)
                if rec is not None:
                    rec.banks.pop(step.target, None)
                if rec is None or (rec.current is None and not rec.banks):
                    journal.components.pop(name, None)
                else:
                    to_clear.append((name, step.target))
        # The journal forgets the banks before they are emptied, as when staging began.
        journal.transaction = None
        self.journal_file.save(journal)
        for name, bank in to_clear:
            banks = self.banks(name)
            if banks.current() != bank:
                banks.clear(bank)  # type: ignore[arg-type]
        self._sweep(journal)

    def trial(self, journal: Journal, read_repo_file: Callable[[str], bytes]) -> None:
        """Switch every changed component, run its hooks and checks; commit or roll back."""
        txn = journal.transaction
        assert txn is not None and txn.phase == "trial"
        for name, step in txn.steps.items():
            if step.action in ("add", "change"):
                assert step.target is not None
                self.banks(name).switch(step.target)
            elif step.action == "remove":
                self.banks(name).remove_current()
        self.log.info(
            "switch.done",
            release=txn.release,
            attempt=txn.attempts,
            components=sorted(n for n, st in txn.steps.items() if st.action != "keep"),
        )
        for name, step in txn.steps.items():
            if step.action not in ("add", "change"):
                continue
            assert step.target is not None
            ctx = self._context(name, step.target, step.spec, read_repo_file, txn.release)
            activated = run_hook(step.spec.get("hooks"), "activate", ctx)
            results: list[CheckResult] = [activated] if activated is not None else []
            if all(r.ok for r in results):
                results.extend(run_checks(step.spec.get("health", []), ctx))
            self.checks.extend((name, r) for r in results)
            for result in results:
                (self.log.info if result.ok else self.log.warning)(
                    "health.check",
                    release=txn.release,
                    component=name,
                    kind=result.kind,
                    check=result.name,
                    ok=result.ok,
                    seconds=round(result.seconds, 3),
                    detail=result.detail,
                )
            failed = next((r for r in results if not r.ok), None)
            journal.components[name].checks = [r.as_json() for r in results if r.kind != "hook"]
            if failed is not None:
                self.rollback(journal, f"{name}: {failed.name}: {failed.detail}")
        self.commit(journal)

    def _context(
        self,
        name: str,
        bank: str,
        spec: dict[str, Any],
        read_repo_file: Callable[[str], bytes],
        release: int,
    ) -> CheckContext:
        banks = self.banks(name)
        return CheckContext(
            component=name,
            bank_dir=banks.path(bank),  # type: ignore[arg-type]
            artifact_file=spec.get("file", ""),
            read_repo_file=read_repo_file,
            env={
                "EDGEFLEET_NODE": self.config.node,
                "EDGEFLEET_RELEASE": str(release),
                "EDGEFLEET_ARTIFACT": spec.get("artifact", ""),
            },
        )

    def commit(self, journal: Journal) -> None:
        txn = journal.transaction
        assert txn is not None
        removed: list[str] = []
        for name, step in txn.steps.items():
            if step.action == "remove":
                journal.components.pop(name, None)
                removed.append(name)
                continue
            rec = journal.components.setdefault(name, ComponentRecord())
            rec.current = step.target
            rec.spec = step.spec
            if step.action != "keep":
                rec.health = "ok"
        journal.release = txn.release
        journal.commit = txn.commit
        journal.accepted_version = txn.release
        journal.accepted_digest = txn.digest
        journal.transaction = None
        journal.state = "converged"
        journal.last_error = None
        journal.count("applies")
        self.journal_file.save(journal)
        for name in removed:
            self.banks(name).discard()
        self.log.info("commit.done", release=txn.release, commit=txn.commit)

    def rollback(self, journal: Journal, reason: str) -> None:
        """Switch every component of the transaction back, re-run hooks, mark it failed."""
        txn = journal.transaction
        assert txn is not None
        if txn.phase != "rolling-back":
            txn.phase = "rolling-back"
            txn.reason = reason
            self.journal_file.save(journal)
        reason = txn.reason or reason
        self.log.warning("rollback.start", release=txn.release, reason=reason)
        for name, step in txn.steps.items():
            if step.action == "keep":
                continue
            banks = self.banks(name)
            if step.previous is not None:
                banks.switch(step.previous)
            elif banks.current() is not None:
                banks.remove_current()
        for name, step in txn.steps.items():
            if step.action == "keep" or step.previous is None:
                continue
            rec = journal.components.get(name)
            old_spec = rec.spec if rec is not None else {}
            new_hooks = step.spec.get("hooks") or {}
            ctx = self._context(name, step.previous, old_spec, _no_repo_file, txn.release)
            for hooks, phase in ((new_hooks, "rollback"), (old_spec.get("hooks"), "activate")):
                result = run_hook(hooks, phase, ctx)  # type: ignore[arg-type]
                if result is not None:
                    self.log.info(
                        "rollback.hook",
                        release=txn.release,
                        component=name,
                        check=result.name,
                        ok=result.ok,
                        detail=result.detail,
                    )
        at = self.clock()
        journal.failed[str(txn.release)] = {
            "digest": txn.digest,
            "reason": reason,
            "at": format_timestamp(at),
            "outcome": "rolled-back",
        }
        for name, step in txn.steps.items():
            if step.action == "add":
                # Nothing ran this component before the release: forget it entirely.
                journal.components.pop(name, None)
        journal.transaction = None
        journal.state = "rolled-back"
        journal.last_error = {"release": txn.release, "reason": reason, "at": format_timestamp(at)}
        journal.count("rollbacks")
        self.journal_file.save(journal)
        self._sweep(journal)
        self.log.warning("rollback.done", release=txn.release, reason=reason)
        raise ApplyFailed(
            f"release {txn.release} failed on this node and was rolled back: {reason}"
        )

    def _refuse(self, journal: Journal, release: VerifiedRelease, exc: BaseException) -> None:
        at = self.clock()
        journal.failed[str(release.version)] = {
            "digest": release.digest,
            "reason": str(exc),
            "at": format_timestamp(at),
            "outcome": "rejected",
        }
        journal.state = "rejected"
        journal.last_error = _error(release.version, exc, at)
        journal.count("rejections")
        self.log.warning("apply.refused", release=release.version, reason=str(exc))

    # --- recovery ------------------------------------------------------------------------

    def recover(self, journal: Journal) -> int | None:
        """Finish or undo what a crash interrupted; an exit code when that decided the cycle."""
        self._sweep(journal)
        txn = journal.transaction
        if txn is None:
            return None
        self.log.warning(
            "recover.start", release=txn.release, phase=txn.phase, attempts=txn.attempts
        )
        if txn.phase == "staging":
            self._discard_staging(journal)
            self.log.info("recover.discarded", release=txn.release)
            return None
        try:
            if txn.phase == "rolling-back":
                self.rollback(journal, txn.reason or "interrupted while rolling back")
            if txn.attempts >= MAX_TRIAL_ATTEMPTS:
                self.rollback(
                    journal,
                    f"its trial was interrupted {txn.attempts} times (a crash or power cut"
                    " during hooks or health checks), expected it to finish",
                )
            read = self._recovered_files(journal, txn)
            if read is None:
                return 1
            txn.attempts += 1
            self.journal_file.save(journal)
            self.trial(journal, read)
        except ApplyFailed as exc:
            return exc.exit_code
        return None

    def _recovered_files(self, journal: Journal, txn: Transaction) -> Callable[[str], bytes] | None:
        """The release's files, verified again: a trial re-run reads its golden data anew."""
        repo = self.transport.repo
        tags = release_tags(repo)
        tag = next((t for t in tags if t.version == txn.release), None)
        try:
            if tag is None:
                raise ReleaseInvalid(
                    [], f"release {txn.release}: its tag is gone from {repo.git_dir}"
                )
            _, (_, _, files, _) = self._verify(
                journal, self.pinned_root(journal), tag, self.clock(), tags
            )
        except (TrustError, ReleaseInvalid, OriginUnreachable) as exc:
            try:
                self.rollback(journal, f"cannot re-verify it after a restart: {exc}")
            except ApplyFailed:
                return None
        return files.read

    def _sweep(self, journal: Journal) -> None:
        """Component folders the journal no longer names (a removal cut short) are deleted."""
        if not self.components_dir.is_dir() or journal.transaction is not None:
            return
        for entry in self.components_dir.iterdir():
            if entry.is_dir() and entry.name not in journal.components:
                shutil.rmtree(entry)

    # --- reporting -----------------------------------------------------------------------

    def status_branch(self, journal: Journal) -> StatusBranch | None:
        """The node's status branch, or None (logged) when its key cannot sign."""
        if self._status is None:
            try:
                signer = load_signing_key(self.config.identity_key)
                fleet = self.pinned_root(journal).fleet
            except EdgeFleetError as exc:
                self.log.error("status.disabled", reason=str(exc))
                return None
            self._status = StatusBranch(
                self.transport,
                self.config.node,
                fleet,
                signer,
                self._event,
                self.log.warning,
                max_queued=self.status_queue_limit,
            )
        return self._status

    def report(self, journal: Journal) -> Delivery | None:
        """Commit the node's status to `status/<node>` when it changed (or a heartbeat is
        due) and push what is queued. Never fails the cycle: a status that cannot be written
        or delivered now is logged, stays queued, and goes with the next push."""
        branch = self.status_branch(journal)
        if branch is None:
            return None
        try:
            head, pushed = branch.refs()
            if head is None and not self.origin_down:
                with suppress(OriginUnreachable):
                    branch.adopt_origin()
                head, pushed = branch.refs()
            doc = status_document(
                summary(journal, self.config),
                fleet=branch.fleet,
                target=journal.target,
                sequence=1,
                event="change",
                observed_at=format_timestamp(self.clock()),
                poll_interval=self.config.poll_interval or journal.poll_interval or 60,
                heartbeat_interval=self.config.heartbeat_interval,
                agent_version=__version__,
            )
            made = branch.record(doc, self.clock(), self.config.heartbeat_interval, head)
            if made is None and head == pushed:
                # Nothing new and nothing queued: a quiet cycle costs the origin nothing more.
                return Delivery(0, 0)
            if self.origin_down:
                return Delivery(0, branch.queued(), "the origin did not answer this cycle")
            return branch.push()
        except (StatusBranchError, OSError) as exc:
            self.log.error("status.failed", reason=str(exc))
            return None

    def _write_metrics(self, journal: Journal, code: int) -> None:
        wall = time.time()
        values: dict[str, float] = {
            "last_cycle_timestamp_seconds": wall,
            "last_cycle_exit_code": code,
            "applied_release": journal.release or 0,
            "downloaded_bytes_total": journal.counters.get("downloadedBytes", 0),
            "applies_total": journal.counters.get("applies", 0),
            "rollbacks_total": journal.counters.get("rollbacks", 0),
            "rejections_total": journal.counters.get("rejections", 0),
        }
        if journal.last_sync is not None:
            from reconciler.timestamps import parse_timestamp

            values["last_sync_timestamp_seconds"] = parse_timestamp(journal.last_sync).timestamp()
        labelled: list[tuple[str, dict[str, str], float]] = [
            ("state", {"state": s}, 1.0 if journal.state == s else 0.0) for s in _STATES
        ]
        labelled.extend(
            (
                "health_check_duration_seconds",
                {"component": name, "check": str(check["name"])},
                float(check["seconds"]),
            )
            for name, rec in sorted(journal.components.items())
            for check in rec.checks
        )
        write_metrics(self.metrics_path, render_metrics(values, labelled))


_ACTIONS = ("add", "change", "remove", "keep")
_STATES = ("converged", "applying", "rolled-back", "rejected", "deferred", "offline", "new")


def _no_repo_file(path: str) -> bytes:
    raise FileNotFoundError(f"{path}: the release's files are not read while rolling back")


def agent_version() -> str:
    return __version__
