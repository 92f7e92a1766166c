"""A component's activate/rollback hooks and health checks, run after a bank switch.

Every outcome is a `CheckResult`, never an exception: a check that cannot even start (no such
program, a corrupt model, a missing golden file) is a failed check, so the caller rolls back
instead of crashing half-way through a release.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import selectors
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

EXEC_TIMEOUT_S = 30.0
# Hooks have no timeout in the schema; a service restart may legitimately take a while, but a
# hung hook must not stall the agent (and with it every later release) forever.
HOOK_TIMEOUT_S = 120.0
DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 0.0
LATENCY_RUNS = 5

# Enough for the last lines of a failing self-test, while a chatty program cannot grow the
# agent's memory without bound.
_TAIL_BYTES = 2048
# After the program exits, a background child it left behind may hold the pipes open for ever;
# this long is spent collecting what is already written before the pipes are abandoned.
_DRAIN_GRACE_S = 0.5
_NAME_CHARS = 160
_REASON_CHARS = 300


@dataclass(frozen=True)
class CheckResult:
    kind: str  # "exec" | "onnx" | "hook"
    name: str
    ok: bool
    detail: str
    seconds: float

    def as_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "name": self.name,
            "ok": self.ok,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class CheckContext:
    component: str
    bank_dir: Path
    artifact_file: str
    read_repo_file: Callable[[str], bytes]
    env: Mapping[str, str]


def _one_line(text: str, limit: int = _REASON_CHARS) -> str:
    """Text fit for a one-line detail: control characters out, long text shortened."""
    cleaned = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


def _seconds_text(value: float) -> str:
    return f"{value:g} s"


def _last_line(tail: bytes) -> str:
    lines = [line for line in tail.decode("utf-8", "replace").splitlines() if line.strip()]
    return _one_line(lines[-1]) if lines else ""


def _command_name(kind: str, argv: Sequence[str]) -> str:
    return _one_line(f"{kind} {shlex.join(argv)}", _NAME_CHARS)


def _collect(proc: subprocess.Popen[bytes], deadline: float) -> dict[int, bytearray]:
    """Read stdout and stderr until both close, the deadline, or shortly after the exit.

    Returns the last bytes of each stream, by file descriptor."""
    assert proc.stdout is not None and proc.stderr is not None
    streams: list[IO[bytes]] = [proc.stdout, proc.stderr]
    tails = {stream.fileno(): bytearray() for stream in streams}
    exited_at: float | None = None
    with selectors.DefaultSelector() as selector:
        for stream in streams:
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map():
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            until = deadline if exited_at is None else min(deadline, exited_at + _DRAIN_GRACE_S)
            if now >= until:
                break
            # Wakes regularly even without output, to notice an exit while a child keeps the
            # pipes open.
            for key, _ in selector.select(min(until - now, 0.1)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                tail = tails[key.fd]
                tail += chunk
                del tail[:-_TAIL_BYTES]
    return tails


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_command(
    argv: Sequence[str], timeout_s: float, ctx: CheckContext, kind: str = "exec"
) -> CheckResult:
    """Run a program in the new bank; ok when it exits 0 within `timeout_s` seconds."""
    name = _command_name(kind, argv)
    env = {
        **os.environ,
        **ctx.env,
        "EDGEFLEET_COMPONENT": ctx.component,
        "EDGEFLEET_BANK": str(ctx.bank_dir),
    }
    started = time.monotonic()
    if not argv:
        return CheckResult(kind, name, False, "got an empty argv, expected a program to run", 0.0)
    program = argv[0]
    try:
        # A session of its own makes the program a process-group leader, so a timeout kills
        # whatever it started too, not only the program itself.
        proc = subprocess.Popen(
            list(argv),
            cwd=ctx.bank_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except FileNotFoundError:
        why = f"no such program {program!r}" if ctx.bank_dir.is_dir() else "no bank folder"
        return CheckResult(
            kind,
            name,
            False,
            _one_line(f"got {why} (in {ctx.bank_dir}), expected an executable to run"),
            time.monotonic() - started,
        )
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return CheckResult(
            kind,
            name,
            False,
            _one_line(f"got cannot start {program!r} ({reason}), expected an executable to run"),
            time.monotonic() - started,
        )
    with proc:
        deadline = started + timeout_s
        try:
            tails = _collect(proc, deadline)
        except BaseException:
            # Interrupted (say by the agent's own shutdown): leave no check running unattended.
            _kill_group(proc)
            raise
        assert proc.stdout is not None and proc.stderr is not None
        stdout = bytes(tails[proc.stdout.fileno()])
        stderr = bytes(tails[proc.stderr.fileno()])
        try:
            code = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return CheckResult(
                kind,
                name,
                False,
                f"got no exit within {_seconds_text(timeout_s)}, expected exit 0",
                time.monotonic() - started,
            )
    seconds = time.monotonic() - started
    if code == 0:
        return CheckResult(kind, name, True, f"exit 0 in {seconds:.2f} s", seconds)
    if code < 0:
        try:
            got = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            got = f"killed by signal {-code}"
    else:
        got = f"exit {code}"
    line = _last_line(stderr)
    output = f" (stderr: {line})" if line else ""
    if not output and (line := _last_line(stdout)):
        output = f" (stdout: {line})"
    return CheckResult(kind, name, False, f"got {got}, expected 0{output}", seconds)


def run_hook(
    hooks: Mapping[str, Any] | None,
    phase: Literal["activate", "rollback"],
    ctx: CheckContext,
    timeout_s: float = HOOK_TIMEOUT_S,
) -> CheckResult | None:
    """Run a component's `hooks.activate` or `hooks.rollback`; None when it has none."""
    argv = (hooks or {}).get(phase)
    if not argv:
        return None
    result = run_command([str(arg) for arg in argv], timeout_s, ctx, kind="hook")
    return replace(result, name=_command_name(f"hook {phase}:", argv))


