"""A/B banks on real files: staging, atomic switching, archives that try to escape their bank."""

from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import io
import lzma
import os
import re
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from node_agent.banks import BankError, BankLimits, ComponentBanks
from node_agent.errors import UnsafeArchive

Entry = tuple[tarfile.TarInfo, bytes | None]
Snapshot = dict[str, tuple[object, ...]]

ACTIVE_FILE = b"the running release\n"


def reg(name: str, data: bytes = b"", mode: int = 0o644) -> Entry:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def folder(name: str, mode: int = 0o755) -> Entry:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    return info, None


def symlink(name: str, target: str) -> Entry:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info, None


def hardlink(name: str, target: str) -> Entry:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE
    info.linkname = target
    return info, None


def special(name: str, kind: bytes) -> Entry:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor, info.devminor = 1, 3
    return info, None


def tar_bytes(entries: list[Entry], compression: str = "") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buffer.getvalue()
    compress: dict[str, Callable[[bytes], bytes]] = {
        "": lambda b: b,
        "gz": gzip.compress,
        "bz2": bz2.compress,
        "xz": lzma.compress,
    }
    return compress[compression](raw)


def write_tar(path: Path, entries: list[Entry], compression: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tar_bytes(entries, compression))
    return path


def snapshot(root: Path, skip: Path) -> Snapshot:
    """Everything under root except `skip`: kind, mode, inode, mtime and content or link target."""
    seen: Snapshot = {}
    stack = [root]
    while stack:
        here = stack.pop()
        for child in here.iterdir():
            if child == skip:
                continue
            info = child.lstat()
            rel = str(child.relative_to(root))
            if stat.S_ISDIR(info.st_mode):
                seen[rel] = ("d", info.st_mode, info.st_ino)
                stack.append(child)
            elif stat.S_ISLNK(info.st_mode):
                seen[rel] = ("l", str(child.readlink()), info.st_ino)
            else:
                seen[rel] = ("f", info.st_mode, info.st_ino, info.st_mtime_ns, child.read_bytes())
    return seen


@pytest.fixture
def banks(tmp_path: Path) -> ComponentBanks:
    return ComponentBanks(tmp_path / "state" / "components", "pos-app")


@pytest.fixture
def running(tmp_path: Path, banks: ComponentBanks) -> ComponentBanks:
    """A component running bank a, with bank b cleared for the next release."""
    source = tmp_path / "cache" / "app.bin"
    source.parent.mkdir()
    source.write_bytes(ACTIVE_FILE)
    banks.clear("a")
    banks.stage_file("a", source, "app.bin")
    banks.switch("a")
    banks.clear("b")
    return banks


# -- files and switching ----------------------------------------------------------------------


def test_stage_file_switch_and_digest(tmp_path: Path, banks: ComponentBanks) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(b"\x08\x01onnx-model" * 1000)
    assert banks.current() is None and banks.inactive() == "a"
    banks.clear("a")
    banks.stage_file("a", source, "models/v1/model.onnx")
    banks.switch("a")
    link = banks.dir / "current"
    assert link.is_symlink() and str(link.readlink()) == "a"
    assert (link / "models" / "v1" / "model.onnx").read_bytes() == source.read_bytes()
    assert banks.current() == "a" and banks.inactive() == "b"
    expected = hashlib.sha256(source.read_bytes()).hexdigest()
    assert banks.digest("a", "none", "models/v1/model.onnx") == expected
    assert stat.S_IMODE((banks.path("a") / "models/v1/model.onnx").stat().st_mode) == 0o644
    assert sorted(p.name for p in banks.dir.iterdir()) == ["a", "current"]


def test_switch_back_and_forth_never_touches_the_other_bank(
    tmp_path: Path, running: ComponentBanks
) -> None:
    a_file = running.path("a") / "app.bin"
    before = a_file.stat()
    source = tmp_path / "new.bin"
    source.write_bytes(b"the next release\n")
    running.stage_file("b", source, "app.bin")
    after = a_file.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_size,
    )
    assert (running.dir / "current" / "app.bin").read_bytes() == ACTIVE_FILE
    running.switch("b")
    assert running.current() == "b" and str((running.dir / "current").readlink()) == "b"
    assert (running.dir / "current" / "app.bin").read_bytes() == b"the next release\n"
    running.switch("a")
    assert running.current() == "a"
    assert (running.dir / "current" / "app.bin").read_bytes() == ACTIVE_FILE
    assert a_file.stat().st_ino == before.st_ino
    assert sorted(p.name for p in running.dir.iterdir()) == ["a", "b", "current"]


