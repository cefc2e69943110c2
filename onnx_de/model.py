"""Load any ONNX model and find its weights: which are prunable, their op, shape and output-channel axis.

Loading reads external data, checks the model, and folds ``Constant`` nodes (how Paddle exports keep their
weights) into initializers so that every weight is an initializer. Discovery walks the main graph and the
subgraphs of ``If``/``Loop``/``Scan`` nodes; weights used inside subgraphs are reported but not prunable.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import ConfigError, ModelError, first_line

__all__ = [
    "DEFAULT_MIN_SIZE",
    "Model",
    "TensorSpec",
    "WeightInfo",
    "WeightSelection",
    "load_model",
    "find_weights",
    "read_proto",
    "matches",
]

#: Weight tensors with fewer elements than this stay dense unless a pattern includes them by name.
DEFAULT_MIN_SIZE = 256

# op_type -> {input index: role}; the role "weight" marks the operands DE may prune.
_OPERAND_ROLES: dict[str, dict[int, str]] = {
    "Conv": {1: "weight", 2: "bias"},
    "ConvTranspose": {1: "weight", 2: "bias"},
    "Gemm": {0: "weight", 1: "weight", 2: "bias"},
    "MatMul": {0: "weight", 1: "weight"},
    "LSTM": {1: "weight", 2: "weight", 3: "bias"},
    "GRU": {1: "weight", 2: "weight", 3: "bias"},
    "RNN": {1: "weight", 2: "weight", 3: "bias"},
    "BatchNormalization": {1: "norm", 2: "norm", 3: "norm", 4: "norm"},
    "InstanceNormalization": {1: "norm", 2: "norm"},
    "LayerNormalization": {1: "norm", 2: "norm"},
    "GroupNormalization": {1: "norm", 2: "norm"},
}
_SUBGRAPH_OPS = {"If", "Loop", "Scan"}


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, numpy dtype name and shape (``None`` for a dynamic dimension)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class WeightInfo:
    """One initializer used as an operand of a known op, and whether onnx-de may prune it.

    Attributes:
        name: initializer name.
        op_type: op of the first node that consumes it.
        role: ``weight``, ``bias`` or ``norm``.
        shape: tensor shape.
        dtype: numpy dtype name.
        out_axis: axis of the output channels (rows of a per-channel refit), ``None`` unless a weight.
        graph: ``main`` or the path of the subgraph that holds the consuming node (``If_3/then_branch``).
        prunable: whether the search may zero its elements.
        reason: why it is not prunable (empty when it is).
    """

    name: str
    op_type: str
    role: str
    shape: tuple[int, ...]
    dtype: str
    out_axis: int | None
    graph: str
    prunable: bool
    reason: str

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def to_dict(self) -> dict:
        return {**asdict(self), "shape": list(self.shape), "size": self.size}


@dataclass(frozen=True)
class WeightSelection:
    """Which weight operands are prunable.

    A weight operand is prunable when it matches ``include`` (or ``include`` is empty and it has at least
    ``min_size`` elements) and it matches no ``exclude`` pattern: exclude wins, and naming a tensor in
    ``include`` overrides the size threshold. Patterns are exact names or ``re:REGEX`` (full match).
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_size: int = DEFAULT_MIN_SIZE

    def __post_init__(self) -> None:
        for pattern in (*self.include, *self.exclude):
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as e:
                    raise ConfigError(f"bad regular expression in pattern {pattern!r}: {e}") from e
        if self.min_size < 0:
            raise ConfigError(f"min_size must be >= 0, got {self.min_size}")


