"""Benchmark EdgeFleet's binary deltas against the delta tools Debian ships.

For five pairs of files (base, new), built deterministically by this script, it measures in
one run the bytes a node would download:

* **EdgeFleet**: ``reconciler.deltas.make_patch(base, new)`` (the smaller of its formats),
  each format of ``make_patches`` on its own, and the full download of the zstd-compressed
  file (``compressed_full_size``). What EdgeFleet *sends* is the smaller of the patch and
  the compressed full file: a patch is not offered when it is bigger.
* **anchors**, Debian's command-line tools run as subprocesses: ``zstd --patch-from`` (``-19``
  and ``--ultra -22``, both with ``--long=N`` large enough for the file), ``bsdiff`` and
  ``xdelta3 -e -9``. They are installed with apt-get when missing and the script runs as
  root; otherwise the missing anchor is skipped with a note.

For every patch it measures the time and the peak memory to make it and to apply it, each
operation in a fresh process: for EdgeFleet a ``python -c`` worker that imports
``reconciler.deltas`` and does one operation (the time is taken inside the worker around
reading the inputs, the operation and writing the output; interpreter start-up is not
counted), for the anchors the command itself (wall time of the process). The peak memory
is the worker's own ``VmHWM`` (read from ``/proc/self/status`` at its end) and the anchor's
``%M`` under GNU ``/usr/bin/time`` (not ``ru_maxrss`` from here: Linux carries it across
exec, so every child of this process, which holds the pairs, would report at least the
parent's size). Every patch must round-trip: applied
to the base (``apply_patch``, ``zstd -d --patch-from``, ``bspatch``, ``xdelta3 -d``) it must
give the new file byte for byte, or the script stops.

The pairs:

1. the example fleet's anomaly model 1.3.0 and 1.4.0-rc1 (``fleet-repo-example/
   make-artifacts.py``): only the output layer was retrained;
2. an uncompressed tarball (about 3.5 MB of text and binary files) with one text file edited;
3. 4 MiB of pseudo-random bytes with one 8-byte constant changed;
4. two unrelated files: a tarball of text and binaries, and float32 weights;
5. a 64 MiB float32 model whose last 5% of weights were retrained (``--large-mb``).

The targets: what EdgeFleet sends is never more than 1.05x the best anchor's patch on any
pair, and the retrained-last-layer model's patch is under 10% of the compressed full file.
No time is asserted: sizes are the figures, times and memory describe the machine. The
results replace the ``<!-- bench:deltas -->`` section of ``bench/RESULTS.md``.

Usage::

    python bench/bench_deltas.py [--repeat 3] [--large-mb 64] [--bsdiff-timeout 300]
                                 [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from bench_validate import machine_info, write_section  # noqa: E402

RESULTS = HERE / "RESULTS.md"
SECTION = "bench:deltas"
TARGET_VS_ANCHOR = 1.05
TARGET_MODEL_SHARE = 0.10
TIMEOUT_S = 300.0
BUILDER = REPO / "fleet-repo-example" / "make-artifacts.py"
APT_PACKAGES = ("zstd", "bsdiff", "xdelta3")
TOOLS = {
    "zstd": "zstd",
    "bsdiff": "bsdiff",
    "bspatch": "bsdiff",
    "xdelta3": "xdelta3",
    "/usr/bin/time": "time",
}
GNU_TIME: str | None = "/usr/bin/time"  # None when missing: the anchors' memory is then unknown

# One EdgeFleet operation in a fresh interpreter. argv: OP, then its files. The time covers
# reading the inputs, the operation and writing the output; the parent reads the peak memory.
WORKER = """\
import json, sys, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from reconciler import deltas
op, args = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
out = {{}}
if op == "idle":
    Path(args[0]).read_bytes(), Path(args[1]).read_bytes()
elif op == "make":
    patch = deltas.make_patch(Path(args[0]).read_bytes(), Path(args[1]).read_bytes())
    Path(args[2]).write_bytes(patch.data)
    out["format"] = patch.format
elif op == "make-all":
    if len(args) > 3:  # a lowered limit, to see that the in-memory formats stop above it
        deltas.IN_MEMORY_MAX_BYTES = int(args[3])
    patches = deltas.make_patches(Path(args[0]).read_bytes(), Path(args[1]).read_bytes())
    for fmt, data in patches.items():
        Path(args[2] + "." + fmt).write_bytes(data)
    out["formats"] = sorted(patches)
elif op == "full":
    out["size"] = deltas.compressed_full_size(Path(args[0]).read_bytes())
elif op == "apply":
    deltas.apply_patch(args[0], Path(args[1]), Path(args[2]), Path(args[3]), int(args[4]))
else:
    raise SystemExit("unknown op " + op)
