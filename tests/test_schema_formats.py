"""The formats of the shared definitions: each accepts the real thing and rejects near misses."""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator

from reconciler.schema_check import load_schema, validator
from tests.conftest import ssh_public_key

DEFS = load_schema("defs.json")["$defs"]

FORMATS: dict[str, tuple[list[object], list[object]]] = {
    "duration": (
        ["30s", "5m", "1h", "7d", "60s"],
        ["60", 60, "60 s", "60sec", "1.5h", "-5m", "0s", "5M", "1h30m", "", "s"],
    ),
    "sha256": (
        ["a" * 64, "0123456789abcdef" * 4],
        ["a" * 63, "a" * 65, "A" * 64, "g" * 64, "sha256:" + "a" * 64, " " + "a" * 63],
    ),
    "artifactRef": (
        ["anomaly-model@1.3.0", "pos-app@2.2.0-rc1", "x@0.0.1+build.5"],
        [
            "anomaly-model",
            "anomaly-model@",
            "anomaly-model@1.3",
            "Anomaly@1.0.0",
            "a b@1.0.0",
            "model@v1.0.0",
            "model@01.0.0",
            "@1.0.0",
            "model@1.0.0@2",
        ],
    ),
    "nodeId": (
        ["store-0042", "a", "wh-duisburg-01", "0" * 63],
        ["Store-0042", "store_0042", "-store", "store-", "store.0042", "0" * 64, "", "store 42"],
    ),
    "relativePath": (
        ["golden/in.npy", "model.onnx", "a/b/c..d", ".hidden/x"],
        ["/etc/passwd", "../x", "a/../b", "a/..", "./a", "a//b", "a\\b", "", "a/./b", "golden/"],
    ),
    "labelValue": (
        ["eu", "", "ring-1", "a.b_c"],
        [True, 10, "-eu", "eu-", "a b", "x" * 64],
    ),
    "url": (
        ["https://a.example/x/", "file:///var/lib/x/", "http://127.0.0.1:8080/"],
        ["ftp://a/", "a.example/x", "https:// a", "/var/lib/x"],
    ),
}


def check(name: str, value: object) -> bool:
    schema = {"$defs": DEFS, "$ref": f"#/$defs/{name}"}
    return not list(Draft202012Validator(schema).iter_errors(value))


@pytest.mark.parametrize(
    ("name", "value", "ok"),
    [(n, v, True) for n, (good, _) in FORMATS.items() for v in good]
    + [(n, v, False) for n, (_, bad) in FORMATS.items() for v in bad],
)
def test_format(name: str, value: object, ok: bool) -> None:
    assert check(name, value) is ok


def test_identity_accepts_a_real_key_and_rejects_other_key_types() -> None:
    identity = validator("node.json").schema["properties"]["spec"]["properties"]["identity"]
    good = ssh_public_key("store-1")
    assert not list(Draft202012Validator(identity).iter_errors(good))
    rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 store-1"
    truncated = good.split()[0] + " " + good.split()[1][:-4]
    for bad in (rsa, truncated, good.replace("ssh-ed25519", "ssh-ed448")):
        assert list(Draft202012Validator(identity).iter_errors(bad)), bad


def test_every_schema_is_a_valid_2020_12_schema() -> None:
    from reconciler.schema_check import schema_names

    for name in schema_names():
        schema = load_schema(name)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema", name
        Draft202012Validator.check_schema(schema)
