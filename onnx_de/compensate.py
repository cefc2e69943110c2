"""Layer inputs, saliency priors, and least-squares compensation of surviving weights.

Compensation refits, per output channel, the surviving weights of a layer by ridge regression so that its
pre-activation on the student's own inputs matches the teacher's pre-activation on the teacher's inputs:
``min ||X_s[:, S] w_S - X_t w_t||^2 + lambda ||w_S||^2``. Layers are refit in graph order, each on inputs
captured from the already-refit student, so errors do not accumulate. Zeroed weights stay exactly zero; a
channel with fewer than ``ROWS_PER_UNKNOWN`` regression rows per surviving weight is left as it is (with 64
calibration images, a 1280-input classifier would otherwise be fit to noise), and a layer whose refit does not
lower the Scorer's divergence is put back as it was. Given alternative masks with the same zeros per layer, the
whole refit is run from each and the Scorer keeps the best pass, so the masks and the refit are chosen together.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view

from .data import Dataset
from .model import Model, WeightInfo
from .runtime import create_session, fixed_batch
from .graphs import expose_outputs, promote_weights
from .scoring import Scorer

__all__ = ["LayerProbe", "LayerInputs", "saliency", "layer_inputs", "compensate"]

log = logging.getLogger(__name__)

MAX_ROWS = 16384  # rows (samples x positions) of the regression, subsampled beyond this
ROWS_PER_UNKNOWN = 2  # a channel is refit only from at least this many rows per surviving weight
CAPTURE_BYTES = 1 << 30  # layer inputs held at once when several layers share one model run
BLOCK_ELEMENTS = 1 << 24  # regression inputs of a layer converted to float64 at once, across its groups


@dataclass(frozen=True)
class _Layer:
    weight: WeightInfo
    node: onnx.NodeProto
    input_name: str
    order: int


class LayerProbe:
    """Captures the input activations of the nodes that consume prunable weights, for teacher or student.

    One session on the model with its prunable weights promoted to inputs and every layer input exposed
    as an extra output; ``capture`` asks ONNX Runtime for just the outputs it needs, ``captures`` for as many
    layers' inputs per run as fit in memory.
    """

    def __init__(self, model: Model, weights: list[WeightInfo], data: Dataset,
                 intra_op_threads: int | None = None) -> None:
        self.layers = _find_layers(model, weights)
        names = [w.name for w in weights]
        proto = expose_outputs(promote_weights(model.proto, names), [layer.input_name for layer in self.layers.values()])
        probe = Model(proto, model.source, model.inputs, model.outputs, [])
        self.session = create_session(probe, intra_op_threads=intra_op_threads)
        self.data = data
        self.teacher = {n: np.array(model.initializer(n)) for n in names}
        self._kept: dict[str, np.ndarray] | None = None  # teacher inputs, filled by the first teacher capture

    def capture(self, name: str, weights: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """The input of weight ``name``'s node over the data (teacher weights unless ``weights`` given).

        The first teacher capture also keeps the teacher's inputs of as many layers as fit in
        ``CAPTURE_BYTES`` (in graph order, one model run), so the refit passes do not recompute them."""
        key = self.layers[name].input_name
        if weights is None:
            if self._kept is None:
                self._kept = self._keep()
            if key in self._kept:
                return self._kept[key]
        return self._run([key], weights)[0]

    def _keep(self) -> dict[str, np.ndarray]:
        """The teacher's inputs of the supported layers, in graph order, as many as fit in ``CAPTURE_BYTES``."""
        ordered = sorted(self.layers.values(), key=lambda layer: layer.order)
        keys = list(dict.fromkeys(layer.input_name for layer in ordered if _supported(layer)))
        if not keys:
            return {}
        sizes = self._bytes_per_sample(keys)
        kept, total = [], 0.0
        for key in keys:
            total += sizes[key] * len(self.data)
            if total > CAPTURE_BYTES:
                break
            kept.append(key)
        return dict(zip(kept, self._run(kept))) if kept else {}

    def _bytes_per_sample(self, keys: list[str]) -> dict[str, float]:
        """Each named input's bytes per sample, from one run on the first batch (one sample if the batch is free)."""
        first = self._run(keys, samples=fixed_batch(self.session, set(self.data.inputs)) or 1)
        return {key: value.nbytes / len(value) for key, value in zip(keys, first)}

    def captures(self, names: list[str], max_bytes: int | None = None) -> Iterator[tuple[str, np.ndarray]]:
        """The teacher's input of each weight's node over the data, in the order of ``names``: one model run
        per group of consecutive layers whose inputs fit together in ``max_bytes`` (default ``CAPTURE_BYTES``;
        a larger one runs alone)."""
        max_bytes = CAPTURE_BYTES if max_bytes is None else max_bytes
        inputs = {name: self.layers[name].input_name for name in names}
        unique = list(dict.fromkeys(inputs.values()))
        if not unique:
            return
        per_sample = self._bytes_per_sample(unique)
        group: list[str] = []
        for name in names:
            wanted = list(dict.fromkeys(inputs[n] for n in [*group, name]))
            if group and sum(per_sample[key] for key in wanted) * len(self.data) > max_bytes:
                yield from self._group(group, inputs)
                group = []
            group.append(name)
        yield from self._group(group, inputs)

    def _group(self, names: list[str], inputs: dict[str, str]) -> Iterator[tuple[str, np.ndarray]]:
        keys = list(dict.fromkeys(inputs[name] for name in names))
        arrays = dict(zip(keys, self._run(keys)))
        for name in names:
            yield name, arrays[inputs[name]]

    def _run(self, outputs: list[str], weights: dict[str, np.ndarray] | None = None,
             samples: int | None = None) -> list[np.ndarray]:
        """The named outputs over the first ``samples`` samples (all of them by default), run in batches."""
        feed_weights = weights or self.teacher
        count = samples or len(self.data)
        size = fixed_batch(self.session, set(self.data.inputs)) or count
        chunks = []
        for start in range(0, count, size):
            feed = {k: v[start : min(start + size, count)] for k, v in self.data.inputs.items()}
            feed.update(feed_weights)
            chunks.append(self.session.run(outputs, feed))
        return [np.concatenate(parts, axis=0) for parts in zip(*chunks)]