class _CheckFailed(Exception):
    """One ONNX check step failed; its message is the result's detail."""


def _read_array(ctx: CheckContext, path: str, what: str) -> np.ndarray[Any, Any]:
    import numpy as np

    try:
        data = ctx.read_repo_file(path)
    except Exception as exc:
        raise _CheckFailed(
            f"got no readable {what} file {path} ({_one_line(str(exc)) or type(exc).__name__}), "
            "expected it in the release's commit"
        ) from None
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise _CheckFailed(
            f"got an unreadable {what} file {path} ({_one_line(str(exc))}), "
            "expected a NumPy .npy array"
        ) from None
    if not isinstance(array, np.ndarray):
        raise _CheckFailed(f"got an archive of arrays in {path}, expected a single .npy array")
    return array


def _model_path(ctx: CheckContext, model: str) -> Path:
    bank = ctx.bank_dir.resolve()
    path = (bank / model).resolve()
    # The schema forbids absolute paths and "..", but a link inside the bank could still point
    # anywhere; only the bank's own verified bytes are a meaningful check.
    if not path.is_relative_to(bank):
        raise _CheckFailed(f"got model {model} resolving outside the bank, expected a file in it")
    if not path.is_file():
        raise _CheckFailed(f"got no model file {model} in {ctx.bank_dir}, expected the model")
    return path


def _index_text(index: tuple[Any, ...]) -> str:
    return "(" + ", ".join(str(int(i)) for i in index) + ("," if len(index) == 1 else "") + ")"


