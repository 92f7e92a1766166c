"""Binary patches between two versions of an artifact: made by `artifacts add`, applied by nodes.

Three formats, because no single one wins every pair (ANCHORS.md, "Deltas, measured"):

* ``zstd-patch``: the new file compressed by zstd with the base as a raw-content dictionary,
  i.e. what ``zstd --patch-from`` does. It wins on archives and on models where a part was
  retrained: the example model 1.3.0 -> 1.4.0-rc1 gives 600 bytes against 931 for bsdiff4
  (10 245 for the compressed full file); a 1 MB tarball with one file edited 201 against 229
  (full: 355 721). It streams on apply: memory is one copy of the base (the dictionary) and
  one window of output, whatever the size of the new file (102 MB of RSS for a 24 MB pair).
* ``bsdiff4``: beats zstd-patch where bytes stay in place and a few change, as with one
  constant changed in a binary (2 MB of random bytes: 168 bytes against 202; ANCHORS.md cites
  0.9% against 2%), though hdiffpatch, below, beats both there.
  bsdiff holds base, patch and new file in memory together (and far more while diffing: 15.6
  GB for a 1 GB kernel tarball), so it is made only up to `IN_MEMORY_MAX_BYTES`.
* ``hdiffpatch``: HDiffPatch's compressed diff (``HDIFF13``), through the `hdiffpatch` library:
  a suffix-array diff like bsdiff's, with covers and a run-length control stream instead of
  three bzip2 streams, so its framing costs tens of bytes where bsdiff4's costs ~150 and
  zstd-patch's a sequence per 128 KiB block. It closed the two pairs where the others trailed
  the best command-line anchor (bench/RESULTS.md): one constant changed in 4 MiB, 49 bytes
  against 180 (bsdiff4) and xdelta3's 87; a tarball with one file edited, 747 against 911
  (zstd-patch) and ``zstd --patch-from``'s 761. The diff is made once uncompressed and
  recompressed with zstd; the smaller is kept (the header names the codec). Like bsdiff4 it
  applies in memory, so it has the same size cap.

Between unrelated files neither helps: a patch is then about the size of the file, no smaller
than `compressed_full_size`, and a caller offers a patch only when it beats that.

The zstd settings, measured on those pairs and on 8, 24 and 64 MB synthetic pairs (inserts,
edits, a moved megabyte): level 19; a window covering base and new; and a chain log as large as
the window (up to `ZSTD_MAX_CHAIN_LOG`), because the binary-tree match finder only looks
``2**(chain_log - 1)`` bytes back, and the base is as far back as the new file is long: with
level 19's own chain log (24) a 24 MB pair gave a 51 KB patch, with chain log 26 a 2.4 KB one,
and a 64 MB pair 20 MB against 6 KB. With that chain log, ``--ultra`` level 22 gave the same
patches to a byte or two, for 1.4 times the memory. Long-distance matching (``enable_ldm``) is
left off: through python-zstandard's dictionary API it never indexes the dictionary (the base),
so it changed no patch by a byte. A checksum in every frame makes a corrupt patch, or one applied
to another base, fail instead of decoding into other bytes (but for a 2**-32 chance).

Applying is pure local I/O: `apply_patch` rebuilds the new file beside `out` and renames it into
place, never writes more than the size the caller expects, and raises `DeltaError` (leaving no
`out`) for a corrupt patch or an unknown format. It does not check the result's digest: the
caller verifies the SHA-256 from the catalog, as for a full download: a bsdiff4 patch applied to
another base decodes into other bytes without complaint.
"""

from __future__ import annotations

import bz2
import contextlib
import math
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import bsdiff4
import hdiffpatch
import zstandard

from reconciler.atomic import atomic_output
from reconciler.errors import EdgeFleetError

# The order breaks ties: the streaming format first.
FORMATS = ("zstd-patch", "bsdiff4", "hdiffpatch")

# zstd level of patches and of the compressed full file they are compared with.
ZSTD_LEVEL = 19
# The chain table of the match finder takes 4 * 2**chain_log bytes while making a patch: 1 GiB
# here, enough to see the whole base of pairs up to 64 MiB; beyond, patches grow but stay valid.
ZSTD_MAX_CHAIN_LOG = 28
# bsdiff4 and hdiffpatch need base + new + patch in memory to apply, and several times that to
# diff (bsdiff's suffix array: 17 bytes per base byte; HDiffPatch's about 9).
IN_MEMORY_MAX_BYTES = 256 * 1024**2
IN_MEMORY_FORMATS = ("bsdiff4", "hdiffpatch")

