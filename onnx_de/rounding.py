"""Rounding with error feedback: a layer's survivors rounded to their quantizer's levels one input at a time,
each rounding error spread over the inputs not yet rounded so that the layer's output on the calibration
inputs moves least (GPTQ, Frantar et al. 2023; pruned weights stay zero, as in SparseGPT).

With ``H`` the Gram matrix of a layer's inputs (plus a small ridge), rounding the weights ``w`` of one output
channel to ``q`` costs ``(q - w) H (q - w)^T`` of squared output error. Taking inputs in order of decreasing
energy, input ``i`` is rounded and the remaining ones move by ``-(w_i - q_i) / U_ii * U_i,>i``, ``U`` the upper
Cholesky factor of ``H^-1``: the least-squares answer to having rounded ``i``, in closed form. A pruned weight
is "rounded" to its zero, so the survivors also absorb what the mask leaves. Nearest rounding ignores every
other input; with correlated inputs (neighbouring pixels, channels of one feature) feedback halves the KL
divergence of the 3-bit 90%-sparse MNIST MLP and takes ppocr-det's 4-bit codebooks from 0.79 to 0.92 mask IoU
(BENCHMARKS.md, "Error-feedback rounding").

The levels are the quantizer's own (codebook, uniform window, step), so the export and container do not
change. With an ``entropy_weight``, a codebook survivor takes the level that minimises its error plus the
price of the level's code length, in the units of :mod:`onnx_de.quantizers`' entropy-constrained fit (an
input's importance is ``1 / U_ii^2``, its error's weight at the moment it is rounded).
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np

from .compensate import LayerInputs
from .quantizers import QuantizedTensor

__all__ = ["RIDGE", "ROUNDINGS", "round_with_feedback"]

ROUNDINGS = ("feedback", "nearest")  # how quantize rounds survivors to their levels

RIDGE = 1e-2  # the Gram matrices' ridge, in units of their mean diagonal (GPTQ's 1%)
_BLOCK = 128  # inputs rounded per block before the rest are updated (GPTQ's lazy batches)
_RATE_WINDOW = 8  # with an entropy weight, a survivor picks among the 2 * 8 + 1 levels around its nearest one


def round_with_feedback(weight: np.ndarray, quantized: QuantizedTensor, inputs: LayerInputs,
                        entropy_weight: float = 0.0) -> QuantizedTensor:
    """``quantized`` (nearest rounding of ``weight``'s survivors) re-rounded with error feedback on the layer's
    input statistics; per group of channels, whichever of the two moves the output less (plus, with an
    ``entropy_weight``, the price of its code length) is kept."""
    if inputs.hessians is None:
        raise ValueError("error feedback needs the layer's Hessians (layer_inputs(..., hessians=True))")
    start = inputs.rows(np.asarray(weight, dtype=np.float64))
    nearest = inputs.rows(quantized.levels).astype(np.int64)
    out = nearest.copy()
    lengths = _code_lengths(quantized) if entropy_weight > 0 and quantized.scheme == "codebook" else None
    whole = _Grid(quantized, len(start), lengths)
    for gram, channels in inputs.hessians:
        rows = np.arange(len(start))[channels]
        mean_diagonal = float(np.mean(np.diag(gram)))
        if not len(rows) or not mean_diagonal > 0:
            continue
        grid = whole.take(rows)
        hessian = gram + RIDGE * mean_diagonal * np.eye(len(gram))
        order = np.argsort(-np.diag(hessian), kind="stable")
        levels, price = _round_group(start[rows][:, order], hessian[np.ix_(order, order)], grid, entropy_weight)
        candidate = np.empty_like(levels)
        candidate[:, order] = levels
        costs = [_cost(grid, levels, start[rows], hessian, price) for levels in (candidate, nearest[rows])]
        if costs[0] < costs[1]:
            out[rows] = candidate
    return dataclasses.replace(quantized, levels=inputs.from_rows(out).astype(quantized.levels.dtype))


class _Grid:
    """The levels the survivors of each row (output channel) may take, as stored ids and as values: a codebook
    ``table`` (id = 1 + index) times the row's ``multiplier``, or the integers ``low..high`` but 0 times it."""

    def __init__(self, q: QuantizedTensor, rows: int, lengths: np.ndarray | None) -> None:
        self.lengths = lengths
        scale = np.ones(1) if q.scale is None else np.asarray(q.scale, dtype=np.float64).reshape(-1)
        self.multiplier = np.broadcast_to(scale, (rows,)) if q.axis is None else scale
        self.table = q.codebook.astype(np.float64) if q.scheme == "codebook" else None
        if q.scheme == "uniform":
            self.low = np.broadcast_to(np.asarray(q.window_low, dtype=np.int64).reshape(-1), (rows,))
            self.high = self.low + 2**q.bits
        elif q.scheme == "step":  # within the levels nearest rounding used (the export's integer type holds them)
            alive = q.levels[q.levels != 0]
            self.low = np.full(rows, min(int(alive.min(initial=-1)), -1))
            self.high = np.full(rows, max(int(alive.max(initial=1)), 1))

    def take(self, rows: np.ndarray) -> _Grid:
        """The grid of ``rows`` alone."""
        part = copy.copy(self)
        part.multiplier = self.multiplier[rows]
        if self.table is None:
            part.low, part.high = self.low[rows], self.high[rows]
        return part

    def values(self, ids: np.ndarray) -> np.ndarray:
        """The weight values of level ``ids`` (rows x columns, or one column); 0 for id 0."""
        multiplier = self.multiplier if ids.ndim == 1 else self.multiplier[:, None]
        if self.table is None:
            return ids * multiplier
        return np.concatenate([[0.0], self.table])[ids] * multiplier

    def nearest(self, column: np.ndarray, price: float, diagonal: float) -> np.ndarray:
        """Each row's nonzero level id for ``column``: the nearest, or, with a ``price``, the cheapest in
        squared error (over ``diagonal**2``) plus ``price`` times code length among the levels around it."""
        scaled = column / self.multiplier
        if self.table is None:
            k = np.clip(np.rint(scaled), self.low, self.high).astype(np.int64)
            zero = k == 0
            up = (scaled >= 0) & (self.high >= 1) | (self.low > -1)
            return np.where(zero, np.where(up, 1, -1), k)
        if len(self.table) == 1:
            return np.ones(len(column), dtype=np.int64)
        index = np.searchsorted((self.table[1:] + self.table[:-1]) / 2, scaled)
        if price and self.lengths is not None:
            options = np.clip(index[:, None] + np.arange(-_RATE_WINDOW, _RATE_WINDOW + 1)[None, :], 0,
                              len(self.table) - 1)
            error = (column[:, None] - self.table[options] * self.multiplier[:, None]) / diagonal
            index = options[np.arange(len(column)), (error**2 + price * self.lengths[options]).argmin(axis=1)]
        return index + 1


def _code_lengths(q: QuantizedTensor) -> np.ndarray:
    """Per codebook level, its code length in bits at its share of the survivors (empty levels stay empty)."""
    counts = np.bincount(q.levels[q.levels > 0].reshape(-1), minlength=len(q.codebook) + 1)[1:]
    share = counts / max(int(counts.sum()), 1)
    return np.where(share > 0, -np.log2(np.maximum(share, 1e-300)), np.inf)


def _round_group(w: np.ndarray, hessian: np.ndarray, grid: _Grid, entropy_weight: float) -> tuple[np.ndarray, float]:
    """Level ids of ``w`` (rows x inputs, in rounding order; zeros stay 0) by GPTQ's recursion, and the price
    of a bit of code length it rounded with (0 without an entropy weight)."""
    alive = w != 0
    w = w.copy()
    upper = np.linalg.cholesky(np.linalg.inv(hessian)).T  # H^-1 = U^T U
    diagonal = np.diag(upper)
    price = 0.0
    if grid.lengths is not None and entropy_weight > 0 and alive.any():
        importance = np.broadcast_to(1.0 / diagonal**2, w.shape)[alive]
        values = w[alive]
        spread = np.average((values - np.average(values, weights=importance)) ** 2, weights=importance)
        price = entropy_weight * float(spread) * float(np.mean(importance))
    ids = np.zeros(w.shape, dtype=np.int64)
    count = w.shape[1]
    for begin in range(0, count, _BLOCK):
        end = min(begin + _BLOCK, count)
        errors = np.zeros((len(w), end - begin))
        for i in range(begin, end):
            column = w[:, i]
            ids[:, i] = np.where(alive[:, i], grid.nearest(column, price, diagonal[i]), 0)
            errors[:, i - begin] = (column - grid.values(ids[:, i])) / diagonal[i]
            w[:, i + 1 : end] -= np.outer(errors[:, i - begin], upper[i, i + 1 : end])
        w[:, end:] -= errors @ upper[begin:end, end:]
    return ids, price


def _cost(grid: _Grid, ids: np.ndarray, start: np.ndarray, hessian: np.ndarray, price: float) -> float:
    """The squared output error ``sum_rows (q - w) H (q - w)^T`` of the levels ``ids`` against ``start``, plus
    ``price`` times their code length."""
    delta = grid.values(ids) - start
    error = float(np.sum((delta @ hessian) * delta))
    if price and grid.lengths is not None:
        error += price * float(grid.lengths[ids[ids > 0] - 1].sum())
    return error
