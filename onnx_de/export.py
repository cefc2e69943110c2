"""A standard ONNX model whose weights are stored quantized and dequantized by the graph at load time.

- Uniform levels: an ``int8`` initializer (symmetric windows) or a ``uint8`` one with a zero point
  (asymmetric windows) feeding ``DequantizeLinear``, per tensor (opset >= 10) or per output channel
  (opset >= 13). Below those opsets, and for weights a ``MatMul`` reads, the same arithmetic is spelled
  ``Cast`` / ``Sub`` / ``Mul``: ONNX Runtime (1.31) fuses ``DequantizeLinear`` into a following ``MatMul`` as
  ``MatMulNBits`` with int8 activations, whose outputs are no longer those of the dequantized weights.
- Step levels: ``int8`` with ``DequantizeLinear`` where they fit, else ``int16`` or ``int32`` with ``Cast``
  and ``Mul`` (``DequantizeLinear`` reads those only from opset 21).
- Codebooks: a ``uint8`` (``uint16`` for 8 bits) index initializer, ``Cast`` to int32, and ``Gather`` from a
  float table whose entry 0 is the exact zero of pruned weights; per channel, a ``Mul`` by each channel's scale.

The dequantizing node writes the weight's original name, so the consumers are untouched, and it computes
exactly :meth:`~onnx_de.quantizers.QuantizedTensor.dequantize`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import ConfigError
from .model import Model
from .quantizers import QuantizedTensor, channel_shape

__all__ = ["MANTISSA_BITS", "PARAMETER_MANTISSA_BITS", "check_mantissa_bits", "export_quantized", "fold_values",
           "round_mantissa", "rounded_parameters"]

MANTISSA_BITS = 23  # float32's own: values exact
# What quantize keeps of the float parameters it does not quantize: float16's precision (7 bits, bfloat16's,
# moved ppocr-det's mask IoU from 0.9952 to 0.989; BENCHMARKS.md, "Rounded parameters").
PARAMETER_MANTISSA_BITS = 10
# The inputs (op type -> positions) that hold a layer's parameters: weights, biases, normalization statistics
# and scales, elementwise operands. Rounding one moves the outputs by about its own relative error, unlike
# Resize's scales or Clip's bounds, which decide shapes and ranges.
_PARAMETER_INPUTS = {
    "Conv": {1, 2}, "ConvTranspose": {1, 2}, "Gemm": {0, 1, 2}, "MatMul": {0, 1}, "PRelu": {1},
    "BatchNormalization": {1, 2, 3, 4}, "InstanceNormalization": {1, 2}, "LayerNormalization": {1, 2},
    "Add": {0, 1}, "Sub": {0, 1}, "Mul": {0, 1}, "Div": {0, 1},
}


def export_quantized(model: Model, quantized: dict[str, QuantizedTensor]) -> onnx.ModelProto:
    """A copy of ``model`` with the weights ``quantized`` stored as integer levels plus dequantizing nodes."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    graph = proto.graph
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    taken = {t.name for t in graph.initializer} | {n for node in graph.node for n in (*node.input, *node.output)}
    matmul_read = {name for node in graph.node if node.op_type == "MatMul" for name in node.input}
    kept, added, nodes = [], [], []
    for tensor in graph.initializer:
        if tensor.name not in quantized:
            kept.append(tensor)
            continue
        linear = tensor.name not in matmul_read  # DequantizeLinear where ONNX Runtime keeps its arithmetic
        new_nodes, new_tensors = _dequantizer(tensor.name, quantized[tensor.name], opset if linear else 0, taken)
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


def rounded_parameters(graph: onnx.GraphProto, bits: int, skip: set[str]) -> dict[str, np.ndarray]:
    """The float32 initializers of ``graph`` that only parameter inputs (``_PARAMETER_INPUTS``) of its own
    nodes read, but ``skip``, with their mantissas rounded to ``bits`` (:func:`round_mantissa`); those that
    rounding leaves as they are are left out."""
    uses: dict[str, list[bool]] = {}
    for node in graph.node:
        positions = _PARAMETER_INPUTS.get(node.op_type, set()) if node.domain in ("", "ai.onnx") else set()
        for position, name in enumerate(node.input):
            uses.setdefault(name, []).append(position in positions)
    excluded = skip | _subgraph_reads(graph.node) | {o.name for o in graph.output}
    rounded = {}
    for tensor in graph.initializer:
        if (tensor.data_type != TensorProto.FLOAT or tensor.name in excluded or not uses.get(tensor.name)
                or not all(uses[tensor.name]) or tensor.data_location == TensorProto.EXTERNAL):
            continue
        value = numpy_helper.to_array(tensor)
        candidate = round_mantissa(value, bits)
        if not np.array_equal(candidate.view(np.uint32), value.view(np.uint32)):
            rounded[tensor.name] = candidate
    return rounded


