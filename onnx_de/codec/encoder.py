"""``encode``: any ONNX model into a container, losslessly; sparse and quantized weights cost near their entropy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from ..fileio import atomic_write_bytes
from ..model import Model, read_proto
from . import frames
from .container import KIND_GRAPH, KIND_INDEX, KIND_TENSOR, write_sections
from .records import DTYPES, encode_record, record_streams

__all__ = ["MIN_ELEMENTS", "encode", "constant_tensor"]

MIN_ELEMENTS = 64  # smaller tensors stay in the graph section, where zstd codes them together
_DATA_FIELDS = ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "external_data")


def encode(model: str | Path | bytes | onnx.ModelProto | Model, output: str | Path | None = None, *,
           fast_decode: bool = False) -> bytes:
    """Encode ``model`` into the container format of ``FORMAT.md``; every tensor is restored bit for bit.

    Initializers of the main graph with at least 64 elements, and the tensors of its ``Constant`` nodes of that
    size (where Paddle exports keep their weights), are coded one per section: masks and integer symbols with
    rANS near their entropy, other values with zstd. A model written by :func:`onnx_de.quantize` keeps its
    quantized form, and its pruned weights cost only their mask. The same model gives the same bytes.

    Args:
        model: an .onnx path (external data is read in), serialized bytes, a ModelProto or a :class:`Model`.
        output: where to write the container (atomically).
        fast_decode: code every tensor with zstd alone (masks packed 8 bits a byte, values raw; no rANS): a
            few % larger for a sparse quantized model, and it decodes several times faster.

    Returns:
        The container's bytes.

    Example:
        >>> payload = encode("student.onnx", "student.ode")
    """
    proto, _ = read_proto(model.proto if isinstance(model, Model) else model)
    graph = proto.graph
    fills = _dequantize_fills(graph)
    records, sections = [], []
    for place, position, name, tensor in _stored_tensors(graph):
        if not _codable(tensor):
            continue
        array = numpy_helper.to_array(tensor)
        fill, axis = fills.get(name, (None, None)) if place == "initializer" else (None, None)
        coding, streams = encode_record(array, fill, axis, fast_decode=fast_decode)
        record = {"name": name, place: position, "dtype": int(tensor.data_type),
                  "shape": [int(d) for d in tensor.dims], **coding}
        order = record_streams(record)
        record["streams"] = {stream: len(streams[stream]) for stream in order}
        records.append(record)
        sections.append((KIND_TENSOR, b"".join(streams[stream] for stream in order)))
        for field in _DATA_FIELDS:
            tensor.ClearField(field)
        tensor.ClearField("data_location")
    index = json.dumps({"tensors": records}, sort_keys=True, separators=(",", ":")).encode()
    graph_bytes = proto.SerializeToString(deterministic=True)
    payload = write_sections([(KIND_INDEX, frames.compress(index)), (KIND_GRAPH, frames.compress(graph_bytes)),
                              *sections])
    if output is not None:
        atomic_write_bytes(output, payload)
    return payload


def _stored_tensors(graph: onnx.GraphProto) -> Iterator[tuple[str, int, str, onnx.TensorProto]]:
    """Where the main graph keeps tensors a record can hold: ``(place, position, name, tensor)`` for each
    initializer (``"initializer"``, its position and name), then each ``Constant`` node holding one tensor
    (``"constant"``, the node's position, its output's name, the ``value`` attribute's tensor). A name given
    twice (an invalid graph, which the encoder still keeps as it is) is yielded once: records name distinct
    tensors, and the other stays in the graph section."""
    places = [("initializer", position, tensor.name, tensor) for position, tensor in enumerate(graph.initializer)]
    for position, node in enumerate(graph.node):
        value = constant_tensor(node)
        if value is not None:
            places.append(("constant", position, node.output[0], value))
    names = set()
    for place in places:
        if place[2] not in names:
            names.add(place[2])
            yield place


def constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor of a ``Constant`` node whose one attribute is a tensor ``value`` and which has one output;
    None for any other node."""
    if (node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.output) != 1
            or len(node.attribute) != 1 or node.attribute[0].name != "value"
            or node.attribute[0].type != onnx.AttributeProto.TENSOR):
        return None
    return node.attribute[0].t


def _codable(tensor: onnx.TensorProto) -> bool:
    """Whether a tensor gets a record of its own (a supported type, big enough, data in the model)."""
    size = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
    external = tensor.data_location == onnx.TensorProto.EXTERNAL
    return tensor.data_type in DTYPES and size >= MIN_ELEMENTS and not external and not tensor.HasField("segment")


def _dequantize_fills(graph: onnx.GraphProto) -> dict[str, tuple[np.ndarray, int | None]]:
    """For integers dequantized with an initializer zero point: that zero point (and its axis) as fill value.

    Pruned weights of a model exported with asymmetric windows sit at their channel's zero point, not at 0.
    """
    initializers = {t.name: t for t in graph.initializer}
    fills = {}
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3 or node.input[2] not in initializers:
            continue
        levels, zero = initializers.get(node.input[0]), initializers[node.input[2]]
        if levels is None or zero.data_type != levels.data_type or len(zero.dims) > 1:
            continue
        zero_point = numpy_helper.to_array(zero).reshape(-1)
        if zero_point.size == 1:
            fills[levels.name] = (zero_point, None)
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        rank = len(levels.dims)
        axis = axis + rank if axis < 0 else axis
        if 0 <= axis < rank and levels.dims[axis] == zero_point.size:
            fills[levels.name] = (zero_point, axis)
    return fills
