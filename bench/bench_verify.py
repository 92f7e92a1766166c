"""Benchmark release verification on a large fleet against hashing its files alone.

The script generates a fleet (10,000 nodes and 50 groups by default: about 10,000 files),
gives it a trust root (``edgefleet keys generate`` and ``edgefleet trust init``, two root
and two release keys, thresholds of two), commits it and signs the commit with
``edgefleet release``. Then it times, in the same run, interleaved, best and median of
``--repeat`` runs:

a. ``sha256 alone``: read every file of the commit from the checked-out working tree and
   hash it with ``hashlib.sha256``, in this process; the baseline.
b. ``verify_tree``: what a node does, in this process: ``load_pinned_root``, then
   ``reconciler.commands.release.verify_tree`` over a ``DirectoryFiles`` of the working
   tree (root chain, release signatures and rules, no extra file, every digest, the root
   file, and validation of the verified tree).
b'. ``verify, no validation``: ``load_pinned_root``, ``envelope_from_message``,
   ``verify_release`` and ``VerifiedFiles(...).verify_all()`` over the same
   ``DirectoryFiles``: signatures and every digest, nothing else. (b') / (a) is the
   figure for the target "within 1.5x of hashing alone".
c. ``edgefleet verify --repo DIR --trust ROOT`` as a subprocess; it reads the files from git
   objects, not from the working tree. With it, for a like-for-like start-up cost:
a'. ``python -c <sha256 alone>``: (a) in a fresh Python process.

The results replace the ``<!-- bench:verify -->`` section of ``bench/RESULTS.md``; other
sections stay. When (b') misses the target, the script profiles one run of it with cProfile
and records where the time goes. No time is asserted: the ratios are the figures.

Usage::

    python bench/bench_verify.py [--nodes 10000] [--groups 50] [--repeat 3] [--inner 5]
                                  [--profile] [--no-write]
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import git

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_validate import (  # noqa: E402
    Timing,
    find_edgefleet,
    machine_info,
    profile_rows,
    run_timed,
    write_section,
)
from gen_fleet import generate_fleet  # noqa: E402

from reconciler.release import (  # noqa: E402
    RELEASE_PAYLOAD_TYPE,
    Accepted,
    VerifiedFiles,
    _unique_keys,
    envelope_from_message,
    resolve_files,
    verify_release,
)
from reconciler.repo_files import DirectoryFiles  # noqa: E402
from reconciler.signing import pae, valid_signers  # noqa: E402
from reconciler.timestamps import now  # noqa: E402
from reconciler.trust_root import load_pinned_root  # noqa: E402
from reconciler.verify import verify_tree  # noqa: E402

RESULTS = HERE / "RESULTS.md"
SECTION = "bench:verify"
TARGET_RATIO = 1.5
TIMEOUT_S = 900.0

A = "(a) sha256 alone"
B_NOVAL = "(b') verify, no validation"
B = "(b) verify_tree"
A_SUB = "(a') python -c (a)"
C = "(c) edgefleet verify"

# (a) in a fresh interpreter: argv[1] is the working tree, argv[2] a file of NUL-separated paths.
HASH_SCRIPT = """\
import hashlib, sys
prefix = sys.argv[1] + "/"
with open(sys.argv[2], encoding="utf-8") as handle:
    paths = handle.read().split("\\0")
for path in paths:
    with open(prefix + path, "rb") as handle:
        hashlib.sha256(handle.read()).hexdigest()
