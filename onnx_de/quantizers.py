"""Quantizers for the surviving (non-zero) weights: uniform grids and fitted codebooks (1 to 8 bits), and a
model-wide step (1 to 14 bits).

A weight's zeros are its mask: they stay exactly zero and cost no level, so ``bits`` counts the levels of the
survivors alone (``2**bits`` of them), and a survivor never rounds to zero.

- ``uniform``: levels ``k * scale`` for non-zero integers ``k`` in a window that contains zero, so that
  ONNX's ``DequantizeLinear`` (``(q - zero_point) * scale``) can express every level and the zeros. Symmetric
  windows are ``[-2**(bits-1), 2**(bits-1)]``; asymmetric ones slide to fit the weights' range. Per tensor or
  per output channel; the scale is chosen among clipped ranges to minimise the (weighted) squared error.
- ``codebook``: ``2**bits`` free levels fitted by Lloyd-Max (1-D k-means), optionally weighted per element
  by the energy of the input it multiplies, so that levels minimise output error rather than weight error.
  Per tensor, or per output channel: one table fitted to values scaled by each channel's largest magnitude,
  and that scale per channel (channels of very different ranges, as in depthwise convolutions with folded
  batch norms, each get the table's resolution, for one float per channel).
  With an ``entropy_weight`` the fit is entropy-constrained (Chou, Lookabaugh and Gray's ECVQ in one
  dimension): each survivor takes the level that minimises its weighted squared error plus
  ``entropy_weight`` x (the survivors' weighted variance) x (their mean weight) x (the level's code length in
  bits), so that rarely used levels lose their borderline members and the symbols the container codes get
  cheaper: error traded for bits, as rate-distortion quantizers such as NNCodec's do.
- ``step``: levels ``k * step`` for every integer ``k``, with one step for the whole model:
  ``8 * rms / 2**bits``, where ``rms`` is the root mean square of all the model's survivors, so that ``2**bits``
  levels span +-4 RMS; every survivor rounds to its nearest level. No window is fitted and nothing is clipped:
  large weights (depthwise kernels with folded batch norms) keep a fine relative resolution and outliers
  keep their value. On EfficientNet-Lite0 that keeps the KL to the teacher 6x lower than a per-tensor step
  at about the same entropy (BENCHMARKS.md). Up to 14 bits, for high-fidelity settings where the container's
  entropy coder, not the level count, decides the size. Per tensor only; levels are stored as int8, int16 or
  int32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ConfigError

__all__ = ["MAX_BITS", "SCHEMES", "QuantizedTensor", "quantize_tensor", "max_bits", "check_bits", "survivors_rms",
           "channel_shape", "broadcast_channels"]

SCHEMES = ("uniform", "codebook", "step")
MAX_BITS = 14  # the step scheme's finest; windows and codebooks stop at _WINDOW_MAX_BITS
_WINDOW_MAX_BITS = 8
_CLIP_RATIOS = np.linspace(0.35, 1.0, 27)  # fractions of the largest magnitude tried as the grid's end
_LLOYD_ITERATIONS = 30
_RATE_WINDOW = 8  # an entropy-constrained survivor picks among the 2 * 8 + 1 levels around its nearest one


@dataclass
class QuantizedTensor:
    """One weight's survivors as integer levels, and how to turn them back into floats.

    Attributes:
        scheme: ``uniform``, ``codebook`` or ``step``.
        bits: bits per surviving weight.
        levels: integers shaped like the weight, 0 exactly where it is zero. Uniform and step: ``k`` (value
            ``k * scale``); codebook: ``1 + index`` into ``codebook``.
        scale: uniform: one scale (per tensor) or one per output channel; step: the step; codebook per
            channel: the factor each channel's values of the shared table are multiplied by.
        window_low: uniform only: the lowest ``k`` of the window (per tensor or per channel); ``-window_low``
            is the zero point of an unsigned export.
        axis: per-channel quantization: the output-channel axis; ``None`` per tensor.
        codebook: codebook only: the ``2**bits`` (or fewer) levels, float32 (per channel: of scaled values).
        symmetric: uniform only: whether the window is symmetric.
    """

    scheme: str
    bits: int
    levels: np.ndarray
    scale: np.ndarray | None = None
    window_low: np.ndarray | None = None
    axis: int | None = None
    codebook: np.ndarray | None = None
    symmetric: bool = True

    def dequantize(self) -> np.ndarray:
        """The float32 weight this quantization stands for (what the exported model computes)."""
        if self.scheme == "codebook":
            table = np.concatenate([np.zeros(1, np.float32), self.codebook.astype(np.float32)])
            values = table[self.levels]
            if self.axis is None:
                return values
            return values * broadcast_channels(self.scale, self.levels.ndim, self.axis)
        scale = broadcast_channels(self.scale.astype(np.float32), self.levels.ndim, self.axis)
        return self.levels.astype(np.float32) * scale

    @property
    def survivors(self) -> int:
        return int(np.count_nonzero(self.levels))


def max_bits(scheme: str) -> int:
    """The most bits per surviving weight ``scheme`` offers."""
    return MAX_BITS if scheme == "step" else _WINDOW_MAX_BITS


def check_bits(bits, scheme: str, what: str = "bits", auto: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``bits`` is an integer width that ``scheme`` offers (or ``auto``)."""
    if scheme not in SCHEMES:
        raise ConfigError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    if auto and bits == "auto":
        return
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= max_bits(scheme):
        choices = f"{'auto or ' if auto else ''}an integer from 1 to {max_bits(scheme)}"
        raise ConfigError(f"{what} must be {choices} for {scheme} levels, got {bits!r}")


