"""A standard ONNX model whose weights are stored quantized and dequantized by the graph at load time.

- Uniform levels: an ``int8`` initializer (symmetric windows) or a ``uint8`` one with a zero point
  (asymmetric windows) feeding ``DequantizeLinear``, per tensor (opset >= 10) or per output channel
  (opset >= 13). Below those opsets the same arithmetic is spelled ``Cast`` / ``Sub`` / ``Mul``.
- Codebooks: a ``uint8`` (``uint16`` for 8 bits) index initializer, ``Cast`` to int32, and ``Gather`` from a
  float table whose entry 0 is the exact zero of pruned weights.

The dequantizing node writes the weight's original name, so the consumers are untouched, and it computes
exactly :meth:`~onnx_de.quantizers.QuantizedTensor.dequantize`.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .model import Model
from .quantizers import QuantizedTensor, channel_shape

__all__ = ["export_quantized"]


def export_quantized(model: Model, quantized: dict[str, QuantizedTensor]) -> onnx.ModelProto:
    """A copy of ``model`` with the weights ``quantized`` stored as integer levels plus dequantizing nodes."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    graph = proto.graph
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    taken = {t.name for t in graph.initializer} | {n for node in graph.node for n in (*node.input, *node.output)}
    kept, added, nodes = [], [], []
    for tensor in graph.initializer:
        if tensor.name not in quantized:
            kept.append(tensor)
            continue
        new_nodes, new_tensors = _dequantizer(tensor.name, quantized[tensor.name], opset, taken)
        nodes += new_nodes
        added += new_tensors
    del graph.initializer[:]
    graph.initializer.extend(kept + added)
    inputs = [v for v in graph.input if v.name not in quantized]  # old IRs list initializers as inputs
    del graph.input[:]
    graph.input.extend(inputs)
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + existing)
    return proto


def _dequantizer(name: str, q: QuantizedTensor, opset: int, taken: set[str]):
    """The nodes and initializers that rebuild weight ``name`` from ``q``."""

    def fresh(suffix: str) -> str:
        candidate, number = f"{name}.{suffix}", 1
        while candidate in taken:
            candidate, number = f"{name}.{suffix}{number}", number + 1
        taken.add(candidate)
        return candidate

    if q.scheme == "codebook":
        table = np.concatenate([np.zeros(1, np.float32), q.codebook.astype(np.float32)])
        index_type = np.uint8 if len(table) <= 256 else np.uint16
        indices, table_name, wide = fresh("indices"), fresh("codebook"), fresh("indices_int32")
        tensors = [numpy_helper.from_array(q.levels.astype(index_type), indices), numpy_helper.from_array(table, table_name)]
        nodes = [helper.make_node("Cast", [indices], [wide], to=TensorProto.INT32),
                 helper.make_node("Gather", [table_name, wide], [name], axis=0)]
        return nodes, tensors
    per_channel = q.axis is not None
    if q.symmetric:
        stored, zero_point = q.levels.astype(np.int8), None
    else:
        low = np.asarray(q.window_low)
        offset = low.reshape(channel_shape(q.levels.ndim, q.axis)) if per_channel else low
        stored = (q.levels.astype(np.int32) - offset).astype(np.uint8)
        zero_point = (-low).astype(np.uint8)
    scale = np.asarray(q.scale, dtype=np.float32)
    levels_name, scale_name = fresh("quantized"), fresh("scale")
    tensors = [numpy_helper.from_array(stored, levels_name)]
    if opset >= (13 if per_channel else 10):
        tensors.append(numpy_helper.from_array(scale, scale_name))
        inputs = [levels_name, scale_name]
        if zero_point is not None:
            zero_name = fresh("zero_point")
            tensors.append(numpy_helper.from_array(zero_point, zero_name))
            inputs.append(zero_name)
        attributes = {"axis": q.axis} if per_channel else {}
        return [helper.make_node("DequantizeLinear", inputs, [name], **attributes)], tensors
    # Older opsets: the same arithmetic, (q - zero_point) * scale, with broadcastable per-channel constants.
    shape = channel_shape(q.levels.ndim, q.axis) if per_channel else []
    tensors.append(numpy_helper.from_array(scale.reshape(shape), scale_name))
    as_float = fresh("float")
    nodes = [helper.make_node("Cast", [levels_name], [as_float], to=TensorProto.FLOAT)]
    if zero_point is not None:
        zero_name, centred = fresh("zero_point"), fresh("centred")
        tensors.append(numpy_helper.from_array(zero_point.astype(np.float32).reshape(shape), zero_name))
        nodes.append(helper.make_node("Sub", [as_float, zero_name], [centred]))
        as_float = centred
    nodes.append(helper.make_node("Mul", [as_float, scale_name], [name]))
    return nodes, tensors
