"""Shared test helpers: small real ONNX models built with onnx.helper, and one numeric comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnx_de
from onnx_de.data import Dataset

OPSET = [helper.make_opsetid("", 18)]
IR_VERSION = 10  # what ONNX Runtime 1.2x reads; onnx.helper defaults to the newest


def run(model, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of ``model`` (path, proto or Model) in a real ONNX Runtime CPU session."""
    loaded = onnx_de.open_model(model) if not isinstance(model, onnx.ModelProto) else onnx_de.load_model(model)
    return onnx_de.run_model(onnx_de.create_session(loaded), Dataset(inputs))


def assert_same_outputs(a, b, inputs: dict[str, np.ndarray], *, rtol: float = 0.0, atol: float = 0.0) -> None:
    """Run ``a`` and ``b`` in ONNX Runtime on ``inputs`` and assert every output agrees within tolerances."""
    outputs_a, outputs_b = run(a, inputs), run(b, inputs)
    assert len(outputs_a) == len(outputs_b)
    for x, y in zip(outputs_a, outputs_b):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def gemm_model(rng: np.random.Generator, trans_b: int = 1) -> onnx.ModelProto:
    """x[N,64] -> Gemm(W 32x64 or 64x32) -> Relu -> MatMul(V 32x8) -> y[N,8]."""
    w = rng.normal(size=(32, 64) if trans_b else (64, 32)).astype(np.float32)
    v = rng.normal(size=(32, 8)).astype(np.float32)
    b = rng.normal(size=(32,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "W", "b"], ["h"], transB=trans_b),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "V"], ["y"]),
        ],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(v, "V"), numpy_helper.from_array(b, "b")],
    )
    return helper.make_model(graph, opset_imports=OPSET, ir_version=IR_VERSION)