def round_mantissa(values: np.ndarray, bits: int) -> np.ndarray:
    """float32 ``values`` with ``bits`` of their 23 mantissa bits kept (nearest, ties to even), the exponent
    float32's: at 10 bits float16's precision without its range. Non-finite values, and finite ones that would
    round to infinity, stay as they are."""
    check_mantissa_bits(bits)
    values = np.array(values, dtype=np.float32)  # a C-ordered copy, of any rank (0 too)
    drop = MANTISSA_BITS - bits
    if drop == 0:
        return values
    pattern = values.view(np.uint32).astype(np.uint64)
    odd = (pattern >> np.uint64(drop)) & np.uint64(1)
    pattern = (pattern + np.uint64((1 << (drop - 1)) - 1) + odd) >> np.uint64(drop) << np.uint64(drop)
    result = pattern.astype(np.uint32).view(np.float32)
    return np.where(np.isfinite(values) & np.isfinite(result), result, values)


def check_mantissa_bits(bits) -> None:
    """A :class:`ConfigError` unless ``bits`` is an integer from 0 to 23."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 0 <= bits <= MANTISSA_BITS:
        raise ConfigError(f"mantissa bits must be an integer from 0 to {MANTISSA_BITS}, got {bits!r}")


def _dequantizer(name: str, q: QuantizedTensor, opset: int, taken: set[str]):
    """The nodes and initializers that rebuild weight ``name`` from ``q`` (``opset`` 0: no DequantizeLinear)."""

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
        nodes = [helper.make_node("Cast", [indices], [wide], to=TensorProto.INT32)]
        if q.axis is None:
            return nodes + [helper.make_node("Gather", [table_name, wide], [name], axis=0)], tensors
        scale_name, scaled = fresh("scale"), fresh("scaled_levels")
        tensors.append(numpy_helper.from_array(
            np.asarray(q.scale, np.float32).reshape(channel_shape(q.levels.ndim, q.axis)), scale_name))
        nodes += [helper.make_node("Gather", [table_name, wide], [scaled], axis=0),
                  helper.make_node("Mul", [scaled, scale_name], [name])]
        return nodes, tensors
    per_channel = q.axis is not None
    if q.symmetric:
        stored, zero_point = q.levels.astype(_signed_type(q.levels)), None  # int8 but for the step's fine grids
    else:
        low = np.asarray(q.window_low)
        offset = low.reshape(channel_shape(q.levels.ndim, q.axis)) if per_channel else low
        stored = (q.levels.astype(np.int32) - offset).astype(np.uint8)
        zero_point = (-low).astype(np.uint8)
    scale = np.asarray(q.scale, dtype=np.float32)
    levels_name, scale_name = fresh("quantized"), fresh("scale")
    tensors = [numpy_helper.from_array(stored, levels_name)]
    if opset >= (13 if per_channel else 10) and stored.dtype.itemsize == 1:
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


def _signed_type(levels: np.ndarray) -> type:
    """The narrowest of int8, int16 and int32 that holds ``levels``."""
    low, high = int(levels.min(initial=0)), int(levels.max(initial=0))
    return next(t for t in (np.int8, np.int16, np.int32) if np.iinfo(t).min <= low and high <= np.iinfo(t).max)


def fold_values(graph: onnx.GraphProto, constants: set[str],
                value_of) -> tuple[dict[str, np.ndarray], set[str], int]:
    """Remove from ``graph`` the dequantizing nodes whose inputs are all ``constants`` (read by ``value_of``).

    Folds what :func:`export_quantized` writes: ``DequantizeLinear`` (per tensor or per axis, no blocks),
    ``Gather`` from a table (and the ``Mul`` by per-channel scales), and the ``Cast``/``Sub``/``Mul``
    arithmetic of old opsets; the values are exactly those ONNX Runtime computes. Returns the values the
    removed nodes computed that remaining nodes still read, the names of constants no node reads any more, and
    how many nodes were removed; the caller places the values (the decoder keeps them as arrays).
    """
    overridable = {i.name for i in graph.input}  # old IRs list initializers as inputs a caller may feed
    constants = constants - overridable
    outputs = {o.name for o in graph.output}
    readers = Counter(name for node in graph.node for name in node.input)
    readers.update({name: 1 << 30 for name in _subgraph_reads(graph.node)})  # never freed: a subgraph reads it
    folded, consumed, computed = set(), set(), {}
    widened: dict[str, type] = {}  # integer Casts kept in their narrow type until a reader needs the wide one

    def operand(name: str, reader: onnx.NodeProto) -> np.ndarray:
        if name not in computed:
            return value_of(name)
        if name in widened and not (reader.op_type == "Gather" and name == reader.input[1]):
            return computed[name].astype(widened[name])  # Gather's indices select the same in any integer type
        return computed[name]

    for position, node in enumerate(graph.node):
        if (node.op_type not in _FOLDABLE or node.domain not in ("", "ai.onnx") or len(node.output) != 1
                or node.output[0] in outputs):
            continue
        names = [name for name in node.input if name]
        if not names or not all(name in computed or name in constants for name in names):
            continue
        inputs = {name: operand(name, node) for name in names}
        wide = _integer_widening(node, inputs[names[0]])
        if wide is not None:  # the codebook's Cast before its Gather: no wide copy of the indices
            array, widened[node.output[0]] = inputs[names[0]], wide
        else:
            array = _folded_value(node, inputs)
        if array is None:
            continue
        folded.add(position)
        consumed.update(names)
        for name in node.input:
            readers[name] -= 1
            if name in computed and readers[name] == 0:  # an intermediate (a Cast before a Gather): free it now
                del computed[name]
        computed[node.output[0]] = array
    for position in sorted(folded, reverse=True):
        del graph.node[position]
    unread = consumed - _read_names(graph.node) - outputs
    values = {n: v.astype(widened[n]) if n in widened else v for n, v in computed.items() if n not in unread}
    return values, unread & constants, len(folded)


def _integer_widening(node: onnx.NodeProto, operand: np.ndarray) -> type | None:
    """The target type of a ``Cast`` from a small integer type to int32/int64 (values unchanged), else None."""
    if node.op_type != "Cast" or operand.dtype not in _INTEGERS:
        return None
    target = next((a.i for a in node.attribute if a.name == "to"), None)
    return _CAST_TARGETS.get(target) if target in (TensorProto.INT32, TensorProto.INT64) else None


_FOLDABLE = {"DequantizeLinear", "Gather", "Cast", "Sub", "Mul"}
_INTEGERS = (np.int8, np.uint8, np.int16, np.uint16, np.int32)
_CAST_TARGETS = {TensorProto.FLOAT: np.float32, TensorProto.INT32: np.int32, TensorProto.INT64: np.int64}


def _folded_value(node: onnx.NodeProto, inputs: dict[str, np.ndarray]) -> np.ndarray | None:
    """The output of ``node`` on constant ``inputs``, for the exact operations a quantized export uses."""
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    operands = [inputs[name] if name else None for name in node.input]
    if node.op_type == "DequantizeLinear":
        levels, scale = operands[0], operands[1]
        zero = operands[2] if len(operands) > 2 and operands[2] is not None else np.zeros_like(scale, levels.dtype)
        if attributes.get("block_size") or scale.dtype != np.float32 or levels.dtype not in _INTEGERS:
            return None
        if scale.size > 1:
            axis = attributes.get("axis", 1)
            shape = channel_shape(levels.ndim, axis + levels.ndim if axis < 0 else axis)
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        with np.errstate(all="ignore"):  # overflow to inf is what ONNX Runtime computes too
            if levels.dtype.itemsize <= 2 and zero.dtype.itemsize <= 2:  # exact in float32, and faster
                return (levels.astype(np.float32) - zero.astype(np.float32)) * scale
            return (levels.astype(np.int64) - zero.astype(np.int64)).astype(np.float32) * scale
    if node.op_type == "Gather" and attributes.get("axis", 0) == 0:
        table, indices = operands
        if table.ndim != 1 or indices.dtype.kind not in "iu" or indices.size == 0:
            return None
        if (indices.dtype.kind == "i" and indices.min() < -table.size) or indices.max() >= table.size:
            return None
        return table[indices]
    if node.op_type == "Cast" and attributes.get("to") in _CAST_TARGETS and operands[0].dtype in _INTEGERS:
        return operands[0].astype(_CAST_TARGETS[attributes["to"]])
    if node.op_type in ("Sub", "Mul") and all(o.dtype == np.float32 for o in operands):
        with np.errstate(all="ignore"):
            return np.subtract(*operands) if node.op_type == "Sub" else np.multiply(*operands)
    return None


def _read_names(nodes) -> set[str]:
    """Every name the nodes read, in their subgraphs too."""
    nodes = list(nodes)  # read twice: a generator would give the subgraphs nothing
    return {name for n in nodes for name in n.input} | _subgraph_reads(nodes)


def _subgraph_reads(nodes) -> set[str]:
    """Every name the subgraphs of the nodes read."""
    return {name for n in nodes for a in n.attribute for g in _subgraphs(a) for name in _free_inputs(g)}


def _subgraphs(attribute: onnx.AttributeProto) -> list[onnx.GraphProto]:
    return [attribute.g] if attribute.HasField("g") else list(attribute.graphs)


def _free_inputs(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads (conservatively: every node input, at every depth)."""
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attribute in node.attribute:
            for sub in _subgraphs(attribute):
                names |= _free_inputs(sub)
    return names