def _compare(
    out: npt.NDArray[Any], expected: npt.NDArray[Any], atol: float, rtol: float, golden: str
) -> str:
    """A summary when the output matches the expected values; _CheckFailed otherwise."""
    import numpy as np

    if out.shape != expected.shape:
        raise _CheckFailed(f"got output shape {out.shape}, expected {expected.shape} ({golden})")
    try:
        close = bool(np.allclose(out, expected, atol=atol, rtol=rtol))
        diff = np.abs(out.astype(np.float64) - expected.astype(np.float64))
    except (TypeError, ValueError) as exc:
        raise _CheckFailed(
            f"got output of dtype {out.dtype} that cannot be compared with {expected.dtype} "
            f"({_one_line(str(exc))}), expected numbers"
        ) from None
    bound = f"atol {atol:g}" + (f" + rtol {rtol:g} * |expected|" if rtol else "")
    if diff.size == 0:
        return "empty output matches"
    nan = np.isnan(diff)
    if nan.any():
        where = _index_text(np.unravel_index(int(np.argmax(nan)), diff.shape))
        raise _CheckFailed(f"got NaN at index {where}, expected values within {bound}")
    flat = int(np.argmax(diff))
    worst = float(diff.flat[flat])
    where = _index_text(np.unravel_index(flat, diff.shape))
    if not close:
        raise _CheckFailed(f"got max |diff| {worst:.4g} at index {where}, expected <= {bound}")
    return f"max |diff| {worst:.2g} within {bound}"


def run_onnx(spec: Mapping[str, Any], ctx: CheckContext, runs: int = LATENCY_RUNS) -> CheckResult:
    """Run the model on a golden input, compare with the golden output, and time it."""
    started = time.monotonic()
    name = _one_line(f"onnx {spec.get('input', '?')}", _NAME_CHARS)
    try:
        detail = _onnx_check(spec, ctx, max(1, runs))
    except _CheckFailed as exc:
        return CheckResult("onnx", name, False, str(exc), time.monotonic() - started)
    return CheckResult("onnx", name, True, detail, time.monotonic() - started)


def _onnx_check(spec: Mapping[str, Any], ctx: CheckContext, runs: int) -> str:
    # Imported here, not at the top: the idle agent must not carry onnxruntime's memory and
    # start-up time for a check that runs only after a switch.
    import numpy as np
    import onnxruntime as ort

    model = str(spec.get("model") or ctx.artifact_file)
    input_file = str(spec["input"])
    expected_file = str(spec["expected"])
    x = _read_array(ctx, input_file, "input")
    expected = _read_array(ctx, expected_file, "expected")
    path = _model_path(ctx, model)

    options = ort.SessionOptions()
    # One thread each so that latency is comparable between runs and nodes, and the check does
    # not starve the workload it is checking.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise _CheckFailed(
            f"got a model {model} that does not load ({_one_line(str(exc))}), "
            "expected a valid ONNX model"
        ) from None
    inputs = [i.name for i in session.get_inputs()]
    input_name = spec.get("inputName") or (inputs[0] if inputs else None)
    if input_name is None or input_name not in inputs:
        raise _CheckFailed(
            f"got model inputs {inputs}, expected one named {input_name!r}"
            if input_name
            else f"got a model {model} without inputs, expected one"
        )
    feed = {str(input_name): x}

    def infer() -> Any:
        return session.run(None, feed)

    try:
        # The first run is the correctness check and doubles as the warm-up of the timed runs.
        outputs = infer()
    except Exception as exc:
        raise _CheckFailed(
            f"got an inference error on {input_file} with shape {x.shape} and dtype {x.dtype} "
            f"({_one_line(str(exc))}), expected the model to accept it"
        ) from None
    if not outputs:
        raise _CheckFailed(f"got no outputs from {model}, expected at least one")
    atol = float(spec.get("atol", DEFAULT_ATOL))
    rtol = float(spec.get("rtol", DEFAULT_RTOL))
    summary = _compare(np.asarray(outputs[0]), expected, atol, rtol, expected_file)

    timings = []
    for _ in range(runs):
        begin = time.perf_counter()
        infer()
        timings.append((time.perf_counter() - begin) * 1000.0)
    median = statistics.median(timings)
    budget = spec.get("maxLatencyMs")
    if budget is not None and median > float(budget):
        raise _CheckFailed(
            f"got median latency {median:.1f} ms over {runs} runs, expected <= {budget:g} ms"
        )
    return f"{summary}; median {median:.2f} ms over {runs} runs"