_CHUNK = 1024 * 1024
_BSDIFF_MAGIC = b"BSDIFF40"
_BSDIFF_HEADER = 32
_HDIFF_MAGIC = b"HDIFF13&"
# The codec's name after the magic, NUL-terminated ("zstd", "lzma2", or empty for none).
_HDIFF_CODEC_MAX = 32
# Patch bytes decoded per step: at most 32 MiB of output each, whatever the patch says.
_ZSTD_READ = 1024
# The largest zstd frame header (magic, descriptor, window, dictionary id, content size).
_ZSTD_FRAME_HEADER_MAX = 18


class DeltaError(EdgeFleetError):
    """A patch that cannot rebuild the new file: corrupt, too large, or of an unknown format."""


@dataclass(frozen=True)
class Patch:
    format: str
    data: bytes


def _window_log(*sizes: int) -> int:
    """A zstd window log whose window covers base and new together (within zstd's bounds)."""
    largest = max(*sizes, 1)
    return max(
        zstandard.WINDOWLOG_MIN, min(zstandard.WINDOWLOG_MAX, math.ceil(math.log2(largest)) + 1)
    )


def _zstd_patch(base: bytes, new: bytes) -> bytes:
    window_log = _window_log(len(base), len(new))
    level = zstandard.ZstdCompressionParameters.from_level(
        ZSTD_LEVEL, source_size=len(new), dict_size=len(base)
    )
    params = zstandard.ZstdCompressionParameters.from_level(
        ZSTD_LEVEL,
        source_size=len(new),
        dict_size=len(base),
        window_log=window_log,
        chain_log=max(level.chain_log, min(window_log, ZSTD_MAX_CHAIN_LOG)),
        write_content_size=1,
        # Catches a corrupt patch, and most patches applied to a base they were not made from.
        write_checksum=1,
    )
    dictionary = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdCompressor(dict_data=dictionary, compression_params=params).compress(new)


def _hdiffpatch(base: bytes, new: bytes) -> bytes:
    """HDiffPatch's diff, plain or zstd-compressed, whichever is smaller: where a few bytes
    change the codec's own frame outweighs what it saves."""
    plain = hdiffpatch.diff(base, new, validate=False)
    compressed = hdiffpatch.recompress(plain, hdiffpatch.ZStdConfig(level=ZSTD_LEVEL))
    return compressed if len(compressed) < len(plain) else plain


def make_patches(base: bytes, new: bytes) -> dict[str, bytes]:
    """A patch from `base` to `new` in every format (the in-memory ones, bsdiff4 and
    hdiffpatch, only up to `IN_MEMORY_MAX_BYTES`)."""
    patches = {"zstd-patch": _zstd_patch(base, new)}
    if max(len(base), len(new)) <= IN_MEMORY_MAX_BYTES:
        patches["bsdiff4"] = bsdiff4.diff(base, new)
        patches["hdiffpatch"] = _hdiffpatch(base, new)
    return patches


def make_patch(base: bytes, new: bytes) -> Patch:
    """The smallest patch from `base` to `new`; on a tie the first of `FORMATS` (zstd-patch)."""
    patches = make_patches(base, new)
    best = min((fmt for fmt in FORMATS if fmt in patches), key=lambda fmt: len(patches[fmt]))
    return Patch(best, patches[best])


def compressed_full_size(new: bytes) -> int:
    """Size of the whole new file compressed by zstd at the patches' level, without dictionary:
    what a patch has to beat to be worth offering."""
    compressor = zstandard.ZstdCompressor(
        level=ZSTD_LEVEL, write_content_size=True, write_checksum=True
    )
    return len(compressor.compress(new))


def apply_patch(fmt: str, base: Path, patch: Path, out: Path, max_size: int) -> None:
    """Rebuild the new file at `out` from the file `base` and the patch file `patch`.

    Never writes more than `max_size` bytes. Raises `DeltaError` for an unknown format, a corrupt
    or unreadable patch, an unreadable base, or output beyond `max_size`; on any failure `out`
    is removed. The result is replaced atomically (temporary name, fsync, rename).
    """
    try:
        if fmt not in FORMATS:
            expected = ", ".join(FORMATS)
            raise DeltaError(f"{patch}: got patch format {fmt!r}, expected one of {expected}")
        with atomic_output(out) as sink:
            if fmt == "zstd-patch":
                _apply_zstd(base, patch, sink, max_size)
            elif fmt == "bsdiff4":
                _apply_bsdiff(base, patch, sink, max_size)
            else:
                _apply_hdiffpatch(base, patch, sink, max_size)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            out.unlink()
        raise


def _too_large(fmt: str, patch: Path, max_size: int) -> DeltaError:
    return DeltaError(
        f"{fmt} patch {patch}: got more than {max_size} bytes of output,"
        f" expected at most {max_size}"
    )