def _find_layers(model: Model, weights: list[WeightInfo]) -> dict[str, _Layer]:
    wanted = {w.name: w for w in weights}
    layers = {}
    for order, node in enumerate(model.proto.graph.node):
        for position, name in enumerate(node.input):
            if name in wanted and name not in layers:
                other = node.input[1 - position] if node.op_type in ("MatMul", "Gemm") and position < 2 else node.input[0]
                layers[name] = _Layer(wanted[name], node, other, order)
    return layers


def _design(layer: _Layer, x: np.ndarray, rows: np.ndarray | None) -> Iterator[tuple[list[slice], np.ndarray]]:
    """The layer's regression inputs, by blocks of its groups: (each group's output channels, the groups' inputs
    as float64 (groups, M, d)), a block holding at most about ``BLOCK_ELEMENTS`` values (a Gemm or MatMul is
    one group)."""
    op, attrs = layer.node.op_type, {a.name: onnx.helper.get_attribute_value(a) for a in layer.node.attribute}
    if op in ("Gemm", "MatMul"):
        if op == "Gemm" and attrs.get("transA", 0):
            x = x.T
        matrix = x.reshape(-1, x.shape[-1])
        matrix = matrix if rows is None else matrix[rows % len(matrix)]
        yield [slice(None)], matrix.astype(np.float64)[None]
        return
    group = int(attrs.get("group", 1))
    kh, kw = layer.weight.shape[2:]
    strides = attrs.get("strides", [1, 1])
    dilations = attrs.get("dilations", [1, 1])
    pads = attrs.get("pads", [0, 0, 0, 0])
    padded = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    span = (dilations[0] * (kh - 1) + 1, dilations[1] * (kw - 1) + 1)
    windows = sliding_window_view(padded, span, axis=(2, 3))[:, :, :: strides[0], :: strides[1], :: dilations[0], :: dilations[1]]
    n, channels_in, out_h, out_w = windows.shape[:4]
    total = n * out_h * out_w
    flat = np.arange(total) if rows is None else rows % total
    sample, rest = np.divmod(flat, out_h * out_w)
    h, w = np.divmod(rest, out_w)
    per_group_in = channels_in // group
    per_group_out = layer.weight.shape[0] // group
    step = max(1, BLOCK_ELEMENTS // (len(flat) * per_group_in * kh * kw))
    for first in range(0, group, step):
        last = min(group, first + step)
        patches = windows[sample, first * per_group_in : last * per_group_in, h, w]  # (M, C, kh, kw)
        block = patches.reshape(len(flat), last - first, -1).transpose(1, 0, 2)
        yield ([slice(g * per_group_out, (g + 1) * per_group_out) for g in range(first, last)],
               np.array(block, dtype=np.float64, order="C"))


def _rows_matrix(layer: _Layer, weight: np.ndarray) -> np.ndarray:
    """The weight as (output channels, fan-in), matching :func:`_design`'s columns."""
    op = layer.node.op_type
    if op == "Conv":
        return weight.reshape(weight.shape[0], -1)
    if op == "Gemm":
        trans_b = any(a.name == "transB" and a.i for a in layer.node.attribute)
        return weight if trans_b else weight.T
    return weight.T  # MatMul: (in, out)


def _from_rows(layer: _Layer, rows: np.ndarray, shape: tuple) -> np.ndarray:
    op = layer.node.op_type
    if op == "Conv":
        return rows.reshape(shape)
    if op == "Gemm" and any(a.name == "transB" and a.i for a in layer.node.attribute):
        return rows
    return rows.T


def _supported(layer: _Layer) -> bool:
    op = layer.node.op_type
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in layer.node.attribute}
    if op == "Conv":
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        return len(layer.weight.shape) == 4 and auto_pad in (b"NOTSET", "NOTSET", b"VALID", "VALID")
    if op == "MatMul":
        return layer.input_name != layer.node.input[1] and len(layer.weight.shape) == 2
    return op == "Gemm"