print(len(paths))
"""


def run(argv: list[str], cwd: Path | None = None) -> str:
    """Run a setup command; on failure print what it said and stop the benchmark."""
    proc = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    if proc.returncode != 0:
        said = proc.stderr + proc.stdout
        sys.exit(f"bench_verify: `{' '.join(argv)}` exited {proc.returncode}:\n{said}")
    return proc.stdout


def make_release(fleet: Path, keys: Path, edgefleet: Path) -> float:
    """Keys, trust root, one commit and release/1, through the commands; returns the seconds
    `edgefleet release` took (it reads and hashes every file of the commit too)."""
    ef = str(edgefleet)
    for name in ("root1", "root2", "release1", "release2"):
        run([ef, "keys", "generate", "--out", str(keys / name)])
    run(
        [
            ef,
            "trust",
            "init",
            "--out",
            str(fleet / "trust" / "root.json"),
            "--root-key",
            str(keys / "root1.pub"),
            "--root-key",
            str(keys / "root2.pub"),
            "--root-threshold",
            "2",
            "--release-key",
            str(keys / "release1.pub"),
            "--release-key",
            str(keys / "release2.pub"),
            "--release-threshold",
            "2",
            "--sign",
            str(keys / "root1"),
            "--sign",
            str(keys / "root2"),
        ]
    )
    git_cmd = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.net"]
    run([*git_cmd, "init", "-q"], cwd=fleet)
    run([*git_cmd, "add", "-A"], cwd=fleet)
    run([*git_cmd, "commit", "-qm", "bench fleet"], cwd=fleet)
    start = time.perf_counter()
    run(
        [
            ef,
            "release",
            "--repo",
            str(fleet),
            "--key",
            str(keys / "release1"),
            "--key",
            str(keys / "release2"),
        ]
    )
    return time.perf_counter() - start


def read_tag(fleet: Path, tag: str) -> tuple[str, str]:
    """The tag's message (what GitPython gives a node) and the commit it points at."""
    ref = git.Repo(fleet).tags[tag]
    assert ref.tag is not None, f"{tag} is not an annotated tag"
    return ref.tag.message, ref.commit.hexsha


def measured(
    fleet: Path, paths: list[str], pinned: bytes, tag: str, message: str, target: str
) -> dict[str, Callable[[], object]]:
    """The in-process measurements, each a function doing the whole job once."""

    prefix = f"{fleet}/"

    def sha256_alone() -> int:
        # Plain open() on string paths: the leanest read in Python, so the baseline is hard.
        total = 0
        for path in paths:
            with open(prefix + path, "rb") as handle:
                data = handle.read()
            hashlib.sha256(data).hexdigest()
            total += len(data)
        return total

    def full() -> object:
        root = load_pinned_root(pinned)
        return verify_tree(root, tag, message, target, DirectoryFiles(fleet), paths, Accepted())

    def no_validation() -> int:
        root = load_pinned_root(pinned)
        envelope = envelope_from_message(message, tag)
        release = verify_release(root, envelope, tag, Accepted(), now(), None, target)
        digests, _ = resolve_files(release.payload, tag, None)
        return VerifiedFiles(release, DirectoryFiles(fleet), digests).verify_all()

    return {A: sha256_alone, B: full, B_NOVAL: no_validation}


def phases(
    fleet: Path, paths: list[str], pinned: bytes, tag: str, message: str, repeat: int
) -> list[tuple[str, float]]:
    """The steps of (b'), each timed on its own, best of `repeat`: where the time goes."""
    root = load_pinned_root(pinned)
    envelope = envelope_from_message(message, tag)
    body = base64.b64decode(envelope["payload"])
    data = pae(RELEASE_PAYLOAD_TYPE, body)
    release = verify_release(root, envelope, tag, Accepted(), now(), None, None)
    digests, _ = resolve_files(release.payload, tag, None)
    files = DirectoryFiles(fleet)
    steps: list[tuple[str, Callable[[], object]]] = [
        (
            "`envelope_from_message` + `load_pinned_root` (JSON, root signatures)",
            lambda: (envelope_from_message(message, tag), load_pinned_root(pinned)),
        ),
        (
            "`verify_release` (envelope shape, base64, signatures, payload JSON and shape, rules)",
            lambda: verify_release(root, envelope, tag, Accepted(), now(), None, None),
        ),
        (
            "↳ of which base64 decoding of the payload + its SHA-256",
            lambda: hashlib.sha256(base64.b64decode(envelope["payload"])).hexdigest(),
        ),
        (
            "↳ of which `json.loads` of the payload, refusing repeated keys",
            lambda: json.loads(body, object_pairs_hook=_unique_keys),
        ),
        (
            "↳ of which ed25519 `valid_signers` (2 signatures)",
            lambda: valid_signers(data, envelope["signatures"], root.release.keyids, root.keys),
        ),
        (
            "`VerifiedFiles(...).verify_all()` (read + SHA-256 + compare every file)",
            lambda: VerifiedFiles(release, files, digests).verify_all(),
        ),
        (
            "↳ of which `DirectoryFiles.read` of every file",
            lambda: [files.read(path) for path in paths],
        ),
    ]
    out = []
    for label, step in steps:
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            step()
            best = min(best, time.perf_counter() - start)
        out.append((label, best))
    return out


