"""The example fleet repository: it validates, every node renders, and its artifacts rebuild."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from reconciler.render import render_node
from reconciler.repo_files import DirectoryFiles
from reconciler.schema_check import validator
from reconciler.validate import load_for_node, validate_directory
from tests.conftest import EXAMPLE

NODES = sorted(p.stem for p in (EXAMPLE / "nodes").glob("*.yaml"))


def test_example_is_realistic_and_validates_without_errors() -> None:
    report = validate_directory(EXAMPLE)
    assert report.ok, [p.text() for p in report.problems]
    assert len(report.repo.nodes) >= 12 and len(report.repo.groups) >= 3
    names = {ref.partition("@")[0] for ref in report.repo.artifacts}
    assert {"anomaly-model", "pos-app"} <= names
    kinds = {a.get("unpack", "none") for a in report.repo.artifacts.values()}
    assert kinds == {"none", "tar"}
    regions = {n.labels.get("country") for n in report.repo.nodes}
    rings = {n.labels.get("ring") for n in report.repo.nodes}
    assert len(regions) >= 3 and {"canary", "stable"} <= rings


@pytest.mark.parametrize("node_id", NODES)
def test_every_example_node_renders(node_id: str) -> None:
    state = render_node(load_for_node(DirectoryFiles(EXAMPLE), node_id), node_id)
    assert not list(validator("rendered-node.json").iter_errors(state))
    assert state["spec"]["components"], f"{node_id} would run nothing"


@pytest.fixture(scope="module")
def built_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("store")
    script = EXAMPLE / "make-artifacts.py"
    subprocess.run(
        [sys.executable, str(script), "--store", str(store)], check=True, capture_output=True
    )
    return store


def test_make_artifacts_rebuilds_exactly_what_the_catalog_pins(built_store: Path) -> None:
    check = subprocess.run(
        [sys.executable, str(EXAMPLE / "make-artifacts.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    catalog = yaml.safe_load((EXAMPLE / "artifacts.yaml").read_text())["spec"]["artifacts"]
    for ref, entry in catalog.items():
        blob = (built_store / "sha256" / entry["sha256"]).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == entry["sha256"], ref
        assert len(blob) == entry["size"], ref


def test_example_models_reproduce_their_golden_outputs(built_store: Path) -> None:
    catalog = yaml.safe_load((EXAMPLE / "artifacts.yaml").read_text())["spec"]["artifacts"]
    features = np.load(EXAMPLE / "golden" / "anomaly-in.npy")
    golden = {
        "anomaly-model@1.3.0": "anomaly-out.npy",
        "anomaly-model@1.4.0-rc1": "anomaly-out-1.4.0.npy",
    }
    for ref, expected_file in golden.items():
        model = built_store / "sha256" / catalog[ref]["sha256"]
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        (got,) = session.run(None, {name: features})
        np.testing.assert_allclose(got, np.load(EXAMPLE / "golden" / expected_file), atol=1e-4)
