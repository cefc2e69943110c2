"""``optimize``: sparsify, quantize, export, encode, decode and verify, report: one call, one output folder."""

from __future__ import annotations

import io
import json
import logging
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .augment import shifted_copies
from .codec import decode, encode, inspect_container
from .config import OptimizeConfig
from .data import Dataset, load_data
from .errors import ConfigError, first_line
from .evaluate import check_same_interface, evaluate, evaluation_data, resolve_metric
from .fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from .model import Model, load_model
from .quantize import QuantizeResult, quantize, unquantized, weight_inputs
from .quantizers import max_bits
from .report import render_html
from .sparsify import SparsifyResult, search_fingerprint, sparsify, student_model, unpruned
from .zoo import open_model, zoo_path

__all__ = ["OUTPUTS", "OptimizeResult", "optimize"]

log = logging.getLogger(__name__)

OUTPUTS = ("model.onnx", "model.ode", "report.json", "report.html")
CHECKPOINT = ".search.checkpoint.npz"
LEVEL_PREFIX = ".budget-level-"  # a budget search's finished levels, and the DE checkpoint of the one it is in
_BUDGET_LADDER = (0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97)  # sparsity levels a budget search climbs after 0
_BUDGET_LIGHTER = (0.3, 0.1)  # tried in turn when the ladder's first level keeps nothing
_BUDGET_FIRST_BITS = 6  # where the first level starts: down from here while the budget holds, else up
_BUDGET_FEWEST_BITS = 2
# Past the scheme's 7 bits the search widens into model-wide steps: a step of 8 or 9 bits was smaller than
# 8-bit codebooks at equal or higher fidelity on ppocr-det and efficientnet-lite0 (BENCHMARKS.md).
_BUDGET_STEP_FROM = 8
_BUDGET_PATIENCE = 3  # a level stops widening after this many wider settings in a row without a better metric


@dataclass
class OptimizeResult:
    """What ``optimize`` wrote and measured. Fidelity is that of the model decoded from ``model.ode``."""

    output: Path
    config: OptimizeConfig
    source: str
    original_bytes: int
    onnx_bytes: int
    container_bytes: int
    sparsified: SparsifyResult
    quantized: QuantizeResult
    container: dict
    fidelity: dict | None
    seconds: dict
    tried: list[dict]

    @property
    def ratio(self) -> float:
        """How many times smaller the container is than the original model file."""
        return self.original_bytes / self.container_bytes

    def to_dict(self) -> dict:
        """The numbers of ``report.json``."""
        layers = {name: {**layer, "bits": self.quantized.layers.get(name, {}).get("bits")}
                  for name, layer in self.sparsified.layers.items()}
        return {
            "source": self.source, "output": str(self.output), "config": self.config.to_dict(),
            "sizes": {"original": self.original_bytes, "onnx": self.onnx_bytes, "container": self.container_bytes,
                      "ratio": self.ratio},
            "sparsity": self.sparsified.sparsity, "average_bits": self.quantized.average_bits,
            "rounded_parameter_values": self.quantized.rounded_parameter_values,
            "stopped": self.sparsified.stopped, "masks_from": self.sparsified.masks_from, "layers": layers,
            "fidelity": self.fidelity,
            "calibration_metric_after_quantization": self.quantized.calibration_metric,
            "trajectory": self.sparsified.trajectory, "container": self.container, "seconds": self.seconds,
            "budget_search": self.tried, "budget": self.budget_check(),
        }

    def budget_check(self) -> dict | None:
        """The fidelity budget against the evaluation fidelity: the search kept it on calibration samples only
        (held-out ones with a budget alone), so a user sees here whether it also held on unseen data."""
        if self.config.budget is None:
            return None
        judged_on = "held-out and all calibration samples" if self.config.sparsity is None else "calibration samples"
        check = {"value": self.config.budget, "judged_on": judged_on}
        if self.fidelity:
            metric = self.fidelity[self.fidelity["primary"]]
            check.update(evaluation=metric, kept_on_evaluation=metric >= self.config.budget)
        return check

    def summary(self) -> str:
        """A short table for the terminal."""
        rows = [("model", f"{self.source} ({self.original_bytes:,} bytes)"),
                ("container", f"{self.output / 'model.ode'} ({self.container_bytes:,} bytes, "
                              f"{self.ratio:.1f}x smaller)"),
                ("sparsity", f"{self.sparsified.sparsity:.3f}" + (" (stopped by the budget)"
                                                                  if self.sparsified.stopped == "budget" else "")),
                ("bits", "none: float32 weights, coded losslessly" if self.quantized.scheme == "lossless" else
                         f"{self.quantized.average_bits:.2f} per surviving weight ({self.quantized.scheme})")]
        if self.fidelity:
            primary = self.fidelity["primary"]
            extra = (f", accuracy {self.fidelity['accuracy']:.4f} (original {self.fidelity['teacher_accuracy']:.4f})"
                     if "accuracy" in self.fidelity else "")
            rows.append(("fidelity", f"{primary} {self.fidelity[primary]:.4f} on {self.fidelity['samples']} unseen "
                                     f"samples, decoded from the container{extra}"))
        check = self.budget_check()
        if check:
            verdict = ("" if "kept_on_evaluation" not in check else ", and on the unseen samples" if
                       check["kept_on_evaluation"] else ", NOT on the unseen samples (README, Pipeline)")
            rows.append(("budget", f"{check['value']} kept on {check['judged_on']}{verdict}"))
        rows.append(("time", f"{sum(self.seconds.values()):.0f} s"))
        rows.append(("report", str(self.output / "report.html")))
        return "\n".join(f"{name:<10} {value}" for name, value in rows)


