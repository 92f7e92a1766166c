"""Real ONNX models for tests and the demo, built with the `onnx` package, byte-for-byte stable.

Every model takes one float32 input named ``x`` of shape ``[N, width]`` (N is free) and gives one
float32 output named ``y``. Opset and IR version are pinned so that the bytes, and with them the
catalog digests of artifacts made from them, do not change when the `onnx` package does, and so
that the installed onnxruntime loads them.

    model = affine_model(2.0, 0.5)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    (bank / "model.onnx").write_bytes(model)
    repo files: golden/in.npy = npy_bytes(x), golden/out.npy = npy_bytes(golden(model, x))
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

OPSET = 17
IR_VERSION = 8
INPUT = "x"
OUTPUT = "y"


def _finish(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="edgefleet-tests",
        producer_version="1",
    )
    onnx.checker.check_model(model, full_check=True)
    return bytes(model.SerializeToString(deterministic=True))


def _io(width: int, name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", width])


def affine_model(scale: float, bias: float, width: int = 4) -> bytes:
    """y = x * scale + bias, elementwise (Mul then Add), for x of shape [N, width].

    Two models differing only in `bias` stand for a good and a broken release of one artifact."""
    scale_t = numpy_helper.from_array(np.array(scale, dtype=np.float32), "scale")
    bias_t = numpy_helper.from_array(np.array(bias, dtype=np.float32), "bias")
    graph = helper.make_graph(
        [
            helper.make_node("Mul", [INPUT, "scale"], ["scaled"]),
            helper.make_node("Add", ["scaled", "bias"], [OUTPUT]),
        ],
        f"affine_{width}",
        [_io(width, INPUT)],
        [_io(width, OUTPUT)],
        initializer=[scale_t, bias_t],
    )
    return _finish(graph)


def affine_golden(x: npt.ArrayLike, scale: float, bias: float) -> npt.NDArray[np.float32]:
    """What `affine_model(scale, bias)` computes, in plain numpy (float32 throughout)."""
    arr = np.asarray(x, dtype=np.float32)
    return arr * np.float32(scale) + np.float32(bias)


def slow_model(width: int = 256, depth: int = 16, seed: int = 7) -> bytes:
    """y = x @ W @ W ... (`depth` MatMuls) with one fixed orthogonal W of `width` x `width`.

    Its cost grows with width² * depth * N, so a test or demo chooses how slow it is through
    these and the batch size of its input (N=64 with the defaults: a few ms on one thread of a
    current x86 core; raise `depth` or N for a slower one).
    W is orthogonal so that values neither blow up nor vanish however deep the chain."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((width, width)))
    weight = (q * np.sign(np.diag(r))).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", [INPUT if i == 0 else f"h{i}", "W"], [f"h{i + 1}"])
        for i in range(depth - 1)
    ]
    nodes.append(
        helper.make_node("MatMul", [f"h{depth - 1}" if depth > 1 else INPUT, "W"], [OUTPUT])
    )
    graph = helper.make_graph(
        nodes,
        f"slow_{width}x{depth}",
        [_io(width, INPUT)],
        [_io(width, OUTPUT)],
        initializer=[numpy_helper.from_array(weight, "W")],
    )
    return _finish(graph)


def golden(model: bytes, x: npt.ArrayLike, input_name: str = INPUT) -> npt.NDArray[Any]:
    """The first output of any model on `x`, computed by onnx's numpy reference evaluator.

    Independent of onnxruntime, so a golden file made with it checks onnxruntime's result
    rather than repeating it."""
    evaluator = ReferenceEvaluator(onnx.load_from_string(model))
    arr = x if isinstance(x, np.ndarray) else np.asarray(x, dtype=np.float32)
    outputs: Any = evaluator.run(None, {input_name: arr})
    return np.asarray(outputs[0])


def sample_input(rows: int = 2, width: int = 4, seed: int = 1) -> npt.NDArray[np.float32]:
    """A deterministic float32 input of shape [rows, width], values in [-1, 1)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, (rows, width)).astype(np.float32)


def npy_bytes(array: npt.ArrayLike) -> bytes:
    """`array` as the bytes of a .npy file (no pickles), as golden files are stored in Git."""
    out = io.BytesIO()
    np.save(out, np.asarray(array), allow_pickle=False)
    return out.getvalue()
