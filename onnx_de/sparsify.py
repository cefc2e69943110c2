"""``sparsify``: Directed-Evolution pruning of a model's weights (and the baselines it is compared with)."""

from __future__ import annotations

import hashlib
import logging
import time
from contextlib import closing, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .augment import shifted_copies
from .compensate import LayerProbe, compensate as compensate_layers, saliency as layer_saliency
from .data import Dataset, load_data
from .errors import ConfigError
from .evaluate import evaluate, evaluation_data, resolve_metric
from .evolution import SearchConfig, evolve, layer_targets
from .fileio import atomic_write_bytes
from .metrics import MetricSpec
from .model import Model, WeightSelection
from .parallel import create_scorer, parse_executor
from .runtime import resolve_device
from .scoring import Scorer
from .zoo import open_model

__all__ = ["METHODS", "SparsifyResult", "search_fingerprint", "sparsify", "student_model", "unpruned"]

log = logging.getLogger(__name__)

METHODS = ("de", "magnitude", "wanda")
MASK_CANDIDATES = {"magnitude": "magnitude", "wanda": "activation"}  # label -> the prior that orders the weights


@dataclass
class SparsifyResult:
    """What ``sparsify`` did: the student, its masks, per-layer sparsity, trajectory and fidelity."""

    student: Model
    masks: dict[str, np.ndarray]
    method: str
    config: dict
    layers: dict[str, dict]
    sparsity: float
    divergence: float
    trajectory: list[dict] = field(default_factory=list)
    compensated: dict[str, bool] = field(default_factory=dict)  # per layer: whether its refit was kept
    masks_from: str | None = None  # with compensation: the masks of the pass kept (search, magnitude or wanda)
    fidelity: dict | None = None
    seconds: float = 0.0
    stopped: str | None = None
    augmentation: dict | None = None  # shifted copies of the calibration images: {"copies": K, "shift": pixels}

    def to_dict(self) -> dict:
        return {
            "method": self.method, "config": self.config, "augmentation": self.augmentation, "sparsity": self.sparsity,
            "calibration_divergence": self.divergence, "layers": self.layers, "compensated": self.compensated,
            "masks_from": self.masks_from,
            "trajectory": self.trajectory, "fidelity": self.fidelity, "seconds": self.seconds,
            "stopped": self.stopped,
        }


def student_model(teacher: Model, weights: dict[str, np.ndarray]) -> Model:
    """A copy of ``teacher`` whose initializers ``weights`` take the given values."""
    proto = onnx.ModelProto()
    proto.CopyFrom(teacher.proto)
    for index, tensor in enumerate(proto.graph.initializer):
        if tensor.name in weights:
            proto.graph.initializer[index].CopyFrom(numpy_helper.from_array(weights[tensor.name], tensor.name))
    return Model(proto, teacher.source, teacher.inputs, teacher.outputs, teacher.weights, teacher.folded_constants)


def search_fingerprint(teacher: Model, data: Dataset) -> str:
    """What a search depends on besides its settings: the teacher and the samples it is scored on (a checkpoint
    or a budget level records it, and a resume with another model or other data is refused)."""
    digest = hashlib.sha256(teacher.serialized())
    for name in sorted(data.inputs):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(data.inputs[name]).tobytes())
    return digest.hexdigest()