def optimize(
    model: str | Path | Model,
    data: str | Path | Dataset,
    output: str | Path,
    config: OptimizeConfig | None = None,
    *,
    eval_data: str | Path | Dataset | None = None,
    resume: bool = False,
    progress=None,
    **settings,
) -> OptimizeResult:
    """Make ``model`` small: sparsify by DE, quantize, export, encode, then decode the container and measure it.

    Writes ``model.onnx`` (quantized initializers), ``model.ode`` (the container), ``report.json`` and
    ``report.html`` into ``output``, each atomically and only once everything before it succeeded. With a
    sparsity target, an interrupted search leaves a checkpoint there that ``resume=True`` continues. With only a
    budget, sparsity levels and bits are searched (see ``budget_search`` in the report); each finished level's
    student, and the DE checkpoint of the level in progress, stay there until the end, so ``resume=True``
    continues an interrupted budget search without running a finished level's search again.

    Args:
        model: the original model (path, :class:`Model` or ``zoo:NAME``).
        data: calibration data (``zoo:NAME`` uses its calibration split).
        output: the output folder.
        config: the settings; keyword ``settings`` (``sparsity=``, ``bits=``, ``budget=``, ``seed=`` ...)
            build one or replace its fields.
        eval_data: data for the reported fidelity (default: the evaluation split of ``zoo:NAME`` data).
        resume: continue an interrupted search from the checkpoint in ``output`` (a warning, and a search from
            the beginning, where there is none: a finished run leaves none).
        progress: called with each generation's record of the search.

    Example:
        >>> result = optimize("zoo:mnist-mlp", "zoo:mnist-mlp", "out", budget=0.98)
        >>> print(result.summary())
    """
    config = config.with_overrides(**settings) if config is not None else OptimizeConfig(**settings)
    output = Path(output)
    seconds = {}
    teacher = open_model(model, config.selection, require_prunable=True)
    calibration = load_data(data, teacher, split="calibration", limit=config.calibration_samples)
    evaluation = evaluation_data(eval_data, data, teacher)
    spec = resolve_metric(None, teacher, data, model)
    output.mkdir(parents=True, exist_ok=True)  # only once the inputs are known to be good
    if resume and not _interrupted(output):
        log.warning("%s holds no interrupted search to continue (a finished run removes its checkpoints): "
                    "starting from the beginning", output)
    started = time.perf_counter()
    if config.sparsity is None:
        sparse, quantized, tried = _smallest_within_budget(teacher, calibration, spec, config, progress, output,
                                                           resume)
    else:
        calibration = shifted_copies(calibration, config.augment, config.augment_shift, seed=config.seed)
        if not config.prunes:
            sparse = unpruned(teacher)  # quantize and encode only
        else:
            sparse = sparsify(teacher, calibration, config=config.search(), compensate=config.compensate,
                              selection=config.selection, checkpoint=output / CHECKPOINT, resume=resume,
                              intra_op_threads=config.threads, progress=progress, metric=spec,
                              workers=config.workers, executor=config.executor, device=config.device,
                              mask_folds=config.mask_folds)
        quantized = quantize(sparse.student, calibration, bits=config.bits, budget=config.budget,
                             scheme=config.scheme, per_channel=config.per_channel, teacher=teacher,
                             selection=config.selection,
                             intra_op_threads=config.threads, layer_bits=config.layer_bits(), metric=spec,
                             entropy_weight=config.entropy_weight, rounding=config.rounding,
                             mantissa_bits=config.mantissa_bits)
        tried = []
    seconds["search"] = time.perf_counter() - started
    log.info("sparsity %.4f, %.2f bits, in %.1f s", sparse.sparsity, quantized.average_bits, seconds["search"])

    started = time.perf_counter()
    exported = quantized.student.serialized()
    container = encode(quantized.student, fast_decode=config.fast_decode)
    seconds["encode"] = time.perf_counter() - started

    started = time.perf_counter()
    decoded = load_model(decode(container))
    check_same_interface(teacher, decoded)
    seconds["decode"] = time.perf_counter() - started
    fidelity = None
    if evaluation is not None:
        started = time.perf_counter()
        fidelity = evaluate(teacher, decoded, evaluation, metric=spec, intra_op_threads=config.threads)
        seconds["evaluate"] = time.perf_counter() - started

    result = OptimizeResult(
        output=output, config=config, source=teacher.source, original_bytes=_original_bytes(model, teacher),
        onnx_bytes=len(exported), container_bytes=len(container), sparsified=sparse, quantized=quantized,
        container=inspect_container(container), fidelity=fidelity, seconds=seconds, tried=tried,
    )
    report = result.to_dict()
    atomic_write_bytes(output / "model.onnx", exported)
    atomic_write_bytes(output / "model.ode", container)
    atomic_write_json(output / "report.json", report)
    atomic_write_text(output / "report.html", render_html(report))
    (output / CHECKPOINT).unlink(missing_ok=True)  # complete: nothing left to resume
    _remove_levels(output)
    return result


