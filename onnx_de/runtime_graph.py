"""The graph ONNX Runtime actually runs, with the tensors derived from the prunable weights fed as inputs.

Promoting weights to graph inputs costs speed on convolutional models: ONNX Runtime's CPU layout transform
(NCHWc) and its Conv + BatchNormalization fusion apply only to constant weights (measured: 2.5x slower on
EfficientNet-Lite0). So the Scorer runs the graph as ONNX Runtime optimizes it, and promotes there the
tensors ONNX Runtime derived from the weights (reordered into blocks, scaled by a folded normalization).

Which element of which derived tensor holds which weight element, and with what factor, is read off the
optimizer itself: the model is optimized four times with probe values in the weights (all ones, the element
index as two digits, the weight's ordinal), and every derived tensor must be explained as
``weight[index] * scale``. Where it cannot be (a rewrite that is not a per-element scaling), the plain graph
with the weights promoted is used.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from .graphs import promote_weights
from .model import Model

__all__ = ["Placement", "RuntimeGraph", "runtime_graph"]

log = logging.getLogger(__name__)

# A probe value v comes back as v * scale rounded to float32, so its decoded value is off by up to v * 2**-24
# per rounding: probe values up to 4096 decode exactly; an element index is probed as two such digits.
_DIGIT = 4096


@dataclass(frozen=True)
class Placement:
    """Where the elements of one weight live in one tensor of the runtime graph.

    Attributes:
        tensor: the runtime tensor (an input of the runtime graph).
        positions: for each element of the weight (flat), its flat position in ``tensor``.
        scale: the factor the runtime tensor applies: ``tensor[positions[i]] = weight[i] * scale[i]``.
    """

    tensor: str
    positions: np.ndarray
    scale: np.ndarray


@dataclass
class RuntimeGraph:
    """A graph to run with the prunable weights' tensors as inputs, and how to fill those inputs.

    Attributes:
        proto: the graph; its extra inputs are the keys of ``tensors``.
        placements: per weight, the runtime tensors it fills.
        tensors: the runtime input arrays (fed to ONNX Runtime without a copy; update with :meth:`write`).
        optimized: whether ``proto`` is ONNX Runtime's optimized graph (load it with optimizations off).
    """

    proto: onnx.ModelProto
    placements: dict[str, list[Placement]]
    tensors: dict[str, np.ndarray]
    optimized: bool

    def write(self, name: str, weight: np.ndarray, indices: np.ndarray | None = None) -> None:
        """Copy ``weight`` (all of it, or its flat elements ``indices``) into the runtime tensors."""
        flat = weight.reshape(-1)
        for place in self.placements[name]:
            target = self.tensors[place.tensor].reshape(-1)
            if indices is None:
                target[place.positions] = flat * place.scale
            else:
                target[place.positions[indices]] = flat[indices] * place.scale[indices]

    @property
    def blocked_layout(self) -> bool:
        """Whether ONNX Runtime moved convolutions to its blocked NCHWc layout (its largest CPU rewrite)."""
        return any(node.domain == "com.microsoft.nchwc" for node in self.proto.graph.node)

    def zero(self, name: str, indices: np.ndarray) -> None:
        """Zero the runtime elements that hold the weight's flat elements ``indices``."""
        for place in self.placements[name]:
            self.tensors[place.tensor].reshape(-1)[place.positions[indices]] = 0


def runtime_graph(model: Model, names: list[str], *, optimize: bool = True) -> RuntimeGraph:
    """The graph the Scorer runs: ONNX Runtime's optimized graph where every derived tensor is explained
    (``optimize``), else ``model``'s own graph with the weights ``names`` promoted to inputs."""
    graph = None
    if optimize:
        try:
            graph = _optimized(model, names)
        except Exception as e:  # noqa: BLE001 - any failure of this fast path falls back to the plain graph
            log.info("%s: ONNX Runtime's optimized graph is not usable (%s); running the plain graph",
                     model.source, e)
    if graph is not None:
        return graph
    weights = {name: np.array(model.initializer(name), order="C") for name in names}
    placements = {
        name: [Placement(name, np.arange(w.size), np.ones(w.size, dtype=w.dtype))] for name, w in weights.items()
    }
    return RuntimeGraph(promote_weights(model.proto, names), placements, weights, optimized=False)


