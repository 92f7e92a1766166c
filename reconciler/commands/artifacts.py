"""`edgefleet artifacts add|prune`: the content-addressed store and the catalog that names it.

`add` copies an artifact into `<store>/sha256/<digest>`, makes a patch from each base version
(`reconciler.deltas` tries zstd and bsdiff4 and keeps the smaller), offers a patch only when it
beats the whole file compressed, and writes the entry into `artifacts.yaml` with ruamel.yaml in
round-trip mode, so that the catalog's comments, quoting and order survive the edit. `prune`
removes the store files that no kept catalog version needs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import difflib
import hashlib
import io
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark, YAMLError
from ruamel.yaml.scalarstring import (
    DoubleQuotedScalarString,
    FoldedScalarString,
    LiteralScalarString,
)
from ruamel.yaml.tokens import CommentToken

from reconciler.atomic import sha256_file, write_atomic
from reconciler.errors import UsageError, ValidationFailed
from reconciler.fleet_repo import CATALOG_FILE, FLEET_FILE, GROUPS_DIR, NODES_DIR, load_fleet_repo
from reconciler.problems import Problem, errors
from reconciler.schema_check import load_schema
from reconciler.validate import open_directory, validate_directory

STORE_DIR = "sha256"  # <store>/sha256/<digest>, as `url: sha256/<digest>` says
DIGEST = re.compile(r"[0-9a-f]{64}")


class CatalogUnreadable(ValidationFailed):
    """`prune` could not read what the fleet needs, so it removes nothing."""

    exit_code = 2


# ------------------------------------------------------------------------------------------
# Names, versions and their order
# ------------------------------------------------------------------------------------------


@cache
def _pattern(name: str) -> tuple[re.Pattern[str], str]:
    """A pattern of schemas/defs.json and its `x-expected` text: one source of truth."""
    spec = load_schema("defs.json")["$defs"][name]
    return re.compile(spec["pattern"]), str(spec["x-expected"])


def _check(flag: str, value: str, pattern: str) -> None:
    regex, expected = _pattern(pattern)
    if not regex.fullmatch(value):
        raise UsageError(f"{flag}: got {value!r}, expected {expected}")


def check_ref(flag: str, ref: str) -> tuple[str, str]:
    """`name@version` split in two, or a usage error naming the flag."""
    regex, expected = _pattern("artifactRef")
    if not regex.fullmatch(ref):
        raise UsageError(f"{flag}: got {ref!r}, expected {expected}")
    name, _, version = ref.partition("@")
    return name, version


_SEMVER = re.compile(r"(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+([0-9A-Za-z.-]+))?")


def version_key(version: str) -> tuple[Any, ...]:
    """Semantic-version precedence (semver.org, rule 11); build metadata only breaks ties.

    A pre-release sorts before its release; numeric identifiers compare as numbers and before
    alphanumeric ones; a longer list of identifiers wins when the shared ones are equal.
    """
    m = _SEMVER.fullmatch(version)
    if m is None:  # the schema refuses such versions; sort them first rather than fail
        return ((-1, -1, -1), 0, (), version)
    pre = m.group(4)
    idents = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in (pre or "").split("."))
    core = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
    return (core, 0 if pre else 1, idents if pre else (), m.group(5) or "")


def versions_by_name(refs: Iterable[str]) -> dict[str, list[str]]:
    """name -> its versions, newest first."""
    found: dict[str, list[str]] = {}
    for ref in refs:
        name, _, version = ref.partition("@")
        found.setdefault(name, []).append(version)
    return {n: sorted(v, key=version_key, reverse=True) for n, v in sorted(found.items())}


# ------------------------------------------------------------------------------------------
# The store
# ------------------------------------------------------------------------------------------


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Store:
    root: Path

    @property
    def folder(self) -> Path:
        return self.root / STORE_DIR

    def path(self, digest: str) -> Path:
        return self.folder / digest

    def read(self, digest: str) -> bytes | None:
        """The bytes stored under `digest`, or None when absent or not what the name says."""
        try:
            data = self.path(digest).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        except OSError as exc:
            raise UsageError(f"{self.path(digest)}: cannot read ({exc.strerror})") from None
        return data if sha256_hex(data) == digest else None

    def put(self, data: bytes) -> str:
        """Store `data` under its digest: atomic, read-only; identical content is left alone."""
        digest = sha256_hex(data)
        path = self.path(digest)
        if path.is_file() and not path.is_symlink():
            if sha256_file(path) == digest:
                return digest
            _warn(f"{path}: its content differs from its name (a damaged store); replaced it")
        try:
            write_atomic(path, data, 0o444)
        except OSError as exc:
            raise UsageError(f"{path}: cannot write ({exc.strerror})") from None
        return digest


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# ------------------------------------------------------------------------------------------
# The catalog, round-tripped with its comments
# ------------------------------------------------------------------------------------------


def _guess_indent(text: str) -> tuple[int, int, int]:
    """(mapping, sequence, offset) as ruamel.yaml's `indent()` takes them, read off the file,
    so that an edit does not re-indent the parts it does not touch."""
    lines = [
        line
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#") and line.strip() != "---"
    ]
    depths = [len(line) - len(line.lstrip(" ")) for line in lines]
    mapping = min((d for d in depths if d > 0), default=2)
    for i, line in enumerate(lines):
        stripped = line.lstrip(" ")
        if (stripped.startswith("- ") or stripped == "-") and i > 0:
            parent = lines[i - 1]
            if parent.rstrip().endswith(":"):
                offset = depths[i] - depths[i - 1]
                if offset >= 0:
                    return mapping, offset + 2, offset
    return mapping, mapping + 2, mapping


def _yaml_for(text: str) -> YAML:
    yml = YAML(typ="rt")
    yml.preserve_quotes = True
    yml.width = 4096  # never re-wrap a long line
    mapping, sequence, offset = _guess_indent(text)
    yml.indent(mapping=mapping, sequence=sequence, offset=offset)
    return yml


def _dump(yml: YAML, doc: Any) -> str:
    out = io.StringIO()
    yml.dump(doc, out)
    return out.getvalue()


# Comments between two entries belong, in ruamel.yaml's model, to the deepest last value of the
# entry before them. When an entry is inserted after it, or grows a new last field, that comment
# block is moved along so that it still stands before the entry it describes.


def _last_slot(node: Any) -> tuple[Any, Any] | None:
    slot: tuple[Any, Any] | None = None
    while isinstance(node, CommentedMap | CommentedSeq) and len(node) and not node.fa.flow_style():
        key: Any = next(reversed(node)) if isinstance(node, CommentedMap) else len(node) - 1
        slot = (node, key)
        node = node[key]
    return slot


def _post_index(container: Any) -> int:
    return 2 if isinstance(container, CommentedMap) else 0


def _block_scalar(value: Any) -> bool:
    return isinstance(value, LiteralScalarString | FoldedScalarString)


def _detach_trailing(node: Any) -> str:
    """Remove the whole-line comments after `node` (not a comment on its last line): the text.

    After a plain value the comment token starts with the rest of the value's line (a comment
    on it, or just its end); after a block scalar it is whole lines, the first one without its
    indentation. The text returned is whole lines with their indentation.
    """
    slot = _last_slot(node)
    if slot is None:
        return ""
    container, key = slot
    items = container.ca.items.get(key)
    index = _post_index(container)
    if not items or len(items) <= index or items[index] is None:
        return ""
    token = items[index]
    value: str = token.value
    if _block_scalar(container[key]):
        items[index] = None
        return " " * token.start_mark.column + value if value.startswith("#") else value
    cut = value.find("\n")
    if cut < 0:
        return ""
    keep, rest = value[: cut + 1], value[cut + 1 :]
    if keep.strip():
        token.value = keep
    else:
        items[index] = None
    return rest


def _attach_trailing(node: Any, text: str) -> None:
    """Put whole-line comment text (from `_detach_trailing`) after `node`'s last value."""
    slot = _last_slot(node)
    if not text or slot is None:
        return
    container, key = slot
    index = _post_index(container)
    items = container.ca.items.setdefault(key, [None, None, None, None][: index + 2])
    token = items[index]
    if token is not None:
        token.value = token.value + text
    elif _block_scalar(container[key]):
        indent = len(text) - len(text.lstrip(" "))
        items[index] = CommentToken(text.lstrip(" "), CommentMark(indent))
    else:
        items[index] = CommentToken("\n" + text, CommentMark(0))


