"""The A/B banks of one component: two folders and `current`, a link moved between them atomically.

`<root>/<name>/a/`, `<root>/<name>/b/` and `<root>/<name>/current` (a relative symlink to `a` or
`b`). Workloads read through `current`, so at every instant, power cuts included, it is either
absent or points at a complete bank: staging writes only into the other bank and fsyncs all of it
before `switch` renames a new link over `current`.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import secrets
import shutil
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from node_agent.errors import UnsafeArchive

from reconciler.errors import EdgeFleetError

Bank = Literal["a", "b"]
BANKS: tuple[Bank, Bank] = ("a", "b")
CURRENT = "current"

_CHUNK = 1024 * 1024
# Linux's NAME_MAX: a longer segment cannot be created, so say so before writing anything.
_MAX_SEGMENT_BYTES = 255
# Leftovers of an interrupted clear/switch/discard carry these markers; a dot keeps them out of
# the names that components and banks can have.
_TRASH = ".trash-"
_TMP_LINK_PREFIX = f".{CURRENT}."


@dataclass(frozen=True)
class BankLimits:
    # A real application tree has thousands of entries; far more only exhausts inodes.
    max_members: int = 100_000
    max_unpacked_bytes: int = 8 * 1024**3
    max_member_bytes: int = 4 * 1024**3
    # Folders nested deeper than any real tree only serve to hit recursion and PATH_MAX limits
    # half-way through an unpacking.
    max_depth: int = 128


class BankError(EdgeFleetError):
    """The banks on disk are not as the agent left them, or a step would break them."""


class _PathProblem(Exception):
    def __init__(self, got: str, expected: str) -> None:
        super().__init__(f"got {got}, expected {expected}")
        self.got = got
        self.expected = expected


def _show(text: str) -> str:
    """The text for a message, with control characters and undecodable bytes escaped."""
    out = []
    for ch in text:
        if _is_control(ch) or 0xD800 <= ord(ch) <= 0xDFFF:
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


def _is_control(ch: str) -> bool:
    code = ord(ch)
    return code < 0x20 or 0x7F <= code < 0xA0


def _check_text(text: str, what: str) -> None:
    if "\0" in text:
        raise _PathProblem(f"a NUL character in the {what}", "a name without control characters")
    if any(_is_control(ch) for ch in text):
        raise _PathProblem(f"a control character in the {what}", "printable characters only")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _PathProblem(f"a {what} that is not valid UTF-8", "a UTF-8 name") from None


def _normalize(name: str, max_depth: int) -> str:
    """A relative path inside the bank, as `seg/seg`; "" for the bank itself (`.` or `./`)."""
    if name == "":
        raise _PathProblem("an empty name", "a relative path inside the bank")
    _check_text(name, "name")
    if name.startswith("/"):
        raise _PathProblem("an absolute path", "a relative path inside the bank")
    segments = name.split("/")
    if ".." in segments:
        depth = 0
        for segment in segments:
            depth += -1 if segment == ".." else 0 if segment in ("", ".") else 1
            if depth < 0:
                raise _PathProblem("a path that leaves the bank", "a relative path inside it")
        # Even a '..' that stays inside is refused: names are compared as written.
        raise _PathProblem("a '..' segment", "a relative path without '..'")
    parts = [segment for segment in segments if segment not in ("", ".")]
    for segment in parts:
        size = len(segment.encode("utf-8"))
        if size > _MAX_SEGMENT_BYTES:
            raise _PathProblem(f"a path segment of {size} bytes", f"at most {_MAX_SEGMENT_BYTES}")
    if len(parts) > max_depth:
        raise _PathProblem(f"a path {len(parts)} levels deep", f"at most {max_depth} levels")
    return "/".join(parts)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except FileNotFoundError:
        return False


def _lexists(path: Path) -> bool:
    try:
        path.lstat()
    except FileNotFoundError:
        return False
    return True


def _make_dirs(path: Path) -> None:
    """Create `path` and its missing parents, each made durable in its parent."""
    missing: list[Path] = []
    probe = path
    while not _lexists(probe):
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o755)
        except FileExistsError:
            continue
        _fsync_dir(folder.parent)


def _entries(root: Path) -> Iterator[tuple[str, Path, os.stat_result]]:
    """Every entry below `root` as (relative path, path, lstat), parents first; links not followed.

    Iterative, not recursive: a deep tree must not hit Python's recursion limit."""
    stack: list[tuple[Path, str]] = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        with os.scandir(folder) as listing:
            children = sorted(listing, key=lambda entry: entry.name)
        for entry in children:
            info = entry.stat(follow_symlinks=False)
            rel = prefix + entry.name
            yield rel, Path(entry.path), info
            if stat.S_ISDIR(info.st_mode):
                stack.append((Path(entry.path), rel + "/"))


