"""`edgefleet artifacts add|prune` on a copy of the example fleet and its store, in process."""

from __future__ import annotations

import difflib
import hashlib
import json
import random
import shutil
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from reconciler.cli import main
from reconciler.commands import artifacts as artifacts_cmd
from reconciler.commands.artifacts import version_key
from reconciler.commands.demo import load_example_builder
from reconciler.deltas import apply_patch, make_patches
from reconciler.problems import Problem
from tests.conftest import EXAMPLE

V130 = "e29bc474a534eca4e3f4bf3a95782936253e7111e427b6420096dfafe5679634"
V140RC1 = "aaee62bcc3d84bce8211dab5876d4aa2667548f6cb947346361ada6df63b8fb2"


@cache
def builder() -> ModuleType:
    """The example fleet's own `make-artifacts.py`, loaded as a module (as `edgefleet demo`)."""
    pytest.importorskip("onnx")
    return load_example_builder()


@cache
def model(version: str) -> bytes:
    data: bytes = builder().build_model(version)
    return data


def retrained(seed: int) -> bytes:
    """1.4.0-rc1 with a few weights moved, as another fine-tuning would: a new version."""
    data = bytearray(model("1.4.0-rc1"))
    rng = random.Random(seed)
    for _ in range(40):
        i = rng.randrange(len(data) // 2, len(data) - 200)
        data[i] ^= 0x5A
    return bytes(data)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fleet(tmp_path: Path) -> tuple[Path, Path]:
    """The example fleet and, beside it, a copy of its store: (repo, store)."""
    repo = tmp_path / "fleet"
    shutil.copytree(EXAMPLE, repo, ignore=shutil.ignore_patterns(".store", "__pycache__"))
    # The example's store is built, not committed (.gitignore): build it as its script does.
    store = tmp_path / "store"
    (store / "sha256").mkdir(parents=True)
    for artifact in builder().build_all().artifacts:
        path = store / "sha256" / artifact.sha256
        path.write_bytes(artifact.data)
        path.chmod(0o444)
    return repo, store


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def add(
    capsys: pytest.CaptureFixture[str],
    repo: Path,
    store: Path,
    file: Path,
    name: str,
    version: str,
    *extra: str,
) -> tuple[int, dict[str, Any], str]:
    code = main(
        [
            "artifacts",
            "add",
            str(file),
            "--name",
            name,
            "--version",
            version,
            "--store",
            str(store),
            "--repo",
            str(repo),
            *extra,
        ]
    )
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else {}), err


def catalog(repo: Path) -> dict[str, Any]:
    entries: dict[str, Any] = yaml.safe_load((repo / "artifacts.yaml").read_text())["spec"][
        "artifacts"
    ]
    return entries


def stored(store: Path) -> set[str]:
    return {p.name for p in (store / "sha256").iterdir()}


def only_inserted(old: str, new: str) -> list[str]:
    """The lines `new` adds to `old`; fails when any line of `old` changed or moved."""
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    added: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        assert tag in ("equal", "insert"), f"{tag}: {a[i1:i2]!r} -> {b[j1:j2]!r}"
        if tag == "insert":
            added += b[j1:j2]
    return added