@dataclass
class Catalog:
    path: Path
    text: str
    yml: YAML
    doc: Any

    @classmethod
    def load(cls, path: Path) -> Catalog:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"{path}: cannot read ({exc.strerror})") from None
        yml = _yaml_for(text)
        try:
            doc = yml.load(text)
        except YAMLError as exc:  # the project's loader read it; this would be a ruamel quirk
            raise UsageError(f"{path}: ruamel.yaml cannot round-trip it: {exc}") from None
        return cls(path, text, yml, doc)

    @property
    def artifacts(self) -> CommentedMap:
        artifacts: CommentedMap = self.doc["spec"]["artifacts"]
        return artifacts

    def render(self) -> str:
        return _dump(self.yml, self.doc)


def _insert_entry(catalog: Catalog, ref: str, entry: CommentedMap, after: str | None) -> str:
    """The catalog text with `entry` inserted after entry `after` (None: at the end)."""
    artifacts = catalog.artifacts
    if artifacts.fa.flow_style():
        artifacts.fa.set_block_style()
    keys = list(artifacts)
    previous = after if after is not None else (keys[-1] if keys else None)
    position = keys.index(previous) + 1 if previous is not None else 0
    # The comment after the entry before, or after `artifacts: {}` in an empty catalog.
    moved = _detach_trailing(artifacts[previous] if previous is not None else catalog.doc["spec"])
    artifacts.insert(position, ref, entry)
    _attach_trailing(entry, moved)
    return catalog.render()


