"""Binary patches on real pairs: each format round-trips byte for byte, and the sizes say when
a patch is worth offering (reported in the assert messages)."""

from __future__ import annotations

import bz2
import hashlib
import io
import re
import tarfile
from pathlib import Path

import pytest

from reconciler import deltas
from reconciler.commands.demo import load_example_builder
from reconciler.deltas import (
    FORMATS,
    DeltaError,
    apply_patch,
    compressed_full_size,
    make_patch,
    make_patches,
)

Pair = tuple[bytes, bytes]


def _stream(seed: bytes, size: int) -> bytes:
    """Deterministic incompressible bytes: SHA-256 in counter mode."""
    blocks = (hashlib.sha256(seed + i.to_bytes(8, "big")).digest() for i in range(size // 32 + 1))
    return b"".join(blocks)[:size]


WORDS = b"edge fleet node bank release artifact health rollback signature journal wave".split()


def _text(seed: int, size: int) -> bytes:
    """Deterministic text lines of words and numbers (compresses like source or logs)."""
    lines = []
    total = i = 0
    while total < size:
        h = hashlib.sha256(f"{seed}:{i}".encode()).digest()
        words = b" ".join(WORDS[b % len(WORDS)] for b in h[:8])
        lines.append(b"%s %d\n" % (words, int.from_bytes(h[8:12], "big")))
        total += len(lines[-1])
        i += 1
    return b"".join(lines)[:size]


def _tarball(files: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model_pair() -> Pair:
    """anomaly-model 1.3.0 and 1.4.0-rc1, whose output layer was retrained."""
    pytest.importorskip("onnx")
    builder = load_example_builder()
    base: bytes = builder.build_model("1.3.0")
    new: bytes = builder.build_model("1.4.0-rc1")
    return base, new


@pytest.fixture(scope="module")
def tar_pair() -> Pair:
    """About 1 MB of text and binary files, then the same with a paragraph of one file edited."""
    files = [
        (f"bin/tool{k}", _stream(b"tool%d" % k, 40_000))
        if k % 3 == 0
        else (f"share/doc{k}.txt", _text(k, 90_000))
        for k in range(14)
    ]
    name, data = files[4]
    edited = [
        *files[:4],
        (name, data[:30_000] + b"a new paragraph\n" * 5 + data[30_100:]),
        *files[5:],
    ]
    return _tarball(files), _tarball(edited)


@pytest.fixture(scope="module")
def binary_pair() -> Pair:
    """2 MB of deterministic random bytes, then the same with one 8-byte constant changed."""
    base = _stream(b"binary", 2 * 1024 * 1024)
    middle = len(base) // 2
    return base, base[:middle] + (0x0123456789ABCDEF).to_bytes(8, "big") + base[middle + 8 :]


@pytest.fixture(scope="module")
def unrelated_pair() -> Pair:
    return _stream(b"one", 512 * 1024), _stream(b"two", 512 * 1024)


@pytest.fixture(scope="module")
def binary_patches(binary_pair: Pair) -> dict[str, bytes]:
    return make_patches(*binary_pair)


def _round_trip(tmp_path: Path, fmt: str, base: bytes, patch: bytes, new: bytes) -> None:
    base_file, patch_file, out = tmp_path / "base", tmp_path / f"patch.{fmt}", tmp_path / "out"
    base_file.write_bytes(base)
    patch_file.write_bytes(patch)
    apply_patch(fmt, base_file, patch_file, out, max_size=len(new))
    assert out.read_bytes() == new, f"{fmt}: rebuilt file differs from new"
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"base", f"patch.{fmt}", "out"}, f"{fmt}: a temporary file was left behind"


def _sizes(patches: dict[str, bytes], full: int) -> str:
    return ", ".join(f"{fmt} {len(data)}" for fmt, data in patches.items()) + f"; full {full}"


def _check_pair(tmp_path: Path, pair: Pair) -> tuple[dict[str, bytes], int, str]:
    base, new = pair
    patches = make_patches(base, new)
    assert set(patches) == set(FORMATS)
    full = compressed_full_size(new)
    for fmt, data in patches.items():
        folder = tmp_path / fmt
        folder.mkdir()
        _round_trip(folder, fmt, base, data, new)
    return patches, full, _sizes(patches, full)


def test_model_with_a_retrained_layer(tmp_path: Path, model_pair: Pair) -> None:
    _, full, sizes = _check_pair(tmp_path, model_pair)
    chosen = make_patch(*model_pair)
    assert len(chosen.data) < full / 10, f"{chosen.format} not under 10% of full: {sizes}"


def test_tarball_with_one_file_changed(tmp_path: Path, tar_pair: Pair) -> None:
    patches, full, sizes = _check_pair(tmp_path, tar_pair)
    assert len(tar_pair[1]) > 900_000
    assert min(map(len, patches.values())) < full / 100, sizes


def test_binary_with_one_constant_changed(tmp_path: Path, binary_pair: Pair) -> None:
    patches, _, sizes = _check_pair(tmp_path, binary_pair)
    assert min(map(len, patches.values())) < 1000, sizes


def test_unrelated_files_give_no_useful_patch(tmp_path: Path, unrelated_pair: Pair) -> None:
    _, full, sizes = _check_pair(tmp_path, unrelated_pair)
    chosen = make_patch(*unrelated_pair)
    folder = tmp_path / "chosen"
    folder.mkdir()
    _round_trip(folder, chosen.format, unrelated_pair[0], chosen.data, unrelated_pair[1])
    assert len(chosen.data) >= full, f"a patch between unrelated files beat the full file: {sizes}"


def test_make_patch_keeps_the_smaller_format(
    model_pair: Pair, binary_pair: Pair, binary_patches: dict[str, bytes]
) -> None:
    for pair, patches in ((model_pair, make_patches(*model_pair)), (binary_pair, binary_patches)):
        chosen = make_patch(*pair)
        smallest = min(len(data) for data in patches.values())
        assert chosen.data == patches[chosen.format], chosen.format
        assert len(chosen.data) == smallest, _sizes(patches, compressed_full_size(pair[1]))


def test_in_memory_formats_stop_at_their_size_cap(
    monkeypatch: pytest.MonkeyPatch, binary_pair: Pair
) -> None:
    """Above `IN_MEMORY_MAX_BYTES` only the streaming zstd-patch is made, even where an
    in-memory format would be smaller: a node must not hold base and new file together."""
    base, new = binary_pair
    monkeypatch.setattr(deltas, "IN_MEMORY_MAX_BYTES", len(new) - 1)
    assert set(make_patches(base, new)) == {"zstd-patch"}
    assert make_patch(base, new).format == "zstd-patch"
    monkeypatch.setattr(deltas, "IN_MEMORY_MAX_BYTES", len(new))
    assert set(make_patches(base, new)) == set(FORMATS)


def test_identical_files_tie_to_the_first_format_or_the_smaller() -> None:
    base = _text(1, 4096)
    patches = make_patches(base, base)
    chosen = make_patch(base, base)
    smallest = min(map(len, patches.values()))
    assert len(chosen.data) == smallest
    assert chosen.format == next(f for f in FORMATS if len(patches[f]) == smallest)


def _write(folder: Path, base: bytes, patch: bytes) -> tuple[Path, Path, Path]:
    folder.mkdir(exist_ok=True)
    (folder / "base").write_bytes(base)
    (folder / "patch").write_bytes(patch)
    return folder / "base", folder / "patch", folder / "out"


def _leftovers(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} - {"base", "patch"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_corrupt_patch_is_refused_and_leaves_no_output(
    tmp_path: Path, fmt: str, binary_pair: Pair, binary_patches: dict[str, bytes]
) -> None:
    base, new = binary_pair
    patch = binary_patches[fmt]
    # Flip bytes in the header, the middle and the end of the patch, one place at a time.
    for where in (5, 20, len(patch) // 2, len(patch) - 2):
        corrupt = bytearray(patch)
        corrupt[where] ^= 0xFF
        corrupt[where + 1] ^= 0x55
        folder = tmp_path / f"at{where}"
        base_file, patch_file, out = _write(folder, base, bytes(corrupt))
        try:
            apply_patch(fmt, base_file, patch_file, out, max_size=len(new))
        except DeltaError as exc:
            assert re.search(r"corrupt|truncated|more than|expected \d+", str(exc)), str(exc)
            assert _leftovers(folder) == set(), f"{fmt} patch flipped at {where}"
        else:
            # Only HDiffPatch's format carries no checksum (zstd frames and bzip2 blocks do): a
            # flipped data byte decodes into other bytes, which the caller's SHA-256 refuses.
            assert fmt == "hdiffpatch", f"{fmt} accepted a patch flipped at {where}"
            assert out.read_bytes() != new, f"{fmt} patch flipped at {where}"


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_patch_is_refused(
    tmp_path: Path, fmt: str, binary_pair: Pair, binary_patches: dict[str, bytes]
) -> None:
    base, new = binary_pair
    base_file, patch_file, out = _write(tmp_path, base, binary_patches[fmt][:-10])
    with pytest.raises(DeltaError, match=r"corrupt|truncated"):
        apply_patch(fmt, base_file, patch_file, out, max_size=len(new))
    assert _leftovers(tmp_path) == set()


@pytest.mark.parametrize("fmt", FORMATS)
def test_wrong_base_never_yields_the_new_file(
    tmp_path: Path, fmt: str, binary_pair: Pair, binary_patches: dict[str, bytes]
) -> None:
    """Applied to another file the patch fails or decodes into other bytes; the caller's SHA-256
    check of the result is what refuses the latter."""
    _, new = binary_pair
    other = _stream(b"another file", len(new))
    base_file, patch_file, out = _write(tmp_path, other, binary_patches[fmt])
    try:
        apply_patch(fmt, base_file, patch_file, out, max_size=len(new))
    except DeltaError:
        assert not out.exists()
    else:
        assert out.read_bytes() != new
    assert _leftovers(tmp_path) <= {"out"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_output_beyond_max_size_is_refused(
    tmp_path: Path, fmt: str, tar_pair: Pair, model_pair: Pair
) -> None:
    for name, (base, new) in (("tar", tar_pair), ("model", model_pair)):
        patch = make_patches(base, new)[fmt]
        folder = tmp_path / name
        base_file, patch_file, out = _write(folder, base, patch)
        limit = len(new) - 1
        with pytest.raises(DeltaError, match=f"got more than {limit} bytes"):
            apply_patch(fmt, base_file, patch_file, out, max_size=limit)
        assert _leftovers(folder) == set()


def test_zstd_patch_without_content_size_is_still_bounded_while_streaming(
    tmp_path: Path, tar_pair: Pair
) -> None:
    """A frame that does not declare its size is cut off by counting the bytes written."""
    import zstandard

    base, new = tar_pair
    dictionary = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    writer = zstandard.ZstdCompressor(level=3, dict_data=dictionary, write_content_size=False)
    compressor = writer.compressobj()
    patch = compressor.compress(new) + compressor.flush()
    assert zstandard.get_frame_parameters(patch).content_size == zstandard.CONTENTSIZE_UNKNOWN
    base_file, patch_file, out = _write(tmp_path, base, patch)
    with pytest.raises(DeltaError, match="got more than 1000 bytes"):
        apply_patch("zstd-patch", base_file, patch_file, out, max_size=1000)
    assert _leftovers(tmp_path) == set()
    apply_patch("zstd-patch", base_file, patch_file, out, max_size=len(new))
    assert out.read_bytes() == new


def test_failure_removes_an_existing_output(tmp_path: Path, tar_pair: Pair) -> None:
    base, new = tar_pair
    base_file, patch_file, out = _write(tmp_path, base, b"not a patch at all")
    out.write_bytes(b"an older attempt")
    with pytest.raises(DeltaError):
        apply_patch("zstd-patch", base_file, patch_file, out, max_size=len(new))
    assert _leftovers(tmp_path) == set()


def test_unknown_format_is_refused(tmp_path: Path, tar_pair: Pair) -> None:
    base, new = tar_pair
    base_file, patch_file, out = _write(tmp_path, base, make_patch(base, new).data)
    with pytest.raises(DeltaError, match="got patch format 'xdelta3', expected one of"):
        apply_patch("xdelta3", base_file, patch_file, out, max_size=len(new))
    assert _leftovers(tmp_path) == set()


def test_missing_base_is_a_delta_error(tmp_path: Path, tar_pair: Pair) -> None:
    base, new = tar_pair
    for fmt, patch in make_patches(base, new).items():
        folder = tmp_path / fmt
        base_file, patch_file, out = _write(folder, base, patch)
        base_file.unlink()
        with pytest.raises(DeltaError, match="expected a readable base"):
            apply_patch(fmt, base_file, patch_file, out, max_size=len(new))
        assert not out.exists()


def test_empty_files_round_trip(tmp_path: Path) -> None:
    for k, (base, new) in enumerate(((b"", b"first version"), (b"old contents", b""))):
        for fmt, patch in make_patches(base, new).items():
            folder = tmp_path / f"{fmt}-{k}"
            folder.mkdir()
            _round_trip(folder, fmt, base, patch, new)


def test_zstd_patch_with_data_after_its_frame_is_refused(tmp_path: Path, tar_pair: Pair) -> None:
    base, new = tar_pair
    patch = make_patches(base, new)["zstd-patch"]
    base_file, patch_file, out = _write(tmp_path, base, patch + b"appended")
    with pytest.raises(DeltaError, match="got data after the frame"):
        apply_patch("zstd-patch", base_file, patch_file, out, max_size=len(new))
    assert _leftovers(tmp_path) == set()


def _bsdiff_patch(control: bytes, diff: bytes, extra: bytes, new_size: int) -> bytes:
    """A bsdiff4 patch built by hand: header (magic, two block sizes, new size) and blocks."""
    control, diff, extra = bz2.compress(control), bz2.compress(diff), bz2.compress(extra)
    sizes = b"".join(n.to_bytes(8, "little") for n in (len(control), len(diff), new_size))
    return b"BSDIFF40" + sizes + control + diff + extra


def test_bsdiff4_block_expanding_beyond_max_size_is_refused_before_patching(
    tmp_path: Path,
) -> None:
    """A small patch claiming a small file, whose extra block expands to 64 MiB: refused after
    decoding at most a chunk of it, never expanded in memory by bsdiff4."""
    bomb = _bsdiff_patch((0).to_bytes(8, "little") * 3, b"", b"\0" * 64 * 1024**2, new_size=10)
    assert len(bomb) < 1000
    base_file, patch_file, out = _write(tmp_path, b"base", bomb)
    with pytest.raises(DeltaError, match="extra block got more than 10 bytes"):
        apply_patch("bsdiff4", base_file, patch_file, out, max_size=1000)
    assert _leftovers(tmp_path) == set()


def test_bsdiff4_claiming_more_than_max_size_is_refused(tmp_path: Path) -> None:
    claim = _bsdiff_patch(b"", b"", b"", new_size=2**40)
    base_file, patch_file, out = _write(tmp_path, b"base", claim)
    with pytest.raises(DeltaError, match="got more than 1000 bytes"):
        apply_patch("bsdiff4", base_file, patch_file, out, max_size=1000)
    assert _leftovers(tmp_path) == set()


def _packed(value: int) -> bytes:
    """HDiffPatch's packed unsigned integer: 7 bits a byte, most significant first."""
    groups = [value & 0x7F]
    value >>= 7
    while value:
        groups.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(groups))


def test_hdiffpatch_header_sizes_are_read_as_the_library_writes_them(binary_pair: Pair) -> None:
    base, new = binary_pair
    patch = make_patches(base, new)["hdiffpatch"]
    codec_end = patch.index(b"\0", len(b"HDIFF13&"))
    assert patch[codec_end + 1 :].startswith(_packed(len(new)) + _packed(len(base)))


def test_hdiffpatch_claiming_more_than_max_size_is_refused(tmp_path: Path) -> None:
    claim = b"HDIFF13&\0" + _packed(2**40) + _packed(4) + b"\0" * 16
    base_file, patch_file, out = _write(tmp_path, b"base", claim)
    with pytest.raises(DeltaError, match="got more than 1000 bytes"):
        apply_patch("hdiffpatch", base_file, patch_file, out, max_size=1000)
    assert _leftovers(tmp_path) == set()


def test_hdiffpatch_made_from_a_base_of_another_size_is_refused(
    tmp_path: Path, tar_pair: Pair
) -> None:
    base, new = tar_pair
    patch = make_patches(base, new)["hdiffpatch"]
    base_file, patch_file, out = _write(tmp_path, base + b"drift", patch)
    with pytest.raises(DeltaError, match=f"expected {len(base)}, the size of the base"):
        apply_patch("hdiffpatch", base_file, patch_file, out, max_size=len(new))
    assert _leftovers(tmp_path) == set()


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (b"BSDIFF40" + b"\0" * 40, "expected an HDIFF13& header"),
        (b"HDIFF13&" + b"z" * 64, "expected a codec name of at most"),
        (b"HDIFF13&zstd\0\x81", "expected the new and old sizes"),
        (b"HDIFF13&\0" + b"\xff" * 12, "expected a size of at most 64 bits"),
    ],
)
def test_hdiffpatch_malformed_header_is_refused(tmp_path: Path, patch: bytes, message: str) -> None:
    base_file, patch_file, out = _write(tmp_path, b"base", patch)
    with pytest.raises(DeltaError, match=message):
        apply_patch("hdiffpatch", base_file, patch_file, out, max_size=1000)
    assert _leftovers(tmp_path) == set()