def _optimized(model: Model, names: list[str]) -> RuntimeGraph | None:
    weights = {name: model.initializer(name) for name in names}
    if any(w.dtype != np.float32 or w.size > _DIGIT**2 for w in weights.values()):
        return None
    # Probe values: all ones (gives the scale), an element index in two base-4096 digits, the weight's ordinal.
    probes = [
        lambda ordinal, w: np.ones(w.shape, np.float32),
        lambda ordinal, w: (np.arange(w.size) % _DIGIT + 1).astype(np.float32).reshape(w.shape),
        lambda ordinal, w: (np.arange(w.size) // _DIGIT + 1).astype(np.float32).reshape(w.shape),
        lambda ordinal, w: np.full(w.shape, ordinal + 1, np.float32),
    ]
    values, graphs = [], []
    for probe in probes:
        graphs.append(_optimize(model, {n: probe(i, w) for i, (n, w) in enumerate(weights.items())}))
        values.append({t.name: numpy_helper.to_array(t) for t in graphs[-1].graph.initializer})
        if values[-1].keys() != values[0].keys():
            return None
    order = list(weights)
    placements: dict[str, list[Placement]] = {name: [] for name in names}
    derived = []
    for tensor, base in values[0].items():
        if all(np.array_equal(base, other[tensor]) for other in values[1:]):
            continue  # independent of the weights
        if base.dtype != np.float32:
            return None
        derived.append(tensor)
        scale = base.reshape(-1).astype(np.float64)
        held = np.flatnonzero(scale)
        low, high, owner = (_decode(other[tensor].reshape(-1)[held] / scale[held]) for other in values[1:])
        if low is None or high is None or owner is None or owner.max(initial=0) >= len(order):
            return None
        element = high * _DIGIT + low
        for which in np.unique(owner):
            name, mine = order[which], owner == which
            positions = np.full(weights[name].size, -1, dtype=np.int64)
            factors = np.zeros(weights[name].size, dtype=np.float32)
            if element[mine].max() >= len(positions):
                return None
            positions[element[mine]] = held[mine]
            factors[element[mine]] = scale[held[mine]]
            if (positions < 0).any():
                return None  # a weight element the runtime tensor does not hold (other than a zero scale)
            placements[name].append(Placement(tensor, positions, factors))
    if any(not places for places in placements.values()):
        return None
    tensors = {name: np.zeros_like(values[0][name], order="C") for name in derived}
    graph = RuntimeGraph(promote_weights(graphs[0], derived), placements, tensors, optimized=True)
    for name, weight in weights.items():
        graph.write(name, weight)
    return graph


def _decode(ratio: np.ndarray) -> np.ndarray | None:
    """Probe ratios (ideally the integers 1 .. 4096) as 0-based integers; ``None`` when one is not integral."""
    value = np.rint(ratio)
    if np.abs(ratio - value).max(initial=0) > 0.01 or value.min(initial=1) < 1 or value.max(initial=1) > _DIGIT:
        return None
    return value.astype(np.int64) - 1


def _optimize(model: Model, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """``model`` with the given weight values, as ONNX Runtime's CPU optimizer rewrites it."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    for position, tensor in enumerate(proto.graph.initializer):
        if tensor.name in weights:
            proto.graph.initializer[position].CopyFrom(numpy_helper.from_array(weights[tensor.name], tensor.name))
    with tempfile.TemporaryDirectory(prefix="onnx-de-") as folder:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.optimized_model_filepath = os.path.join(folder, "optimized.onnx")
        ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)