def test_add_a_new_version_with_a_delta_from_the_previous_one(
    fleet: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo, store = fleet
    before = (repo / "artifacts.yaml").read_text()
    new = retrained(1)
    file = write(tmp_path / "anomaly-model.onnx", new)

    code, out, err = add(
        capsys, repo, store, file, "anomaly-model", "1.4.0", "--delta-from", "anomaly-model@1.3.0"
    )

    assert code == 0, err
    assert out["artifact"] == "anomaly-model@1.4.0"
    assert (out["sha256"], out["size"]) == (sha(new), len(new))
    assert [d["from"] for d in out["deltas"]] == ["anomaly-model@1.3.0"]
    assert out["deltas"][0]["size"] < out["compressedSize"]
    entry = catalog(repo)["anomaly-model@1.4.0"]
    assert entry["file"] == "anomaly-model.onnx"
    assert (entry["sha256"], entry["size"], entry["unpack"]) == (sha(new), len(new), "none")
    assert entry["url"] == f"sha256/{sha(new)}"
    (delta,) = entry["deltas"]
    assert delta["from"] == V130
    assert delta["url"] == f"sha256/{delta['sha256']}"
    # Both the artifact and its patch are in the store, read-only, named by their digests.
    for digest in (sha(new), delta["sha256"]):
        path = store / "sha256" / digest
        assert sha(path.read_bytes()) == digest
        assert path.stat().st_mode & 0o777 == 0o444
    assert (store / "sha256" / delta["sha256"]).stat().st_size == delta["size"]
    # An agent holding 1.3.0 rebuilds exactly the new bytes from the patch.
    rebuilt = tmp_path / "rebuilt.onnx"
    apply_patch(
        delta["format"],
        store / "sha256" / V130,
        store / "sha256" / delta["sha256"],
        rebuilt,
        max_size=len(new),
    )
    assert rebuilt.read_bytes() == new
    # The rest of the file is untouched, byte for byte: only the new entry's lines are added,
    # right after the last anomaly-model entry and before the pos-app comment.
    after = (repo / "artifacts.yaml").read_text()
    added = only_inserted(before, after)
    assert added[0] == "    anomaly-model@1.4.0:\n"
    assert "".join(added) in after
    assert after.index("anomaly-model@1.4.0:") < after.index("# The point-of-sale application")
    assert main(["validate", str(repo)]) == 0


def test_default_bases_are_every_earlier_version_in_semver_order(
    fleet: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo, store = fleet
    rc2 = write(tmp_path / "rc2.onnx", retrained(2))
    code, out, err = add(capsys, repo, store, rc2, "anomaly-model", "1.4.0-rc2")
    assert code == 0, err
    # 1.3.0 < 1.4.0-rc1 < 1.4.0-rc2: both earlier versions are bases, oldest first.
    assert [d["from"] for d in out["deltas"]] == ["anomaly-model@1.3.0", "anomaly-model@1.4.0-rc1"]
    assert [d["from"] for d in catalog(repo)["anomaly-model@1.4.0-rc2"]["deltas"]] == [
        V130,
        V140RC1,
    ]

    # 1.3.1 comes before every 1.4.0 pre-release: its only base is 1.3.0.
    patch = write(tmp_path / "patch.onnx", retrained(3))
    code, out, err = add(capsys, repo, store, patch, "anomaly-model", "1.3.1")
    assert code == 0, err
    assert [d["from"] for d in out["deltas"]] == ["anomaly-model@1.3.0"]
    assert main(["validate", str(repo)]) == 0


def test_semantic_version_order() -> None:
    ordered = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.0.1",
        "1.2.0",
        "1.10.0",
        "2.0.0",
    ]
    shuffled = ordered[:]
    random.Random(7).shuffle(shuffled)
    assert sorted(shuffled, key=version_key) == ordered


def test_add_keeps_the_smaller_patch_format(
    fleet: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo, store = fleet
    new = retrained(4)
    code, out, err = add(
        capsys, repo, store, write(tmp_path / "m.onnx", new), "anomaly-model", "2.0.0"
    )
    assert code == 0, err
    bases = {"anomaly-model@1.3.0": model("1.3.0"), "anomaly-model@1.4.0-rc1": model("1.4.0-rc1")}
    assert {d["from"] for d in out["deltas"]} == set(bases)
    for delta in out["deltas"]:
        patches = make_patches(bases[delta["from"]], new)
        smallest = min(len(p) for p in patches.values())
        assert delta["size"] == smallest
        assert len(patches[delta["format"]]) == smallest


def test_a_patch_not_smaller_than_the_file_or_its_compressed_size_is_not_offered(
    fleet: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo, store = fleet
    rng = random.Random(11)
    one = write(tmp_path / "one.bin", rng.randbytes(32 * 1024))
    two = write(tmp_path / "two.bin", rng.randbytes(32 * 1024))
    assert add(capsys, repo, store, one, "blob", "1.0.0", "--file", "blob.bin")[0] == 0
    files = stored(store)

    code, out, err = add(capsys, repo, store, two, "blob", "1.1.0", "--file", "blob.bin")

    assert code == 0, err
    assert out["deltas"] == []
    (refused,) = out["notOffered"]
    assert refused["from"] == "blob@1.0.0"
    # Random bytes: every format's patch is the file plus its framing, and zstd's frame makes
    # the compressed file bigger still, so the file itself is what a patch must beat.
    assert out["compressedSize"] > out["size"]
    assert refused["size"] >= out["size"]
    assert f"({refused['size']} bytes)" in refused["reason"]
    assert f"the whole file ({out['size']} bytes; compressed it is" in refused["reason"]
    assert "no delta from blob@1.0.0" in err
    assert "deltas" not in catalog(repo)["blob@1.1.0"]
    assert stored(store) == files | {sha(two.read_bytes())}  # no patch kept for nothing
    assert main(["validate", str(repo)]) == 0


def test_refuses_to_overwrite_an_entry_with_other_bytes(
    fleet: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo, store = fleet
    other = write(tmp_path / "anomaly-model.onnx", retrained(5))
    before = (repo / "artifacts.yaml").read_bytes()

    code, _, err = add(capsys, repo, store, other, "anomaly-model", "1.4.0-rc1")
    assert code == 2
    assert "anomaly-model@1.4.0-rc1" in err and "--force" in err
    assert (repo / "artifacts.yaml").read_bytes() == before

    # The same bytes again: nothing to do, apart from the deltas still missing.
    same = write(tmp_path / "same.onnx", model("1.4.0-rc1"))
    code, out, err = add(
        capsys, repo, store, same, "anomaly-model", "1.4.0-rc1", "--file", "anomaly-model.onnx"
    )
    assert code == 0, err
    assert [d["from"] for d in out["deltas"]] == ["anomaly-model@1.3.0"]
    after = (repo / "artifacts.yaml").read_text()
    assert only_inserted(before.decode(), after)[0] == "      deltas:\n"
    code, out, err = add(capsys, repo, store, same, "anomaly-model", "1.4.0-rc1")
    assert (code, out["catalog"]) == (0, "unchanged")
    assert (repo / "artifacts.yaml").read_text() == after

    code, out, err = add(capsys, repo, store, other, "anomaly-model", "1.4.0-rc1", "--force")
    assert code == 0, err
    entry = catalog(repo)["anomaly-model@1.4.0-rc1"]
    assert entry["sha256"] == sha(other.read_bytes())
    assert entry["description"].startswith("1.3.0 with the output layer")
    assert main(["validate", str(repo)]) == 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--name", "Anomaly_Model", "--version", "1.0.0"],
            "--name: got 'Anomaly_Model', expected",
        ),
        (["--name", "anomaly-model", "--version", "1.4"], "--version: got '1.4', expected"),
        (["--name", "anomaly-model", "--version", "v1.5.0"], "--version: got 'v1.5.0', expected"),
        (
            ["--name", "anomaly-model", "--version", "1.5.0", "--delta-from", "anomaly-model"],
            "--delta-from: got 'anomaly-model', expected",
        ),
        (
            [
                "--name",
                "anomaly-model",
                "--version",
                "1.5.0",
                "--delta-from",
                "anomaly-model@0.9.0",
            ],
            "known versions of anomaly-model: 1.4.0-rc1, 1.3.0",
        ),
        (
            ["--name", "anomaly-model", "--version", "1.5.0", "--file", "../escape.onnx"],
            "--file: got '../escape.onnx', expected",
        ),
    ],
)
def test_bad_flags_change_nothing(
    fleet: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    repo, store = fleet
    before, files = (repo / "artifacts.yaml").read_bytes(), stored(store)
    file = write(tmp_path / "x.onnx", b"not a model")
    code = main(["artifacts", "add", str(file), "--store", str(store), "--repo", str(repo), *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert (repo / "artifacts.yaml").read_bytes() == before
    assert stored(store) == files


def test_a_base_missing_from_the_store(
    fleet: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo, store = fleet
    (store / "sha256" / V130).unlink()
    new = write(tmp_path / "m.onnx", retrained(6))

    code, _, err = add(
        capsys, repo, store, new, "anomaly-model", "1.5.0", "--delta-from", "anomaly-model@1.3.0"
    )
    assert code == 2
    assert "anomaly-model@1.3.0" in err and "not in the store" in err

    code, out, err = add(capsys, repo, store, new, "anomaly-model", "1.5.0")
    assert code == 0, err
    assert "warning: anomaly-model@1.3.0" in err and "not in the store" in err
    assert [d["from"] for d in out["deltas"]] == ["anomaly-model@1.4.0-rc1"]
    assert {"from": "anomaly-model@1.3.0", "reason": "base not in the store"} in out["notOffered"]


def test_an_invalid_result_restores_the_catalog(
    fleet: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo, store = fleet
    before = (repo / "artifacts.yaml").read_bytes()
    checks = iter([[], [Problem("fleet/artifacts.yaml", 40, "something is wrong")]])
    monkeypatch.setattr(artifacts_cmd, "_catalog_problems", lambda _repo: next(checks))
    code, _, err = add(capsys, repo, store, write(tmp_path / "m", retrained(7)), "m", "1.0.0")
    assert code == 1
    assert "fleet/artifacts.yaml:40: something is wrong" in err
    assert "kept the old file" in err
    assert (repo / "artifacts.yaml").read_bytes() == before


def prune(
    capsys: pytest.CaptureFixture[str], repo: Path, store: Path, *extra: str
) -> tuple[int, dict[str, Any], str]:
    code = main(["artifacts", "prune", "--store", str(store), "--repo", str(repo), *extra])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else {}), err


def test_prune_keeps_the_newest_versions_and_their_patches(
    fleet: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo, store = fleet
    rng = random.Random(12)
    base = bytearray(rng.randbytes(24 * 1024))
    blobs: dict[str, bytes] = {}
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        base[rng.randrange(len(base))] ^= 0xFF
        blobs[version] = bytes(base)
        file = write(tmp_path / f"blob-{version}", blobs[version])
        assert add(capsys, repo, store, file, "blob", version, "--file", "blob.bin")[0] == 0
    entries = catalog(repo)
    patch = {
        (d["from"], target): d["sha256"]
        for target in ("1.1.0", "1.2.0")
        for d in entries[f"blob@{target}"]["deltas"]
    }
    d10, d11, d12 = (sha(blobs[v]) for v in ("1.0.0", "1.1.0", "1.2.0"))
    assert set(patch) == {(d10, "1.1.0"), (d10, "1.2.0"), (d11, "1.2.0")}
    stray = write(store / "sha256" / ("0" * 64), b"left over")
    everything = stored(store)

    code, out, err = prune(capsys, repo, store, "--keep", "2", "--dry-run")
    assert code == 0, err
    gone = {d10, patch[(d10, "1.1.0")], patch[(d10, "1.2.0")], stray.name}
    assert {r["digest"] for r in out["removed"]} == gone
    assert out["bytesFreed"] == sum((store / "sha256" / g).stat().st_size for g in gone)
    assert stored(store) == everything  # a dry run removes nothing

    code, out, err = prune(capsys, repo, store, "--keep", "2")
    assert code == 0, err
    assert {r["digest"] for r in out["removed"]} == gone
    assert stored(store) == everything - gone
    assert {k["digest"] for k in out["kept"]} == everything - gone
    assert {d11, d12, patch[(d11, "1.2.0")], V130, V140RC1} <= stored(store)
    assert "blob@1.0.0" not in out["keptVersions"]

    # --keep 1: the example's groups and nodes still use anomaly-model@1.3.0 and
    # pos-app@2.1.0, so those stay; blob keeps only 1.2.0, without patches.
    code, out, err = prune(capsys, repo, store, "--keep", "1")
    assert code == 0, err
    assert {r["digest"] for r in out["removed"]} == {d11, patch[(d11, "1.2.0")]}
    assert {"anomaly-model@1.3.0", "pos-app@2.1.0", "blob@1.2.0"} <= set(out["keptVersions"])
    assert out["inUse"] == ["anomaly-model@1.3.0", "pos-app@2.1.0"]


def test_prune_removes_nothing_when_the_catalog_cannot_be_read(
    fleet: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    repo, store = fleet
    files = stored(store)
    (repo / "artifacts.yaml").write_text(
        "apiVersion: edgefleet/v1\nkind: ArtifactCatalog\nspec: [\n"
    )
    code, _, err = prune(capsys, repo, store, "--keep", "1")
    assert code == 2
    assert "artifacts.yaml" in err and "nothing was removed" in err
    assert stored(store) == files

    code, _, err = prune(capsys, repo, store, "--keep", "0")
    assert code == 2
    assert "--keep: got 0, expected at least 1" in err