def test_clear_and_staging_refuse_the_current_bank(tmp_path: Path, running: ComponentBanks) -> None:
    with pytest.raises(BankError, match="refusing to clear bank a: got the bank 'current' points"):
        running.clear("a")
    source = tmp_path / "x.bin"
    source.write_bytes(b"x")
    with pytest.raises(BankError, match="refusing to stage into bank a"):
        running.stage_file("a", source, "app.bin")
    archive = write_tar(tmp_path / "pos-app.tar", [reg("app.bin", b"x")])
    with pytest.raises(BankError, match="refusing to stage into bank a"):
        running.stage_tar("a", archive)
    assert (running.path("a") / "app.bin").read_bytes() == ACTIVE_FILE


def test_clear_empties_a_bank_even_with_read_only_folders(
    tmp_path: Path, running: ComponentBanks
) -> None:
    locked = running.path("b") / "deep" / "locked"
    locked.mkdir(parents=True)
    (locked / "f").write_bytes(b"x")
    locked.chmod(0o500)
    running.clear("b")
    assert list(running.path("b").iterdir()) == []
    assert sorted(p.name for p in running.dir.iterdir()) == ["a", "b", "current"]


def test_current_refuses_a_link_elsewhere(banks: ComponentBanks) -> None:
    banks.clear("a")
    (banks.dir / "current").symlink_to("../elsewhere")
    with pytest.raises(
        BankError, match=re.escape("got a link to '../elsewhere', expected a link to a or b")
    ):
        banks.current()
    (banks.dir / "current").unlink()
    (banks.dir / "current").write_text("a")
    with pytest.raises(BankError, match="got something that is not a symlink"):
        banks.current()


def test_switch_leaves_a_relative_symlink_and_no_temporary_names(banks: ComponentBanks) -> None:
    banks.clear("a")
    banks.clear("b")
    (banks.dir / ".current.deadbeef.tmp").symlink_to("b")  # left by a crash mid-switch
    banks.switch("b")
    banks.switch("a")
    link = banks.dir / "current"
    assert link.is_symlink() and str(link.readlink()) == "a"
    assert not link.readlink().is_absolute()
    assert sorted(p.name for p in banks.dir.iterdir()) == ["a", "b", "current"]


def test_switch_refuses_a_missing_bank(banks: ComponentBanks) -> None:
    banks.clear("a")
    with pytest.raises(BankError, match="expected a staged bank to switch to"):
        banks.switch("b")
    assert banks.current() is None


def test_remove_current_then_discard(tmp_path: Path, running: ComponentBanks) -> None:
    running.remove_current()
    assert not (running.dir / "current").exists() and running.current() is None
    assert (running.path("a") / "app.bin").read_bytes() == ACTIVE_FILE
    assert running.inactive() == "a"
    running.remove_current()  # already gone: nothing to do
    running.discard()
    assert not running.dir.exists()
    assert list(running.root.iterdir()) == []
    running.discard()


def test_unsafe_component_and_file_names(tmp_path: Path, banks: ComponentBanks) -> None:
    for name in ("", "..", "a/b", ".hidden"):
        with pytest.raises(BankError, match="unsafe component name"):
            ComponentBanks(tmp_path, name)
    source = tmp_path / "x.bin"
    source.write_bytes(b"x")
    banks.clear("a")
    with pytest.raises(BankError, match="got a path that leaves the bank"):
        banks.stage_file("a", source, "../x.bin")
    with pytest.raises(BankError, match="got an absolute path"):
        banks.stage_file("a", source, "/tmp/x.bin")
    assert list(banks.path("a").iterdir()) == []
    assert not (banks.dir / "x.bin").exists()


# -- archives that unpack -----------------------------------------------------------------------


GOOD_TREE: list[Entry] = [
    folder("./"),
    folder("app", 0o777),
    reg("app/run.sh", b"#!/bin/sh\necho hi\n", 0o4777),
    reg("app/data.txt", b"data\n", 0o666),
    reg("app/secret", b"s", 0o600),
    reg("app/sgid", b"g", 0o2664),
    symlink("app/latest", "data.txt"),
    symlink("top", "app/run.sh"),
    hardlink("app/data-link", "app/data.txt"),
    reg("lib/py/mod.py", b"x = 1\n", 0o644),
    folder("ro", 0o555),
    reg("./conf/a.yaml", b"a: 1\n"),
]