def _smallest_within_budget(teacher: Model, calibration: Dataset, spec, config: OptimizeConfig, progress,
                            output: Path, resume: bool):
    """Sparsity levels up a ladder, and settings (scheme and bits) at each, judged on calibration samples.

    A quarter of the calibration data is held out (whole source groups where the data has them, see
    :meth:`Dataset.hold_out`; augmentation shifts copies of the rest only): DE, compensation and quantization
    never see it, so it shows what the fitted
    student does on samples it was not fitted to. A setting keeps the budget where it holds there and on all
    the calibration samples (the held-out quarter can be too small to judge alone: EfficientNet-Lite0's 16
    held-out crops passed a 7-bit codebook that scored 0.94 on the 48 search crops and 0.86 on the evaluation
    split). The first level prunes nothing and starts from the scheme at 6 bits; each sparser level starts
    from the fewest bits the level before kept. From there, fewer bits while the budget holds, or more (7,
    then model-wide steps of 8-14) until it does, or, at a sparse level, until three wider settings in a row
    fail to raise the lower of the two metrics (the zeros, not the bits, are what loses it there). A level
    whose unquantized student misses the budget keeps nothing (quantization only loses: a quantized setting
    that passes there passed by the luck of the draw). The ladder stops at the first level that keeps
    nothing (where that is the first sparse level, lighter ones are tried), and never goes above
    ``config.max_sparsity`` (lighter levels are tried where no level of the ladder is allowed). At the
    level of the smallest container so far, bits are then also allocated per layer (``bits="auto"``, within
    the budget on the search samples, or halfway to 1 where the held-out samples miss it). Returns the
    sparsify and quantize results of the smallest container that keeps the budget, and every setting tried;
    where nothing does, the lossless container (the teacher). Each level's student is kept in ``output``
    (:func:`_save_level`); with ``resume`` a kept one is used instead of searching its level again, and an
    interrupted level's search resumes.
    """
    if len(calibration) < 8:
        raise ConfigError(f"a budget search needs at least 8 calibration samples to hold a quarter out, "
                          f"got {len(calibration)}")
    search, check = calibration.hold_out(len(calibration) // 4)
    search = shifted_copies(search, config.augment, config.augment_shift, seed=config.seed)
    if not resume:  # a level left by an earlier run is never taken for one of this run
        _remove_levels(output)
    depends_on = search_fingerprint(teacher, search)
    refit = {"compensate": config.compensate, "mask_folds": config.mask_folds}  # what the levels' refits did
    started = time.perf_counter()
    settings = _budget_settings(config)
    tried = []
    best = None  # (bytes, sparsify, quantize) of the smallest container that keeps the budget

    inputs = {}  # the layer inputs of the level last quantized: computed once per level
    feedback = config.rounding == "feedback"

    def quantize_at(sparse, scheme: str, bits, budget: float | None = None):
        level = sparse.config["sparsity"]
        needed = feedback or scheme != "step"  # nearest steps have no error weights
        if needed and level not in inputs:
            inputs.clear()
            inputs[level] = weight_inputs(sparse.student, search, config.threads, hessians=feedback)
        own = scheme == config.scheme
        return quantize(sparse.student, search, bits=bits, budget=budget, scheme=scheme,
                        per_channel=config.per_channel if own else None, teacher=teacher, selection=config.selection,
                        eval_data=check, intra_op_threads=config.threads,
                        layer_bits=config.layer_bits() if own else None, metric=spec,
                        inputs=inputs[level] if needed else None,
                        entropy_weight=config.entropy_weight if own else 0.0, rounding=config.rounding,
                        mantissa_bits=config.mantissa_bits)

    def on_calibration(student: Model) -> float:
        return evaluate(teacher, student, calibration, metric=spec, intra_op_threads=config.threads)[spec.primary]

    def judge(sparse, quantized) -> bool:
        """Whether ``quantized`` keeps the budget on the held-out samples and on all the calibration samples (a
        pass on the few held-out samples alone can be luck); recorded, and kept if the smallest."""
        nonlocal best
        size = len(encode(quantized.student, fast_decode=config.fast_decode))
        metric = quantized.fidelity[quantized.fidelity["primary"]]
        pooled = on_calibration(quantized.student)
        kept = metric >= config.budget and pooled >= config.budget
        allocated = quantized.settings["bits"] == "auto"
        bits = round(quantized.average_bits, 4) if allocated else quantized.settings["bits"]
        tried.append({"sparsity": sparse.config["sparsity"], "scheme": quantized.scheme, "bits": bits,
                      "allocated": allocated, "container": size, "held_out_metric": metric,
                      "calibration_metric": pooled, "kept": kept})
        log.info("budget search: sparsity %.2f, %s %s bits%s: %d bytes, %s %.4f held out, %.4f on all the "
                 "calibration samples (%.0f s since start)", sparse.config["sparsity"], quantized.scheme, bits,
                 " (per layer)" if allocated else "", size, spec.primary, metric, pooled, time.perf_counter() - started)
        if kept and (best is None or size < best[0]):
            best = (size, sparse, quantized)
        return kept

    def fewest_kept(level: float, start: int | None) -> int | None:
        """At ``level``, the index of the first setting that keeps the budget (from ``start``), or None."""
        saved, checkpoint = (output / f"{LEVEL_PREFIX}{level:g}{suffix}" for suffix in (".npz", ".checkpoint.npz"))
        if level == 0:
            sparse = unpruned(teacher)
        elif resume and saved.exists():
            sparse = _load_level(saved, teacher, {"config": config.search(level).to_dict(), "depends_on": depends_on,
                                                 "refit": refit})
            log.info("budget search: sparsity %.2f: the student of the interrupted run (%s)", level, saved.name)
        else:
            sparse = sparsify(teacher, search, config=config.search(level), compensate=config.compensate,
                              selection=config.selection, intra_op_threads=config.threads, metric=spec,
                              progress=progress, workers=config.workers, executor=config.executor,
                              device=config.device, checkpoint=checkpoint, resume=resume,
                              mask_folds=config.mask_folds)
            _save_level(saved, sparse, depends_on, refit)
            checkpoint.unlink(missing_ok=True)  # the level is finished: its search has nothing left to resume
        if level:  # quantization only loses: a quantized student that beats its float one was a lucky draw
            ceiling = evaluate(teacher, sparse.student, check, metric=spec, intra_op_threads=config.threads)
            held_out, pooled = ceiling[spec.primary], on_calibration(sparse.student)
            if min(held_out, pooled) < config.budget:
                tried.append({"sparsity": level, "scheme": "unquantized", "bits": 32, "allocated": False,
                              "container": None, "held_out_metric": held_out, "calibration_metric": pooled,
                              "kept": False})
                log.info("budget search: sparsity %.2f: the unquantized student misses the budget (%s %.4f held "
                         "out, %.4f on all the calibration samples)", level, spec.primary, held_out, pooled)
                return None

        def keeps(index: int) -> bool:
            return judge(sparse, quantize_at(sparse, *settings[index]))

        if start is None:  # the first level starts from 6 bits
            start = next((i for i, s in enumerate(settings) if s == (config.scheme, _BUDGET_FIRST_BITS)), 0)
        if keeps(start):  # down while the budget holds, else up until it does
            while start > 0 and keeps(start - 1):
                start -= 1
            return start

        def worse(record: dict) -> float:
            return min(record["held_out_metric"], record["calibration_metric"])

        best_metric, stale = worse(tried[-1]), 0
        for index in range(start + 1, len(settings)):
            if keeps(index):
                return index
            metric = worse(tried[-1])
            best_metric, stale = (metric, 0) if metric > best_metric else (best_metric, stale + 1)
            if level and stale == _BUDGET_PATIENCE:  # unpruned, only the bits lose: widen to the finest step
                log.info("budget search: sparsity %.2f: %d wider settings did not raise the %s (the lower of held "
                         "out and all calibration samples); stopped widening", level, _BUDGET_PATIENCE, spec.primary)
                return None
        return None

    ceiling = 1.0 if config.max_sparsity is None else config.max_sparsity
    ladder, lighter = ([level for level in levels if level <= ceiling] for levels in (_BUDGET_LADDER, _BUDGET_LIGHTER))
    fewest = fewest_kept(0.0, None)
    if fewest is not None:
        climbed = fewest_kept(ladder[0], fewest) if ladder else None
        if climbed is None:
            for level in lighter:  # stops at the first that keeps
                if fewest_kept(level, fewest) is not None:
                    break
        else:
            for level in ladder[1:]:
                climbed = fewest_kept(level, climbed)
                if climbed is None:
                    break  # sparser only loses more
    if best is None:
        log.warning("no quantized setting keeps the budget %.4f on held-out samples; the container keeps the "
                    "weights losslessly", config.budget)
        return unpruned(teacher), unquantized(teacher), tried
    if config.bits == "auto":  # bits per layer at the best level, within the budget on the search samples
        _, sparse, quantized = best
        for budget in (config.budget, (config.budget + 1) / 2):  # a margin where the held-out samples miss
            if judge(sparse, quantize_at(sparse, quantized.scheme, "auto", budget)):
                break
    _, sparse, quantized = best
    return sparse, quantized, tried


def _interrupted(output: Path) -> bool:
    """Whether ``output`` holds what an interrupted run left to resume: a checkpoint or a budget level."""
    return (output / CHECKPOINT).exists() or any(output.glob(LEVEL_PREFIX + "*"))


def _remove_levels(output: Path) -> None:
    """Delete a budget search's level files (finished levels and the DE checkpoint of the one in progress)."""
    for path in output.glob(LEVEL_PREFIX + "*"):
        path.unlink()


def _save_level(path: Path, sparse: SparsifyResult, depends_on: str, refit: dict) -> None:
    """Write a budget level's sparsify result (its pruned weights, masks and record, with the model and data's
    fingerprint ``depends_on`` and the ``refit`` settings) atomically, for a resume."""
    names = sorted(sparse.masks)
    arrays = {f"weight_{i}": sparse.student.initializer(name) for i, name in enumerate(names)}
    arrays.update({f"mask_{i}": sparse.masks[name] for i, name in enumerate(names)})
    record = {"names": names, "depends_on": depends_on, "refit": refit, **sparse.to_dict()}
    buffer = io.BytesIO()
    np.savez(buffer, record=np.array(json.dumps(record)), **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def _load_level(path: Path, teacher: Model, expected: dict) -> SparsifyResult:
    """The sparsify result :func:`_save_level` wrote, its student rebuilt from ``teacher``; ``expected``: the
    record's ``config`` (:meth:`SearchConfig.to_dict`), ``depends_on`` (:func:`search_fingerprint`) and
    ``refit`` settings must match."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            record = json.loads(str(archive["record"]))
            if any(record[key] != json.loads(json.dumps(value)) for key, value in expected.items()):
                raise ConfigError(f"{path}: this budget level was searched with other settings, model or data; "
                                  "run without --resume")
            names = record["names"]
            weights = {name: archive[f"weight_{i}"] for i, name in enumerate(names)}
            masks = {name: archive[f"mask_{i}"] for i, name in enumerate(names)}
            return SparsifyResult(
                student=student_model(teacher, weights), masks=masks, method=record["method"],
                config=record["config"], layers=record["layers"], sparsity=record["sparsity"],
                divergence=record["calibration_divergence"], trajectory=record["trajectory"],
                compensated=record["compensated"], masks_from=record["masks_from"], fidelity=record["fidelity"],
                seconds=record["seconds"], stopped=record["stopped"],
            )
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        raise ConfigError(f"{path}: cannot resume from this budget level ({first_line(e)}); run without "
                          "--resume") from e


def _budget_settings(config: OptimizeConfig) -> list[tuple[str, int]]:
    """The (scheme, bits) a budget search may try, from the fewest bits to the most faithful."""
    if config.bits != "auto":
        return [(config.scheme, config.bits)]
    if config.scheme == "step":
        return [("step", width) for width in range(_BUDGET_FEWEST_BITS, max_bits("step") + 1)]
    return ([(config.scheme, width) for width in range(_BUDGET_FEWEST_BITS, _BUDGET_STEP_FROM)]
            + [("step", width) for width in range(_BUDGET_STEP_FROM, max_bits("step") + 1)])


def _original_bytes(model, teacher: Model) -> int:
    """The size of the file the user gave (the zoo's file for ``zoo:NAME``), else of the serialized model."""
    if isinstance(model, (str, Path)):
        path = Path(model)
        if str(model).startswith("zoo:"):
            path = zoo_path(str(model)[4:])
        if path.is_file():
            return path.stat().st_size
    return len(teacher.serialized())