@contextlib.contextmanager
def _mapped(path: Path) -> Iterator[memoryview]:
    """The file's bytes, mapped rather than read: the dictionary's copy is the only one."""
    with _opened(path, "base") as file:
        if os.fstat(file.fileno()).st_size == 0:
            yield memoryview(b"")
            return
        try:
            mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise DeltaError(
                f"{path}: got {exc.strerror or exc}, expected a readable base"
            ) from None
    try:
        with memoryview(mapping) as view:
            yield view
    finally:
        mapping.close()


@contextlib.contextmanager
def _opened(path: Path, what: str) -> Iterator[IO[bytes]]:
    try:
        file = open(path, "rb")  # noqa: SIM115 (closed below; only opening errors are ours)
    except OSError as exc:
        raise DeltaError(f"{path}: got {exc.strerror or exc}, expected a readable {what}") from None
    with file:
        yield file


def _read(path: Path, what: str) -> bytes:
    with _opened(path, what) as file:
        return file.read()


def _apply_zstd(base: Path, patch: Path, sink: IO[bytes], max_size: int) -> None:
    """Stream-decompress the patch with the base as dictionary: memory is base + one window."""
    with _mapped(base) as base_bytes, _opened(patch, "patch") as source:
        # The C backend copies a buffer into the dictionary; the cffi backend takes only bytes.
        dict_data = bytes(base_bytes) if zstandard.backend == "cffi" else base_bytes
        dictionary = zstandard.ZstdCompressionDict(
            dict_data, dict_type=zstandard.DICT_TYPE_RAWCONTENT
        )
        try:
            header = zstandard.get_frame_parameters(source.read(_ZSTD_FRAME_HEADER_MAX))
        except zstandard.ZstdError as exc:
            raise DeltaError(f"zstd-patch {patch}: got a corrupt patch ({exc})") from None
        if header.content_size != zstandard.CONTENTSIZE_UNKNOWN and header.content_size > max_size:
            raise _too_large("zstd-patch", patch, max_size)
        source.seek(0)
        # The window the patch was made with, for the largest new file the caller accepts.
        max_window = 1 << _window_log(len(base_bytes), max_size)
        decompressor = zstandard.ZstdDecompressor(dict_data=dictionary, max_window_size=max_window)
        frame = decompressor.decompressobj()
        written = 0
        try:
            # Small reads bound the output of each step (a zstd block is at most 128 KiB and
            # costs a few bytes), and `eof` tells a complete frame from a truncated one.
            while block := source.read(_ZSTD_READ):
                chunk = frame.decompress(block)
                written += len(chunk)
                if written > max_size:
                    raise _too_large("zstd-patch", patch, max_size)
                sink.write(chunk)
                if frame.eof:
                    break
        except zstandard.ZstdError as exc:
            raise DeltaError(
                f"zstd-patch {patch}: got a corrupt patch, or one made from another base ({exc})"
            ) from None
        if not frame.eof:
            raise DeltaError(f"zstd-patch {patch}: got a truncated patch, expected a whole frame")
        if frame.unused_data or source.read(1):
            raise DeltaError(f"zstd-patch {patch}: got data after the frame, expected none")


def _apply_bsdiff(base: Path, patch: Path, sink: IO[bytes], max_size: int) -> None:
    """Apply in memory (bsdiff holds base, patch and new together), after checking the patch's
    header and the sizes its compressed blocks expand to, so that a patch claiming or expanding
    to more than `max_size` is refused before anything large is allocated."""
    base_bytes = _read(base, "base")
    patch_bytes = _read(patch, "patch")
    _check_bsdiff(patch, patch_bytes, max_size)
    try:
        new = bsdiff4.patch(base_bytes, patch_bytes)
    except (ValueError, OSError, EOFError, OverflowError) as exc:
        raise DeltaError(f"bsdiff4 {patch}: got a corrupt patch ({exc})") from None
    if len(new) > max_size:
        raise _too_large("bsdiff4", patch, max_size)
    sink.write(new)


def _offtin(raw: bytes) -> int:
    """bsdiff's 8-byte integer: little-endian magnitude, sign in the top bit."""
    value = int.from_bytes(raw, "little")
    return -(value & ~(1 << 63)) if value >> 63 else value