def saliency(probe: LayerProbe, prior: str) -> dict[str, np.ndarray]:
    """Per weight, each element's importance under ``prior`` (lower = drawn first as a candidate)."""
    energies = {} if prior in ("uniform", "magnitude") else layer_inputs(probe, hessians=False)
    result = {}
    for name in probe.layers:
        magnitude = np.abs(probe.teacher[name])
        inputs = energies.get(name)
        if inputs is None:
            result[name] = magnitude
        elif prior == "hessian":
            result[name] = magnitude.astype(np.float64) ** 2 * inputs.energy
        else:
            result[name] = magnitude * np.sqrt(inputs.energy)
    return result


@dataclass
class LayerInputs:
    """What the calibration inputs of one layer say about its weight.

    Attributes:
        energy: per element, the mean square of the input it multiplies (shaped like the weight).
        hessians: per group of output channels, ``(X^T X, channels)``: the Gram matrix of the inputs over the
            layer's fan-in (sampled rows of samples x positions, as for compensation), in the rows view of
            :meth:`rows`; ``None`` unless asked for.
    """

    layer: _Layer
    energy: np.ndarray
    hessians: list[tuple[np.ndarray, slice]] | None

    def rows(self, array: np.ndarray) -> np.ndarray:
        """``array`` (shaped like the weight) as (output channels, fan-in), the Hessians' view."""
        return _rows_matrix(self.layer, array)

    def from_rows(self, rows: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`rows`."""
        return _from_rows(self.layer, rows, self.energy.shape)


def layer_inputs(probe: LayerProbe, names: list[str] | None = None,
                 hessians: bool = True) -> dict[str, LayerInputs | None]:
    """The input statistics of each weight's layer over the probe's data (the inputs of the probe's model, rows
    subsampled as for compensation), for ``names`` (default: every layer of the probe); ``None`` for a layer
    kind the probe cannot unfold. Several layers' inputs come from one model run where they fit in memory."""
    names = list(probe.layers) if names is None else names
    result: dict[str, LayerInputs | None] = dict.fromkeys(names)
    for name, x in probe.captures([name for name in names if _supported(probe.layers[name])]):
        result[name] = _statistics(probe.layers[name], x, probe.teacher[name], hessians)
    return result


def _statistics(layer: _Layer, x: np.ndarray, weight: np.ndarray, hessians: bool) -> LayerInputs:
    energy = np.empty(_rows_matrix(layer, weight).shape, dtype=np.float64)
    grams = [] if hessians else None
    for channels, block in _design(layer, x, _sample_rows(x, layer, 0)):
        squares = np.mean(block**2, axis=1)
        products = np.matmul(block.transpose(0, 2, 1), block) if hessians else ()
        for index, rows in enumerate(channels):
            energy[rows] = squares[index]
            if grams is not None:
                grams.append((products[index], rows))
    return LayerInputs(layer, _from_rows(layer, energy, weight.shape), grams)


def _sample_rows(x: np.ndarray, layer: _Layer, seed: int) -> np.ndarray | None:
    if layer.node.op_type != "Conv":
        count = int(np.prod(x.shape[:-1]))
        return None if count <= MAX_ROWS else np.random.default_rng(seed).choice(count, MAX_ROWS, replace=False)
    return np.random.default_rng(seed).integers(0, np.iinfo(np.int64).max, MAX_ROWS)


def compensate(scorer: Scorer, probe: LayerProbe, masks: dict[str, np.ndarray], ridge: float = 1e-3,
               alternatives: dict[str, dict[str, np.ndarray]] | None = None,
               folds: Iterable[tuple[Scorer, LayerProbe, Scorer]] | None = None) -> tuple[str, dict[str, bool]]:
    """Refit every layer's surviving weights in graph order, keeping a refit only where it lowers the divergence.

    With ``alternatives`` (label -> masks with the same zeros per layer, e.g. the magnitude order at the search's
    allocation), the whole refit is also run from each of them (from the teacher's weights under that mask), and
    the pass whose final divergence is lowest is kept: ``masks`` and the scorer's weights are updated in place.
    With ``folds`` (per fold: a Scorer and a LayerProbe on the other samples, and a Scorer on the fold's), the
    passes are instead compared by cross-validation: each is fitted without a fold and judged on it, and the
    masks with the lowest mean divergence are then refitted on ``scorer``'s samples (a refit fits the samples it
    was fitted to, from some masks more than from others). Each fold's Scorers are closed after use.
    Returns the label of the masks kept (``search`` for ``masks``' own), and per layer whether its refit was
    kept (a layer whose refit did not help keeps those masks with the weights it started from).
    """
    start = {name: scorer.weights[name].copy() for name in masks}
    candidates = {"search": masks}
    for label, candidate in (alternatives or {}).items():
        current = {name: candidate.get(name, mask) for name, mask in masks.items()}
        if not all(np.array_equal(current[name], masks[name]) for name in masks):  # else the search's own pass
            candidates[label] = current

    def begin(target: Scorer, label: str) -> dict[str, np.ndarray]:
        current = {name: mask.copy() for name, mask in candidates[label].items()}
        for name, mask in current.items():
            target.weights[name][...] = start[name] if label == "search" else np.where(mask, probe.teacher[name], 0)
        return current

    if folds is not None and len(candidates) > 1:
        scores: dict[str, list[float]] = {label: [] for label in candidates}
        for fit, fit_probe, judge in folds:
            with closing(fit), closing(judge):
                for label in candidates:
                    _compensate_pass(fit, fit_probe, begin(fit, label), ridge)
                    for name in masks:
                        judge.weights[name][...] = fit.weights[name]
                    scores[label].append(judge.divergence())
        mean = {label: float(np.mean(values)) for label, values in scores.items()}
        log.info("refits judged on held-out folds (mean divergence): %s",
                 ", ".join(f"{label} {value:.6g}" for label, value in mean.items()))
        chosen = min(mean, key=mean.get)
        candidates = {chosen: candidates[chosen]}
    best: tuple[float, str, dict, dict, dict] | None = None  # divergence, label, refits kept, weights, masks
    for label in candidates:
        current = begin(scorer, label)
        kept, score = _compensate_pass(scorer, probe, current, ridge)
        if alternatives:
            log.info("refit from the %s masks: divergence %.6g", label, score)
        if best is None or score < best[0]:
            best = (score, label, kept, {name: scorer.weights[name].copy() for name in masks}, current)
    assert best is not None
    _, label, kept, weights, chosen = best
    for name in masks:
        scorer.weights[name][...] = weights[name]
        masks[name][...] = chosen[name]
    return label, kept


def _compensate_pass(scorer: Scorer, probe: LayerProbe, masks: dict[str, np.ndarray],
                     ridge: float) -> tuple[dict[str, bool], float]:
    """One refit of every layer, in graph order, from the scorer's weights under ``masks``; per layer, whether
    its refit was kept, and the final divergence (each layer's starting divergence is the one its predecessor
    ended with, so every layer costs one scoring run)."""
    kept: dict[str, bool] = {}
    current = scorer.divergence()
    for name, layer in sorted(probe.layers.items(), key=lambda item: item[1].order):
        if not _supported(layer) or masks[name].all():
            kept[name] = False
            continue
        before = scorer.weights[name].copy()
        system = _RefitSystem(layer, probe.capture(name), probe.capture(name, scorer.weights), probe.teacher[name],
                              ridge)
        scorer.weights[name][...] = system.solve(masks[name], before)
        after = scorer.divergence()
        kept[name] = after < current
        if kept[name]:
            current = after
        else:
            scorer.weights[name][...] = before
        log.info("compensated %s: %s", name, "refit" if kept[name] else "reverted (no gain)")
    return kept, current


class _RefitSystem:
    """One layer's ridge regression (student inputs against the teacher's pre-activations), solved per mask."""

    def __init__(self, layer: _Layer, x_t: np.ndarray, x_s: np.ndarray, teacher: np.ndarray, ridge: float) -> None:
        self.layer, self.shape = layer, teacher.shape
        rows = _sample_rows(x_t, layer, 1)
        self.teacher_rows = _rows_matrix(layer, teacher).astype(np.float64)
        self.groups = []
        for (channels, a_t), (_, a_s) in zip(_design(layer, x_t, rows), _design(layer, x_s, rows)):
            a_s_t = a_s.transpose(0, 2, 1)
            grams, crosses = np.matmul(a_s_t, a_s), np.matmul(a_s_t, a_t)
            for index, rows_of_group in enumerate(channels):
                gram = grams[index]
                damping = ridge * max(float(np.trace(gram)) / len(gram), 1e-12)
                self.groups.append((gram, crosses[index], damping, rows_of_group, a_s.shape[1]))

    def solve(self, mask: np.ndarray, current: np.ndarray) -> np.ndarray:
        """The refit weight for ``mask`` (zeros where it is False); channels with too few rows keep ``current``."""
        mask_rows = _rows_matrix(self.layer, mask)
        current_rows = _rows_matrix(self.layer, current).astype(np.float64)
        refit = np.zeros_like(self.teacher_rows)
        for gram, cross, damping, channels, count in self.groups:
            for channel in range(*channels.indices(len(self.teacher_rows))):
                support = np.flatnonzero(mask_rows[channel])
                if count < ROWS_PER_UNKNOWN * len(support):  # too few rows: the refit would fit noise
                    refit[channel] = current_rows[channel]
                    continue
                if not len(support):
                    continue
                rhs = cross[support] @ self.teacher_rows[channel]
                matrix = gram[np.ix_(support, support)] + damping * np.eye(len(support))
                refit[channel, support] = np.linalg.solve(matrix, rhs)
        weight = _from_rows(self.layer, refit, self.shape).astype(current.dtype)
        weight[~mask] = 0
        return weight
