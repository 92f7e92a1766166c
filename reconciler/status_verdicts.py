"""Verdicts on status heads (signature, schema), and the cache that keeps them between runs.

A verdict on a node's status head depends on nothing but the head commit's bytes (which pin
`status.json` through the commit's tree) and the key it was checked against. Both are in the
cache key, so a cached verdict can never be out of date: a node that moves gets a new head, a
key changed in `trust/allowed_signers` is a new key. What does change with time or with the
main branch (stale, the node and fleet named, a release that exists) is judged again on every
run by `fleet_status.judge`.

The cache is a file under `$XDG_CACHE_HOME/edgefleet/verdicts/`, one per repository, holding
verdicts for the heads of the last run only, so it never outgrows the fleet. It is as trusted
as the operator's clone of the repository beside it: whoever can write either can lie to this
operator. `edgefleet status --recheck` ignores it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from reconciler import __version__
from reconciler.atomic import write_atomic
from reconciler.status_doc import STATUS_FILE, branch
from reconciler.status_source import StatusRepo, cache_root, cat_batch

CACHE_FORMAT = 2
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


@dataclass(frozen=True)
class Verdict:
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


def entry_key(node: str, head: str, key_text: str) -> str:
    return f"{node} {head} {hashlib.sha256(key_text.encode()).hexdigest()[:32]}"


@cache
def _stamp() -> str:
    """What else a verdict depends on: this version of EdgeFleet and its status schema."""
    schemas = resources.files("reconciler") / "schemas"
    digest = hashlib.sha256(__version__.encode())
    for name in ("status.json", "defs.json"):
        digest.update((schemas / name).read_bytes())
    return digest.hexdigest()


def cache_path(git_dir: Path) -> Path:
    name = hashlib.sha256(str(git_dir.resolve()).encode()).hexdigest()[:16]
    return cache_root() / "verdicts" / f"{name}.json"


def load_verdicts(path: Path) -> dict[str, Verdict]:
    """The cached verdicts, or none when the file is absent, unreadable, or was written by
    another version of EdgeFleet or its schema."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        return {}
    if data.get("stamp") != _stamp():
        return {}
    entries = data.get("verdicts")
    if not isinstance(entries, dict):
        return {}
    found: dict[str, Verdict] = {}
    for name, value in entries.items():
        if isinstance(value, dict):
            doc = value.get("doc")
            found[name] = Verdict(
                value.get("signer"), value.get("problem"), doc if isinstance(doc, dict) else None
            )
    return found


def save_verdicts(path: Path, verdicts: Mapping[str, Verdict]) -> bool:
    """Keep these verdicts (and only these) for the next run; False when the cache cannot be
    written, which costs the next run its speed and nothing else."""
    body = {
        "format": CACHE_FORMAT,
        "stamp": _stamp(),
        "verdicts": {name: v.as_json() for name, v in verdicts.items()},
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(body, separators=(",", ":")).encode(), mode=0o600)
    except OSError:
        return False
    return True


def head_verdicts(
    repo: StatusRepo,
    heads: Mapping[str, str],
    keys: Mapping[str, str | None],
    recheck: bool = False,
    keep: bool = True,
) -> dict[str, Verdict]:
    """node -> the verdict on its head: from the cache where it has one for this head and key
    (unless `recheck`), else checked now, reading only those heads' objects. With `keep`, the
    cache then holds these heads' verdicts and no others (`status` reads every head; a reader
    of a few, like `plan`, leaves the cache as it found it)."""
    path = cache_path(repo.git_dir)
    cached = {} if recheck else load_verdicts(path)
    verdicts: dict[str, Verdict] = {}
    kept: dict[str, Verdict] = {}
    todo: list[str] = []
    for node, head in heads.items():
        key = keys.get(node)
        name = entry_key(node, head, key) if key is not None else None
        if name is not None and name in cached:
            verdicts[node] = kept[name] = cached[name]
        else:
            todo.append(node)
    objects = cat_batch(repo, [x for n in todo for x in (heads[n], f"{heads[n]}:{STATUS_FILE}")])
    for i, node in enumerate(todo):
        raw, blob, key = objects[2 * i], objects[2 * i + 1], keys.get(node)
        verdicts[node] = decide(node, heads[node], raw, blob, key)
        if key is not None and cacheable(raw, blob, key):
            kept[entry_key(node, heads[node], key)] = verdicts[node]
    if keep and (todo or len(kept) != len(cached)):
        save_verdicts(path, kept)
    return verdicts