out["seconds"] = time.perf_counter() - start
# VmHWM: this process's peak resident set (reset by exec, unlike ru_maxrss).
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        out["peak_mb"] = int(line.split()[1]) / 1024
print(json.dumps(out))
"""


# --- running a process and reading its peak memory -----------------------------------------


@dataclass
class Run:
    """One process: wall time, peak resident set (None when unknown), exit status, output."""

    seconds: float
    peak_mb: float | None
    code: int
    timed_out: bool
    stdout: str
    stderr: str


def run_measured(argv: list[str], timeout: float = TIMEOUT_S, cwd: Path | None = None) -> Run:
    """Run `argv` in its own process group, kill the group after `timeout` seconds."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True
        )
        timed_out = False
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        return Run(
            seconds,
            None,
            code,
            timed_out,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )


def run_tool(argv: list[str], timeout: float) -> Run:
    """A command-line anchor under GNU time, whose %M is the tool's own peak resident set.

    (Not `os.wait4` from here: Linux carries a process's peak resident set across exec, so a
    child forked from this Python, which holds the pairs, would report at least its size.)
    """
    if GNU_TIME is None:
        return run_measured(argv, timeout)
    with tempfile.NamedTemporaryFile(suffix=".time") as report:
        run = run_measured([GNU_TIME, "-f", "%M", "-o", report.name, *argv], timeout)
        lines = Path(report.name).read_text(encoding="utf-8").split()
    if lines and lines[-1].isdigit():
        run.peak_mb = int(lines[-1]) / 1024  # KiB
    return run


def worker(op: str, *args: str) -> tuple[Run, dict[str, object]]:
    """One EdgeFleet operation in a fresh Python; its JSON report. Stops on failure."""
    run = run_measured([sys.executable, "-c", WORKER.format(repo=str(REPO)), op, *args], cwd=REPO)
    if run.code != 0:
        sys.exit(f"bench_deltas: the EdgeFleet worker `{op}` exited {run.code}:\n{run.stderr}")
    report: dict[str, object] = json.loads(run.stdout.strip().splitlines()[-1])
    run.peak_mb = float(report["peak_mb"])  # type: ignore[arg-type]
    return run, report


# --- the pairs -----------------------------------------------------------------------------

WORD_TEXT = (
    "node fleet release rollout canary health check bank artifact digest signature commit "
    "agent store till receipt printer locale sensor freezer shelf anomaly score model layer "
    "config service timeout retry backoff journal status deploy version patch delta window "
    "the a of to and in is for on with that this be are by from or it as at an not will can"
)
WORDS = tuple(WORD_TEXT.split())


