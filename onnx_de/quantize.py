"""``quantize``: the fewest bits per layer for a model's surviving weights, written as a standard ONNX model."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from .allocation import Target, search_bits
from .augment import shifted_copies
from .compensate import LayerInputs, LayerProbe, layer_inputs
from .config import layer_setting
from .data import Dataset, load_data
from .errors import ConfigError
from .evaluate import check_same_interface, evaluate, evaluation_data, resolve_metric
from .export import PARAMETER_MANTISSA_BITS, check_mantissa_bits, export_quantized, rounded_parameters
from .fileio import atomic_write_bytes
from .metrics import MetricSpec
from .model import Model, WeightSelection, load_model
from .quantizers import QuantizedTensor, check_bits, max_bits, quantize_tensor, survivors_rms
from .rounding import ROUNDINGS, round_with_feedback
from .scoring import Scorer
from .sparsify import student_model
from .zoo import open_model

__all__ = ["QuantizeResult", "quantize", "unquantized", "weight_inputs"]


@dataclass
class QuantizeResult:
    """What ``quantize`` did: the exported student, per-layer bits and scheme, and fidelity."""

    student: Model
    quantized: dict[str, QuantizedTensor]
    scheme: str
    layers: dict[str, dict]
    average_bits: float
    rounded_parameter_values: int = 0  # float parameters outside the quantized weights rounded to mantissa_bits
    calibration_metric: float | None = None
    calibration_divergence: float | None = None  # with bits auto: the chosen student's, in the search's units
    fidelity: dict | None = None
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "scheme": self.scheme, "settings": self.settings, "average_bits": self.average_bits,
            "rounded_parameter_values": self.rounded_parameter_values,
            "calibration_metric": self.calibration_metric, "calibration_divergence": self.calibration_divergence,
            "layers": self.layers, "fidelity": self.fidelity,
            "seconds": self.seconds,
        }


def quantize(
    model: str | Path | Model,
    data: str | Path | Dataset,
    *,
    bits: int | str = "auto",
    budget: float | None = None,
    max_divergence: float | None = None,
    scheme: str = "codebook",
    symmetric: bool = True,
    per_channel: bool | None = None,
    weighted: bool = True,
    teacher: str | Path | Model | None = None,
    selection: WeightSelection | None = None,
    eval_data: str | Path | Dataset | None = None,
    output: str | Path | None = None,
    calibration_samples: int | None = None,
    intra_op_threads: int | None = None,
    layer_bits: dict[str, int] | None = None,
    metric: str | MetricSpec | None = None,
    inputs: dict[str, LayerInputs | None] | None = None,
    entropy_weight: float = 0.0,
    rounding: str = "feedback",
    mantissa_bits: int = PARAMETER_MANTISSA_BITS,
    augment: int = 0,
    augment_shift: int = 1,
) -> QuantizeResult:
    """Quantize the non-zero prunable weights of ``model`` and export a model with quantized initializers.

    Args:
        model: the model to quantize (typically a sparse student; path, Model or ``zoo:NAME``).
        data: calibration data (``zoo:NAME`` uses its calibration split).
        bits: bits per surviving weight for every layer (1 to 8; ``step``: 1 to 14), or ``auto`` to search
            per layer.
        budget: with ``bits="auto"``: the lowest primary fidelity metric on the calibration set allowed.
        max_divergence: with ``bits="auto"``, instead of a budget: the highest divergence from the teacher on
            the calibration set allowed, in the search's units (KL for class logits, binary KL for sigmoid
            maps, normalised squared error otherwise). Finer than a budget where the primary metric moves in
            coarse steps: on EfficientNet-Lite0's 64 crops, steps allocated within a KL of 0.001 gave a
            container 1.19x smaller than NNCodec's at a lower evaluation KL (BENCHMARKS.md). The cap holds
            the widths with nearest rounding; the ``calibration_divergence`` reported is the final student's,
            whose error-feedback rounding was fitted to these samples, so it is lower than on unseen data
            (there: 0.0001 on calibration, 0.0008 on the evaluation crops).
        scheme: ``codebook`` (Lloyd-Max levels), ``uniform`` (DequantizeLinear grids) or ``step`` (one step
            for the whole model, ``2**bits`` of them across +-4 RMS of its survivors, nothing clipped: for
            high-fidelity settings; see :mod:`onnx_de.quantizers`).
        symmetric: uniform only: symmetric windows, else windows fitted to each range.
        per_channel: one scale (uniform) or one codebook (codebook) per output channel, else one per tensor;
            default (``None``): per channel for uniform grids, per tensor for codebooks (a table per channel
            costs its floats in the file, which small models feel).
        weighted: weight the squared error by the energy of each element's input (output error).
        rounding: ``feedback`` (the default): survivors rounded one input at a time, each error compensated by
            the inputs not yet rounded (GPTQ; :mod:`onnx_de.rounding`), so that the layer's output on the
            calibration data moves least; ``nearest``: each to its nearest level. The levels are the same. With
            ``bits="auto"`` the widths are allocated with nearest rounding and the chosen ones then rounded with
            feedback, unless that would take the calibration metric below the budget.
        teacher: the model fidelity is measured against (default: ``model``); pass the original model when
            ``model`` is its sparse student.
        selection: which weights are quantized.
        eval_data: data for the reported fidelity (default: the evaluation split of ``zoo:NAME`` data).
        output: where to write the quantized ONNX model (atomically).
        calibration_samples: use at most this many calibration samples.
        intra_op_threads: ONNX Runtime threads per operator.
        layer_bits: fixed bits for the layers an exact name or ``re:PATTERN`` names (exact names first, then
            the first matching pattern); ``bits`` applies to the others (with ``auto``, they are searched).
        metric: the fidelity metric (default: the zoo entry's for ``zoo:NAME`` data, else from the outputs).
        inputs: the layer input statistics of :func:`weight_inputs` for this model and data, when several
            quantizations of one model share them (computing them is most of a fixed-bits run).
        entropy_weight: codebooks only: fit them entropy-constrained, trading this much of the survivors'
            weighted variance (times their mean energy) for a bit of code length; 0 (the default) for plain
            Lloyd-Max levels. 0.05 takes the 90%-sparse 4-bit mnist-mlp container from 37.9x to 42.0x, at 0.980
            against 0.977 evaluation agreement (with feedback rounding); the trade differs by model, so measure
            it (BENCHMARKS.md).
        mantissa_bits: the other float parameters (biases, normalization statistics and scales, weights too
            small to prune, operands of elementwise nodes) keep this many of their 23 mantissa bits, rounded to
            nearest before anything is measured (``inputs`` given may be the unrounded model's: the difference
            is that of float16 rounding); the container's byte planes then code them in fewer bytes.
            10 (the default): float16's precision, 12% off ppocr-cls's container (its batch normalizations
            are unfolded) and 0.6-3.5% off the other zoo models' at the same evaluation fidelity (7 bits cost
            EfficientNet-Lite0 3 of 64 crops; BENCHMARKS.md); 23 keeps them exact.
        augment, augment_shift: add this many shifted copies of the calibration images to the calibration data
            (see :func:`~onnx_de.sparsify`): the input statistics and the budget are taken on them too.
    """
    started = time.perf_counter()
    check_bits(bits, scheme, auto=True)  # and the scheme
    if bits == "auto" and budget is None and max_divergence is None:
        raise ConfigError("automatic bits need a fidelity budget (--budget / budget=, e.g. 0.98) or a divergence "
                          "cap (--max-divergence / max_divergence=, e.g. 0.001)")
    if budget is not None and not 0 < budget <= 1:
        raise ConfigError(f"budget must be in (0, 1], got {budget}")
    if max_divergence is not None:
        if budget is not None or bits != "auto":
            raise ConfigError("a divergence cap allocates bits per layer (bits auto) in place of a budget: give "
                              "one of them")
        if isinstance(max_divergence, bool) or not isinstance(max_divergence, (int, float)) \
                or not 0 < max_divergence < math.inf:
            raise ConfigError(f"the divergence cap must be a number > 0, got {max_divergence!r}")
    for pattern, width in (layer_bits or {}).items():
        check_bits(width, scheme, f"layer bits {pattern}")
    if per_channel is None:
        per_channel = scheme == "uniform"
    if per_channel and scheme == "step":
        raise ConfigError("step levels share one step across the model: per channel does not apply")
    if scheme != "codebook" and entropy_weight:
        raise ConfigError("an entropy weight applies to codebooks only")
    if rounding not in ROUNDINGS:
        raise ConfigError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    check_mantissa_bits(mantissa_bits)
    student_in = open_model(model, selection or WeightSelection(), require_prunable=True)
    reference = open_model(teacher) if teacher is not None else None
    if reference is not None:
        check_same_interface(reference, student_in)
    calibration = load_data(data, student_in, split="calibration", limit=calibration_samples)
    calibration = shifted_copies(calibration, augment, augment_shift)
    spec = resolve_metric(metric, student_in, data, model)
    evaluation = evaluation_data(eval_data, data, student_in)
    weights = _quantizable(student_in)
    parameters = rounded_parameters(student_in.proto.graph, mantissa_bits, {w.name for w in weights})
    if parameters:
        student_in = student_model(student_in, parameters)
    feedback = rounding == "feedback"
    if inputs is None and (feedback or weighted and scheme != "step"):
        inputs = weight_inputs(student_in, calibration, intra_op_threads, hessians=feedback)
    elif inputs is not None and not {w.name for w in weights} <= set(inputs):
        raise ConfigError(f"layer inputs given for {sorted(inputs)}, not for every weight to quantize")
    elif inputs is not None and feedback and any(i is not None and i.hessians is None for i in inputs.values()):
        raise ConfigError("error-feedback rounding needs the layer inputs with their Hessians (hessians=True)")
    # A step's levels are fixed by the step alone: its fit has no error weights.
    energies = {w.name: inputs[w.name].energy if weighted and scheme != "step" and inputs and inputs[w.name]
                is not None else None for w in weights}

    fixed = {w.name: layer_setting(w.name, layer_bits or {}) for w in weights}
    rms = survivors_rms(student_in.initializer(w.name) for w in weights) if scheme == "step" else None

    def nearest(w, width: int) -> QuantizedTensor:
        return quantize_tensor(student_in.initializer(w.name), width, scheme, symmetric=symmetric,
                               axis=w.out_axis if per_channel else None, energy=energies[w.name],
                               entropy_weight=entropy_weight, reference=rms)

    def rounded(w, q: QuantizedTensor) -> QuantizedTensor:
        """``q`` re-rounded with feedback, where asked for and the layer kind can be unfolded."""
        if not feedback or inputs[w.name] is None:
            return q
        return round_with_feedback(student_in.initializer(w.name), q, inputs[w.name], entropy_weight)

    calibration_metric = calibration_divergence = None
    if bits == "auto":
        # Widths are allocated with nearest rounding: feedback is fitted to the calibration data, which would
        # then judge its own fit (ppocr-det: 0.995 on calibration, 0.984 on the evaluation pages). The chosen
        # widths are rounded with feedback afterwards, kept where they still meet the budget.
        by_layer = {w.name: {width: nearest(w, width) for width in
                             ([fixed[w.name]] if fixed[w.name] else range(1, max_bits(scheme) + 1))} for w in weights}
        scorer = Scorer(student_in, calibration, [w.name for w in weights], spec,
                        intra_op_threads=intra_op_threads, reference=reference)
        target = Target(budget, max_divergence)
        chosen, calibration_value = search_bits(scorer, by_layer, target)
        chosen_levels = {name: by_layer[name][width] for name, width in chosen.items()}

        def run(levels: dict[str, QuantizedTensor]) -> list:
            """The student's outputs on the calibration data with ``levels``."""
            for name, q in levels.items():
                scorer.weights[name][...] = q.dequantize()
            return scorer.student_outputs()

        outputs = None
        if feedback:
            fed = {w.name: rounded(w, chosen_levels[w.name]) for w in weights}
            fed_outputs = run(fed)
            if target.kept(target.value(scorer, fed_outputs), fallback=calibration_value):
                chosen_levels, outputs = fed, fed_outputs
        if outputs is None:
            outputs = run(chosen_levels)
        calibration_metric, calibration_divergence = scorer.primary_metric(outputs), scorer.divergence(outputs)
    else:
        chosen_levels = {w.name: rounded(w, nearest(w, fixed[w.name] or bits)) for w in weights}
    exported = export_quantized(student_in, chosen_levels)
    student = load_model(exported)
    if output is not None:
        atomic_write_bytes(output, student.serialized())
    fidelity = None
    if evaluation is not None:
        fidelity = evaluate(reference or student_in, student, evaluation, metric=spec, intra_op_threads=intra_op_threads)
    survivors = sum(q.survivors for q in chosen_levels.values())
    layers = {
        name: {"bits": q.bits, "scheme": q.scheme, "survivors": q.survivors, "size": int(q.levels.size),
               "levels": int(q.codebook.shape[-1]) if q.codebook is not None else 2**q.bits}
        for name, q in chosen_levels.items()
    }
    settings = {"bits": bits, "budget": budget, "max_divergence": max_divergence, "symmetric": symmetric,
                "per_channel": per_channel, "entropy_weight": entropy_weight, "rounding": rounding,
                "mantissa_bits": mantissa_bits, "weighted": weighted, "layer_bits": dict(layer_bits or {}),
                "augment": augment, "augment_shift": augment_shift}
    return QuantizeResult(
        student=student, quantized=chosen_levels, scheme=scheme, layers=layers,
        average_bits=float(sum(q.bits * q.survivors for q in chosen_levels.values()) / max(survivors, 1)),
        rounded_parameter_values=sum(value.size for value in parameters.values()),
        calibration_metric=calibration_metric, calibration_divergence=calibration_divergence, fidelity=fidelity,
        seconds=time.perf_counter() - started,
        settings=settings,
    )


def unquantized(model: Model) -> QuantizeResult:
    """The result of quantizing nothing: ``model`` as it is, its weights float32 (the lossless container's)."""
    return QuantizeResult(student=model, quantized={}, scheme="lossless", layers={}, average_bits=32.0,
                          settings={"bits": None})


def weight_inputs(model: Model, calibration: Dataset, intra_op_threads: int | None = None,
                  hessians: bool = True) -> dict[str, LayerInputs | None]:
    """Per quantizable weight, its layer's input statistics on ``calibration``: the energy of the input each
    element multiplies (the error weights of levels) and, with ``hessians``, the inputs' Gram matrices (error
    feedback); ``None`` for a layer kind that cannot be unfolded."""
    weights = _quantizable(model)
    probe = LayerProbe(model, weights, calibration, intra_op_threads=intra_op_threads)
    return layer_inputs(probe, [w.name for w in weights], hessians)


def _quantizable(model: Model) -> list:
    weights = [w for w in model.prunable if w.dtype == "float32"]
    if not weights:
        raise ConfigError(f"{model.source}: no float32 weight to quantize")
    return weights
