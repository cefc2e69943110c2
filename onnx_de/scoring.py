"""The Scorer: how far a student's outputs are from the teacher's, on the calibration set, per candidate.

Teacher outputs are computed once. The student is one ONNX Runtime session for the whole search, on the
model's own graph or, where ONNX Runtime changes the convolutions' layout, on the graph it optimized
(:mod:`onnx_de.runtime_graph`); the tensors derived from the prunable weights are graph inputs fed through IO
binding from arrays shared with ONNX Runtime, so a candidate is scored by zeroing its elements there in place,
running, and restoring them. Nothing is rebuilt or copied per candidate; every full run first copies the
weights of record into those arrays (they may have been edited), 8.5 ms on EfficientNet-Lite0.

Partial execution: :meth:`Scorer.refresh` runs the student once and keeps, for the layers about to be
searched, the tensors their downstream part reads from upstream (the frontier). A candidate of such a layer
then runs only the nodes its weight can affect, in a small session built once per layer; the outputs it
cannot affect come from the refresh. :meth:`Scorer.commit` zeroes weights for good and makes the frontiers
stale, so partial runs wait for the next refresh. On the GPU a partial run's graph also computes the
divergence (:mod:`onnx_de.divergence_graph`) and returns one number per batch instead of its outputs.
"""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort

from .data import Dataset
from .divergence_graph import TERM_PREFIX, append_divergence, teacher_input_names
from .graphs import Downstream, downstream_of, expose_outputs
from .metrics import MetricSpec, are_probabilities, fidelity, kl_from_log_probs, log_probabilities
from .model import Model
from .runtime import create_session, fixed_batch, run_model
from .runtime_graph import runtime_graph

__all__ = ["Scorer", "divergence_kind"]

log = logging.getLogger(__name__)

_EPS = 1e-6  # probabilities are clipped to [_EPS, 1 - _EPS] in the binary KL