def sparsify(
    model: str | Path | Model,
    data: str | Path | Dataset,
    *,
    config: SearchConfig | None = None,
    method: str = "de",
    compensate: bool = True,
    selection: WeightSelection | None = None,
    eval_data: str | Path | Dataset | None = None,
    output: str | Path | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    calibration_samples: int | None = None,
    intra_op_threads: int | None = None,
    workers: int = 1,
    executor: str = "local",
    device: str = "auto",
    progress=None,
    metric: str | MetricSpec | None = None,
    mask_candidates: tuple[str, ...] = tuple(MASK_CANDIDATES),
    held_out: float = 0.0,
    mask_folds: int = 0,
    augment: int = 0,
    augment_shift: int = 1,
) -> SparsifyResult:
    """Zero a fraction of ``model``'s prunable weights while keeping its outputs close to the original's.

    Args:
        model: the teacher (path, Model or ``zoo:NAME``).
        data: calibration data for the search (``zoo:NAME`` uses its calibration split).
        config: search settings (targets, population, prior, seed); see :class:`SearchConfig`.
        method: ``de`` (Directed Evolution), or the baselines ``magnitude`` and ``wanda`` (|w| x ||x||),
            each pruning to the same targets.
        compensate: refit surviving weights by least squares afterwards (kept per layer only where it helps).
        mask_candidates: with DE and compensation, the whole refit is also run from these masks at the
            search's per-layer sparsity (``magnitude``, ``wanda``), and the pass the Scorer judges best is kept:
            the search chooses how many weights each layer loses, the final selection which ones.
        mask_folds: with ``mask_candidates``, compare the passes by this many folds of cross-validation (each
            pass refitted without a fold and judged on it; whole source groups where the data has them), then
            refit the chosen masks on all the samples; 0 (the default): judge them on the samples they were
            fitted to. Costs about ``mask_folds`` x (1 - 1/``mask_folds``) more refits.
        held_out: this fraction of the calibration samples (the last ones, or whole source groups where the
            data has them: see :meth:`Dataset.hold_out`) is kept from the search and the
            regressions; with compensation it judges the refits instead: each layer's refit (and its mask,
            among the candidates) is kept only where it lowers the divergence on samples it was not fitted to.
            ``calibration_divergence`` is then measured on them. 0 (the default): one set for everything.
        augment: add this many copies of the calibration images, each sample shifted by its own random offset
            of up to ``augment_shift`` pixels (:mod:`onnx_de.augment`; after ``held_out`` is set aside, which
            stays unshifted). The search and the refits then fit the teacher on more of the input distribution:
            lower divergence on unseen data, at about ``augment + 1`` times the search's time.
        selection: which weights are prunable.
        eval_data: data for the reported fidelity (``zoo:NAME`` uses its evaluation split; default: the
            evaluation split of ``data`` when it is ``zoo:NAME``). Never used by the search.
        output: where to write the student ONNX model (atomically).
        checkpoint: search state file, written every few generations (DE only) and removed once ``output``
            is written.
        resume: continue from ``checkpoint``.
        calibration_samples: use at most this many calibration samples.
        intra_op_threads: ONNX Runtime threads per operator (per worker).
        workers: Scorer replicas that score a generation's candidates in parallel (DE only): threads of this
            process, or Ray actors.
        executor: where the workers run: ``local`` (threads), ``ray`` (the Ray cluster on this machine, or a
            new local one) or ``ray:ADDRESS`` (a running Ray cluster; needs ``onnx-de[ray]``).
        device: where the search's Scorer runs: ``cpu``, ``cuda`` (a CUDA GPU through onnxruntime-gpu; a
            ConfigError where there is none) or ``auto`` (the GPU where there is one, else the CPU). The
            least-squares refit and the evaluation run on the CPU.
        progress: callback receiving each generation's record.
        metric: the fidelity metric (default: the zoo entry's for ``zoo:NAME`` data, else from the outputs).

    Example:
        >>> result = sparsify("zoo:mnist-mlp", "zoo:mnist-mlp", config=SearchConfig(sparsity=0.9))
        >>> result.fidelity["top1_agreement"]
    """
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    unknown = set(mask_candidates) - set(MASK_CANDIDATES)
    if unknown:
        raise ConfigError(f"mask candidates must be among {', '.join(MASK_CANDIDATES)}, got {', '.join(unknown)}")
    parse_executor(executor, workers)
    device = resolve_device(device)
    config = config or SearchConfig()
    if config.refits and (method != "de" or not compensate):
        raise ConfigError("interim refits (refits > 0) belong to the DE search with compensation")
    if not 0 <= held_out < 1:
        raise ConfigError(f"held_out must be in [0, 1), got {held_out}")
    if mask_folds == 1 or mask_folds < 0 or (mask_folds and held_out):
        raise ConfigError(f"mask_folds must be 0 or at least 2, and not combined with held_out; got {mask_folds}")
    if mask_folds and (method != "de" or not compensate or not mask_candidates):
        raise ConfigError("mask_folds chooses among the refits from mask candidates: DE with compensation and "
                          "mask candidates only")
    started = time.perf_counter()
    teacher = open_model(model, selection or WeightSelection(), require_prunable=True)
    calibration = load_data(data, teacher, split="calibration", limit=calibration_samples)
    if mask_folds > len(calibration):
        raise ConfigError(f"mask_folds {mask_folds} is more folds than the {len(calibration)} calibration samples")
    judged = None
    if held_out:
        count = int(round(held_out * len(calibration)))
        if not 1 <= count < len(calibration):
            raise ConfigError(f"held_out {held_out} of {len(calibration)} calibration samples leaves one side empty")
        calibration, judged = calibration.hold_out(count)
    calibration = shifted_copies(calibration, augment, augment_shift, seed=config.seed)
    spec = resolve_metric(metric, teacher, data, model)
    evaluation = evaluation_data(eval_data, data, teacher)
    prunable = teacher.prunable
    names = [w.name for w in prunable]
    parallel = {"executor": executor, "workers": workers} if method == "de" else {}
    with closing(create_scorer(teacher, calibration, names, spec, intra_op_threads=intra_op_threads, device=device,
                               **parallel)) as scorer:
        probe = LayerProbe(teacher, prunable, calibration, intra_op_threads=intra_op_threads)
        prior = {"de": config.prior, "magnitude": "magnitude", "wanda": "activation"}[method]
        importance = layer_saliency(probe, prior)
        trajectory: list[dict] = []
        stopped = None
        if method == "de":
            state = evolve(scorer, config, importance, checkpoint=Path(checkpoint) if checkpoint else None,
                           resume=resume, progress=progress,
                           refit=lambda current: compensate_layers(scorer, probe, current),
                           depends_on=search_fingerprint(teacher, calibration) if checkpoint else None)
            masks, trajectory, stopped = state.masks, state.trajectory, state.stopped
        else:
            masks = prune_by_saliency(importance, config)
            for name, mask in masks.items():
                scorer.weights[name][~mask] = 0
        alternatives = None
        if method == "de" and compensate and mask_candidates:
            counts = {name: int(mask.size - np.count_nonzero(mask)) for name, mask in masks.items()}
            alternatives = {label: lowest(layer_saliency(probe, MASK_CANDIDATES[label]), counts)
                            for label in mask_candidates}
        judge = scorer
        if judged is not None:  # the refits are judged on the held-out samples, from the search's weights
            judge = Scorer(teacher, judged, names, spec, intra_op_threads=intra_op_threads, device=device)
            for name, weight in scorer.weights.items():
                judge.weights[name][...] = weight
        folds = None
        if alternatives and mask_folds:  # made one fold at a time, as compensation reaches it
            options = {"intra_op_threads": intra_op_threads, "device": device, "partial": False}
            folds = ((Scorer(teacher, fit, names, spec, **options),
                      LayerProbe(teacher, prunable, fit, intra_op_threads=intra_op_threads),
                      Scorer(teacher, fold, names, spec, **options)) for fit, fold in calibration.folds(mask_folds))
        with closing(judge) if judge is not scorer else nullcontext():
            masks_from, compensated = (compensate_layers(judge, probe, masks, alternatives=alternatives, folds=folds)
                                       if compensate else (None, {}))
            divergence = judge.divergence()
            student = student_model(teacher, judge.weights)
        if output is not None:
            atomic_write_bytes(output, student.serialized())
            if checkpoint is not None:
                Path(checkpoint).unlink(missing_ok=True)  # the run is complete: nothing left to resume
        fidelity = None
        if evaluation is not None:
            fidelity = evaluate(teacher, student, evaluation, metric=spec, intra_op_threads=intra_op_threads)
        layers, overall = _layer_sparsity(masks)
        return SparsifyResult(
            student=student, masks=masks, method=method, config=config.to_dict(), layers=layers,
            sparsity=overall, divergence=divergence, trajectory=trajectory, compensated=compensated,
            masks_from=masks_from,
            fidelity=fidelity, seconds=time.perf_counter() - started, stopped=stopped,
            augmentation={"copies": augment, "shift": augment_shift} if augment else None,
        )