def load_builder() -> ModuleType:
    """`fleet-repo-example/make-artifacts.py` as a module (as `edgefleet demo` loads it)."""
    spec = importlib.util.spec_from_file_location("edgefleet_example_artifacts", BUILDER)
    if spec is None or spec.loader is None:
        sys.exit(f"bench_deltas: cannot load {BUILDER}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def text_file(rng: random.Random, size: int) -> bytes:
    """Source-like text: indented lines of words, numbers and key = value pairs."""
    lines: list[str] = []
    total = 0
    while total < size:
        kind = rng.random()
        if kind < 0.3:
            line = f"{rng.choice(WORDS)}_{rng.choice(WORDS)} = {rng.randrange(100000)}"
        elif kind < 0.4:
            line = ""
        else:
            indent = "    " * rng.randrange(4)
            line = indent + " ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 14)))
        lines.append(line)
        total += len(line) + 1
    return ("\n".join(lines) + "\n").encode()


def binary_file(rng: random.Random, size: int, kind: int) -> bytes:
    """Binary content: incompressible bytes, a table of little-endian counters, or records
    padded with zeros (as in a database page)."""
    if kind == 0:
        return rng.randbytes(size)
    if kind == 1:
        start = rng.randrange(1 << 20)
        step = rng.randrange(1, 64)
        count = size // 4
        return np.arange(start, start + step * count, step, dtype="<u4").tobytes()
    out = bytearray()
    while len(out) < size:
        record = rng.randbytes(rng.randrange(16, 200))
        out += len(record).to_bytes(2, "little") + record + bytes(256 - len(record) % 256)
    return bytes(out[:size])


def tarball(files: dict[str, bytes]) -> bytes:
    """An uncompressed, reproducible tar: sorted entries, mtime 0, owner 0:0."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.mode = 0, 0, 0, 0o644
            info.size = len(files[name])
            tar.addfile(info, io.BytesIO(files[name]))
    return raw.getvalue()


def tree_files(seed: int) -> dict[str, bytes]:
    """About 3.5 MB: 48 text files of 10-60 KB and 9 binaries of 100-300 KB."""
    rng = random.Random(seed)
    files = {}
    for i in range(48):
        files[f"app-{seed}/src/module_{i:02d}.txt"] = text_file(rng, rng.randrange(10_000, 60_000))
    for i in range(9):
        files[f"app-{seed}/lib/blob_{i}.bin"] = binary_file(
            rng, rng.randrange(100_000, 300_000), i % 3
        )
    return files


def edit_text(data: bytes, rng: random.Random) -> bytes:
    """One text file edited: two lines changed and a 30-line paragraph inserted mid-file."""
    lines = data.split(b"\n")
    middle = len(lines) // 2
    for k in (middle // 2, middle + middle // 3):
        lines[k] = b"    timeout_seconds = 45  # raised from 30 after the field report"
    lines[middle:middle] = text_file(rng, 1_500).rstrip(b"\n").split(b"\n")
    return b"\n".join(lines)


def weights_file(values: np.ndarray, version: str) -> bytes:
    """A flat model file: a 4 KiB header, then little-endian float32 weights."""
    header = f"EFWEIGHTS 1\nversion={version}\ncount={values.size}\n".encode().ljust(4096, b"\0")
    return header + values.astype("<f4").tobytes()


@dataclass(frozen=True)
class Pair:
    """A base and a new file, and what changed between them."""

    key: str
    title: str
    what: str
    base: bytes
    new: bytes


def build_pairs(large_mb: int) -> list[Pair]:
    """The five pairs, the same bytes on every run."""
    builder = load_builder()
    model = Pair(
        "model",
        "Retrained last layer: the example anomaly model 1.3.0 -> 1.4.0-rc1",
        "the ONNX autoencoder of `fleet-repo-example/make-artifacts.py` (`build_model`); "
        "1.4.0-rc1 re-fits two columns of the output layer's weights and its bias",
        builder.build_model("1.3.0"),
        builder.build_model("1.4.0-rc1"),
    )

    files = tree_files(1)
    edited = "app-1/src/module_17.txt"
    new_files = dict(files)
    new_files[edited] = edit_text(files[edited], random.Random(99))
    tar = Pair(
        "tarball",
        "Tarball with one text file edited",
        f"an uncompressed tar of {len(files)} files (48 text, 9 binary: random, counters, "
        f"padded records); `{edited}` has two lines changed and 30 lines inserted mid-file, "
        "so every later entry shifts",
        tarball(files),
        tarball(new_files),
    )

    rng = random.Random(3)
    blob = bytearray(rng.randbytes(4 << 20))
    base_blob = bytes(blob)
    offset = 2_654_435
    blob[offset : offset + 8] = (0x5DEECE66D).to_bytes(8, "little")
    constant = Pair(
        "constant",
        "Binary with one constant changed",
        f"4 MiB of pseudo-random bytes (incompressible), 8 bytes changed at offset {offset:,}",
        base_blob,
        bytes(blob),
    )

    unrelated_rng = np.random.default_rng(4)
    unrelated = Pair(
        "unrelated",
        "Two unrelated files",
        "base: an uncompressed tar of text and binaries (seed 2); new: 1 Mi float32 "
        "weights from a normal distribution",
        tarball(tree_files(2)),
        weights_file((unrelated_rng.standard_normal(1 << 20) * 0.05).astype(np.float32), "other"),
    )

    count = large_mb * (1 << 20) // 4
    large_rng = np.random.default_rng(5)
    weights = (large_rng.standard_normal(count) * 0.05).astype(np.float32)
    retrained = weights.copy()
    first = count - count // 20
    noise = large_rng.standard_normal(count - first).astype(np.float32) * np.float32(0.005)
    retrained[first:] = weights[first:] * np.float32(0.9) + noise
    large = Pair(
        "large",
        f"Large model, last 5% of weights retrained ({large_mb} MiB)",
        f"a flat float32 model (4 KiB header, {count:,} weights from a normal distribution); "
        "the last 5% of the weights are retrained (scaled by 0.9 plus noise), the header's "
        "version changes",
        weights_file(weights, "1.0.0"),
        weights_file(retrained, "1.1.0"),
    )
    return [model, tar, constant, unrelated, large]


# --- the measurements ----------------------------------------------------------------------


@dataclass
class Result:
    """One way of getting `new` to a node: its bytes and the cost of making and applying."""

    method: str
    setting: str
    size: int | None
    edgefleet: bool
    make_s: float | None = None
    make_mb: float | None = None
    apply_s: float | None = None
    apply_mb: float | None = None
    note: str = ""
    make_runs: list[Run] = field(default_factory=list)


def best_of(
    runs: list[Run], worker_seconds: list[float] | None = None
) -> tuple[float, float | None]:
    """Best time (the worker's own when given) and the highest peak memory of the runs."""
    seconds = min(worker_seconds) if worker_seconds else min(r.seconds for r in runs)
    peaks = [r.peak_mb for r in runs if r.peak_mb is not None]
    return seconds, max(peaks) if peaks else None


def check_same(out: Path, new: Path, what: str) -> None:
    if out.read_bytes() != new.read_bytes():
        sys.exit(f"bench_deltas: {what} does not round-trip: the applied file differs")


def measure_cli(
    label: str,
    setting: str,
    make: list[str],
    apply: list[str],
    patch: Path,
    out: Path,
    new: Path,
    repeat: int,
    timeout: float,
) -> Result:
    """An anchor: `make` writes `patch`, `apply` writes `out`, each `repeat` times."""
    makes: list[Run] = []
    for _ in range(repeat):
        run = run_tool(make, timeout)
        if run.timed_out:
            return Result(
                label,
                setting,
                None,
                False,
                note=f"did not finish in {timeout:.0f} s (killed)",
            )
        if run.code != 0:
            sys.exit(f"bench_deltas: `{' '.join(make)}` exited {run.code}:\n{run.stderr}")
        makes.append(run)
    applies: list[Run] = []
    for _ in range(repeat):
        out.unlink(missing_ok=True)
        run = run_tool(apply, timeout)
        if run.code != 0:
            sys.exit(f"bench_deltas: `{' '.join(apply)}` exited {run.code}:\n{run.stderr}")
        check_same(out, new, label)
        applies.append(run)
    make_s, make_mb = best_of(makes)
    apply_s, apply_mb = best_of(applies)
    return Result(label, setting, patch.stat().st_size, False, make_s, make_mb, apply_s, apply_mb)


def zstd_long(*sizes: int) -> int:
    """`--long=N` with 2**N above the largest file, within zstd's limits."""
    return min(31, max(10, max(sizes).bit_length()))


def measure_pair(
    pair: Pair, work: Path, repeat: int, bsdiff_timeout: float, tools: dict[str, bool]
) -> tuple[list[Result], dict[str, object]]:
    """Every method on one pair; the results and facts for the notes."""
    work.mkdir(parents=True, exist_ok=True)
    base, new = work / "base", work / "new"
    base.write_bytes(pair.base)
    new.write_bytes(pair.new)
    out = work / "out"
    facts: dict[str, object] = {}
    results: list[Result] = []

    idle = [worker("idle", str(base), str(new))[0] for _ in range(repeat)]
    facts["idle_mb"] = best_of(idle)[1]

    # EdgeFleet: make_patch (what it sends), each format of make_patches, the full download.
    runs, secs = [], []
    fmt = ""
    for _ in range(repeat):
        run, report = worker("make", str(base), str(new), str(work / "ef.patch"))
        runs.append(run)
        secs.append(float(report["seconds"]))  # type: ignore[arg-type]
        fmt = str(report["format"])
    make_s, make_mb = best_of(runs, secs)
    chosen_size = (work / "ef.patch").stat().st_size

    all_runs, all_secs = [], []
    formats: list[str] = []
    for _ in range(repeat):
        run, report = worker("make-all", str(base), str(new), str(work / "ef"))
        all_runs.append(run)
        all_secs.append(float(report["seconds"]))  # type: ignore[arg-type]
        formats = list(report["formats"])  # type: ignore[call-overload]
    facts["make_all_s"], facts["make_all_mb"] = best_of(all_runs, all_secs)
    facts["formats"] = formats

    def apply_ef(fmt: str, patch: Path) -> tuple[float, float]:
        applies, apply_secs = [], []
        for _ in range(repeat):
            out.unlink(missing_ok=True)
            run, report = worker("apply", fmt, str(base), str(patch), str(out), str(len(pair.new)))
            check_same(out, new, f"EdgeFleet {fmt}")
            applies.append(run)
            apply_secs.append(float(report["seconds"]))  # type: ignore[arg-type]
        return best_of(applies, apply_secs)

    per_format: dict[str, Result] = {}
    for name in deltas.FORMATS:
        if name not in formats:
            limit = deltas.IN_MEMORY_MAX_BYTES
            why = "not made by `make_patches`"
            if name in deltas.IN_MEMORY_FORMATS:
                why = (
                    f"skipped by `make_patches`: above `IN_MEMORY_MAX_BYTES` ({limit / 1e6:.0f} MB)"
                    if max(len(pair.base), len(pair.new)) > limit
                    else f"not made although under `IN_MEMORY_MAX_BYTES` ({limit / 1e6:.0f} MB)"
                )
            per_format[name] = Result(f"EdgeFleet `{name}`", "", None, True, note=why)
            continue
        patch = Path(f"{work / 'ef'}.{name}")
        apply_s, apply_mb = apply_ef(name, patch)
        per_format[name] = Result(
            f"EdgeFleet `{name}`",
            "one format of `make_patches`",
            patch.stat().st_size,
            True,
            apply_s=apply_s,
            apply_mb=apply_mb,
        )
    made = per_format.get(fmt)
    if made is None or made.size != chosen_size:
        sys.exit(
            f"bench_deltas: make_patch chose {fmt} ({chosen_size} bytes), which differs from"
            f" make_patches: { {k: v.size for k, v in per_format.items()} }"
        )
    sizes = [r.size for r in per_format.values() if r.size is not None]
    if chosen_size != min(sizes):
        facts["not_smallest"] = f"make_patch chose {fmt}, not the smallest format"

    full_runs, full_secs = [], []
    full_size = 0
    for _ in range(repeat):
        run, report = worker("full", str(new))
        full_runs.append(run)
        full_secs.append(float(report["seconds"]))  # type: ignore[arg-type]
        full_size = int(report["size"])  # type: ignore[call-overload]
    full_s, full_mb = best_of(full_runs, full_secs)
    facts["full"] = full_size

    sends = min(chosen_size, full_size)
    results.append(
        Result(
            "**EdgeFleet sends**",
            "the patch" if chosen_size < full_size else "the compressed full file (no patch)",
            sends,
            True,
        )
    )
    results.append(
        Result(
            "EdgeFleet `make_patch`",
            f"chose `{fmt}`",
            chosen_size,
            True,
            make_s,
            make_mb,
            made.apply_s,
            made.apply_mb,
        )
    )
    results.extend(per_format.values())
    results.append(
        Result(
            "EdgeFleet full download",
            "`compressed_full_size`: zstd, no dictionary",
            full_size,
            True,
            full_s,
            full_mb,
            note="apply: a plain decompression, not measured",
        )
    )

    # The anchors.
    long = zstd_long(len(pair.base), len(pair.new))
    if tools["zstd"]:
        for level in (["-19"], ["--ultra", "-22"]):
            setting = f"{' '.join(level)} --long={long}"
            patch = work / f"zstd{level[-1]}.zst"
            zstd = ["zstd", "-q", "-f", "--single-thread"]
            opts = [f"--long={long}", f"--patch-from={base}"]
            results.append(
                measure_cli(
                    "zstd --patch-from",
                    setting,
                    [*zstd, *level, *opts, str(new), "-o", str(patch)],
                    [*zstd, "-d", *opts, str(patch), "-o", str(out)],
                    patch,
                    out,
                    new,
                    repeat,
                    TIMEOUT_S,
                )
            )
    else:
        results.append(Result("zstd --patch-from", "", None, False, note="`zstd` missing"))
    if tools["bsdiff"] and tools["bspatch"]:
        patch = work / "bsdiff.patch"
        results.append(
            measure_cli(
                "bsdiff",
                "4.3 (Debian), bzip2 inside",
                ["bsdiff", str(base), str(new), str(patch)],
                ["bspatch", str(base), str(out), str(patch)],
                patch,
                out,
                new,
                repeat,
                bsdiff_timeout,
            )
        )
    else:
        results.append(Result("bsdiff", "", None, False, note="`bsdiff` or `bspatch` missing"))
    if tools["xdelta3"]:
        patch = work / "xdelta3.vcdiff"
        # -B: a source window covering the whole base (the default is 64 MiB).
        window = max(1 << 26, 1 << max(len(pair.base), len(pair.new)).bit_length())
        xdelta, common = ["xdelta3", "-f"], ["-B", str(window), "-s", str(base)]
        results.append(
            measure_cli(
                "xdelta3",
                f"-e -9 -B {window}",
                [*xdelta, "-e", "-9", *common, str(new), str(patch)],
                [*xdelta, "-d", *common, str(patch), str(out)],
                patch,
                out,
                new,
                repeat,
                TIMEOUT_S,
            )
        )
    else:
        results.append(Result("xdelta3", "", None, False, note="`xdelta3` missing"))
    # How many blocks each zstd patch has: every block costs a header and a sequences section,
    # a few bytes that add up on a near-identical pair.
    zstd_files = {"EdgeFleet": work / "ef.zstd-patch"}
    zstd_files.update({f"zstd CLI {p.stem[4:]}": p for p in sorted(work.glob("zstd*.zst"))})
    facts["blocks"] = {
        who: zstd_blocks(path.read_bytes()) for who, path in zstd_files.items() if path.exists()
    }
    for path in work.iterdir():
        path.unlink()
    return results, facts


def zstd_blocks(data: bytes) -> int | None:
    """The number of blocks in a single zstd frame (None if `data` is not one)."""
    if len(data) < 6 or data[:4] != b"\x28\xb5\x2f\xfd":
        return None
    descriptor = data[4]
    single_segment = (descriptor >> 5) & 1
    pos = 5 + (0 if single_segment else 1)
    pos += (0, 1, 2, 4)[descriptor & 3]  # dictionary id
    pos += (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]  # content size
    count = 0
    while pos + 3 <= len(data):
        header = int.from_bytes(data[pos : pos + 3], "little")
        kind, size = (header >> 1) & 3, header >> 3
        pos += 3 + (1 if kind == 1 else size)  # an RLE block stores one byte
        count += 1
        if header & 1:
            return count
    return None


def zstd_library() -> str:
    """python-zstandard's version and the libzstd it bundles."""
    try:
        import zstandard
    except ImportError:
        return "not installed"
    return f"{zstandard.__version__} (libzstd {'.'.join(map(str, zstandard.ZSTD_VERSION))})"


def check_in_memory_limit(pair: Pair, work: Path) -> str:
    """`make_patches` on `pair` with `IN_MEMORY_MAX_BYTES` lowered below its size: which
    formats it makes (the in-memory ones must be skipped)."""
    work.mkdir(parents=True, exist_ok=True)
    base, new = work / "base", work / "new"
    base.write_bytes(pair.base)
    new.write_bytes(pair.new)
    limit = min(len(pair.base), len(pair.new)) // 2
    _, report = worker("make-all", str(base), str(new), str(work / "p"), str(limit))
    formats = list(report["formats"])  # type: ignore[call-overload]
    shutil.rmtree(work)
    in_memory = " and ".join(deltas.IN_MEMORY_FORMATS)
    skipped = not set(deltas.IN_MEMORY_FORMATS) & set(formats)
    return (
        f"with `IN_MEMORY_MAX_BYTES` lowered to {limit:,} bytes, `make_patches` on pair "
        f"{pair.key} ({len(pair.new):,} bytes) made {', '.join(formats)}: {in_memory} "
        + ("skipped, as they should be" if skipped else "**made although above the limit**")
    )


deltas: ModuleType  # reconciler.deltas, imported in main() once it is known to exist


def ensure_tools() -> tuple[dict[str, bool], list[str]]:
    """Which anchor commands exist; installs the missing ones with apt-get when root."""
    notes: list[str] = []
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing and os.geteuid() == 0:
        packages = sorted({TOOLS[tool] for tool in missing})
        print(f"installing {' '.join(packages)} with apt-get", flush=True)
        done = subprocess.run(
            f"apt-get update -qq && apt-get install -y -qq {' '.join(packages)}",
            shell=True,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            notes.append(f"apt-get install {' '.join(packages)} failed: {done.stderr.strip()}")
    elif missing:
        notes.append(
            f"not root, so not installed: {', '.join(missing)} "
            f"(`apt-get install {' '.join(sorted({TOOLS[t] for t in missing}))}`)"
        )
    tools = {tool: shutil.which(tool) is not None for tool in TOOLS}
    for tool, present in tools.items():
        if not present and tool == "/usr/bin/time":
            notes.append("`/usr/bin/time` (GNU time) is missing: the anchors' memory is unknown")
        elif not present:
            notes.append(f"`{tool}` is missing: its anchor is skipped")
    return tools, notes


def tool_versions(tools: dict[str, bool]) -> str:
    """zstd, bsdiff and xdelta3 versions, as the package manager or the tool says."""
    parts = []
    for package, tool in (("zstd", "zstd"), ("bsdiff", "bsdiff"), ("xdelta3", "xdelta3")):
        if not tools.get(tool):
            continue
        version = ""
        if shutil.which("dpkg-query"):
            query = ["dpkg-query", "-W", "-f=${Version}", package]
            done = subprocess.run(query, capture_output=True, text=True, check=False)
            version = done.stdout.strip()
        parts.append(f"{package} {version or '?'}")
    return ", ".join(parts)


# --- the report ----------------------------------------------------------------------------


def fmt_num(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def pair_verdict(pair: Pair, results: list[Result], facts: dict[str, object]) -> dict[str, object]:
    anchors = [r for r in results if not r.edgefleet and r.size is not None]
    sends = results[0].size or 0
    best = min(anchors, key=lambda r: r.size or 0) if anchors else None
    ratio = sends / best.size if best is not None and best.size else None
    return {"best": best, "ratio": ratio, "sends": sends, "full": facts["full"]}


def render_pair(
    number: int, pair: Pair, results: list[Result], facts: dict[str, object], repeat: int
) -> str:
    verdict = pair_verdict(pair, results, facts)
    best: Result | None = verdict["best"]  # type: ignore[assignment]
    full = int(facts["full"])  # type: ignore[call-overload]
    rows = []
    for r in results:
        share = f"{100 * r.size / full:.2f}%" if r.size is not None else "—"
        ratio = f"{r.size / best.size:.2f}x" if r.size is not None and best and best.size else "—"
        mark = " (best anchor)" if r is best else ""
        note = f"; {r.note}" if r.note and r.setting else r.note
        rows.append(
            f"| {r.method}{mark} | {r.setting}{note} | {fmt_num(r.size, ',')} | {share} | {ratio} |"
            f" {fmt_num(r.make_s, '.3f')} | {fmt_num(r.make_mb, '.0f')} |"
            f" {fmt_num(r.apply_s, '.3f')} | {fmt_num(r.apply_mb, '.0f')} |"
        )
    runs = "1 run" if repeat == 1 else f"best time of {repeat} runs, highest peak"
    extra = ""
    if "not_smallest" in facts:
        extra = f"\n- **{facts['not_smallest']}**"
    return f"""### {number}. {pair.title}

{pair.what}. Base {len(pair.base):,} bytes, new {len(pair.new):,} bytes; {runs}.

| method | setting | patch bytes | % of compressed full | / best anchor | make (s) \
| make peak (MB) | apply (s) | apply peak (MB) |
|---|---|---:|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

- `make_patches` (all formats: {", ".join(facts["formats"])}) took \
{facts["make_all_s"]:.3f} s, peak {facts["make_all_mb"]:.0f} MB; a worker that only imports \
`reconciler.deltas` and reads both files peaks at {facts["idle_mb"]:.0f} MB.{extra}
"""


def render_section(
    pairs: list[Pair],
    measured: list[tuple[list[Result], dict[str, object]]],
    info: dict[str, str],
    args: argparse.Namespace,
    notes: list[str],
    versions: str,
    total_s: float,
) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    zstd_lib = zstd_library()
    tables = []
    summary = []
    misses = []
    hints: list[str] = []
    for number, (pair, (results, facts)) in enumerate(zip(pairs, measured, strict=True), 1):
        tables.append(render_pair(number, pair, results, facts, repeat_for(pair, args)))
        v = pair_verdict(pair, results, facts)
        best: Result | None = v["best"]  # type: ignore[assignment]
        ratio: float | None = v["ratio"]  # type: ignore[assignment]
        full = int(v["full"])  # type: ignore[call-overload]
        sends = int(v["sends"])  # type: ignore[call-overload]
        ok = ratio is not None and ratio <= TARGET_VS_ANCHOR
        if best is None:
            summary.append(f"| {number}. {pair.key} | {sends:,} | — | — | no anchor ran |")
            continue
        summary.append(
            f"| {number}. {pair.key} | {sends:,} ({100 * sends / full:.1f}% of full) |"
            f" {best.method} {best.setting}: {best.size:,} | **{ratio:.2f}x** |"
            f" {'met' if ok else 'NOT met'} |"
        )
        if not ok:
            misses.append(
                f"pair {number} ({pair.key}): EdgeFleet sends {sends:,} bytes,"
                f" {ratio:.2f}x the best anchor ({best.method} {best.setting},"
                f" {best.size:,} bytes), {sends - (best.size or 0):,} bytes more. "
                + why_missed(results, facts)
            )
            blocks: dict[str, int | None] = facts.get("blocks", {})  # type: ignore[assignment]
            ours = blocks.get("EdgeFleet") or 0
            if any(n is not None and n < ours for n in blocks.values()) and HINT_SPLIT not in hints:
                hints.append(HINT_SPLIT)
            if best.method in ("xdelta3", "bsdiff") and HINT_FRAMING not in hints:
                hints.append(HINT_FRAMING)
    model_results, model_facts = measured[0]
    model_patch = next(r for r in model_results if r.method == "EdgeFleet `make_patch`")
    model_full = int(model_facts["full"])  # type: ignore[call-overload]
    share = (model_patch.size or 0) / model_full
    model_ok = share < TARGET_MODEL_SHARE
    all_ok = not misses
    notes_text = "".join(f"\n- {n}" for n in notes)
    if hints:
        notes_text += (
            "\n\nTuning suggestions (tried by hand on these pairs, 2026-11-22):\n"
            + "".join(f"\n- {h}" for h in hints)
        )
    miss_text = "".join(f"\n  - {m}" for m in misses)
    return f"""<!-- {SECTION} -->
## Binary deltas: EdgeFleet against zstd, bsdiff and xdelta3

- Date: {stamp}
- Machine: {info["nproc"]} CPUs ({info["cpu"]}), {info["os"]}
- Python: {info["python"]}; python-zstandard {zstd_lib}; anchors: {versions}
- Reproduce: `python bench/bench_deltas.py` (with the project's virtualenv Python; \
`--repeat {args.repeat} --large-mb {args.large_mb} --bsdiff-timeout {args.bsdiff_timeout:.0f}`); \
the whole run took {total_s:.0f} s

Every operation is a fresh process. EdgeFleet's run in a `python -c` worker that imports
`reconciler.deltas`; their time is taken inside it (read the inputs, operate, write the
output: interpreter start-up not counted), the anchors' is the process's wall time. Peak
memory is the worker's `VmHWM` (so it includes the interpreter and both files read) and the
anchor's `%M` under GNU time. Every patch was applied and compared with the new file byte
for byte. "%" is of EdgeFleet's compressed full file; "/ best anchor" of the smallest anchor patch.
**EdgeFleet sends** is the smaller of its patch and its compressed full file (a patch is
not offered when bigger). zstd runs `--single-thread`.

| pair | EdgeFleet sends (bytes) | best anchor (bytes) | sends / best anchor | \
≤ {TARGET_VS_ANCHOR}x |
|---|---:|---|---:|---|
{chr(10).join(summary)}

- **Never more than {TARGET_VS_ANCHOR}x the best anchor: {"met" if all_ok else "NOT met"}**\
{miss_text}
- **Retrained last layer under {TARGET_MODEL_SHARE:.0%} of the compressed full file: \
{share:.1%} ({model_patch.size:,} of {model_full:,} bytes), {"met" if model_ok else "NOT met"}**\
{notes_text}

{chr(10).join(tables)}<!-- /{SECTION} -->
"""


HINT_SPLIT = """\
zstd 1.5.7, which python-zstandard bundles, splits full 128 KiB blocks before compressing
  them (the experimental parameter `ZSTD_c_blockSplitterLevel`); Debian's zstd 1.5.4 does not.
  On a near-identical pair every extra block costs a few bytes. python-zstandard cannot set it;
  `backports.zstd` (PyPI; the backport of CPython 3.14's `compression.zstd`) passes an integer
  key of `options` to `ZSTD_CCtx_setParameter` as it is, and
  `ZstdCompressor(options={CompressionParameter.compression_level: 19,
  CompressionParameter.window_log: W, CompressionParameter.checksum_flag: 1, 1017: 1},
  zstd_dict=ZstdDict(base, is_raw=True))` (1017 is `ZSTD_c_blockSplitterLevel`, 1 never
  pre-splits) gave the CLI's 762 bytes on pair 2, against 911 without `1017: 1` (26 blocks
  instead of 41); the frame decodes with python-zstandard as before, so `apply_patch` is
  unchanged. The parameter is experimental: pin the library and check the size in a test."""

HINT_FRAMING = """\
Where a few bytes change in place each format's floor is its framing: zstd needs a
  sequence in every 128 KiB block, bsdiff4 three bzip2 streams (about 150 bytes), HDiffPatch
  a header and a cover list (tens of bytes), while xdelta3's VCDIFF covers the file in one
  window. Compare EdgeFleet's formats above with the anchor to see which framing lost."""


def why_missed(results: list[Result], facts: dict[str, object]) -> str:
    """What this run shows about a miss: EdgeFleet's formats, and zstd block counts."""
    formats = ", ".join(
        f"{r.method.removeprefix('EdgeFleet ')} {r.size:,}"
        for r in results
        if r.setting == "one format of `make_patches`" and r.size is not None
    )
    why = f"EdgeFleet's formats: {formats}."
    blocks: dict[str, int | None] = facts.get("blocks", {})  # type: ignore[assignment]
    ours = blocks.get("EdgeFleet")
    theirs = {who: n for who, n in blocks.items() if who != "EdgeFleet" and n is not None}
    if ours is not None and theirs and any(n != ours for n in theirs.values()):
        counted = ", ".join(f"{who}: {n}" for who, n in theirs.items())
        why += (
            f" EdgeFleet's zstd-patch has {ours} zstd blocks, the CLI's patches {counted}"
            " (each block costs a header and a sequences section, some bytes each)."
        )
    return why


def repeat_for(pair: Pair, args: argparse.Namespace) -> int:
    """Timed runs for a pair: `--repeat`, but one run for files over 16 MB (minutes each)."""
    return 1 if max(len(pair.base), len(pair.new)) > 16 << 20 else args.repeat


def main(argv: list[str] | None = None) -> int:
    """Build the pairs, measure every method on each, record the results."""
    global deltas, GNU_TIME
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per operation (3)")
    parser.add_argument("--large-mb", type=int, default=64, help="size of pair 5 in MiB (64)")
    parser.add_argument(
        "--bsdiff-timeout", type=float, default=TIMEOUT_S, help="seconds for bsdiff (300)"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print the section instead of updating RESULTS.md"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.large_mb < 1:
        parser.error("--repeat and --large-mb must be at least 1")
    if importlib.util.find_spec("reconciler.deltas") is None:
        sys.exit("bench_deltas: reconciler/deltas.py does not exist yet; nothing to measure")
    import reconciler.deltas

    deltas = reconciler.deltas
    started = time.perf_counter()
    tools, notes = ensure_tools()
    versions = tool_versions(tools)
    if not tools["/usr/bin/time"]:
        GNU_TIME = None
    limit = deltas.IN_MEMORY_MAX_BYTES
    pairs = build_pairs(args.large_mb)
    print(f"built {len(pairs)} pairs in {time.perf_counter() - started:.1f} s", flush=True)

    measured = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-deltas-") as tmp:
        for pair in pairs:
            t0 = time.perf_counter()
            results, facts = measure_pair(
                pair, Path(tmp) / pair.key, repeat_for(pair, args), args.bsdiff_timeout, tools
            )
            measured.append((results, facts))
            sizes = ", ".join(f"{r.method} {r.setting}: {r.size}" for r in results)
            print(f"{pair.key} ({time.perf_counter() - t0:.1f} s): {sizes}", flush=True)
            if pair.key == "constant":
                notes.append(check_in_memory_limit(pair, Path(tmp) / "limit"))
    large = pairs[-1]
    in_memory = " and ".join(f"`{name}`" for name in deltas.IN_MEMORY_FORMATS)
    notes.insert(
        0,
        f"`IN_MEMORY_MAX_BYTES` is {limit:,} bytes ({limit / 2**20:.0f} MiB): above it EdgeFleet"
        f" makes no {in_memory} patch; pair 5 ({len(large.new) / 2**20:.0f} MiB) is "
        + ("under it, so they were made" if len(large.new) <= limit else "above it"),
    )
    section = render_section(
        pairs, measured, machine_info(), args, notes, versions, time.perf_counter() - started
    )
    print()
    print(section)
    if not args.no_write:
        write_section(section, RESULTS, SECTION)
        print(f"updated {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