def quantize_tensor(weight: np.ndarray, bits: int, scheme: str = "codebook", *, symmetric: bool = True,
                    axis: int | None = None, energy: np.ndarray | None = None,
                    entropy_weight: float = 0.0, reference: float | None = None) -> QuantizedTensor:
    """Quantize the non-zero elements of ``weight`` to ``2**bits`` levels (``step``: a grid with no end).

    Args:
        weight: the (sparse) weight; its zeros stay zero.
        bits: 1 to 8 (``step``: 1 to 14).
        scheme: ``uniform``, ``codebook`` or ``step``.
        symmetric: uniform only: symmetric window, else one fitted to the range.
        axis: quantize per output channel along this axis (``None``: per tensor).
        energy: optional per-element weights of the squared error (input energy), shaped like ``weight``.
        entropy_weight: codebook only: the price of a bit of code length in the level assignment, in units of
            the survivors' weighted variance times their mean weight (0: plain Lloyd-Max). Meant for
            energy-weighted fits, where it moves low-energy survivors to common levels.
        reference: step only: the root mean square of the survivors of every weight of the model, so that
            they share the step (default: this weight's own).
    """
    check_bits(bits, scheme)
    weight = np.asarray(weight, dtype=np.float32)
    if not entropy_weight >= 0:
        raise ConfigError(f"entropy weight must be >= 0, got {entropy_weight}")
    if scheme == "step":
        if axis is not None or entropy_weight:
            raise ConfigError("step levels are per tensor, without an entropy weight")
        return _step(weight, bits, reference)
    importance = np.ones(weight.shape) if energy is None else np.maximum(np.asarray(energy, np.float64), 1e-12)
    if scheme == "codebook":
        if axis is None:
            return _codebook(weight, bits, importance, entropy_weight)
        # One table of levels for values scaled to each channel's largest magnitude, and that scale per channel:
        # every channel gets the table's resolution at its own range, for one float per channel in the file.
        moved, moved_importance = np.moveaxis(weight, axis, 0), np.moveaxis(importance, axis, 0)
        scale = np.abs(moved).reshape(len(moved), -1).max(axis=1).astype(np.float32)
        scale[scale == 0] = 1.0
        per_row = broadcast_channels(scale, moved.ndim, 0)
        shared = _codebook(moved / per_row, bits, moved_importance * per_row**2, entropy_weight)
        return QuantizedTensor("codebook", bits, np.moveaxis(shared.levels, 0, axis), scale=scale, axis=axis,
                               codebook=shared.codebook)
    if axis is None:
        k, scale, low = _uniform(weight.reshape(-1), importance.reshape(-1), bits, symmetric)
        return QuantizedTensor("uniform", bits, k.reshape(weight.shape), np.float32(scale), np.int64(low), None,
                               symmetric=symmetric)
    moved, moved_importance = np.moveaxis(weight, axis, 0), np.moveaxis(importance, axis, 0)
    levels = np.zeros(moved.shape, dtype=np.int16)
    scales = np.ones(moved.shape[0], dtype=np.float32)
    lows = np.zeros(moved.shape[0], dtype=np.int64)
    for channel in range(moved.shape[0]):
        k, scales[channel], lows[channel] = _uniform(moved[channel].reshape(-1), moved_importance[channel].reshape(-1),
                                                     bits, symmetric)
        levels[channel] = k.reshape(moved.shape[1:])
    return QuantizedTensor("uniform", bits, np.moveaxis(levels, 0, axis), scales, lows, axis, symmetric=symmetric)


