"""The Scorer: how far a student's outputs are from the teacher's, on the calibration set, per candidate.

Teacher outputs are computed once. The student is one ONNX Runtime session for the whole search: its
prunable initializers are promoted to graph inputs (onnx-graphsurgeon) and fed through IO binding from
OrtValues that wrap the current weight arrays without a copy, so a candidate is scored by zeroing its
elements in place, running once, and restoring them. Nothing is rebuilt or copied per candidate.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from .data import Dataset
from .errors import ModelError
from .metrics import MetricSpec, kl_from_log_probs, log_probabilities
from .model import Model
from .runtime import create_session, fixed_batch, run_model

__all__ = ["Scorer", "promote_weights", "divergence_kind"]

log = logging.getLogger(__name__)


def promote_weights(proto: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``proto`` whose initializers ``names`` are graph inputs instead (fed at run time)."""
    graph = gs.import_onnx(proto)
    tensors = graph.tensors()
    for name in names:
        tensor = tensors.get(name)
        if not isinstance(tensor, gs.Constant):
            raise ModelError(f"cannot promote {name!r} to an input: it is not an initializer of the main graph")
        variable = gs.Variable(name, dtype=tensor.values.dtype, shape=list(tensor.shape))
        tensor.name = f"{name}::promoted"
        for node in list(tensor.outputs):
            for position, operand in enumerate(node.inputs):
                if operand is tensor:
                    node.inputs[position] = variable
        graph.inputs.append(variable)
    graph.cleanup()  # drops the now unused constants
    promoted = gs.export_onnx(graph)
    promoted.ir_version = proto.ir_version
    return promoted


def divergence_kind(spec: MetricSpec) -> str:
    """``kl`` for class logits, ``bkl`` (binary KL) for sigmoid maps, ``nmse`` otherwise."""
    return {"classification": "kl", "segmentation": "bkl"}.get(spec.name, "nmse")


class Scorer:
    """Scores the student (current weights) against the cached teacher outputs on a calibration set.

    Args:
        model: the teacher.
        data: calibration data (already validated).
        weights: names of the weights the search changes; they become inputs of the student session.
        spec: the metric, which picks the divergence (:func:`divergence_kind`) and its output.
        intra_op_threads: ONNX Runtime threads per operator.

    Attributes:
        weights: the current student weights by name (float arrays; edit them in place, then call
            :meth:`divergence`).
        teacher_outputs: the teacher's outputs on ``data``.
    """

    def __init__(self, model: Model, data: Dataset, weights: list[str], spec: MetricSpec,
                 *, intra_op_threads: int | None = None) -> None:
        self.spec = spec
        self.kind = divergence_kind(spec)
        self.teacher_outputs = run_model(create_session(model, intra_op_threads=intra_op_threads), data)
        self.weights = {name: np.array(model.initializer(name), order="C") for name in weights}
        student = Model(promote_weights(model.proto, weights), model.source, model.inputs, model.outputs, [])
        self.session = create_session(student, intra_op_threads=intra_op_threads)
        self._output_names = [o.name for o in self.session.get_outputs()]
        self._bindings = self._bind(data)
        self._teacher_log = self._prepare_teacher()

    def _bind(self, data: Dataset) -> list[ort.IOBinding]:
        """One IO binding per calibration batch: data and weights bound once, as OrtValues sharing memory."""
        size = fixed_batch(self.session, set(data.inputs)) or len(data)
        self._data_values = []  # keep the arrays the OrtValues point into alive
        weight_values = {n: ort.OrtValue.ortvalue_from_numpy(w) for n, w in self.weights.items()}
        bindings = []
        for start in range(0, len(data), size):
            binding = self.session.io_binding()
            for name, array in data.inputs.items():
                batch = np.ascontiguousarray(array[start : start + size])
                self._data_values.append(batch)
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(batch))
            for name, value in weight_values.items():
                binding.bind_ortvalue_input(name, value)
            for name in self._output_names:
                binding.bind_output(name, "cpu")
            bindings.append(binding)
        self._weight_values = weight_values
        return bindings

    def _prepare_teacher(self) -> np.ndarray | None:
        if self.kind == "kl":
            return log_probabilities(self.teacher_outputs[self.spec.output])
        return None

    def student_outputs(self) -> list[np.ndarray]:
        """The student's outputs on the calibration set with the current weights."""
        chunks: list[list[np.ndarray]] = [[] for _ in self._output_names]
        for binding in self._bindings:
            self.session.run_with_iobinding(binding)
            for chunk, value in zip(chunks, binding.get_outputs()):
                chunk.append(value.numpy())
        return [np.concatenate(c, axis=0) if len(c) > 1 else c[0] for c in chunks]

    def divergence(self, outputs: list[np.ndarray] | None = None) -> float:
        """Divergence of the student (current weights, or the given outputs) from the teacher; 0 when equal."""
        outputs = self.student_outputs() if outputs is None else outputs
        if self.kind == "kl":
            return kl_from_log_probs(self._teacher_log, log_probabilities(outputs[self.spec.output]))
        if self.kind == "bkl":
            t = np.clip(self.teacher_outputs[self.spec.output].astype(np.float64), 1e-6, 1 - 1e-6)
            s = np.clip(outputs[self.spec.output].astype(np.float64), 1e-6, 1 - 1e-6)
            return float(np.mean(t * np.log(t / s) + (1 - t) * np.log((1 - t) / (1 - s))))
        total = 0.0
        for t, s in zip(self.teacher_outputs, outputs):
            t64, s64 = t.astype(np.float64), s.astype(np.float64)
            total += float(np.sum((s64 - t64) ** 2) / max(np.sum(t64**2), 1e-12))
        return total / len(outputs)

    def score(self, name: str, indices: np.ndarray) -> float:
        """Divergence with the elements ``indices`` (flat) of weight ``name`` tentatively zeroed."""
        flat = self.weights[name].reshape(-1)
        saved = flat[indices].copy()
        flat[indices] = 0
        try:
            return self.divergence()
        finally:
            flat[indices] = saved