def _remove_tree(path: Path) -> None:
    """Remove a file, link or folder tree without following links, read-only folders included."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        path.unlink()
        return
    folders: list[Path] = []
    stack = [path]
    while stack:
        folder = stack.pop()
        # A folder staged without owner write or search permission must still be emptied.
        folder.chmod(0o700)
        folders.append(folder)
        with os.scandir(folder) as listing:
            for entry in listing:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                else:
                    Path(entry.path).unlink()
    for folder in reversed(folders):
        folder.rmdir()


def _empty_folder(folder: Path) -> None:
    for child in list(folder.iterdir()):
        _remove_tree(child)
    _fsync_dir(folder)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as stream:
        while block := stream.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _file_mode(mode: int) -> int:
    """What `tarfile`'s data filter makes of a file's mode; kept equal so both agree."""
    mode &= 0o755
    if not mode & 0o100:
        mode &= ~0o111
    return mode | 0o600


def _dir_mode(mode: int) -> int:
    # The owner keeps full access so that the agent can always clear the bank again.
    return (mode & 0o755) | 0o700


_IMPLICIT_DIR_MODE = 0o755


def _kind_of(member: tarfile.TarInfo) -> str | None:
    if member.isreg():
        return "file"
    if member.isdir():
        return "folder"
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hard link"
    return None


def _type_name(member: tarfile.TarInfo) -> str:
    if member.ischr():
        return "a character device"
    if member.isblk():
        return "a block device"
    if member.isfifo():
        return "a FIFO"
    return f"a member of tar type {member.type!r}"


@dataclass
class _Plan:
    """What a checked archive will create, every member already proven safe."""

    members: list[tarfile.TarInfo] = field(default_factory=list)
    # name -> sanitized mode, for files and folders, applied in archive order
    modes: list[tuple[str, int]] = field(default_factory=list)
    explicit_dirs: set[str] = field(default_factory=set)
    implicit_dirs: set[str] = field(default_factory=set)


class _Checker:
    """Every rule of a safe archive, checked member by member before anything is written."""

    def __init__(self, label: str, limits: BankLimits) -> None:
        self.label = label
        self.limits = limits
        self.plan = _Plan()
        # normalized name -> kind ("file" for files and hard links, "folder", "symlink")
        self.kinds: dict[str, str] = {}
        # (link name, its target as written, folders the target passes through)
        self.link_paths: list[tuple[str, str, list[str]]] = []
        self.count = 0
        self.total = 0

    def refuse(self, name: str, got: str, expected: str) -> UnsafeArchive:
        return UnsafeArchive(
            f"{self.label}: member '{_show(name)}': got {got}, expected {expected}"
        )

    def add(self, member: tarfile.TarInfo) -> None:
        raw = member.name
        self.count += 1
        limits = self.limits
        if self.count > limits.max_members:
            raise self.refuse(
                raw, f"more than {limits.max_members} members", f"at most {limits.max_members}"
            )
        try:
            name = _normalize(raw, limits.max_depth)
        except _PathProblem as problem:
            raise self.refuse(raw, problem.got, problem.expected) from None
        kind = _kind_of(member)
        if kind is None:
            raise self.refuse(
                raw, _type_name(member), "a regular file, folder, symlink or hard link"
            )
        if name == "":
            if kind == "folder":
                return  # `./`: the bank itself, whose mode stays the agent's
            raise self.refuse(raw, f"a {kind} named like the bank itself", "a path inside it")
        if member.size > limits.max_member_bytes:
            raise self.refuse(
                raw, f"{member.size} bytes", f"at most {limits.max_member_bytes} bytes a member"
            )
        if kind == "file":
            self.total += member.size
            if self.total > limits.max_unpacked_bytes:
                raise self.refuse(
                    raw,
                    f"{self.total} bytes unpacked in total so far",
                    f"at most {limits.max_unpacked_bytes} bytes for the archive",
                )
        if name in self.kinds:
            raise self.refuse(raw, "a second member of that name", "each name once")
        if kind != "folder" and name in self.plan.implicit_dirs:
            raise self.refuse(
                raw, f"a {kind} where earlier members have their folder", "a folder member"
            )
        parts = name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            parent_kind = self.kinds.get(parent)
            if parent_kind == "symlink":
                raise self.refuse(
                    raw,
                    f"a path through the symlink member '{_show(parent)}'",
                    "a path through real folders",
                )
            if parent_kind == "file":
                raise self.refuse(
                    raw, f"a path under the file member '{_show(parent)}'", "a folder as parent"
                )
            self.plan.implicit_dirs.add(parent)
        if kind == "hard link":
            member = member.replace(
                linkname=self.hard_link_target(raw, member.linkname), deep=False
            )
            kind = "file"
        elif kind == "symlink":
            self.check_symlink(raw, name, member.linkname)
        self.kinds[name] = kind
        if kind == "file":
            self.plan.modes.append((name, _file_mode(member.mode)))
        elif kind == "folder":
            self.plan.modes.append((name, _dir_mode(member.mode)))
            self.plan.explicit_dirs.add(name)
        self.plan.members.append(member.replace(name=name, deep=False))

    def hard_link_target(self, raw: str, linkname: str) -> str:
        expected = "a link to an earlier regular file of this archive"
        try:
            target = _normalize(linkname, self.limits.max_depth)
        except _PathProblem:
            target = None
        if target is None or self.kinds.get(target) != "file":
            raise self.refuse(raw, f"a hard link to '{_show(linkname)}'", expected)
        return target

    def check_symlink(self, raw: str, name: str, target: str) -> None:
        expected = "a relative target inside the bank"
        if target == "":
            raise self.refuse(raw, "a symlink with an empty target", expected)
        try:
            _check_text(target, "symlink target")
        except _PathProblem as problem:
            raise self.refuse(raw, problem.got, problem.expected) from None
        if target.startswith("/"):
            raise self.refuse(raw, f"a symlink to the absolute path '{_show(target)}'", expected)
        # Resolved lexically from the link's folder, one segment at a time, so that a target
        # that dips out of the bank and comes back ("../b/x") is refused as well.
        where = name.split("/")[:-1]
        steps = [s for s in target.split("/") if s not in ("", ".")]
        passes: list[str] = []
        for index, segment in enumerate(steps):
            if segment == "..":
                if not where:
                    raise self.refuse(
                        raw, f"a symlink to '{_show(target)}', which leaves the bank", expected
                    )
                where.pop()
            else:
                where.append(segment)
                if index < len(steps) - 1:
                    passes.append("/".join(where))
        self.link_paths.append((raw, target, passes))

    def finish(self) -> _Plan:
        # A lexical check is only sound when the folders it walks are real folders: a target
        # through another link ("l -> ..", then "m -> l/..") could still leave the bank.
        for raw, target, passes in self.link_paths:
            for folder in passes:
                if self.kinds.get(folder) == "symlink":
                    raise self.refuse(
                        raw,
                        f"a symlink to '{_show(target)}' through the symlink member "
                        f"'{_show(folder)}'",
                        "a target through real folders",
                    )
        return self.plan


def _unreadable(error: BaseException) -> bool:
    """Whether an error reading an archive means its bytes are bad (not the disk or a bug)."""
    if isinstance(error, tarfile.TarError | EOFError | zlib.error | lzma.LZMAError):
        return True
    if isinstance(error, gzip.BadGzipFile):
        return True
    # bz2 and gzip report bad data as an OSError without errno; real I/O errors carry one.
    return isinstance(error, OSError) and error.errno is None


class ComponentBanks:
    """The banks of one component under `root` (= `<stateDir>/components`)."""

    def __init__(self, root: Path, name: str, limits: BankLimits = BankLimits()) -> None:
        if (
            name in ("", ".", "..")
            or "/" in name
            or name.startswith(".")
            or any(_is_control(ch) for ch in name)
        ):
            raise BankError(
                f"component '{_show(name)}': got an unsafe component name, "
                "expected one path segment not starting with '.'"
            )
        self.root = root
        self.name = name
        self.limits = limits
        self.dir: Path = root / name

    # -- where things are --------------------------------------------------------------------

    def _link(self) -> Path:
        return self.dir / CURRENT

    def _checked(self, bank: str) -> Bank:
        for known in BANKS:
            if bank == known:
                return known
        raise BankError(f"component '{self.name}': got bank '{_show(bank)}', expected 'a' or 'b'")

    def path(self, bank: Bank) -> Path:
        return self.dir / self._checked(bank)

    def current(self) -> Bank | None:
        link = self._link()
        try:
            info = link.lstat()
        except FileNotFoundError:
            return None
        if not stat.S_ISLNK(info.st_mode):
            raise BankError(
                f"{link}: got something that is not a symlink, expected a link to a or b"
            )
        target = str(link.readlink())
        for bank in BANKS:
            if target == bank:
                return bank
        raise BankError(f"{link}: got a link to '{_show(target)}', expected a link to a or b")

    def inactive(self) -> Bank:
        return "b" if self.current() == "a" else "a"

    def _refuse_current(self, bank: Bank, doing: str) -> Path:
        bank = self._checked(bank)
        if bank == self.current():
            other = "b" if bank == "a" else "a"
            raise BankError(
                f"component '{self.name}': refusing to {doing} bank {bank}: got the bank "
                f"'current' points to, expected the inactive bank {other}"
            )
        return self.path(bank)

    def _ready_bank(self, bank: Bank, doing: str) -> Path:
        """The inactive bank's folder, created if missing, refused if it is anything else."""
        folder = self._refuse_current(bank, doing)
        _make_dirs(folder)
        if not _is_real_dir(folder):
            raise BankError(
                f"{folder}: got something that is not a folder, expected a bank (clear it first)"
            )
        return folder

    def _sweep(self, folder: Path, prefix: str, marker: str) -> None:
        """Remove what an interrupted step left behind (its names start with `prefix`)."""
        if not _is_real_dir(folder):
            return
        for child in list(folder.iterdir()):
            if child.name.startswith(prefix) and marker in child.name:
                _remove_tree(child)

    # -- changing banks ------------------------------------------------------------------------

    def clear(self, bank: Bank) -> None:
        folder = self._refuse_current(bank, "clear")
        _make_dirs(self.dir)
        self._sweep(self.dir, ".", _TRASH)
        if _lexists(folder):
            # Renamed away first: the bank is empty at once, and a crash while deleting leaves
            # only a trash folder that the next clear removes.
            trash = self.dir / f".{bank}{_TRASH}{secrets.token_hex(6)}"
            folder.rename(trash)
            folder.mkdir(mode=0o755)
            _fsync_dir(self.dir)
            _remove_tree(trash)
        else:
            folder.mkdir(mode=0o755)
        folder.chmod(0o755)
        _fsync_dir(self.dir)

    def stage_file(self, bank: Bank, source: Path, file_name: str, mode: int = 0o644) -> None:
        bank_dir = self._ready_bank(bank, "stage into")
        try:
            rel = _normalize(file_name, self.limits.max_depth)
        except _PathProblem as problem:
            raise BankError(f"file name '{_show(file_name)}': {problem}") from None
        if rel == "":
            raise BankError(
                f"file name '{_show(file_name)}': got no file inside the bank, "
                "expected a relative path"
            )
        parts = rel.split("/")
        folder = bank_dir
        for segment in parts[:-1]:
            folder = folder / segment
            if not _lexists(folder):
                folder.mkdir(mode=0o755)
                _fsync_dir(folder.parent)
            elif not _is_real_dir(folder):
                raise BankError(f"{folder}: got something that is not a folder, expected a folder")
        target = folder / parts[-1]
        tmp = folder / f".{parts[-1]}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                shutil.copyfileobj(src, out, _CHUNK)
                out.flush()
                os.fchmod(out.fileno(), mode & 0o755)
                os.fsync(out.fileno())
            tmp.replace(target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(folder)

    def stage_tar(self, bank: Bank, source: Path) -> None:
        bank_dir = self._ready_bank(bank, "stage into")
        if any(bank_dir.iterdir()):
            raise BankError(f"{bank_dir}: got a bank that is not empty, expected it cleared first")
        label = source.name
        try:
            with tarfile.open(source, mode="r:*") as archive:
                checker = _Checker(label, self.limits)
                for member in archive:
                    checker.add(member)
                plan = checker.finish()
                try:
                    # The data filter repeats the essential checks: a second line of defence.
                    archive.extractall(bank_dir, members=plan.members, filter="data")
                    self._apply_modes(bank_dir, plan)
                except BaseException:
                    _empty_folder(bank_dir)
                    raise
        except tarfile.FilterError as error:
            name = error.tarinfo.name if error.tarinfo is not None else "?"
            raise UnsafeArchive(
                f"{label}: member '{_show(name)}': got {error}, "
                "expected what tarfile's data filter allows"
            ) from None
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as error:
            if not _unreadable(error):
                raise
            # tarfile lists every method it tried on separate lines; a message is one line.
            reason = " ".join(str(error).split()) or type(error).__name__
            raise UnsafeArchive(
                f"{label}: not a readable tar archive: got {reason}, "
                "expected a tar file (plain, gzip, bzip2 or xz)"
            ) from None
        for _rel, path, info in _entries(bank_dir):
            if stat.S_ISDIR(info.st_mode):
                _fsync_dir(path)
            elif stat.S_ISREG(info.st_mode):
                _fsync_file(path)
        _fsync_dir(bank_dir)
        _fsync_dir(self.dir)

    @staticmethod
    def _apply_modes(bank_dir: Path, plan: _Plan) -> None:
        # tarfile leaves folders at 0700 (the data filter drops their modes) and makes implicit
        # folders under the umask; fixed modes make the tree digest the same on every node.
        for folder in sorted(plan.implicit_dirs - plan.explicit_dirs):
            (bank_dir / folder).chmod(_IMPLICIT_DIR_MODE)
        for name, mode in plan.modes:
            (bank_dir / name).chmod(mode)

    def digest(self, bank: Bank, unpack: str, file_name: str) -> str:
        """SHA-256 of the staged file (`none`), or of the bank's tree (`tar`).

        The tree digest hashes the sorted lines `<f|d|l> <relpath> <mode, 4 octal digits>
        <sha256 of the file or link target, '-' for a folder>` of every entry below the bank."""
        bank_dir = self.path(bank)
        if unpack == "none":
            try:
                rel = _normalize(file_name, self.limits.max_depth)
            except _PathProblem as problem:
                raise BankError(f"file name '{_show(file_name)}': {problem}") from None
            target = bank_dir / rel
            try:
                regular = bool(rel) and stat.S_ISREG(target.lstat().st_mode)
            except FileNotFoundError:
                regular = False
            if not regular:
                raise BankError(f"{target}: got no regular file, expected the staged file")
            return _sha256_file(target)
        if unpack != "tar":
            raise BankError(f"unpack '{_show(unpack)}': got an unknown kind, expected none or tar")
        if not _is_real_dir(bank_dir):
            raise BankError(f"{bank_dir}: got no folder, expected a staged bank")
        lines: list[bytes] = []
        for rel, path, info in _entries(bank_dir):
            mode = stat.S_IMODE(info.st_mode)
            if stat.S_ISREG(info.st_mode):
                line = f"f {rel} {mode:04o} {_sha256_file(path)}\n"
            elif stat.S_ISDIR(info.st_mode):
                line = f"d {rel} {mode:04o} -\n"
            elif stat.S_ISLNK(info.st_mode):
                # A symlink's own mode means nothing on Linux; a constant keeps platforms equal.
                target_bytes = os.fsencode(str(path.readlink()))
                line = f"l {rel} 0777 {hashlib.sha256(target_bytes).hexdigest()}\n"
            else:
                raise BankError(f"{path}: got a special file, expected files, folders and links")
            lines.append(line.encode("utf-8", "surrogateescape"))
        tree = hashlib.sha256()
        for encoded in sorted(lines):
            tree.update(encoded)
        return tree.hexdigest()

    def switch(self, bank: Bank) -> None:
        bank = self._checked(bank)
        if not _is_real_dir(self.path(bank)):
            raise BankError(
                f"{self.path(bank)}: got no folder, expected a staged bank to switch to"
            )
        self._sweep(self.dir, _TMP_LINK_PREFIX, ".tmp")
        tmp = self.dir / f"{_TMP_LINK_PREFIX}{secrets.token_hex(6)}.tmp"
        tmp.symlink_to(bank)
        try:
            # Staging fsynced the bank already, so the new link never points at unwritten data.
            tmp.replace(self._link())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.dir)

    def remove_current(self) -> None:
        self._link().unlink(missing_ok=True)
        if _is_real_dir(self.dir):
            _fsync_dir(self.dir)

    def discard(self) -> None:
        prefix = f".{self.name}{_TRASH}"
        if _lexists(self.dir):
            # Renamed away first so that the component vanishes at once; a crash while deleting
            # leaves a dot-named trash folder that the next discard of this name removes.
            trash = self.root / f"{prefix}{secrets.token_hex(6)}"
            self.dir.rename(trash)
            _fsync_dir(self.root)
            _remove_tree(trash)
        self._sweep(self.root, prefix, _TRASH)
        if _is_real_dir(self.root):
            _fsync_dir(self.root)