def render_section(
    timings: dict[str, Timing],
    info: dict[str, str],
    args: argparse.Namespace,
    files: int,
    size: int,
    release_seconds: float,
    verdict: str,
    where_time_goes: tuple[list[tuple[str, float]], list[str]] | None,
) -> str:
    """The RESULTS.md section, markers included."""
    base, base_sub = timings[A], timings[A_SUB]
    noval, full, cli = timings[B_NOVAL], timings[B], timings[C]
    ratio = noval.best / base.best
    met = "met" if ratio <= TARGET_RATIO else "NOT met"
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = []
    for label, against in ((A, A), (B_NOVAL, A), (B, A), (A_SUB, A_SUB), (C, A_SUB)):
        t = timings[label]
        rows.append(
            f"| {t.label} | {t.command} | {t.best:.3f} | {t.median:.3f} |"
            f" {t.best / timings[against].best:.2f}x {against.split()[0]} |"
        )
    table = "\n".join(rows)
    where = ""
    if where_time_goes is not None:
        steps, profiled = where_time_goes
        step_rows = "\n".join(
            f"| {label} | {seconds:.3f} | {seconds / noval.best * 100:.0f}% |"
            for label, seconds in steps
        )
        why = "The target is missed" if ratio > TARGET_RATIO else "Asked with --profile"
        where = f"""

{why}. Where the time of (b') goes: each step timed on its own, best of
{args.repeat} ("of which" rows are parts of the row above them).

| step | best (s) | of (b') best |
|---|---:|---:|
{step_rows}
| (b') whole, for reference | {noval.best:.3f} | 100% |
| (a) sha256 alone, for reference | {base.best:.3f} | {base.best / noval.best * 100:.0f}% |

One run of (b') under cProfile, the functions with the most own time (seconds):

| function | calls | own | share | cumulative |
|---|---:|---:|---:|---:|
{chr(10).join(profiled)}"""
    return f"""<!-- {SECTION} -->
## Release verification on {args.nodes:,} nodes and {args.groups} groups

- Date: {stamp}
- Machine: {info["nproc"]} CPUs ({info["cpu"]}), {info["os"]}
- Python: {info["python"]}
- Fleet: {files:,} files in the release's commit, {size / 1e6:.1f} MB (`bench/gen_fleet.py`,
  seed 0, plus `trust/root.json`, `trust/roots/1.json`, `trust/allowed_signers`); root and
  release thresholds 2 of 2; `edgefleet release` signed it in {release_seconds:.2f} s
- Reproduce: `python bench/bench_verify.py --nodes {args.nodes} --groups {args.groups} \
--repeat {args.repeat} --inner {args.inner}{" --profile" if args.profile else ""}`
  (with the project's virtualenv Python)

Runs interleaved, {args.repeat} of each; wall times in seconds. The first three rows run
in the benchmark's own process over the checked-out working tree (the file list is computed
once, before timing); one run of (a) or (b') is the mean of {args.inner} back-to-back
executions. The last two rows are fresh processes, so they pay interpreter start-up and
imports, and `edgefleet verify` reads the files from git objects.

| measurement | what it does | best | median | best / baseline |
|---|---|---:|---:|---:|
{table}

- **(b') verify without validation / (a) sha256 alone: {ratio:.2f}x** (target: within \
{TARGET_RATIO}x, {met}); medians: {noval.median / base.median:.2f}x
- (b) verify_tree, validation included / (a): {full.best / base.best:.2f}x; validation \
is about {full.best - noval.best:.2f} s of its {full.best:.2f} s
- (c) edgefleet verify / (a') the same hashing in a fresh process: \
{cli.best / base_sub.best:.2f}x; (c) / (a): {cli.best / base.best:.2f}x
- (c) verdict: {verdict}{where}
<!-- /{SECTION} -->
"""