def _pure_insertion(old: str, new: str) -> bool:
    """Every line of `old` is still in `new`, in order and untouched."""
    matcher = difflib.SequenceMatcher(
        a=old.splitlines(keepends=True), b=new.splitlines(keepends=True), autojunk=False
    )
    return all(tag in ("equal", "insert") for tag, *_ in matcher.get_opcodes())


def _catalog_problems(repo: Path) -> list[Problem]:
    report = validate_directory(repo)
    return [
        replace(p, file=os.path.normpath(repo / p.file))
        for p in errors(report.problems)
        if p.file == CATALOG_FILE
    ]


# ------------------------------------------------------------------------------------------
# artifacts add
# ------------------------------------------------------------------------------------------


@dataclass
class Base:
    ref: str
    sha256: str
    explicit: bool


@dataclass
class AddResult:
    deltas: list[dict[str, Any]] = field(default_factory=list)  # catalog form
    not_offered: list[dict[str, Any]] = field(default_factory=list)


def _delta_entry(fmt: str, base: str, digest: str, size: int) -> CommentedMap:
    entry = CommentedMap()
    entry["from"] = DoubleQuotedScalarString(base)
    entry["format"] = fmt
    entry["sha256"] = DoubleQuotedScalarString(digest)
    entry["size"] = size
    entry["url"] = f"{STORE_DIR}/{digest}"
    return entry


def _bases(
    catalog: Catalog, name: str, version: str, digest: str, explicit: Sequence[str] | None
) -> list[Base]:
    artifacts = catalog.artifacts
    target = f"{name}@{version}"
    if explicit:
        bases: list[Base] = []
        for ref in explicit:
            base_name, _ = check_ref("--delta-from", ref)
            if ref == target:
                raise UsageError(
                    f"--delta-from: got {ref}, the artifact being added, expected an earlier"
                    " version to patch from"
                )
            if ref not in artifacts:
                known = versions_by_name(artifacts).get(base_name, [])
                hint = ", ".join(known) if known else "none"
                raise UsageError(
                    f"--delta-from: got {ref}, expected an entry of {catalog.path} (known"
                    f" versions of {base_name}: {hint})"
                )
            if all(b.ref != ref for b in bases):
                bases.append(Base(ref, str(artifacts[ref]["sha256"]), explicit=True))
        return bases
    key = version_key(version)
    earlier = [v for v in versions_by_name(artifacts).get(name, []) if version_key(v) < key]
    return [
        Base(f"{name}@{v}", str(artifacts[f"{name}@{v}"]["sha256"]), explicit=False)
        for v in reversed(earlier)  # oldest first, as the catalog lists them
    ]


