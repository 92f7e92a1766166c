"""Verdicts on status heads (signature, schema), and the cache that keeps them between runs.

A verdict on a node's status head depends on nothing but the head commit's bytes (which pin
`status.json` through the commit's tree) and the key it was checked against. Both are in the
cache key, so a cached verdict can never be out of date: a node that moves gets a new head, a
key changed in `trust/allowed_signers` is a new key. What does change with time or with the
main branch (stale, the node and fleet named, a release that exists) is judged again by
`fleet_status.judge`.

The cache also keeps each node's report row as `status` last printed it, for the same main
branch (its "context": fleet name, expected release, release tags). A row changes with the
clock only in its age and when the node turns stale, so the next run reuses it as text, adding
the age, for every node whose head, key and context are unchanged and that is not stale yet;
for the rest it judges the verdict again. That is what keeps a warm `edgefleet status` of
2,000 nodes within three times `git cat-file` reading their documents (bench/RESULTS.md):
parsing, judging and writing 2,000 documents again took as long as the rest of the run.

The cache is a file under `$XDG_CACHE_HOME/edgefleet/verdicts/`, one per repository: a JSON
header line (format, version stamp, context, fleet names by the blob id of their
`fleet.yaml`), then one tab-separated line per node: node, head, key, the verdict as JSON,
and the row record of `fleet_status` (parsed only for the nodes that need it). It holds the
heads of the last run only, so it never outgrows the fleet. It is as trusted as the
operator's clone of the repository beside it: whoever can write either can lie to this
operator. `edgefleet status --recheck` ignores it.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

from reconciler import __version__
from reconciler.atomic import write_atomic
from reconciler.status_doc import STATUS_FILE, branch
from reconciler.status_source import StatusRepo, cache_root, cat_batch

CACHE_FORMAT = 4
NAMES_KEPT = 8
# The fields of a status document that `fleet_status.judge` reads: all a cached verdict keeps
# (transfer, agentVersion and the rest would add a third to its size and reading time).
JUDGED = (
    "node",
    "fleet",
    "state",
    "release",
    "commit",
    "failedReleases",
    "target",
    "components",
    "lastError",
    "observedAt",
    "sequence",
    "pollInterval",
    "heartbeatInterval",
)


class Verdict(NamedTuple):
    """What the head's signature and `status.json` alone say: who signed it, the document
    when it is a valid status, and the first problem found (None when there is none)."""

    signer: str | None
    problem: str | None
    doc: dict[str, Any] | None

    def as_json(self) -> dict[str, Any]:
        doc = None if self.doc is None else {k: self.doc.get(k) for k in JUDGED}
        return {"signer": self.signer, "problem": self.problem, "doc": doc}


def decide(
    node: str, head: str, raw_commit: bytes | None, blob: bytes | None, key_text: str | None
) -> Verdict:
    """Check the head commit's signature against the node's key and its `status.json`
    against the schema."""
    # Imported here: cryptography and jsonschema are a third of a cold start, and a run whose
    # verdicts are all cached needs neither.
    from reconciler.keys import KeyError_, PublicKey
    from reconciler.signed_commits import check_commit, parse_commit
    from reconciler.status_doc import StatusInvalid, parse_status

    where = f"{branch(node)}@{head[:12]}:{STATUS_FILE}"
    problem = None
    signer = None
    doc: dict[str, Any] | None = None
    if raw_commit is None:
        problem = f"{branch(node)}: head {head[:12]} is missing from the repository"
    elif key_text is None:
        problem = f"{node}: no identity in trust/allowed_signers, expected the node's key"
    else:
        try:
            key = PublicKey.from_openssh(key_text, f"trust/allowed_signers: {node}'s key")
            check = check_commit(parse_commit(raw_commit), {node: key})
        except KeyError_ as exc:
            problem = str(exc)
        except ValueError as exc:
            problem = f"{branch(node)}@{head[:12]}: {exc}"
        else:
            signer = check.signer
            if not check.ok:
                problem = f"{branch(node)}@{head[:12]}: {check.problem}"
    if blob is None:
        problem = problem or f"{where}: missing, expected the node's status"
    else:
        try:
            doc = parse_status(blob, where)
        except StatusInvalid as exc:
            problem = problem or str(exc)
    return Verdict(signer, problem, doc)


def cacheable(raw_commit: bytes | None, blob: bytes | None, key_text: str | None) -> bool:
    # A missing object may arrive with the next fetch, and a node without a key costs no
    # signature check: neither is worth keeping.
    return raw_commit is not None and blob is not None and key_text is not None


def keepable(node: str, head: str, key: str) -> bool:
    """Whether a node's entry fits the cache's lines (no tab or line break in what it is
    named by: git refuses them in ref names, but a key's comment may hold a tab)."""
    return not any(c in text for text in (node, head, key) for c in "\t\n\r")


@cache
def _stamp() -> str:
    """What else a verdict and a row depend on: this version of EdgeFleet, its status schema
    and the code that decides verdicts and writes rows, so that a change to either between
    two versions (or within one, as a developer's) never reuses what the old code made. A
    checksum, not a digest: it tells versions apart, it does not stand against anyone."""
    package = Path(__file__).parent
    checksum = zlib.crc32(__version__.encode())
    for path in (
        package / "schemas" / "status.json",
        package / "schemas" / "defs.json",
        package / "status_verdicts.py",
        package / "fleet_status.py",
        package / "status_doc.py",
    ):
        try:
            checksum = zlib.crc32(path.read_bytes(), checksum)
        except OSError:
            # An install without sources: the version alone tells them apart.
            checksum = zlib.crc32(path.name.encode(), checksum)
    return f"{__version__}-{checksum:08x}"


def cache_path(git_dir: Path) -> Path:
    """The repository's cache file. Two repositories whose paths share a checksum share a file,
    and lose nothing but speed: its entries are named by content (head commit, key, blob)."""
    where = str(git_dir.resolve())
    return cache_root() / "verdicts" / f"{git_dir.name}-{zlib.crc32(where.encode()):08x}.txt"


class Kept(NamedTuple):
    """What the cache keeps of one node, named by its head and key: the verdict on them as
    JSON, or the report row `fleet_status.row_of` recorded ("" for none)."""

    head: str
    key: str
    value: str


def _verdict_of(text: str) -> Verdict | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    doc = value.get("doc")
    return Verdict(
        value.get("signer"), value.get("problem"), doc if isinstance(doc, dict) else None
    )


def _lines(text: str) -> dict[str, Kept]:
    found: dict[str, Kept] = {}
    for line in text.split("\n"):
        fields = line.split("\t", 3)
        if len(fields) == 4:
            found[fields[0]] = Kept(fields[1], fields[2], fields[3])
    return found


class StatusCache:
    """What one run leaves for the next. Empty when the file is absent, unreadable, written by
    another version of EdgeFleet or its schema, or when every head is to be checked again.

    The file: a JSON header line (format, stamp, context, fleet names, the length of the rows
    section), the rows section (`node head key row-record` lines), then the verdicts section
    (`node head key verdict-json` lines), which a run decodes only when it needs a verdict:
    a warm run needs none."""

    __slots__ = (
        "_verdicts",
        "_verdicts_raw",
        "context",
        "fleet_names",
        "names_loaded",
        "path",
        "rows",
    )

    def __init__(
        self,
        path: Path,
        rows: dict[str, Kept] | None = None,
        verdicts: bytes = b"",
        fleet_names: dict[str, str] | None = None,
        context: str = "",
    ) -> None:
        self.path = path
        self.rows = rows or {}
        self._verdicts_raw = verdicts
        self._verdicts: dict[str, Kept] | None = None
        self.fleet_names = fleet_names or {}
        self.names_loaded = len(self.fleet_names)
        self.context = context

    @classmethod
    def load(cls, git_dir: Path, recheck: bool = False) -> StatusCache:
        path = cache_path(git_dir)
        if recheck:
            return cls(path)
        try:
            data = path.read_bytes()
            end = data.index(b"\n")
            header = json.loads(data[:end])
        except (OSError, ValueError):
            return cls(path)
        if (
            not isinstance(header, dict)
            or header.get("format") != CACHE_FORMAT
            or header.get("stamp") != _stamp()
        ):
            return cls(path)
        size = header.get("rowsBytes")
        names, context = header.get("fleetNames"), header.get("context")
        if not isinstance(size, int) or size < 0:
            return cls(path)
        try:
            rows = _lines(data[end + 1 : end + 1 + size].decode())
        except UnicodeDecodeError:
            return cls(path)
        return cls(
            path,
            rows,
            data[end + 1 + size :],
            {k: v for k, v in names.items() if isinstance(v, str)}
            if isinstance(names, dict)
            else {},
            context if isinstance(context, str) else "",
        )

    @property
    def names_added(self) -> bool:
        return len(self.fleet_names) != self.names_loaded

    def row(self, node: str, head: str, key: str | None) -> str | None:
        """The row record kept for this node's head and key ("" or None: none)."""
        found = self.rows.get(node)
        if found is None or found.head != head or found.key != key:
            return None
        return found.value

    def verdict(self, node: str, head: str, key: str | None) -> tuple[Verdict, str] | None:
        """The verdict kept for this node's head and key, and its JSON."""
        if self._verdicts is None:
            try:
                self._verdicts = _lines(self._verdicts_raw.decode())
            except UnicodeDecodeError:
                self._verdicts = {}
        found = self._verdicts.get(node)
        if found is None or found.head != head or found.key != key:
            return None
        verdict = _verdict_of(found.value)
        return None if verdict is None else (verdict, found.value)

    def save(self, rows: Mapping[str, Kept], verdicts: Mapping[str, Kept], context: str) -> bool:
        """Keep these rows and verdicts, and only these, with the fleet names and the context
        the rows were made in; False when the cache cannot be written, which costs the next
        run its speed and nothing else."""
        body = "".join(f"{node}\t{k.head}\t{k.key}\t{k.value}\n" for node, k in rows.items())
        encoded = body.encode()
        header = {
            "format": CACHE_FORMAT,
            "stamp": _stamp(),
            "context": context,
            # The newest few: a fleet renamed back and forth needs no more.
            "fleetNames": dict(list(self.fleet_names.items())[-NAMES_KEPT:]),
            "rowsBytes": len(encoded),
        }
        tail = "".join(f"{node}\t{k.head}\t{k.key}\t{k.value}\n" for node, k in verdicts.items())
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(
                self.path, json.dumps(header).encode() + b"\n" + encoded + tail.encode(), mode=0o600
            )
        except OSError:
            return False
        return True


def verdict_json(verdict: Verdict) -> str:
    return json.dumps(verdict.as_json(), separators=(",", ":"))


def check_heads(
    repo: StatusRepo, heads: Mapping[str, str], keys: Mapping[str, str | None], cache: StatusCache
) -> dict[str, tuple[Verdict, str | None]]:
    """node -> the verdict on its head, from `cache` where it has one for this head and key,
    else checked now (reading only those heads' objects); and its JSON for the cache to keep
    (None when it should not: a missing object may arrive with the next fetch, and a node
    without a key costs no signature check)."""
    found: dict[str, tuple[Verdict, str | None]] = {}
    todo: list[str] = []
    for node, head in heads.items():
        cached = cache.verdict(node, head, keys.get(node))
        if cached is not None:
            found[node] = cached
        else:
            todo.append(node)
    objects = cat_batch(repo, [x for n in todo for x in (heads[n], f"{heads[n]}:{STATUS_FILE}")])
    for i, node in enumerate(todo):
        head, raw, blob, key = heads[node], objects[2 * i], objects[2 * i + 1], keys.get(node)
        verdict = decide(node, head, raw, blob, key)
        keep = key is not None and cacheable(raw, blob, key) and keepable(node, head, key)
        found[node] = (verdict, verdict_json(verdict) if keep else None)
    return found


def head_verdicts(
    repo: StatusRepo,
    heads: Mapping[str, str],
    keys: Mapping[str, str | None],
    recheck: bool = False,
    keep: bool = True,
) -> dict[str, Verdict]:
    """node -> the verdict on its head (see `check_heads`). With `keep`, the cache then holds
    these heads' verdicts and no others (and no rows); a reader of a few heads, like `plan`,
    passes keep=False and leaves the cache as it found it."""
    cache = StatusCache.load(repo.git_dir, recheck)
    found = check_heads(repo, heads, keys, cache)
    if keep:
        kept = {
            node: Kept(heads[node], key, text)
            for node, (_, text) in found.items()
            if text is not None and (key := keys.get(node)) is not None
        }
        rows = {node: Kept(k.head, k.key, "") for node, k in kept.items()}
        cache.save(rows, kept, cache.context)
    return {node: verdict for node, (verdict, _) in found.items()}