def _squared_error(student: np.ndarray, teacher: np.ndarray) -> float:
    difference = student.astype(np.float64) - teacher
    return float(np.vdot(difference, difference))


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
        partial: score candidates by partial execution after :meth:`refresh` (where the graph allows).
        reference: the model whose outputs the student must match (default: ``model`` itself, the usual
            case; the original model when ``model`` is already a compressed student).
        optimized_graph: run ONNX Runtime's optimized graph where it reproduces the model: always (``True``),
            never (``False``), or where ONNX Runtime changed the convolutions' memory layout (``None``). The
            choice is structural, not timed, so that the same seed gives the same masks on any run. CPU only.
        device: ``cpu``, or ``cuda`` (from :func:`~onnx_de.runtime.resolve_device`): teacher and student run on
            the GPU, where the calibration batches and the weights stay; after a change only the tensors of
            the changed weight are uploaded.
        graph_divergence: partial runs compute the divergence inside their graph, in float32
            (:mod:`onnx_de.divergence_graph`), and return one number per output instead of the outputs; by
            default on the GPU (for float32 outputs), where copying outputs back and the host's arithmetic
            would cost as much as the run. Off, numpy computes it in float64 from the outputs (the CPU default).
        arena: where the sessions' activation memory comes from (:func:`~onnx_de.runtime.create_session`); by
            default ``shared`` on the CPU (one arena for the per-layer sessions), ``off`` on the GPU.

    Attributes:
        weights: the current student weights by name. During a search change them through :meth:`commit`;
            outside one, edit them freely and call :meth:`divergence`.
        teacher_outputs: the teacher's outputs on ``data``.
    """

    def __init__(self, model: Model, data: Dataset, weights: list[str], spec: MetricSpec,
                 *, intra_op_threads: int | None = None, partial: bool = True,
                 optimized_graph: bool | None = None, reference: Model | None = None, device: str = "cpu",
                 graph_divergence: bool | None = None, arena: str | None = None) -> None:
        self.spec = spec
        self.kind = divergence_kind(spec)
        self._device = device
        self._arena = arena or ("shared" if device == "cpu" else "off")
        own_outputs = run_model(create_session(model, intra_op_threads=intra_op_threads, device=device), data)
        self.teacher_outputs = own_outputs if reference is None else run_model(
            create_session(reference, intra_op_threads=intra_op_threads, device=device), data)
        self.weights = {name: np.array(model.initializer(name), order="C") for name in weights}
        self._threads = intra_op_threads
        self._model = model
        self._prepare_divergence()
        self._batches = []
        graph = runtime_graph(model, weights, optimize=optimized_graph is not False and device == "cpu")
        if graph.optimized and optimized_graph is None and not graph.blocked_layout:
            graph = runtime_graph(model, weights, optimize=False)  # no layout change: nothing to gain
        self._use_graph(graph, data)
        if graph.optimized and not self._reproduces(own_outputs):
            log.warning("%s: ONNX Runtime's optimized graph does not reproduce the model; running the model's own",
                        model.source)
            self._use_graph(runtime_graph(model, weights, optimize=False), data)
        self._downstream = {
            n: downstream_of(self._runtime.proto, [p.tensor for p in self._runtime.placements[n]]) for n in weights
        } if partial else {}
        self.partial = partial and all(part is not None for part in self._downstream.values())
        self._partial_sessions: dict[str, ort.InferenceSession] = {}
        self._frontier: ort.InferenceSession | None = None
        self._partial_bindings: dict[str, list[ort.IOBinding]] = {}
        self._outputs: list[np.ndarray] = []
        self._current = 0.0  # the divergence of the last refresh
        self._current_errors: list[float] = []  # nmse with graph divergence: each output's error at that refresh
        self._stale = True
        self._graph_divergence = (device == "cuda" if graph_divergence is None else graph_divergence) and all(
            self.teacher_outputs[self._output_names.index(o)].dtype == np.float32 for o in self._divergence_outputs())
        self._teacher_sides = [self._teacher_side(rows) for rows in self._slices] if self._graph_divergence else []

    def _use_graph(self, graph, data: Dataset) -> None:
        """Open the student session on ``graph`` and bind its inputs: the data batches and the weight tensors."""
        self._runtime = graph
        self.session = self._session(graph.proto)
        self._output_names = [o.name for o in self.session.get_outputs()]
        self._weight_values = {n: self._value(t) for n, t in graph.tensors.items()}
        if not self._batches:
            size = fixed_batch(self.session, set(data.inputs)) or len(data)
            self._slices = [slice(start, start + size) for start in range(0, len(data), size)]
            self._batches = [
                {name: self._value(np.ascontiguousarray(array[rows])) for name, array in data.inputs.items()}
                for rows in self._slices
            ]
        self._bindings = [self._binding(self.session, batch, self._output_names) for batch in self._batches]

    def _value(self, array: np.ndarray) -> ort.OrtValue:
        """``array`` for ONNX Runtime: on the CPU the same memory (edits show through), on the GPU a copy."""
        return ort.OrtValue.ortvalue_from_numpy(array, self._device, 0)

    def _upload(self, names) -> None:
        """On the GPU, copy the runtime tensors of the weights ``names`` from their host arrays to the device."""
        if self._device == "cpu":
            return
        for name in names:
            for placement in self._runtime.placements[name]:
                self._weight_values[placement.tensor].update_inplace(self._runtime.tensors[placement.tensor])

    def _reproduces(self, expected: list[np.ndarray]) -> bool:
        """Whether the student session, with the model's weights, gives the model's outputs ``expected``."""
        for teacher, student in zip(expected, self.student_outputs()):
            if teacher.shape != student.shape:
                return False
            t, s = teacher.astype(np.float64), student.astype(np.float64)
            if np.linalg.norm(s - t) > 1e-3 * max(np.linalg.norm(t), 1e-12):
                return False
        return True

    def _session(self, proto) -> ort.InferenceSession:
        return create_session(Model(proto, self._model.source, [], [], []), intra_op_threads=self._threads,
                              spin=False, optimize=not self._runtime.optimized,
                              arena=self._arena, device=self._device)

    def _binding(self, session: ort.InferenceSession, feeds: dict[str, ort.OrtValue], outputs: list[str]):
        """An IO binding of ``session``: the given feeds, every weight it reads, outputs on the CPU."""
        binding = session.io_binding()
        wanted = {i.name for i in session.get_inputs()}
        for name, value in (*feeds.items(), *self._weight_values.items()):
            if name in wanted:
                binding.bind_ortvalue_input(name, value)
        for name in outputs:
            binding.bind_output(name, "cpu")
        return binding

    @staticmethod
    def _run(session: ort.InferenceSession, bindings: list) -> list[np.ndarray]:
        """Run every batch's binding and concatenate each output over the batches."""
        chunks: list[list[np.ndarray]] = []
        for binding in bindings:
            session.run_with_iobinding(binding)
            values = [value.numpy() for value in binding.get_outputs()]
            chunks = [[v] for v in values] if not chunks else [c + [v] for c, v in zip(chunks, values)]
        return [np.concatenate(c, axis=0) if len(c) > 1 else c[0] for c in chunks]

    def student_outputs(self) -> list[np.ndarray]:
        """The student's outputs on the calibration set with the current weights (a full run)."""
        self._write_weights()
        return self._run(self.session, self._bindings)

    def _write_weights(self) -> None:
        """Copy every weight into the runtime tensors (the weights may have been edited since the last run)."""
        for name, weight in self.weights.items():
            self._runtime.write(name, weight)
        self._upload(self.weights)

    def _prepare_divergence(self) -> None:
        """Precompute the teacher's side of the divergence."""
        teacher = self.teacher_outputs[self.spec.output]
        if self.kind == "kl":
            self._teacher_log = log_probabilities(teacher)
        elif self.kind == "bkl":
            t = np.clip(teacher.astype(np.float32), _EPS, 1 - _EPS)
            self._teacher_terms = (t, np.log(t), np.log1p(-t))
        else:
            self._teacher_energy = [max(float(np.sum(t.astype(np.float64) ** 2)), 1e-12) for t in self.teacher_outputs]

    def _divergence_outputs(self) -> list[str]:
        """The outputs the divergence reads: the metric's output, or every output for ``nmse``."""
        return list(self._output_names) if self.kind == "nmse" else [self._output_names[self.spec.output]]

    def _teacher_side(self, rows: slice) -> dict[str, ort.OrtValue]:
        """The teacher-side inputs of the graph divergence (:func:`append_divergence`) for one batch."""
        if self.kind == "kl":
            arrays = {self._output_names[self.spec.output]: [np.exp(self._teacher_log[rows]), self._teacher_log[rows]]}
        elif self.kind == "bkl":
            arrays = {self._output_names[self.spec.output]: [term[rows] for term in self._teacher_terms]}
        else:
            arrays = {name: [t[rows]] for name, t in zip(self._output_names, self.teacher_outputs)}
        return {input_name: self._value(np.ascontiguousarray(array, dtype=np.float32))
                for output, values in arrays.items()
                for input_name, array in zip(teacher_input_names(self.kind, output), values)}

    def _divergence_from_sums(self, sums: dict[str, float]) -> float:
        """The divergence from the graph's per-output sums (:meth:`divergence`'s normalization); outputs not
        in ``sums`` are those of the last refresh (their errors computed once by :meth:`refresh`)."""
        if self.kind == "kl":
            return sums[self._output_names[self.spec.output]] / len(self._teacher_log)
        if self.kind == "bkl":
            return sums[self._output_names[self.spec.output]] / self._teacher_terms[0].size
        total = sum(sums.get(name, current) / energy for name, current, energy in
                    zip(self._output_names, self._current_errors, self._teacher_energy))
        return total / len(self._output_names)

    def divergence(self, outputs: list[np.ndarray] | None = None) -> float:
        """Divergence of the student (current weights, or the given outputs) from the teacher; 0 when equal."""
        outputs = self.student_outputs() if outputs is None else outputs
        if self.kind == "kl":
            return kl_from_log_probs(self._teacher_log, log_probabilities(outputs[self.spec.output]))
        if self.kind == "bkl":
            t, log_t, log_not_t = self._teacher_terms
            s = np.clip(outputs[self.spec.output].astype(np.float32), _EPS, 1 - _EPS)
            terms = t * (log_t - np.log(s)) + (1 - t) * (log_not_t - np.log1p(-s))
            return float(np.mean(terms, dtype=np.float64))
        total = sum(_squared_error(s, t) / energy for t, s, energy in zip(self.teacher_outputs, outputs,
                                                                           self._teacher_energy))
        return total / len(outputs)

    def refresh(self, layers: set[str]) -> float:
        """Run the student once; keep the frontiers that partial runs of ``layers`` read; return the divergence."""
        if not self.partial:
            self._outputs = self.student_outputs()
            return self.divergence(self._outputs)
        self._write_weights()
        layers = sorted(layers)
        # A model output that downstream nodes also read is fetched once, as an output.
        frontier = sorted({t for name in layers for t in self._downstream[name].frontier} - set(self._output_names))
        session = self._frontier_session()
        fetched = self._run(session, [self._binding(session, b, self._output_names + frontier) for b in self._batches])
        self._outputs = fetched[: len(self._output_names)]
        values = dict(zip(self._output_names + frontier, fetched))
        self._partial_bindings = {}
        for name in layers:
            part = self._downstream[name]
            if self._graph_divergence and not set(part.outputs) & set(self._divergence_outputs()):
                self._partial_bindings[name] = []  # it cannot change the divergence
                continue
            partial = self._partial_session(name, part, {t: values[t] for t in part.frontier})
            outputs = [o.name for o in partial.get_outputs()]
            self._partial_bindings[name] = [
                self._binding(partial, {**batch, **side, **{t: self._value(np.ascontiguousarray(values[t][rows]))
                                                            for t in part.frontier}}, outputs)
                for batch, rows, side in zip(self._batches, self._slices,
                                             self._teacher_sides or [{}] * len(self._batches))
            ]
        self._stale = False
        self._current = self.divergence(self._outputs)
        if self._graph_divergence and self.kind == "nmse":  # what the outputs a partial run leaves add, once
            self._current_errors = [_squared_error(o, t) for o, t in zip(self._outputs, self.teacher_outputs)]
        return self._current

    def _frontier_session(self) -> ort.InferenceSession:
        """The full student with every layer's frontier tensors also exposed as outputs (built once)."""
        if self._frontier is None:
            frontier = [name for part in self._downstream.values() for name in part.frontier]
            self._frontier = self._session(expose_outputs(self._runtime.proto, frontier))
        return self._frontier

    def _partial_session(self, name: str, part: Downstream, examples: dict) -> ort.InferenceSession:
        """The session of ``name``'s downstream part (built once): its outputs, or with graph divergence the
        sums of the divergence terms of those it produces."""
        if name not in self._partial_sessions:
            proto = part.model(self._runtime.proto, examples)
            if self._graph_divergence:
                proto = append_divergence(proto, [o for o in self._divergence_outputs() if o in part.outputs],
                                          self.kind, _EPS, self.kind == "kl" and are_probabilities(
                                              self.teacher_outputs[self.spec.output]))
            self._partial_sessions[name] = self._session(proto)
        return self._partial_sessions[name]

    def score(self, name: str, indices: np.ndarray) -> float:
        """Divergence with the elements ``indices`` (flat) of weight ``name`` tentatively zeroed."""
        return self._tentative(name, lambda: self._runtime.zero(name, indices), indices)

    def score_values(self, name: str, values: np.ndarray) -> float:
        """Divergence with weight ``name`` tentatively replaced by ``values`` (a quantized version, say)."""
        return self._tentative(name, lambda: self._runtime.write(name, values), None)

    def _tentative(self, name: str, change, indices: np.ndarray | None) -> float:
        """Apply ``change`` to the runtime tensors of ``name``, score, and put back its elements ``indices``
        (all of them when ``None``) from the weights of record."""
        partial = not self._stale and name in self._partial_bindings
        if partial and not self._partial_bindings[name]:  # the weight cannot reach what the divergence reads
            return self._current
        if not partial:
            self._write_weights()
        change()
        self._upload([name])
        try:
            if not partial:
                return self.divergence(self._run(self.session, self._bindings))
            bindings = self._partial_bindings[name]
            session = self._partial_sessions[name]
            names = [o.name for o in session.get_outputs()]
            if self._graph_divergence:
                sums = dict.fromkeys(names, 0.0)
                for binding in bindings:
                    session.run_with_iobinding(binding)
                    for output, value in zip(names, binding.get_outputs()):
                        sums[output] += float(value.numpy())
                return self._divergence_from_sums({o[len(TERM_PREFIX):]: v for o, v in sums.items()})
            changed = dict(zip(names, self._run(session, bindings)))
            return self.divergence([changed.get(o, current) for o, current in zip(self._output_names, self._outputs)])
        finally:
            self._runtime.write(name, self.weights[name], indices)
            self._upload([name])

    def score_many(self, candidates: list[tuple[str, np.ndarray]]) -> list[float]:
        """:meth:`score` of each ``(weight name, flat indices)`` candidate, in order."""
        return [self.score(name, indices) for name, indices in candidates]

    def primary_metric(self, outputs: list[np.ndarray]) -> float:
        """The metric's primary fidelity number (higher is better) of student ``outputs`` on the calibration set."""
        return float(fidelity(self.teacher_outputs, outputs, self.spec)[self.spec.primary])

    def commit(self, name: str, indices: np.ndarray) -> None:
        """Zero the elements ``indices`` (flat) of weight ``name`` for good; frontiers become stale."""
        self.weights[name].reshape(-1)[indices] = 0
        self._runtime.zero(name, indices)
        self._upload([name])
        self._stale = True

    def close(self) -> None:
        """Nothing to release (the sessions go with the Scorer); every scorer of the search has it."""