def unpruned(teacher: Model) -> SparsifyResult:
    """The result of pruning nothing: ``teacher`` itself as the student (its own zeros, if any, as masks)."""
    masks = {w.name: teacher.initializer(w.name) != 0 for w in teacher.prunable}
    layers, overall = _layer_sparsity(masks)
    return SparsifyResult(student=teacher, masks=masks, method="none", config={"sparsity": 0.0}, layers=layers,
                          sparsity=overall, divergence=0.0)


def _layer_sparsity(masks: dict[str, np.ndarray]) -> tuple[dict[str, dict], float]:
    """Per layer its size, zeros and sparsity; and the sparsity of all layers together."""
    layers = {
        name: {"size": int(mask.size), "zeros": int(mask.size - np.count_nonzero(mask)),
               "sparsity": float(1 - np.count_nonzero(mask) / mask.size)}
        for name, mask in masks.items()
    }
    total = sum(layer["size"] for layer in layers.values())
    return layers, sum(layer["zeros"] for layer in layers.values()) / max(total, 1)


def prune_by_saliency(importance: dict[str, np.ndarray], config: SearchConfig) -> dict[str, np.ndarray]:
    """Baseline masks: the least important weights zeroed, per layer (per-layer targets) or globally."""
    sizes = {n: v.size for n, v in importance.items()}
    if config.per_layer:
        targets = layer_targets(sizes, config)
    else:
        # One global threshold over all layers, each layer capped like the search caps it: walk the weights
        # from least to most important, skip those past their layer's cap, keep the first ``goal``.
        names = list(sizes)
        limits = layer_targets(sizes, config)
        caps = np.array([limits[n] for n in names])
        goal = int(round(config.sparsity * sum(sizes.values())))
        order = np.argsort(np.concatenate([importance[n].reshape(-1) for n in names]), kind="stable")
        owner = np.repeat(np.arange(len(names)), [sizes[n] for n in names])[order]
        counts = np.bincount(owner, minlength=len(names))
        by_layer = np.argsort(owner, kind="stable")  # grouped by layer, each group in importance order
        rank = np.empty(len(owner), dtype=np.int64)  # a weight's place among its own layer's weights
        rank[by_layer] = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
        chosen = owner[rank < caps[owner]][:goal]
        targets = dict(zip(names, np.bincount(chosen, minlength=len(names)).tolist()))
    return lowest(importance, targets)


def lowest(importance: dict[str, np.ndarray], counts: dict[str, int]) -> dict[str, np.ndarray]:
    """Masks (True = kept) that zero each layer's ``counts[name]`` least important weights."""
    masks = {}
    for name, value in importance.items():
        order = np.argsort(value.reshape(-1), kind="stable")
        mask = np.ones(value.size, dtype=bool)
        mask[order[: counts[name]]] = False
        masks[name] = mask.reshape(value.shape)
    return masks