def matches(name: str, pattern: str) -> bool:
    """Whether ``name`` is ``pattern`` exactly, or fully matches it when it is ``re:REGEX``."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return name == pattern


@dataclass
class Model:
    """A loaded ONNX model with its data inputs, outputs and discovered weights.

    Attributes:
        proto: the model, Constant nodes folded into initializers, external data loaded.
        source: the file it came from (or ``<memory>``).
        inputs: data inputs (graph inputs that are not initializers).
        outputs: graph outputs.
        weights: every initializer with a known role, prunable or not.
        folded_constants: how many Constant nodes were folded.
    """

    proto: onnx.ModelProto
    source: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    weights: list[WeightInfo]
    folded_constants: int = 0
    _serialized: bytes | None = field(default=None, repr=False)

    @property
    def prunable(self) -> list[WeightInfo]:
        return [w for w in self.weights if w.prunable]

    def serialized(self) -> bytes:
        """The model as bytes (cached), ready for ``onnxruntime.InferenceSession``."""
        if self._serialized is None:
            self._serialized = self.proto.SerializeToString()
        return self._serialized

    def initializer(self, name: str) -> np.ndarray:
        """The value of a main-graph initializer as a numpy array."""
        for tensor in self.proto.graph.initializer:
            if tensor.name == name:
                return numpy_helper.to_array(tensor)
        raise ModelError(f"{self.source}: no initializer named {name!r}")

    def summary(self) -> dict:
        """JSON-ready description: inputs, outputs, weights, totals."""
        prunable = self.prunable
        return {
            "source": self.source,
            "opset": {o.domain or "ai.onnx": o.version for o in self.proto.opset_import},
            "inputs": [asdict(s) for s in self.inputs],
            "outputs": [asdict(s) for s in self.outputs],
            "folded_constants": self.folded_constants,
            "weights": [w.to_dict() for w in self.weights],
            "parameters": sum(w.size for w in self.weights),
            "prunable_tensors": len(prunable),
            "prunable_parameters": sum(w.size for w in prunable),
        }


def load_model(
    source: str | Path | bytes | onnx.ModelProto,
    selection: WeightSelection | None = None,
    *,
    require_prunable: bool = False,
) -> Model:
    """Read an ONNX model, fold its Constant nodes and discover its weights.

    Args:
        source: a path (external data is read from beside it), serialized bytes, or a ModelProto (copied).
        selection: which weights are prunable; defaults to :class:`WeightSelection`'s defaults.
        require_prunable: raise :class:`ModelError` when no weight is prunable.

    Returns:
        The :class:`Model`.

    Example:
        >>> model = load_model("models/mnist-mlp.onnx")
        >>> [w.name for w in model.prunable]
        ['fc1.weight', 'fc2.weight', 'fc3.weight']
    """
    proto, label = read_proto(source)
    if len(proto.graph.node) == 0 or not proto.opset_import:
        raise ModelError(f"{label}: not an ONNX model (no graph nodes or no opset); export the model to ONNX first")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ModelError(f"{label}: invalid ONNX model: {first_line(e)}") from e
    folded = fold_constants(proto.graph)
    weights = find_weights(proto.graph, selection or WeightSelection())
    model = Model(
        proto=proto,
        source=label,
        inputs=_data_inputs(proto.graph),
        outputs=[_spec(v) for v in proto.graph.output],
        weights=weights,
        folded_constants=folded,
    )
    if require_prunable and not model.prunable:
        raise ModelError(
            f"{label}: nothing to prune: no Conv/ConvTranspose/Gemm/MatMul/LSTM/GRU/RNN weight with at least "
            f"{(selection or WeightSelection()).min_size} elements; name tensors with include patterns to prune smaller ones"
        )
    return model


def read_proto(source: str | Path | bytes | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """The ModelProto of ``source`` (a copy of a proto; external data read in) and a label for messages."""
    if isinstance(source, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(source)
        return proto, "<memory>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = "<bytes>"
        try:
            return onnx.load_from_string(bytes(source)), label
        except Exception as e:  # protobuf raises DecodeError and, on some inputs, RuntimeWarning-free ValueErrors
            raise ModelError(f"{label}: not a readable ONNX model: {first_line(e)}") from e
    path = Path(source)
    label = str(path)
    if not path.exists():
        raise ModelError(f"{label}: no such file")
    if not path.is_file():
        raise ModelError(f"{label}: not a file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ModelError(f"{label}: not a readable ONNX model (truncated or not ONNX): {first_line(e)}") from e
    try:
        onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as e:
        raise ModelError(f"{label}: cannot read its external data: {first_line(e)}") from e
    return proto, label


def fold_constants(graph: onnx.GraphProto) -> int:
    """Turn every tensor-valued ``Constant`` node into an initializer, in this graph and its subgraphs.

    Returns:
        The number of nodes folded.
    """
    folded = 0
    kept = []
    for node in graph.node:
        tensor = _constant_value(node) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
        if tensor is None:
            kept.append(node)
            continue
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        folded += 1
    if folded:
        del graph.node[:]
        graph.node.extend(kept)
    for node in graph.node:
        for attr in node.attribute:
            for sub in _attribute_graphs(attr):
                folded += fold_constants(sub)
    return folded


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    for attr in node.attribute:
        if attr.name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attr.t)
            return tensor
        if attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
            value = onnx.helper.get_attribute_value(attr)
            dtype = np.float32 if "float" in attr.name else np.int64
            return numpy_helper.from_array(np.asarray(value, dtype=dtype))
    return None  # sparse_value and string constants stay as nodes


def _attribute_graphs(attr: onnx.AttributeProto) -> list[onnx.GraphProto]:
    if attr.type == onnx.AttributeProto.GRAPH:
        return [attr.g]
    if attr.type == onnx.AttributeProto.GRAPHS:
        return list(attr.graphs)
    return []


def find_weights(graph: onnx.GraphProto, selection: WeightSelection) -> list[WeightInfo]:
    """Every initializer used as a weight, bias or norm operand, with its prunability.

    Raises:
        ConfigError: when an include or exclude pattern matches no weight operand.
    """
    found: dict[str, WeightInfo] = {}
    _walk(graph, [], "main", found)
    candidates = [w for w in found.values() if w.role == "weight"]
    for pattern in (*selection.include, *selection.exclude):
        if not any(matches(w.name, pattern) for w in candidates):
            names = ", ".join(w.name for w in candidates[:8]) + (" ..." if len(candidates) > 8 else "")
            raise ConfigError(f"pattern {pattern!r} matches no weight tensor; weights are: {names or 'none'}")
    return [_decide(w, selection) for w in found.values()]


def _walk(
    graph: onnx.GraphProto,
    outer: list[dict[str, onnx.TensorProto]],
    path: str,
    found: dict[str, WeightInfo],
) -> None:
    scopes = [*outer, {t.name: t for t in graph.initializer}]
    for index, node in enumerate(graph.node):
        roles = _OPERAND_ROLES.get(node.op_type, {}) if node.domain in ("", "ai.onnx") else {}
        for position, name in enumerate(node.input):
            role = roles.get(position)
            tensor = _resolve(name, scopes) if role else None
            if tensor is None or name in found:
                continue
            if role == "weight" and not _is_weight_operand(node, tensor):
                continue
            shape = tuple(int(d) for d in tensor.dims)
            found[name] = WeightInfo(
                name=name,
                op_type=node.op_type,
                role=role,
                shape=shape,
                dtype=np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).name,
                out_axis=_output_axis(node, position, len(shape)) if role == "weight" else None,
                graph=path,
                prunable=False,
                reason="",
            )
        for attr in node.attribute:
            for sub in _attribute_graphs(attr):
                _walk(sub, scopes, f"{node.name or node.op_type + '_' + str(index)}/{attr.name}", found)


def _resolve(name: str, scopes: list[dict[str, onnx.TensorProto]]) -> onnx.TensorProto | None:
    for scope in reversed(scopes):
        if name in scope:
            return scope[name]
    return None


def _is_weight_operand(node: onnx.NodeProto, tensor: onnx.TensorProto) -> bool:
    """MatMul and Gemm have two data operands: the weight is the initializer one, of rank >= 2, floating."""
    if np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).kind != "f":
        return False
    if node.op_type in ("MatMul", "Gemm"):
        return len(tensor.dims) >= 2
    return True


def _output_axis(node: onnx.NodeProto, position: int, rank: int) -> int:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        return 0  # (C_out, C_in/group, k...)
    if node.op_type == "ConvTranspose":
        return 1  # (C_in, C_out/group, k...)
    if node.op_type == "Gemm":
        transposed = attrs.get("transB" if position == 1 else "transA", 0)
        if position == 1:
            return 0 if transposed else 1  # B is (K, N), or (N, K) when transB
        return 1 if transposed else 0  # A is (M, K), or (K, M) when transA
    if node.op_type == "MatMul":
        return rank - 1 if position == 1 else rank - 2
    return 1  # LSTM/GRU/RNN W and R: (directions, gates*hidden, features)


def _decide(weight: WeightInfo, selection: WeightSelection) -> WeightInfo:
    def verdict(prunable: bool, reason: str) -> WeightInfo:
        return WeightInfo(**{**asdict(weight), "prunable": prunable, "reason": reason})

    if weight.role != "weight":
        return verdict(False, weight.role)
    if weight.graph != "main":
        return verdict(False, "used inside an If/Loop/Scan subgraph (reported, not pruned)")
    if any(matches(weight.name, p) for p in selection.exclude):
        return verdict(False, "excluded")
    if selection.include:
        if any(matches(weight.name, p) for p in selection.include):
            return verdict(True, "")
        return verdict(False, "not included")
    if weight.size < selection.min_size:
        return verdict(False, f"fewer than {selection.min_size} elements")
    return verdict(True, "")


def _data_inputs(graph: onnx.GraphProto) -> list[TensorSpec]:
    initializers = {t.name for t in graph.initializer}
    return [_spec(v) for v in graph.input if v.name not in initializers]


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor_type = value.type.tensor_type
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
    except (KeyError, TypeError):
        dtype = "unknown"
    shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim)
    return TensorSpec(name=value.name, dtype=dtype, shape=shape)
