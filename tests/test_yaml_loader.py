"""The safe loader on its own: lines, aliases, limits."""

from __future__ import annotations

import time

import pytest

from reconciler.errors import DocumentError
from reconciler.limits import Limits
from reconciler.yaml_loader import load_yaml

DOC = b"""\
apiVersion: edgefleet/v1
spec:
  components:
    app:
      health:
        - exec:
            argv: [a, b]
        - onnx: {input: x}
"""


def test_every_field_has_its_line() -> None:
    loaded = load_yaml(DOC, "f.yaml")
    assert loaded.line_of(("apiVersion",)) == 1
    assert loaded.line_of(("spec", "components", "app")) == 4
    assert loaded.line_of(("spec", "components", "app", "health", 0, "exec", "argv")) == 7
    assert loaded.line_of(("spec", "components", "app", "health", 1, "onnx", "input")) == 8
    assert loaded.line_of(("spec", "nothing", "here")) == 2  # nearest ancestor the text shows


def test_aliases_are_independent_copies() -> None:
    loaded = load_yaml(b"a: &x {k: [1]}\nb: *x\n", "f.yaml")
    loaded.data["a"]["k"].append(2)
    assert loaded.data["b"] == {"k": [1]}


def test_timestamps_stay_text_and_scalars_resolve() -> None:
    loaded = load_yaml(b"t: 2026-11-22T10:00:00Z\nn: ~\ni: 0x10\nf: 1.5e+3\nq: 'yes'\n", "f")
    assert loaded.data == {"t": "2026-11-22T10:00:00Z", "n": None, "i": 16, "f": 1500.0, "q": "yes"}


def test_billion_laughs_fails_fast_with_little_work() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n"
        for i in range(12)
    )
    started = time.process_time()
    with pytest.raises(DocumentError, match="billion laughs"):
        load_yaml(bomb.encode(), "bomb.yaml", Limits(max_yaml_nodes=10_000))
    # Not a timing assert on the machine's speed: a bound on work that a 10^13-node
    # expansion would exceed by many orders of magnitude.
    assert time.process_time() - started < 5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"a: *nowhere\n", "names no anchor"),
        (b"? [a, b]\n: 1\n", "not a scalar"),
        (b"1: x\n", "reads as 1, expected a string"),
        (b"a: !custom x\n", "tag !custom is not allowed"),
        (b"a: !!binary aGVsbG8=\n", "is not allowed"),
        (b"a: !!set {x}\n", "is not allowed"),
        (b"a: !!omap [{x: 1}]\n", "is not allowed"),
    ],
)
def test_refused_constructs(text: bytes, message: str) -> None:
    with pytest.raises(DocumentError, match=message):
        load_yaml(text, "f.yaml")


def test_size_limit_is_checked_before_parsing() -> None:
    with pytest.raises(DocumentError, match="expected at most 10"):
        load_yaml(b"a: 1\n" * 10, "f.yaml", Limits(max_yaml_bytes=10))