def run_checks(checks: Sequence[Mapping[str, Any]], ctx: CheckContext) -> list[CheckResult]:
    """Run checks in order; stop at the first failure, which is the last result returned."""
    results: list[CheckResult] = []
    for check in checks:
        if "exec" in check:
            spec = check["exec"]
            timeout = float(spec.get("timeoutSeconds", EXEC_TIMEOUT_S))
            result = run_command([str(arg) for arg in spec["argv"]], timeout, ctx)
        elif "onnx" in check:
            result = run_onnx_isolated(check["onnx"], ctx)
        else:
            kinds = ", ".join(sorted(str(k) for k in check)) or "none"
            result = CheckResult(
                "unknown", kinds, False, f"got check kind {kinds}, expected exec or onnx", 0.0
            )
        results.append(result)
        if not result.ok:
            break
    return results


# An ONNX check runs in a child process: onnxruntime and numpy (about 40 MB) leave with it, so
# an agent that has checked a model is as small when idle as one that never did, and a model
# that crashes the runtime fails its check instead of taking the agent down with it.
ONNX_TIMEOUT_S = 600.0


def run_onnx_isolated(
    spec: Mapping[str, Any],
    ctx: CheckContext,
    runs: int = LATENCY_RUNS,
    timeout_s: float = ONNX_TIMEOUT_S,
) -> CheckResult:
    """`run_onnx` in a fresh `python -m node_agent.health`; the golden files go by stdin."""
    started = time.monotonic()
    name = _one_line(f"onnx {spec.get('input', '?')}", _NAME_CHARS)

    def failed(detail: str) -> CheckResult:
        return CheckResult("onnx", name, False, detail, time.monotonic() - started)

    files: dict[str, str] = {}
    for key in ("input", "expected"):
        path = str(spec.get(key, ""))
        try:
            files[path] = base64.b64encode(ctx.read_repo_file(path)).decode()
        except Exception as exc:  # a check reports, never raises: see the module's docstring
            return failed(f"got no readable {key} file {path!r} ({_one_line(str(exc))})")
    request = {
        "spec": dict(spec),
        "component": ctx.component,
        "bankDir": str(ctx.bank_dir),
        "artifactFile": ctx.artifact_file,
        "runs": runs,
        "files": files,
    }
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "node_agent.health"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        return failed(f"got no check process ({exc.strerror}), expected {sys.executable} to run")
    try:
        stdout, stderr = child.communicate(json.dumps(request).encode(), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(child)
        child.communicate()
        return failed(f"got no result within {_seconds_text(timeout_s)}, expected the check to end")
    done = subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)
    if done.returncode != 0:
        how = (
            f"killed by {signal.Signals(-done.returncode).name}"
            if done.returncode < 0
            else f"exit {done.returncode}"
        )
        tail = _last_line(done.stderr[-_TAIL_BYTES:])
        return failed(f"the ONNX runtime process died ({how}{': ' + tail if tail else ''})")
    try:
        answer = json.loads(done.stdout)
        return CheckResult(
            "onnx", name, bool(answer["ok"]), str(answer["detail"]), time.monotonic() - started
        )
    except (ValueError, KeyError, TypeError):
        return failed("the ONNX check process answered no result, expected one JSON object")


def _serve_one_check() -> int:
    request = json.loads(sys.stdin.buffer.read())
    files = {path: base64.b64decode(data) for path, data in request["files"].items()}

    def read(path: str) -> bytes:
        try:
            return files[path]
        except KeyError:
            raise FileNotFoundError(path) from None

    ctx = CheckContext(
        component=request["component"],
        bank_dir=Path(request["bankDir"]),
        artifact_file=request["artifactFile"],
        read_repo_file=read,
        env={},
    )
    result = run_onnx(request["spec"], ctx, int(request["runs"]))
    sys.stdout.write(json.dumps({"ok": result.ok, "detail": result.detail}))
    return 0


if __name__ == "__main__":
    sys.exit(_serve_one_check())