def _check_bsdiff(patch: Path, data: bytes, max_size: int) -> None:
    corrupt = f"bsdiff4 {patch}: got a corrupt patch"
    if len(data) < _BSDIFF_HEADER or data[:8] != _BSDIFF_MAGIC:
        raise DeltaError(f"{corrupt}, expected a {_BSDIFF_MAGIC.decode()} header")
    len_control, len_diff, len_new = (_offtin(data[i : i + 8]) for i in (8, 16, 24))
    room = len(data) - _BSDIFF_HEADER
    if min(len_control, len_diff, len_new) < 0 or len_control + len_diff > room:
        raise DeltaError(f"{corrupt} (block sizes {len_control} and {len_diff} in {room} bytes)")
    if len_new > max_size:
        raise _too_large("bsdiff4", patch, max_size)
    control_end = _BSDIFF_HEADER + len_control
    blocks = {
        "control": data[_BSDIFF_HEADER:control_end],
        "diff": data[control_end : control_end + len_diff],
        "extra": data[control_end + len_diff :],
    }
    # Diff and extra bytes are each at most the new file; control entries (three 8-byte
    # integers) at most one per new byte, and one more.
    limits = {"control": 24 * (len_new + 1), "diff": len_new, "extra": len_new}
    for name, block in blocks.items():
        try:
            _check_bz2(block, limits[name])
        except ValueError as exc:
            raise DeltaError(f"{corrupt}: its {name} block {exc}") from None


def _check_bz2(block: bytes, limit: int) -> None:
    """Raise ValueError unless `block` is one bz2 stream expanding to at most `limit` bytes.

    Decoded in bounded steps and discarded, so that a decompression bomb costs time, never
    memory; a second stream is refused, as bsdiff4 would expand it unbounded.
    """
    decompressor = bz2.BZ2Decompressor()
    size = 0
    pending = block
    try:
        while not decompressor.eof:
            chunk = decompressor.decompress(pending, max_length=_CHUNK)
            pending = b""
            size += len(chunk)
            if size > limit:
                raise ValueError(f"got more than {limit} bytes, expected at most {limit}")
            if not chunk and decompressor.needs_input:
                raise ValueError("got a truncated bz2 stream, expected a complete one")
    except (OSError, EOFError) as exc:
        raise ValueError(f"got invalid bz2 data ({exc}), expected a bz2 stream") from None
    if decompressor.unused_data:
        raise ValueError("got data after its bz2 stream, expected one stream")


def _apply_hdiffpatch(base: Path, patch: Path, sink: IO[bytes], max_size: int) -> None:
    """Apply in memory, after reading from the header the sizes the patch was made for: the
    library allocates the new file's declared size, so it must be known to be at most
    `max_size` first, and a base of another size is refused before any work."""
    base_bytes = _read(base, "base")
    patch_bytes = _read(patch, "patch")
    new_size, old_size = _hdiff_sizes(patch, patch_bytes)
    if new_size > max_size:
        raise _too_large("hdiffpatch", patch, max_size)
    if old_size != len(base_bytes):
        raise DeltaError(
            f"hdiffpatch {patch}: got a base of {len(base_bytes)} bytes ({base}),"
            f" expected {old_size}, the size of the base the patch was made from"
        )
    try:
        new = hdiffpatch.apply(base_bytes, patch_bytes)
    except (hdiffpatch.HDiffPatchError, ValueError) as exc:
        raise DeltaError(f"hdiffpatch {patch}: got a corrupt patch ({exc})") from None
    if len(new) != new_size:
        raise DeltaError(f"hdiffpatch {patch}: got {len(new)} bytes of output, expected {new_size}")
    sink.write(new)


def _hdiff_sizes(patch: Path, data: bytes) -> tuple[int, int]:
    """The new and old sizes from an ``HDIFF13`` header: the magic, the codec's name up to a
    NUL, then HDiffPatch's packed integers (7 bits a byte, most significant first, the top bit
    set on every byte but the last)."""
    corrupt = f"hdiffpatch {patch}: got a corrupt patch"
    if not data.startswith(_HDIFF_MAGIC):
        raise DeltaError(f"{corrupt}, expected an {_HDIFF_MAGIC.decode()} header")
    end = data.find(b"\0", len(_HDIFF_MAGIC), len(_HDIFF_MAGIC) + _HDIFF_CODEC_MAX + 1)
    if end < 0:
        raise DeltaError(f"{corrupt}, expected a codec name of at most {_HDIFF_CODEC_MAX} bytes")
    position = end + 1
    sizes: list[int] = []
    while len(sizes) < 2:
        value = 0
        for count in range(1, 11):
            if position >= len(data):
                raise DeltaError(f"{corrupt}, expected the new and old sizes in its header")
            byte = data[position]
            position += 1
            value = (value << 7) | (byte & 0x7F)
            if not byte & 0x80:
                break
            if count == 10:
                raise DeltaError(f"{corrupt}, expected a size of at most 64 bits in its header")
        sizes.append(value)
    return sizes[0], sizes[1]