def _make_deltas(
    store: Store,
    new: bytes,
    digest: str,
    bases: list[Base],
    existing: list[Any],
    compressed: int,
) -> AddResult:
    """The entry's deltas: the existing ones whose patch the store holds, and new ones.

    A listed delta whose patch is missing from the store is made again when its base is one of
    `bases`; other listed deltas are kept as they are.
    """
    from reconciler.deltas import make_patch  # zstandard and bsdiff4: only when patching

    result = AddResult()
    deltas: dict[str, Any] = {str(d["from"]): d for d in existing if isinstance(d, dict)}
    order = [str(d["from"]) for d in existing if isinstance(d, dict)]
    done: set[str] = set()
    for base in bases:
        if base.sha256 in done:
            continue
        done.add(base.sha256)
        if base.sha256 == digest:
            result.not_offered.append(
                {"from": base.ref, "reason": "same bytes as the artifact: nothing to patch"}
            )
            continue
        listed = deltas.get(base.sha256)
        if listed is not None and store.read(str(listed.get("sha256"))) is not None:
            continue
        old = store.read(base.sha256)
        if old is None:
            message = (
                f"{base.ref}: its bytes (sha256 {base.sha256}) are not in the store {store.folder}/"
            )
            if base.explicit:
                raise UsageError(
                    f"--delta-from {message}, expected them there (add that version first, or"
                    " leave it out of --delta-from)"
                )
            _warn(f"{message}; no delta from it")
            result.not_offered.append({"from": base.ref, "reason": "base not in the store"})
            continue
        patch = make_patch(old, new)
        size = len(patch.data)
        # A node uses a patch only when it is smaller than the artifact it would download
        # instead (agent.py), so a patch must beat both the file and its compressed size.
        if size >= min(compressed, len(new)):
            whole = (
                f"the whole file compressed ({compressed} bytes)"
                if compressed <= len(new)
                else f"the whole file ({len(new)} bytes; compressed it is {compressed})"
            )
            reason = f"the {patch.format} patch ({size} bytes) is not smaller than {whole}"
            print(f"note: no delta from {base.ref}: {reason}", file=sys.stderr)
            result.not_offered.append(
                {"from": base.ref, "format": patch.format, "size": size, "reason": reason}
            )
            deltas.pop(base.sha256, None)
            continue
        patch_digest = store.put(patch.data)
        deltas[base.sha256] = _delta_entry(patch.format, base.sha256, patch_digest, size)
        if base.sha256 not in order:
            order.append(base.sha256)
    result.deltas = [deltas[f] for f in order if f in deltas]
    return result