def test_tar_unpacks_with_links_and_sanitized_modes(
    tmp_path: Path, running: ComponentBanks
) -> None:
    archive = write_tar(tmp_path / "pos-app.tar", GOOD_TREE)
    running.stage_tar("b", archive)
    bank = running.path("b")

    def mode(rel: str) -> int:
        return stat.S_IMODE((bank / rel).lstat().st_mode)

    assert (bank / "app/run.sh").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert mode("app") == 0o755
    assert mode("app/run.sh") == 0o755
    assert mode("app/data.txt") == 0o644
    assert mode("app/secret") == 0o600
    assert mode("app/sgid") == 0o644
    assert mode("lib") == 0o755 and mode("lib/py") == 0o755
    assert mode("ro") == 0o755
    assert str((bank / "app/latest").readlink()) == "data.txt"
    assert (bank / "top").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (bank / "app/data-link").stat().st_ino == (bank / "app/data.txt").stat().st_ino
    assert (bank / "conf/a.yaml").read_bytes() == b"a: 1\n"
    assert sorted(p.name for p in bank.iterdir()) == ["app", "conf", "lib", "ro", "top"]
    running.switch("b")
    assert (running.dir / "current" / "app" / "latest").read_bytes() == b"data\n"


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz"])
def test_compressed_archives_are_detected(
    tmp_path: Path, banks: ComponentBanks, compression: str
) -> None:
    archive = write_tar(
        tmp_path / f"pos-app.tar.{compression}", [reg("a/b.txt", b"hello")], compression
    )
    banks.clear("a")
    banks.stage_tar("a", archive)
    assert (banks.path("a") / "a" / "b.txt").read_bytes() == b"hello"


def test_stage_tar_wants_a_cleared_bank(tmp_path: Path, running: ComponentBanks) -> None:
    (running.path("b") / "stale").write_bytes(b"x")
    archive = write_tar(tmp_path / "pos-app.tar", [reg("x", b"x")])
    with pytest.raises(BankError, match="not empty, expected it cleared first"):
        running.stage_tar("b", archive)


def test_tree_digest_is_stable_and_sees_one_byte(tmp_path: Path, banks: ComponentBanks) -> None:
    archive = write_tar(tmp_path / "pos-app.tar", GOOD_TREE)
    banks.clear("a")
    banks.stage_tar("a", archive)
    banks.switch("a")
    banks.clear("b")
    banks.stage_tar("b", archive)
    first = banks.digest("a", "tar", "pos-app.tar")
    assert first == banks.digest("b", "tar", "pos-app.tar")

    changed = [
        reg("app/data.txt", b"dbta\n", 0o666) if info.name == "app/data.txt" else (info, data)
        for info, data in GOOD_TREE
    ]
    banks.switch("b")
    banks.clear("a")
    banks.stage_tar("a", write_tar(tmp_path / "changed.tar", changed))
    assert banks.digest("a", "tar", "pos-app.tar") != first
    assert banks.digest("b", "tar", "pos-app.tar") == first