def survivors_rms(weights) -> float:
    """The root mean square of the non-zero elements of ``weights`` together (the step scheme's reference)."""
    squares, count = 0.0, 0
    for weight in weights:
        alive = np.asarray(weight)[np.asarray(weight) != 0].astype(np.float64)
        squares, count = squares + float(np.dot(alive, alive)), count + alive.size
    return float(np.sqrt(squares / count)) if count else 0.0


def _step(weight: np.ndarray, bits: int, reference: float | None) -> QuantizedTensor:
    """Levels ``k`` of ``k * step`` nearest each survivor (never 0), ``step = 8 * reference / 2**bits``."""
    reference = survivors_rms([weight]) if reference is None else float(reference)
    if not (np.isfinite(reference) and reference >= 0):
        raise ConfigError(f"the step's reference must be a finite RMS >= 0, got {reference}")
    step = np.float32(8 * reference / 2**bits)
    if not step > 0:  # no survivors anywhere: any step
        step = np.float32(1.0)
    alive = weight != 0
    k = np.round(weight.astype(np.float64) / np.float64(step))
    k = np.where(alive & (k == 0), np.sign(weight), k)  # a survivor never rounds to zero: the mask says which are
    if np.abs(k).max(initial=0) >= 2**31:
        raise ConfigError(f"a weight of {np.abs(weight).max():g} is over 2**31 steps of {step:g}: use fewer bits")
    return QuantizedTensor("step", bits, k.astype(np.int32), scale=step)