def _read_input(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except IsADirectoryError:
        raise UsageError(f"{path}: is a folder, expected the artifact file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror}), expected the artifact") from None


def _conflicts(entry: Any, digest: str, file: str | None, unpack: str | None) -> list[str]:
    found = []
    if str(entry.get("sha256")) != digest:
        found.append(f"sha256: got {digest}, the catalog has {entry.get('sha256')}")
    if file is not None and entry.get("file") != file:
        found.append(f"--file: got {file!r}, the catalog has {entry.get('file')!r}")
    if unpack is not None and entry.get("unpack", "none") != unpack:
        found.append(f"--unpack: got {unpack!r}, the catalog has {entry.get('unpack', 'none')!r}")
    return found


def _set_deltas(entry: CommentedMap, deltas: list[Any]) -> None:
    """Make the entry's `deltas` list these, keeping the comment that follows the entry."""
    current = entry.get("deltas")
    if list(current or []) == deltas:
        return
    moved = _detach_trailing(entry)
    if not deltas:
        del entry["deltas"]
    elif isinstance(current, CommentedSeq):
        current.clear()
        current.extend(deltas)
    else:
        entry["deltas"] = CommentedSeq(deltas)
    _attach_trailing(entry, moved)


def _new_entry(file: str, data: bytes, digest: str, unpack: str, deltas: list[Any]) -> CommentedMap:
    entry = CommentedMap()
    entry["file"] = file
    entry["sha256"] = DoubleQuotedScalarString(digest)
    entry["size"] = len(data)
    entry["url"] = f"{STORE_DIR}/{digest}"
    entry["unpack"] = unpack
    if deltas:  # copies: a first try at placing the entry may have hung a comment on them
        entry["deltas"] = CommentedSeq(copy.deepcopy(d) for d in deltas)
    return entry


def cmd_add(args: argparse.Namespace) -> int:
    _check("--name", args.name, "dnsLabel")
    _check("--version", args.version, "semver")
    ref = f"{args.name}@{args.version}"
    check_ref("--name/--version", ref)
    if args.file is not None:
        _check("--file", args.file, "relativePath")
    file_name = args.file if args.file is not None else Path(args.path).name
    if args.file is None:
        _check(
            f"{args.path} (its name goes into the bank; or give --file)", file_name, "relativePath"
        )
    repo = Path(args.repo)
    open_directory(repo)
    catalog_path = repo / CATALOG_FILE
    if not catalog_path.is_file():
        raise UsageError(
            f"{catalog_path}: missing, expected the fleet's catalog (is --repo the fleet"
            " repository?)"
        )
    data = _read_input(args.path)
    digest = sha256_hex(data)

    before = _catalog_problems(repo)
    if before:
        raise ValidationFailed(
            before,
            f"{catalog_path}: {len(before)} problem{'s' * (len(before) != 1)} already; fix them"
            " first (`edgefleet validate`), nothing changed",
        )
    catalog = Catalog.load(catalog_path)
    artifacts = catalog.artifacts
    existing = artifacts.get(ref)
    if existing is not None:
        conflicts = _conflicts(existing, digest, args.file, args.unpack)
        if conflicts and not args.force:
            raise UsageError(
                f"{catalog_path}: {ref} is already in the catalog with other content"
                f" ({'; '.join(conflicts)}); expected a new version for new content, or --force"
                " to replace the entry"
            )
        if conflicts:
            _warn(f"{ref}: replacing the catalog entry (--force): {'; '.join(conflicts)}")

    store = Store(Path(args.store))
    bases = _bases(catalog, args.name, args.version, digest, args.delta_from)
    from reconciler.deltas import compressed_full_size

    compressed = compressed_full_size(data)
    same_bytes = existing is not None and str(existing.get("sha256")) == digest
    old_deltas = list(existing.get("deltas") or []) if same_bytes else []
    result = _make_deltas(store, data, digest, bases, old_deltas, compressed)
    store.put(data)

    unpack = args.unpack
    if existing is None:
        same_name = [k for k in artifacts if str(k).partition("@")[0] == args.name]
        after = same_name[-1] if same_name else None
        fresh = _new_entry(file_name, data, digest, unpack or "none", result.deltas)
        new_text = _insert_entry(catalog, ref, fresh, after)
        if after is not None and not _pure_insertion(catalog.text, new_text):
            catalog = Catalog.load(catalog_path)  # then at the end, where nothing is in the way
            artifacts = catalog.artifacts
            fresh = _new_entry(file_name, data, digest, unpack or "none", result.deltas)
            new_text = _insert_entry(catalog, ref, fresh, None)
        action = "added"
    else:
        entry = existing
        if not same_bytes:
            entry["sha256"] = DoubleQuotedScalarString(digest)
            entry["size"] = len(data)
            entry["url"] = f"{STORE_DIR}/{digest}"
        if args.file is not None:
            entry["file"] = args.file
        if unpack is not None:
            entry["unpack"] = unpack
        _set_deltas(entry, result.deltas)
        new_text = catalog.render()
        action = "updated" if new_text != catalog.text else "unchanged"

    if new_text != catalog.text:
        mode = catalog_path.stat().st_mode & 0o777
        write_atomic(catalog_path, new_text.encode("utf-8"), mode)
        after_problems = _catalog_problems(repo)
        if after_problems:
            write_atomic(catalog_path, catalog.text.encode("utf-8"), mode)
            raise ValidationFailed(
                after_problems,
                f"{catalog_path}: the entry {ref} would make the catalog invalid; kept the old"
                " file",
            )

    by_digest: dict[str, str] = {}
    for other in artifacts:
        by_digest.setdefault(str(artifacts[other]["sha256"]), str(other))
    print(
        json.dumps(
            {
                "artifact": ref,
                "catalog": action,
                "sha256": digest,
                "size": len(data),
                "compressedSize": compressed,
                "deltas": [
                    {
                        "from": by_digest.get(str(d["from"]), str(d["from"])),
                        "format": str(d["format"]),
                        "sha256": str(d["sha256"]),
                        "size": int(d["size"]),
                        "ratio": round(int(d["size"]) / len(data), 4) if data else 0.0,
                    }
                    for d in result.deltas
                ],
                "notOffered": result.not_offered,
            },
            indent=2,
        )
    )
    return 0


# ------------------------------------------------------------------------------------------
# artifacts prune
# ------------------------------------------------------------------------------------------


def _referenced(repo: Any) -> set[str]:
    """Every name@version that fleet.yaml, a group or a node sets as a component's artifact."""
    refs: set[str] = set()
    docs = [repo.fleet, *repo.groups, *repo.nodes]
    for doc in docs:
        if doc is None:
            continue
        for component in doc.components.values():
            if isinstance(component, dict) and isinstance(component.get("artifact"), str):
                refs.add(component["artifact"])
    return refs


def _needs_reading(path: str) -> bool:
    return path in (CATALOG_FILE, FLEET_FILE) or path.startswith(
        (f"{GROUPS_DIR}/", f"{NODES_DIR}/")
    )


def cmd_prune(args: argparse.Namespace) -> int:
    if args.keep < 1:
        raise UsageError(
            f"--keep: got {args.keep}, expected at least 1 (the newest versions of each artifact"
            " to keep)"
        )
    store = Store(Path(args.store))
    if not store.folder.is_dir():
        raise UsageError(f"{store.folder}: not a folder, expected the store's sha256/ folder")
    repo_path = Path(args.repo)
    loaded, problems = load_fleet_repo(open_directory(repo_path))
    unread = [
        replace(p, file=os.path.normpath(repo_path / p.file))
        for p in errors(problems)
        if _needs_reading(p.file)
    ]
    if unread or loaded.catalog is None:
        raise CatalogUnreadable(
            unread,
            f"{repo_path}: cannot read the catalog and what uses it, so nothing was removed;"
            " fix the problems above first (`edgefleet validate`)",
        )
    artifacts = loaded.artifacts
    referenced = _referenced(loaded)
    kept_refs: set[str] = set()
    in_use: set[str] = set()  # kept only because the fleet uses them
    for name, versions in versions_by_name(artifacts).items():
        newest = {f"{name}@{v}" for v in versions[: args.keep]}
        kept_refs |= newest
        in_use |= {f"{name}@{v}" for v in versions if f"{name}@{v}" in referenced} - newest
    kept_refs |= in_use

    # digest -> what needs it (when kept) or what it was (when removed)
    why: dict[str, str] = {}
    for ref, entry in artifacts.items():
        why.setdefault(entry["sha256"], ref)
    kept_artifacts = {artifacts[ref]["sha256"] for ref in kept_refs}
    kept = set(kept_artifacts)
    for ref in sorted(kept_refs):
        why[artifacts[ref]["sha256"]] = ref
    for ref, entry in artifacts.items():
        for delta in entry.get("deltas", []):
            label = f"patch {why.get(delta['from'], delta['from'][:12])} -> {ref}"
            if ref in kept_refs and delta["from"] in kept_artifacts:
                kept.add(delta["sha256"])
                why[delta["sha256"]] = label
            else:
                why.setdefault(delta["sha256"], label)

    kept_out: list[dict[str, Any]] = []
    removed: list[dict[str, Any]] = []
    present: set[str] = set()
    for path in sorted(store.folder.iterdir()):
        name = path.name
        if path.is_dir() and not path.is_symlink():
            _warn(f"{path}: a folder in the store, left alone")
            continue
        size = path.lstat().st_size
        if name in kept:
            present.add(name)
            kept_out.append({"digest": name, "bytes": size, "for": why[name]})
            continue
        removed.append({"digest": name, "bytes": size, "was": why.get(name, "not in the catalog")})
        if not args.dry_run:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    if removed and not args.dry_run:
        dir_fd = os.open(store.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    kept_out.sort(key=lambda k: (k["for"], k["digest"]))
    removed.sort(key=lambda r: (r["was"], r["digest"]))
    missing = sorted(kept - present)
    for digest in missing:
        _warn(f"{store.path(digest)}: missing, needed by {why[digest]}")
    print(
        json.dumps(
            {
                "dryRun": bool(args.dry_run),
                "keptVersions": sorted(kept_refs),
                "inUse": sorted(in_use),
                "kept": kept_out,
                "removed": removed,
                "bytesFreed": sum(r["bytes"] for r in removed),
                "missing": [{"digest": d, "for": why[d]} for d in missing],
            },
            indent=2,
        )
    )
    return 0


# ------------------------------------------------------------------------------------------


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    artifacts = sub.add_parser(
        "artifacts", parents=[common], help="the artifact store and the catalog (artifacts.yaml)"
    )
    artifacts_sub = artifacts.add_subparsers(
        dest="artifacts_command", required=True, metavar="ACTION"
    )
    add = artifacts_sub.add_parser(
        "add",
        parents=[common],
        help="store a file by content, make deltas from earlier versions, update the catalog",
        description="Exit 0 done, 1 the catalog would be invalid (left unchanged), 2 bad usage"
        " or an N@V that already names other bytes.",
    )
    add.add_argument("path", metavar="FILE", help="the artifact")
    add.add_argument("--name", required=True, metavar="N", help="artifact name, e.g. pos-app")
    add.add_argument("--version", required=True, metavar="V", help="semantic version, e.g. 2.3.0")
    add.add_argument("--store", required=True, metavar="DIR", help="the store (DIR/sha256/...)")
    add.add_argument("--repo", default=".", metavar="DIR", help="the fleet repository (default: .)")
    add.add_argument(
        "--delta-from",
        action="append",
        metavar="N@V",
        help="make a delta from this catalog entry; repeat for several"
        " (default: from every earlier version of N)",
    )
    add.add_argument(
        "--unpack",
        choices=["none", "tar"],
        help="none, or tar to unpack into the bank (default: none)",
    )
    add.add_argument("--file", metavar="NAME", help="the name inside the bank (default: FILE's)")
    add.add_argument(
        "--force", action="store_true", help="replace an entry N@V that names other bytes"
    )
    add.set_defaults(func=cmd_add)

    prune = artifacts_sub.add_parser(
        "prune",
        parents=[common],
        help="remove store files that no kept catalog version needs",
        description="Keeps, per artifact name, the N newest versions, every version that the"
        " fleet, a group or a node uses, and the patches between kept versions.",
    )
    prune.add_argument("--store", required=True, metavar="DIR", help="the store (DIR/sha256/...)")
    prune.add_argument("--keep", required=True, type=int, metavar="N", help="versions per name")
    prune.add_argument(
        "--repo", default=".", metavar="DIR", help="the fleet repository (default: .)"
    )
    prune.add_argument("--dry-run", action="store_true", help="list, remove nothing")
    prune.set_defaults(func=cmd_prune)