def test_tree_digest_format(tmp_path: Path, banks: ComponentBanks) -> None:
    entries = [folder("d", 0o750), reg("d/f", b"x", 0o640), symlink("l", "d/f")]
    banks.clear("a")
    banks.stage_tar("a", write_tar(tmp_path / "small.tar", entries))

    def sha(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    lines = sorted(
        [
            "d d 0750 -\n",
            f"f d/f 0640 {sha(b'x')}\n",
            f"l l 0777 {sha(b'd/f')}\n",
        ]
    )
    assert banks.digest("a", "tar", "small.tar") == sha("".join(lines).encode())


# -- archives that are refused --------------------------------------------------------------------

REFUSED: list[tuple[str, list[Entry], str]] = [
    (
        "parent",
        [reg("../evil", b"x")],
        "member '../evil': got a path that leaves the bank, expected a relative path inside it",
    ),
    (
        "absolute",
        [reg("/etc/passwd", b"root::0:0::/:/bin/sh\n")],
        "member '/etc/passwd': got an absolute path, expected a relative path inside the bank",
    ),
    (
        "dotdot-inside-name",
        [folder("a"), reg("a/../../x", b"x")],
        "member 'a/../../x': got a path that leaves the bank, expected a relative path inside it",
    ),
    (
        "dotdot-that-stays",
        [reg("a/../x", b"x")],
        "member 'a/../x': got a '..' segment, expected a relative path without '..'",
    ),
    (
        "control-character",
        [reg("a\nb", b"x")],
        "member 'a\\nb': got a control character in the name, expected printable characters only",
    ),
    (
        "symlink-absolute",
        [symlink("etc", "/etc")],
        "member 'etc': got a symlink to the absolute path '/etc', "
        "expected a relative target inside the bank",
    ),
    (
        "symlink-outside",
        [symlink("link", "../../outside")],
        "member 'link': got a symlink to '../../outside', which leaves the bank, "
        "expected a relative target inside the bank",
    ),
    (
        "symlink-dips-out",
        [folder("sub"), symlink("sub/link", "../../b/x")],
        "member 'sub/link': got a symlink to '../../b/x', which leaves the bank, "
        "expected a relative target inside the bank",
    ),
    (
        "symlink-chain",
        [folder("d"), symlink("d/up", ".."), symlink("out", "d/up/..")],
        "member 'out': got a symlink to 'd/up/..' through the symlink member 'd/up', "
        "expected a target through real folders",
    ),
    (
        "write-through-symlink",
        [folder("sub"), symlink("link", "sub"), reg("link/x", b"x")],
        "member 'link/x': got a path through the symlink member 'link', "
        "expected a path through real folders",
    ),
    (
        "symlink-over-earlier-folder",
        [reg("link/x", b"x"), symlink("link", "sub")],
        "member 'link': got a symlink where earlier members have their folder, "
        "expected a folder member",
    ),
    (
        "under-a-file",
        [reg("f", b"x"), reg("f/x", b"x")],
        "member 'f/x': got a path under the file member 'f', expected a folder as parent",
    ),
    (
        "hardlink-outside",
        [hardlink("h", "../outside")],
        "member 'h': got a hard link to '../outside', "
        "expected a link to an earlier regular file of this archive",
    ),
    (
        "hardlink-absolute",
        [hardlink("h", "/etc/passwd")],
        "member 'h': got a hard link to '/etc/passwd', "
        "expected a link to an earlier regular file of this archive",
    ),
    (
        "hardlink-later-member",
        [hardlink("h", "f"), reg("f", b"x")],
        "member 'h': got a hard link to 'f', "
        "expected a link to an earlier regular file of this archive",
    ),
    (
        "char-device",
        [special("dev/null", tarfile.CHRTYPE)],
        "member 'dev/null': got a character device, "
        "expected a regular file, folder, symlink or hard link",
    ),
    (
        "block-device",
        [special("sda", tarfile.BLKTYPE)],
        "member 'sda': got a block device, expected a regular file, folder, symlink or hard link",
    ),
    (
        "fifo",
        [special("pipe", tarfile.FIFOTYPE)],
        "member 'pipe': got a FIFO, expected a regular file, folder, symlink or hard link",
    ),
    (
        "too-many-members",
        [reg(f"f{i}", b"x") for i in range(5)],
        "member 'f4': got more than 4 members, expected at most 4",
    ),
    (
        "too-big-total",
        [reg("f1", b"x" * 6), reg("f2", b"x" * 6)],
        "member 'f2': got 12 bytes unpacked in total so far, "
        "expected at most 10 bytes for the archive",
    ),
    (
        "too-big-member",
        [reg("big", b"x" * 9)],
        "member 'big': got 9 bytes, expected at most 8 bytes a member",
    ),
    (
        "too-deep",
        [reg("a/b/c/d/e/f", b"x")],
        "member 'a/b/c/d/e/f': got a path 6 levels deep, expected at most 5 levels",
    ),
    (
        "duplicate",
        [reg("x", b"1"), reg("x", b"2")],
        "member 'x': got a second member of that name, expected each name once",
    ),
    (
        "duplicate-spelled-differently",
        [reg("conf/x", b"1"), reg("./conf//x", b"2")],
        "member './conf//x': got a second member of that name, expected each name once",
    ),
    (
        "empty-name",
        [reg("", b"x")],
        "member '': got an empty name, expected a relative path inside the bank",
    ),
]

SMALL = BankLimits(max_members=4, max_unpacked_bytes=10, max_member_bytes=8, max_depth=5)


@pytest.mark.parametrize(
    ("entries", "message"), [(e, m) for _, e, m in REFUSED], ids=[i for i, _, _ in REFUSED]
)
def test_unsafe_archive_is_refused_before_anything_is_written(
    tmp_path: Path, entries: list[Entry], message: str
) -> None:
    banks = ComponentBanks(tmp_path / "state" / "components", "pos-app", SMALL)
    source = tmp_path / "cache" / "app.bin"
    source.parent.mkdir()
    source.write_bytes(ACTIVE_FILE)
    banks.clear("a")
    banks.stage_file("a", source, "app.bin")
    banks.switch("a")
    banks.clear("b")
    archive = write_tar(tmp_path / "archives" / "pos-app.tar", entries)
    before = snapshot(tmp_path, skip=banks.path("b"))

    with pytest.raises(UnsafeArchive) as refused:
        banks.stage_tar("b", archive)

    assert str(refused.value) == f"pos-app.tar: {message}"
    assert refused.value.exit_code == 3
    assert snapshot(tmp_path, skip=banks.path("b")) == before
    assert list(banks.path("b").iterdir()) == []
    assert banks.current() == "a"
    assert (banks.dir / "current" / "app.bin").read_bytes() == ACTIVE_FILE


def corrupt(tmp_path: Path) -> bytes:
    return os.urandom(4096)


def truncated_plain(tmp_path: Path) -> bytes:
    whole = tar_bytes([reg("first", b"1" * 2048), reg("second", b"2" * 100_000)])
    return whole[: 512 * 4 + 512 + 20_000]


def truncated_gzip(tmp_path: Path) -> bytes:
    whole = tar_bytes([reg(f"f{i}", os.urandom(4096)) for i in range(8)], "gz")
    return whole[: len(whole) // 2]


def bad_gzip(tmp_path: Path) -> bytes:
    whole = bytearray(tar_bytes([reg("f", b"x" * 10_000)], "gz"))
    whole[len(whole) // 2] ^= 0xFF
    return bytes(whole)


@pytest.mark.parametrize("make", [corrupt, truncated_plain, truncated_gzip, bad_gzip])
def test_unreadable_archive_is_refused_and_leaves_an_empty_bank(
    tmp_path: Path, running: ComponentBanks, make: Callable[[Path], bytes]
) -> None:
    archive = tmp_path / "archives" / "pos-app.tar"
    archive.parent.mkdir()
    archive.write_bytes(make(tmp_path))
    before = snapshot(tmp_path, skip=running.path("b"))
    with pytest.raises(
        UnsafeArchive, match=r"^pos-app\.tar: not a readable tar archive: got "
    ) as e:
        running.stage_tar("b", archive)
    assert "\n" not in str(e.value)
    assert list(running.path("b").iterdir()) == []
    assert snapshot(tmp_path, skip=running.path("b")) == before
    assert running.current() == "a"


def test_owners_in_the_archive_are_not_applied(tmp_path: Path, banks: ComponentBanks) -> None:
    info, data = reg("owned", b"x")
    info.uid, info.gid, info.uname, info.gname = 1234, 1234, "nobody", "nogroup"
    banks.clear("a")
    banks.stage_tar("a", write_tar(tmp_path / "pos-app.tar", [(info, data)]))
    owner = (banks.path("a") / "owned").stat()
    assert (owner.st_uid, owner.st_gid) == (os.getuid(), os.getgid())


FAIL_MID_UNPACK = """
import resource, signal, sys
from pathlib import Path
from node_agent.banks import ComponentBanks
banks = ComponentBanks(Path(sys.argv[1]), "pos-app")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, resource.RLIM_INFINITY))
try:
    banks.stage_tar("b", Path(sys.argv[2]))
except OSError as error:
    print(type(error).__name__, error.errno)
"""


def test_a_disk_error_mid_unpack_is_not_an_unsafe_archive_and_empties_the_bank(
    tmp_path: Path, running: ComponentBanks
) -> None:
    # A file-size limit makes the disk fail for real half-way through the unpacking.
    entries = [reg("small", b"s" * 1000), reg("big", b"b" * 200_000), reg("after", b"a")]
    archive = write_tar(tmp_path / "archives" / "pos-app.tar", entries)
    before = snapshot(tmp_path, skip=running.path("b"))
    out = subprocess.run(
        [sys.executable, "-c", FAIL_MID_UNPACK, str(running.root), str(archive)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["OSError", str(errno.EFBIG)]
    assert list(running.path("b").iterdir()) == []
    assert snapshot(tmp_path, skip=running.path("b")) == before
    assert running.current() == "a"