def main(argv: list[str] | None = None) -> int:
    """Generate and release the fleet, time the measurements, record the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000, help="nodes to generate (10000)")
    parser.add_argument("--groups", type=int, default=50, help="groups to generate (50)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each (3)")
    parser.add_argument("--edgefleet", help="path of the edgefleet command (default: found)")
    parser.add_argument(
        "--inner",
        type=int,
        default=5,
        help="executions of (a) and (b') averaged into one run (5)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="profile (b') even when the target is met"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print the section instead of updating RESULTS.md"
    )
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.groups < 0 or args.repeat < 1 or args.inner < 1:
        parser.error("--nodes, --repeat and --inner must be at least 1, --groups not negative")
    edgefleet = find_edgefleet(args.edgefleet)
    if edgefleet is None or not edgefleet.exists():
        print(
            "bench_verify: the `edgefleet` command was not found; install the project"
            " (pip install -e .) and rerun with the same Python, or pass --edgefleet PATH.",
            file=sys.stderr,
        )
        return 2

    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-verify-") as tmp:
        fleet, keys = Path(tmp) / "fleet", Path(tmp) / "keys"
        generate_fleet(fleet, args.nodes, args.groups, seed=0)
        release_seconds = make_release(fleet, keys, edgefleet)
        paths = run(["git", "ls-files", "-z"], cwd=fleet).rstrip("\0").split("\0")
        if run(["git", "status", "--porcelain"], cwd=fleet).strip():
            sys.exit("bench_verify: the working tree differs from the commit")
        size = sum((fleet / p).stat().st_size for p in paths)
        print(
            f"fleet: {len(paths)} files, {size / 1e6:.1f} MB; released in {release_seconds:.2f} s"
        )
        pinned_file = Path(tmp) / "pinned-root.json"
        pinned_file.write_bytes((fleet / "trust" / "roots" / "1.json").read_bytes())
        pinned = pinned_file.read_bytes()
        message, target = read_tag(fleet, "release/1")
        list_file = Path(tmp) / "paths"
        list_file.write_text("\0".join(paths), encoding="utf-8")

        jobs = measured(fleet, paths, pinned, "release/1", message, target)
        commands = {
            A_SUB: [sys.executable, "-c", HASH_SCRIPT, str(fleet), str(list_file)],
            C: [str(edgefleet), "verify", "--repo", str(fleet), "--trust", str(pinned_file)],
        }
        shown = {
            A: "`open()` + read + `hashlib.sha256` every file",
            B_NOVAL: "`load_pinned_root`, `envelope_from_message`, `verify_release`,"
            " `VerifiedFiles.verify_all()` (DirectoryFiles)",
            B: "`verify_tree(...)` over DirectoryFiles, validation included",
            A_SUB: "(a) in a fresh `python -c` process",
            C: "`edgefleet verify --repo DIR --trust ROOT` (git objects)",
        }
        # Untimed first runs: they check every path works (so timings mean something) and
        # warm the page cache and the .pyc files.
        for job in jobs.values():
            job()
        _, proc = run_timed(commands[C])
        if proc.returncode != 0:
            sys.exit(f"bench_verify: edgefleet verify exited {proc.returncode}: {proc.stderr}")
        report = json.loads(proc.stdout)
        verdict = (
            f"exit 0, verified {report['tag']}: {report['files']:,} files,"
            f" {len(report['signers'])} signers, root version {report['rootVersion']}"
        )
        times: dict[str, list[float]] = {label: [] for label in shown}
        for round_no in range(1, args.repeat + 1):
            for label in shown:
                if label in jobs:
                    # The target pair takes a tenth of a second: one run is the mean of
                    # --inner back-to-back executions, so that a scheduler hiccup (or luck)
                    # in one execution does not decide the ratio.
                    count = args.inner if label in (A, B_NOVAL) else 1
                    start = time.perf_counter()
                    for _ in range(count):
                        jobs[label]()
                    seconds = (time.perf_counter() - start) / count
                else:
                    seconds, proc = run_timed(commands[label])
                    if proc.returncode != 0:
                        sys.exit(f"bench_verify: {label} exited {proc.returncode}: {proc.stderr}")
                times[label].append(seconds)
                print(f"round {round_no}: {label:<28} {seconds:7.3f} s", flush=True)
        timings = {label: Timing(label, shown[label], times[label]) for label in shown}
        missed = timings[B_NOVAL].best / timings[A].best > TARGET_RATIO
        where_time_goes = None
        if missed or args.profile:
            steps = phases(fleet, paths, pinned, "release/1", message, args.repeat)
            where_time_goes = (steps, profile_rows(jobs[B_NOVAL]))

    section = render_section(
        timings, machine_info(), args, len(paths), size, release_seconds, verdict, where_time_goes
    )
    print()
    print(section)
    if not args.no_write:
        write_section(section, RESULTS, SECTION)
        print(f"updated {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