def _uniform(values: np.ndarray, importance: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, float, int]:
    """Levels ``k`` (0 where the value is 0), the scale and the window's low end for one tensor or channel."""
    alive = values != 0
    k = np.zeros(values.shape, dtype=np.int16)
    if not alive.any():
        return k, 1.0, 0
    v, w = values[alive].astype(np.float64), importance[alive]
    width = 2**bits  # non-zero levels; a window holding them and zero spans width + 1 integers, at most 256
    if symmetric:
        low, high = -(width // 2), min(width // 2, 127)
        span = np.abs(v).max() / (width // 2)
    else:
        smallest, largest = min(v.min(), 0.0), max(v.max(), 0.0)
        span = (largest - smallest) / width
    best = (np.inf, None, 1.0, 0)
    for ratio in _CLIP_RATIOS:
        scale = max(span * ratio, 1e-30)
        if not symmetric:
            low = int(np.clip(np.round((smallest + largest) / (2 * scale) - width / 2), -width, 0))  # centred
            high = low + min(width, 255)
        levels = np.clip(np.round(v / scale), low, high)
        nearest_nonzero = np.where(v >= 0, 1 if high >= 1 else -1, -1 if low <= -1 else 1)
        levels = np.where(levels == 0, nearest_nonzero, levels)
        error = float(np.sum(w * (levels * scale - v) ** 2))
        if error < best[0]:
            best = (error, levels, scale, low)
    _, levels, scale, low = best
    k[alive] = levels.astype(np.int16)
    return k, scale, low


def _codebook(weight: np.ndarray, bits: int, importance: np.ndarray, entropy_weight: float = 0.0) -> QuantizedTensor:
    """Lloyd-Max levels for the survivors (weighted 1-D k-means), entropy-constrained with an ``entropy_weight``."""
    alive = weight != 0
    levels = np.zeros(weight.shape, dtype=np.int16)
    v, w = weight[alive].astype(np.float64), importance[alive]
    distinct = np.unique(v)
    count = 2**bits
    if len(distinct) <= count:
        centers = distinct
    else:
        # Start from half weighted quantiles (the bulk) and half an even grid (the tails, which quantiles
        # starve and Lloyd's iterations reach slowly): 8-bit error on an EfficientNet depthwise kernel 1.3%
        # against 9.7% from quantiles alone.
        order = np.argsort(v)
        cumulative = np.cumsum(w[order])
        bulk = count // 2
        targets = (np.arange(bulk) + 0.5) / bulk * cumulative[-1]
        quantiles = v[order][np.searchsorted(cumulative, targets).clip(0, len(v) - 1)]
        centers = np.unique(np.concatenate([quantiles, np.linspace(v.min(), v.max(), count - bulk)]))
        for _ in range(_LLOYD_ITERATIONS):
            assignment = _nearest(v, centers)
            totals = np.bincount(assignment, weights=w, minlength=len(centers))
            sums = np.bincount(assignment, weights=w * v, minlength=len(centers))
            updated = np.where(totals > 0, sums / np.maximum(totals, 1e-300), centers)
            if np.allclose(updated, centers, rtol=0, atol=1e-12 * max(np.abs(v).max(), 1e-30)):
                centers = updated
                break
            centers = np.sort(updated)
    codebook = np.asarray(centers, dtype=np.float32)
    if len(v):
        assignment = _nearest(v, codebook.astype(np.float64))
        if entropy_weight > 0 and len(distinct) > count:
            codebook, assignment = _entropy_constrained(v, w, codebook.astype(np.float64), assignment, entropy_weight)
        levels[alive] = (assignment + 1).astype(np.int16)
    return QuantizedTensor("codebook", bits, levels, codebook=codebook)


def _entropy_constrained(v: np.ndarray, w: np.ndarray, centers: np.ndarray, assignment: np.ndarray,
                         entropy_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's iterations with the code length in the assignment: each value takes the level, among those
    near its nearest, minimising ``w (v - c)^2 + price * (-log2 p)``; levels move to their members' weighted
    mean; ``p`` is each level's share. Returns the float32 codebook and the assignment."""
    mean = np.average(v, weights=w)
    price = entropy_weight * float(np.average((v - mean) ** 2, weights=w)) * float(np.mean(w))
    offsets = np.arange(-_RATE_WINDOW, _RATE_WINDOW + 1)
    for _ in range(_LLOYD_ITERATIONS):
        share = np.bincount(assignment, minlength=len(centers)) / len(assignment)
        length = np.where(share > 0, -np.log2(np.maximum(share, 1e-300)), np.inf)  # an empty level stays empty
        nearest = _nearest(v, centers)
        options = np.clip(nearest[:, None] + offsets[None, :], 0, len(centers) - 1)
        cost = w[:, None] * (v[:, None] - centers[options]) ** 2 + price * length[options]
        updated = options[np.arange(len(v)), cost.argmin(axis=1)]
        totals = np.bincount(updated, weights=w, minlength=len(centers))
        sums = np.bincount(updated, weights=w * v, minlength=len(centers))
        centers = np.where(totals > 0, sums / np.maximum(totals, 1e-300), centers)
        order = np.argsort(centers, kind="stable")  # members of a level need not be neighbours: re-sort
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        centers, updated = centers[order], rank[updated]
        settled = np.array_equal(updated, assignment)
        assignment = updated
        if settled:
            break
    return centers.astype(np.float32), assignment


def _nearest(values: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted ``centers`` for each value."""
    if len(centers) == 1:
        return np.zeros(len(values), dtype=np.int64)
    boundaries = (centers[1:] + centers[:-1]) / 2
    return np.searchsorted(boundaries, values)


def channel_shape(ndim: int, axis: int) -> list[int]:
    """The shape that broadcasts one value per channel along ``axis`` of an ``ndim``-dimensional tensor."""
    shape = [1] * ndim
    shape[axis] = -1
    return shape


def broadcast_channels(values: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    """Per-channel ``values`` shaped to broadcast along ``axis`` (unchanged per tensor)."""
    return values if axis is None else values.reshape(channel_shape(ndim, axis))
