"""Health checks and hooks with real processes and real ONNX models, nothing mocked."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from node_agent.health import (
    CheckContext,
    CheckResult,
    run_checks,
    run_command,
    run_hook,
    run_onnx,
    run_onnx_isolated,
)

from tests.conftest import ROOT
from tests.onnx_models import (
    affine_golden,
    affine_model,
    golden,
    npy_bytes,
    sample_input,
    slow_model,
)

MODEL = "model.onnx"


def make_ctx(
    bank: Path, files: Mapping[str, bytes], env: Mapping[str, str] | None = None
) -> CheckContext:
    def read(path: str) -> bytes:
        return files[path]

    bank.mkdir(parents=True, exist_ok=True)
    return CheckContext("model", bank, MODEL, read, dict(env or {}))


@pytest.fixture
def bank(tmp_path: Path) -> Path:
    path = tmp_path / "components" / "model" / "a"
    path.mkdir(parents=True)
    return path


@pytest.fixture
def affine_ctx(bank: Path) -> CheckContext:
    """A bank holding affine_model(2, 0.5) and golden files that match it."""
    model = affine_model(2.0, 0.5)
    (bank / MODEL).write_bytes(model)
    x = sample_input()
    files = {"golden/in.npy": npy_bytes(x), "golden/out.npy": npy_bytes(golden(model, x))}
    return make_ctx(bank, files)


def script(bank: Path, name: str, body: str) -> Path:
    path = bank / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def assert_one_line(result: CheckResult) -> None:
    assert "\n" not in result.detail and result.detail


# exec checks


def test_exec_ok(bank: Path) -> None:
    result = run_command(["/bin/sh", "-c", "echo fine"], 5, make_ctx(bank, {}))
    assert result.ok and result.kind == "exec"
    assert result.name == "exec /bin/sh -c 'echo fine'"
    assert result.detail.startswith("exit 0")
    assert result.as_json()["ok"] is True


def test_exec_nonzero_exit_names_code_and_stderr_tail(bank: Path) -> None:
    body = (
        "yes noise | head -c 100000; echo early >&2; echo 'self-test: sensor missing' >&2\nexit 3\n"
    )
    script(bank, "selftest", body)
    result = run_command(["./selftest"], 5, make_ctx(bank, {}))
    assert not result.ok
    assert result.detail == "got exit 3, expected 0 (stderr: self-test: sensor missing)"


def test_exec_killed_by_signal(bank: Path) -> None:
    result = run_command(["/bin/sh", "-c", "kill -SEGV $$"], 5, make_ctx(bank, {}))
    assert not result.ok and "SIGSEGV" in result.detail


def _gone(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return True
    return fields[0] == "Z"  # a zombie awaiting its reaper no longer runs


def test_exec_timeout_kills_the_process_group(bank: Path) -> None:
    pidfile = bank / "grandchild.pid"
    argv = ["/bin/sh", "-c", f"sleep 30 & echo $! > {pidfile}; sleep 30"]
    began = time.monotonic()
    result = run_command(argv, 1, make_ctx(bank, {}))
    assert time.monotonic() - began < 5
    assert not result.ok
    assert result.detail == "got no exit within 1 s, expected exit 0"
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while not _gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(grandchild)


def test_exec_exit_is_not_held_up_by_a_background_child(bank: Path) -> None:
    # A child that outlives the program keeps the output pipes open; the check must not wait.
    began = time.monotonic()
    result = run_command(["/bin/sh", "-c", "sleep 5 & exit 0"], 30, make_ctx(bank, {}))
    assert result.ok and time.monotonic() - began < 3


def test_exec_missing_program(bank: Path) -> None:
    result = run_command(["/nonexistent/self-test", "--x"], 5, make_ctx(bank, {}))
    assert not result.ok
    assert result.detail.startswith("got no such program '/nonexistent/self-test'")
    assert "expected" in result.detail


def test_exec_not_executable(bank: Path) -> None:
    (bank / "plain").write_text("echo hi\n")
    result = run_command(["./plain"], 5, make_ctx(bank, {}))
    assert not result.ok and "Permission denied" in result.detail


def test_exec_sees_env_and_runs_in_the_bank(bank: Path) -> None:
    (bank / "marker").write_text("here")
    ctx = make_ctx(bank, {}, env={"EXTRA": "42", "EDGEFLEET_BANK": "/not/the/bank"})
    check = 'test "$EDGEFLEET_BANK" = "$PWD" && test "$EDGEFLEET_COMPONENT" = model'
    check += ' && test "$EXTRA" = 42 && test -f marker && test -n "$PATH"'
    result = run_command(["/bin/sh", "-c", check + " || { env >&2; exit 1; }"], 5, ctx)
    assert result.ok, result.detail


def test_exec_empty_argv_is_a_failed_check(bank: Path) -> None:
    result = run_command([], 5, make_ctx(bank, {}))
    assert not result.ok and result.detail == "got an empty argv, expected a program to run"


def test_exec_stdin_is_closed(bank: Path) -> None:
    result = run_command(["/bin/sh", "-c", "cat; exit 0"], 2, make_ctx(bank, {}))
    assert result.ok


def test_hook_runs_and_is_named_by_phase(bank: Path) -> None:
    ctx = make_ctx(bank, {})
    assert run_hook(None, "activate", ctx) is None
    assert run_hook({"activate": None}, "activate", ctx) is None
    result = run_hook({"activate": ["/bin/sh", "-c", "touch activated"]}, "activate", ctx)
    assert result is not None and result.ok and result.kind == "hook"
    assert result.name.startswith("hook activate:")
    assert (bank / "activated").exists()
    failed = run_hook({"rollback": ["/bin/false"]}, "rollback", ctx)
    assert failed is not None and not failed.ok and failed.detail == "got exit 1, expected 0"


# onnx checks


def test_onnx_ok_within_atol(affine_ctx: CheckContext) -> None:
    result = run_onnx(
        {"input": "golden/in.npy", "expected": "golden/out.npy", "atol": 1e-4}, affine_ctx
    )
    assert result.ok, result.detail
    assert result.kind == "onnx" and result.name == "onnx golden/in.npy"
    assert "over 5 runs" in result.detail


def test_onnx_golden_matches_plain_numpy() -> None:
    x = sample_input(3, 4)
    np.testing.assert_allclose(golden(affine_model(2.0, 0.5), x), affine_golden(x, 2.0, 0.5))


def test_onnx_wrong_output_reports_max_diff_and_where(bank: Path) -> None:
    x = sample_input()
    (bank / MODEL).write_bytes(affine_model(2.0, 0.5))
    broken = affine_golden(x, 2.0, 0.5)
    broken[1, 2] += 0.73
    ctx = make_ctx(bank, {"in.npy": npy_bytes(x), "out.npy": npy_bytes(broken)})
    result = run_onnx({"input": "in.npy", "expected": "out.npy", "atol": 1e-4}, ctx)
    assert not result.ok
    assert result.detail.startswith("got max |diff| 0.73 at index (1, 2), expected <= atol 0.0001")


def test_onnx_broken_model_with_another_bias_fails(affine_ctx: CheckContext) -> None:
    (affine_ctx.bank_dir / MODEL).write_bytes(affine_model(2.0, 0.6))
    result = run_onnx({"input": "golden/in.npy", "expected": "golden/out.npy"}, affine_ctx)
    assert not result.ok
    # which element's float32 rounding makes the largest difference is not ours to predict
    assert re.fullmatch(
        r"got max \|diff\| 0\.1 at index \(\d, \d\), expected <= atol 1e-05", result.detail
    )


def test_onnx_shape_mismatch(bank: Path) -> None:
    x = sample_input(2, 4)
    (bank / MODEL).write_bytes(affine_model(1.0, 0.0))
    ctx = make_ctx(
        bank, {"in.npy": npy_bytes(x), "out.npy": npy_bytes(np.zeros((2, 5), np.float32))}
    )
    result = run_onnx({"input": "in.npy", "expected": "out.npy"}, ctx)
    assert not result.ok
    assert result.detail == "got output shape (2, 4), expected (2, 5) (out.npy)"


def test_onnx_input_dtype_error_is_a_failed_check(bank: Path) -> None:
    x = sample_input().astype(np.float64)
    (bank / MODEL).write_bytes(affine_model(1.0, 0.0))
    ctx = make_ctx(bank, {"in.npy": npy_bytes(x), "out.npy": npy_bytes(x)})
    result = run_onnx({"input": "in.npy", "expected": "out.npy"}, ctx)
    assert not result.ok and result.detail.startswith("got an inference error on in.npy")
    assert_one_line(result)


def test_onnx_input_shape_error_is_a_failed_check(bank: Path) -> None:
    x = sample_input(2, 3)
    (bank / MODEL).write_bytes(affine_model(1.0, 0.0, width=4))
    ctx = make_ctx(bank, {"in.npy": npy_bytes(x), "out.npy": npy_bytes(x)})
    result = run_onnx({"input": "in.npy", "expected": "out.npy"}, ctx)
    assert not result.ok and "shape (2, 3)" in result.detail


def test_onnx_corrupt_model_fails_cleanly(affine_ctx: CheckContext) -> None:
    (affine_ctx.bank_dir / MODEL).write_bytes(b"\x08\x08 this is not a protobuf \xff" * 10)
    result = run_onnx({"input": "golden/in.npy", "expected": "golden/out.npy"}, affine_ctx)
    assert not result.ok
    assert result.detail.startswith("got a model model.onnx that does not load (")
    assert result.detail.endswith("expected a valid ONNX model")
    assert_one_line(result)


def test_onnx_missing_model_and_missing_golden_fail_cleanly(affine_ctx: CheckContext) -> None:
    spec = {"input": "golden/in.npy", "expected": "golden/out.npy", "model": "other.onnx"}
    result = run_onnx(spec, affine_ctx)
    assert not result.ok and result.detail.startswith("got no model file other.onnx")
    result = run_onnx({"input": "golden/nope.npy", "expected": "golden/out.npy"}, affine_ctx)
    assert not result.ok and result.detail.startswith("got no readable input file golden/nope.npy")


def test_onnx_unknown_input_name(affine_ctx: CheckContext) -> None:
    spec = {"input": "golden/in.npy", "expected": "golden/out.npy", "inputName": "pixels"}
    result = run_onnx(spec, affine_ctx)
    assert not result.ok
    assert result.detail == "got model inputs ['x'], expected one named 'pixels'"
    spec["inputName"] = "x"
    assert run_onnx(spec, affine_ctx).ok


def test_onnx_model_link_out_of_the_bank_is_refused(
    affine_ctx: CheckContext, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere.onnx"
    outside.write_bytes(affine_model(2.0, 0.5))
    (affine_ctx.bank_dir / "link.onnx").symlink_to(outside)
    spec = {"input": "golden/in.npy", "expected": "golden/out.npy", "model": "link.onnx"}
    result = run_onnx(spec, affine_ctx)
    assert not result.ok and "outside the bank" in result.detail


@pytest.fixture
def slow_ctx(bank: Path) -> CheckContext:
    model = slow_model(width=256, depth=16)
    (bank / "slow.onnx").write_bytes(model)
    x = sample_input(64, 256)
    files = {"golden/in.npy": npy_bytes(x), "golden/out.npy": npy_bytes(golden(model, x))}
    return CheckContext("slow", bank, "slow.onnx", files.__getitem__, {})


def test_onnx_latency_budget_exceeded(slow_ctx: CheckContext) -> None:
    spec = {
        "input": "golden/in.npy",
        "expected": "golden/out.npy",
        "atol": 1e-3,
        "maxLatencyMs": 0.001,
    }
    result = run_onnx(spec, slow_ctx, runs=3)
    assert not result.ok
    assert result.detail.startswith("got median latency ")
    assert result.detail.endswith(" ms over 3 runs, expected <= 0.001 ms")


def test_onnx_generous_latency_budget_passes(slow_ctx: CheckContext) -> None:
    spec = {
        "input": "golden/in.npy",
        "expected": "golden/out.npy",
        "atol": 1e-3,
        "maxLatencyMs": 10_000,
    }
    result = run_onnx(spec, slow_ctx)
    assert result.ok, result.detail


# run_checks


def test_run_checks_stops_at_the_first_failure(affine_ctx: CheckContext) -> None:
    bank = affine_ctx.bank_dir
    checks = [
        {"onnx": {"input": "golden/in.npy", "expected": "golden/out.npy"}},
        {"exec": {"argv": ["/bin/sh", "-c", "echo bad >&2; exit 4"], "timeoutSeconds": 5}},
        {"exec": {"argv": ["/bin/sh", "-c", "touch never-ran"]}},
    ]
    results = run_checks(checks, affine_ctx)
    assert [(r.kind, r.ok) for r in results] == [("onnx", True), ("exec", False)]
    assert results[-1].detail == "got exit 4, expected 0 (stderr: bad)"
    assert not (bank / "never-ran").exists()
    assert run_checks([], affine_ctx) == []
    every = run_checks([*checks[:1], {"exec": {"argv": ["/bin/true"]}}], affine_ctx)
    assert [r.ok for r in every] == [True, True]


def test_importing_health_does_not_load_onnxruntime_or_numpy() -> None:
    code = (
        "import sys, node_agent.health\n"
        "top = {m.split('.')[0] for m in sys.modules}\n"
        "heavy = sorted(top & {'onnxruntime', 'numpy', 'onnx'})\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_an_isolated_onnx_check_gives_the_in_process_verdict(
    affine_ctx: CheckContext, bank: Path
) -> None:
    spec = {"input": "golden/in.npy", "expected": "golden/out.npy", "atol": 1e-4}
    good = run_onnx_isolated(spec, affine_ctx)
    assert good.ok and good.kind == "onnx" and "over 5 runs" in good.detail
    (bank / MODEL).write_bytes(affine_model(2.0, 0.6))
    bad, here = run_onnx_isolated(spec, affine_ctx), run_onnx(spec, affine_ctx)
    assert not bad.ok and bad.detail == here.detail


def test_an_isolated_onnx_check_has_a_deadline(slow_ctx: CheckContext) -> None:
    spec = {"input": "golden/in.npy", "expected": "golden/out.npy"}
    result = run_onnx_isolated(spec, slow_ctx, runs=100_000, timeout_s=3)
    assert not result.ok
    assert result.detail == "got no result within 3 s, expected the check to end"


def test_an_isolated_onnx_check_reports_an_unreadable_golden_file(
    affine_ctx: CheckContext,
) -> None:
    result = run_onnx_isolated({"input": "golden/missing.npy", "expected": "x"}, affine_ctx)
    assert not result.ok and "golden/missing.npy" in result.detail


def test_running_onnx_checks_leaves_the_runtime_out_of_the_agent(tmp_path: Path) -> None:
    # The idle agent stays small after an update: onnxruntime only ever loads in the child.
    model = affine_model(2.0, 0.5)
    x = sample_input()
    (tmp_path / MODEL).write_bytes(model)
    (tmp_path / "in.npy").write_bytes(npy_bytes(x))
    (tmp_path / "out.npy").write_bytes(npy_bytes(golden(model, x)))
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from node_agent.health import CheckContext, run_checks\n"
        f"bank = Path({str(tmp_path)!r})\n"
        "ctx = CheckContext('model', bank, 'model.onnx', lambda p: (bank / p).read_bytes(), {})\n"
        "[r] = run_checks([{'onnx': {'input': 'in.npy', 'expected': 'out.npy'}}], ctx)\n"
        "assert r.ok, r.detail\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'onnxruntime', 'numpy'}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
