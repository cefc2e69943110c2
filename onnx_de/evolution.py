"""The Directed-Evolution search for zero masks.

Each generation draws a population of candidates: a layer, then ``k`` of its surviving weights, drawn from the
least salient survivors under the chosen prior (uniform draws from all survivors reproduce the paper). Every
candidate is scored by the :class:`~onnx_de.scoring.Scorer` with its weights tentatively zeroed; the
``survivors`` candidates that add the least divergence per weight are zeroed for good. With a global target,
layers compete, so the per-layer sparsity falls out of the selection; with per-layer targets, only layers below
their target are drawn. ``k`` adapts: it is a fraction of what remains to remove, halved when a generation's
damage jumps and regrown while damage stays flat. With a fidelity budget, a generation that takes the primary
metric on the calibration set below it is rolled back and the search stops there. With ``refits``, the
surviving weights are refit by least squares at evenly spaced points on the way to the target, so that later
candidates are scored, and selected, against weights that already compensate for the earlier zeros.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConfigError, OnnxDeError
from .fileio import atomic_write_bytes
from .model import matches
from .scoring import Scorer

__all__ = ["SearchConfig", "SearchState", "evolve", "PRIORS"]

log = logging.getLogger(__name__)

PRIORS = ("uniform", "magnitude", "activation", "hessian")
CHECKPOINT_VERSION = 4
READABLE_VERSIONS = (2, 3, 4)  # version 2 predates refits; versions before 4 record no model and data


@dataclass(frozen=True)
class SearchConfig:
    """Settings of one DE search (JSON round-trips through :meth:`to_dict` and ``SearchConfig(**d)``).

    Attributes:
        sparsity: global target fraction of zeros over all prunable weights (ignored with ``per_layer``).
        per_layer: target fraction per weight, keyed by exact name or ``re:REGEX``; first match wins.
        population: candidates scored per generation.
        survivors: candidates zeroed for good per generation (the least damaging, non-overlapping).
        step: initial ``k`` as a fraction of the weights still to remove, shared by the survivors.
        min_k: the smallest candidate size.
        pool: candidates are drawn from the ``pool`` x ``k`` least salient survivors of a layer.
        layer_step: a candidate takes at most this fraction of its layer's survivors.
        prior: ``uniform`` (the paper), ``magnitude`` (|w|), ``activation`` (|w| x ||x||, Wanda-style) or
            ``hessian`` (w^2 x ||x||^2, the diagonal Gauss-Newton saliency: the square of ``activation``, so
            the same order within a layer and the same draws; kept for the name).
        max_layer_sparsity: no layer is pruned beyond this under a global target.
        seed: random seed; the same seed, data and model give identical masks.
        checkpoint_every: generations between checkpoints.
        budget: the lowest primary fidelity metric (top-1 agreement, mask IoU, ...) on the calibration set the
            search may reach; the generation that would go below it is undone and the search stops.
        refits: interim least-squares refits of the surviving weights, evenly spaced in zeros on the way to
            the target (0: the refit, if any, comes only after the search).
    """

    sparsity: float = 0.9
    per_layer: dict[str, float] = field(default_factory=dict)
    population: int = 16
    survivors: int = 4
    step: float = 0.1
    min_k: int = 8
    pool: float = 4.0
    layer_step: float = 0.05
    prior: str = "magnitude"
    max_layer_sparsity: float = 0.99
    seed: int = 0
    checkpoint_every: int = 10
    budget: float | None = None
    refits: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.sparsity < 1:
            raise ConfigError(f"sparsity must be between 0 and 1, got {self.sparsity}")
        for key, value in self.per_layer.items():
            if not 0 <= value < 1:
                raise ConfigError(f"per-layer target {key}={value} must be in [0, 1)")
        if self.prior not in PRIORS:
            raise ConfigError(f"prior must be one of {', '.join(PRIORS)}, got {self.prior!r}")
        if self.population < 1 or not 1 <= self.survivors <= self.population:
            raise ConfigError("population must be >= 1 and survivors between 1 and population")
        if self.budget is not None and not 0 < self.budget <= 1:
            raise ConfigError(f"budget must be in (0, 1], got {self.budget}")
        if not 0 < self.step <= 1 or not 0 < self.layer_step <= 1 or self.min_k < 1 or self.pool < 1:
            raise ConfigError("step and layer_step must be in (0, 1], min_k >= 1 and pool >= 1")
        if self.refits < 0:
            raise ConfigError(f"refits must be >= 0, got {self.refits}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchState:
    """Everything needed to continue a search: masks (True = alive), RNG, step scale, history, why it
    stopped (``None`` while it runs; ``target``, ``budget`` or ``caps``), the interim refits done so far, and
    once one has been done the search's live weights (checkpoints must carry them: ``None`` before the first)."""

    masks: dict[str, np.ndarray]
    rng: np.random.Generator
    generation: int = 0
    scale: float = 1.0
    trajectory: list[dict] = field(default_factory=list)
    stopped: str | None = None
    refits: int = 0
    weights: dict[str, np.ndarray] | None = None

    def zeros(self) -> int:
        return int(sum(m.size - np.count_nonzero(m) for m in self.masks.values()))


def layer_targets(sizes: dict[str, int], config: SearchConfig) -> dict[str, int]:
    """How many zeros each layer may reach: its per-layer target, or the global cap."""
    if not config.per_layer:
        return {name: int(np.floor(size * config.max_layer_sparsity)) for name, size in sizes.items()}
    targets = {}
    for name, size in sizes.items():
        fraction = next((v for k, v in config.per_layer.items() if matches(name, k)), 0.0)
        targets[name] = int(round(size * fraction))
    if not any(targets.values()):
        raise ConfigError(f"no per-layer target matches a prunable weight ({', '.join(config.per_layer)})")
    return targets


def evolve(
    scorer: Scorer,
    config: SearchConfig,
    saliency: dict[str, np.ndarray],
    *,
    checkpoint: Path | None = None,
    resume: bool = False,
    progress=None,
    refit: Callable[[dict[str, np.ndarray]], object] | None = None,
    depends_on: str | None = None,
) -> SearchState:
    """Run the DE search on ``scorer.weights`` (edited in place: pruned weights end at exactly zero).

    Args:
        scorer: a :class:`~onnx_de.scoring.Scorer` or :class:`~onnx_de.parallel.ScorerPool`, holding the
            student's current weights.
        config: search settings.
        saliency: per weight, a non-negative array of its elements' importance (ignored by ``uniform``).
        checkpoint: a file where the state is written atomically every ``config.checkpoint_every`` generations.
        resume: continue from ``checkpoint`` when it exists.
        progress: called with each generation's trajectory record.
        refit: refits ``scorer.weights`` in place for the given masks (zeros stay zero); called
            ``config.refits`` times, evenly spaced on the way to the target. Required when ``config.refits``.
        depends_on: what the search depends on besides ``config`` (the teacher and data's fingerprint):
            recorded in the checkpoint, and a resume from a checkpoint that recorded another is refused.

    Returns:
        The final :class:`SearchState`.
    """
    sizes = {name: w.size for name, w in scorer.weights.items()}
    targets = layer_targets(sizes, config)
    goal = int(round(config.sparsity * sum(sizes.values()))) if not config.per_layer else sum(targets.values())
    if config.refits and refit is None:
        raise ConfigError("interim refits need the least-squares refit (compensation)")
    milestones = [goal * (i + 1) // (config.refits + 1) for i in range(config.refits)]
    state = _initial_state(scorer, config, checkpoint if resume else None, depends_on)
    while state.stopped is None:
        if state.zeros() >= goal:
            state.stopped = "target"
            break
        started = time.perf_counter()
        remaining = goal - state.zeros()
        capacity = {n: targets[n] - (sizes[n] - int(np.count_nonzero(state.masks[n]))) for n in sizes}
        open_layers = [n for n in sizes if capacity[n] > 0]
        if not open_layers:
            log.warning("every layer is at its cap; stopping at %d of %d zeros", state.zeros(), goal)
            state.stopped = "caps"
            break
        k = max(config.min_k, int(np.ceil(config.step * state.scale * remaining / config.survivors)))
        k = min(k, remaining)
        candidates = [_draw(state, open_layers, capacity, saliency, k, config) for _ in range(config.population)]
        current = scorer.refresh({name for name, _ in candidates})
        scores = scorer.score_many(candidates)
        scored = sorted(
            ((score - current) / len(idx), position, name, idx)
            for position, (score, (name, idx)) in enumerate(zip(scores, candidates))
        )
        accepted = _select(scored, config.survivors, remaining, capacity, state.masks)
        saved = [(name, idx, scorer.weights[name].reshape(-1)[idx].copy()) for name, idx in accepted]
        for name, idx in accepted:
            state.masks[name].reshape(-1)[idx] = False
            scorer.commit(name, idx)
        removed = sum(len(idx) for _, idx in accepted)
        before = current
        outputs = scorer.student_outputs()
        current = scorer.divergence(outputs)
        metric = scorer.primary_metric(outputs) if config.budget is not None else None
        if metric is not None and metric < config.budget:
            for name, idx, values in saved:  # undo this generation: the search ends within the budget
                state.masks[name].reshape(-1)[idx] = True
                scorer.weights[name].reshape(-1)[idx] = values
            state.stopped = "budget"
            log.info("generation %d would take %s to %.4f, below the budget %.4f: rolled back and stopped",
                     state.generation + 1, scorer.spec.primary, metric, config.budget)
            break
        per_weight = (current - before) / max(1, removed)
        state.scale = _adapt(state.scale, per_weight, [r["damage_per_weight"] for r in state.trajectory])
        state.generation += 1
        record = {
            "generation": state.generation,
            "zeros": state.zeros(),
            "sparsity": state.zeros() / sum(sizes.values()),
            "divergence": current,
            "k": k,
            "damage_per_weight": per_weight,
            "candidates_per_s": config.population / max(time.perf_counter() - started, 1e-9),
        }
        if metric is not None:
            record["calibration_" + scorer.spec.primary] = metric
        if state.refits < len(milestones) and state.zeros() >= milestones[state.refits]:
            refit(state.masks)
            state.refits += 1
            state.weights = scorer.weights  # refit values and the zeros since: saved as they are
            record["refit_divergence"] = scorer.divergence()
            log.info("generation %d: refit %d of %d at sparsity %.4f, divergence %.4g -> %.4g", state.generation,
                     state.refits, len(milestones), record["sparsity"], current, record["refit_divergence"])
        state.trajectory.append(record)
        if progress:
            progress(record)
        if state.generation % 10 == 0:
            log.info("generation %d: sparsity %.4f, divergence %.4g, %.0f candidates/s", state.generation,
                     record["sparsity"], current, record["candidates_per_s"])
        if checkpoint and (state.generation % config.checkpoint_every == 0 or "refit_divergence" in record):
            save_checkpoint(checkpoint, state, config, depends_on)
    if checkpoint:
        save_checkpoint(checkpoint, state, config, depends_on)
    return state


def _initial_state(scorer: Scorer, config: SearchConfig, checkpoint: Path | None,
                   depends_on: str | None) -> SearchState:
    if checkpoint is not None and checkpoint.exists():
        state = load_checkpoint(checkpoint, config, {n: w.shape for n, w in scorer.weights.items()}, depends_on)
        for name, mask in state.masks.items():
            if state.weights is not None:  # refit since the teacher: the weights as checkpointed
                scorer.weights[name][...] = state.weights[name]
            scorer.weights[name][~mask] = 0
        if state.weights is not None:
            state.weights = scorer.weights
        log.info("resumed from %s at generation %d", checkpoint, state.generation)
        return state
    masks = {name: np.ones(w.shape, dtype=bool) for name, w in scorer.weights.items()}
    return SearchState(masks=masks, rng=np.random.default_rng(config.seed))


def _draw(state: SearchState, layers: list[str], capacity: dict[str, int], saliency: dict[str, np.ndarray],
          k: int, config: SearchConfig) -> tuple[str, np.ndarray]:
    """One candidate: a layer (chance proportional to what it may still lose) and k of its survivors."""
    room = np.array([capacity[n] for n in layers], dtype=np.float64)
    name = layers[int(state.rng.choice(len(layers), p=room / room.sum()))]
    alive = np.flatnonzero(state.masks[name].reshape(-1))
    size = max(1, min(k, capacity[name], int(config.layer_step * len(alive))))
    if config.prior != "uniform":
        pool = min(len(alive), max(size, int(config.pool * size)))
        scores = saliency[name].reshape(-1)[alive]
        alive = alive[np.argpartition(scores, pool - 1)[:pool]] if pool < len(alive) else alive
    return name, np.sort(state.rng.choice(alive, size=size, replace=False))


def _select(scored: list, survivors: int, remaining: int, capacity: dict[str, int],
            masks: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """The survivors: the least damaging candidates of the better half of the population.

    Candidates of one layer may overlap; each survivor contributes the weights it adds, trimmed so that no
    layer passes its target and the total does not pass ``remaining``.
    """
    eligible = scored[: max(1, len(scored) // 2)]
    accepted, room = [], dict(capacity)
    for _, _, name, idx in eligible[:survivors]:
        fresh = idx[masks[name].reshape(-1)[idx]]
        for earlier_name, earlier in accepted:
            if earlier_name == name:
                fresh = np.setdiff1d(fresh, earlier, assume_unique=True)
        fresh = fresh[: max(0, min(room[name], remaining))]
        if len(fresh):
            accepted.append((name, fresh))
            room[name] -= len(fresh)
            remaining -= len(fresh)
    return accepted


def _adapt(scale: float, per_weight: float, recent: list[float]) -> float:
    """Halve the step when damage per weight jumps above 3x its recent median; regrow it while flat."""
    if len(recent) >= 3:
        median = float(np.median(recent[-10:]))
        if median > 0 and per_weight > 3 * median:
            return max(scale / 2, 1 / 64)
    return min(scale * 1.25, 1.0)


def save_checkpoint(path: Path, state: SearchState, config: SearchConfig, depends_on: str | None = None) -> None:
    """Write the search state atomically (masks bit-packed, RNG state, history, config, the model and data's
    fingerprint ``depends_on``, refit weights)."""
    meta = {
        "version": CHECKPOINT_VERSION,
        "config": config.to_dict(),
        "depends_on": depends_on,
        "generation": state.generation,
        "scale": state.scale,
        "rng": state.rng.bit_generator.state,
        "trajectory": state.trajectory,
        "stopped": state.stopped,
        "refits": state.refits,
        "shapes": {n: list(m.shape) for n, m in state.masks.items()},
    }
    arrays = {f"mask/{n}": np.packbits(m.reshape(-1)) for n, m in state.masks.items()}
    if state.weights is not None:
        arrays.update({f"weight/{n}": w for n, w in state.weights.items()})
    buffer = io.BytesIO()
    np.savez_compressed(buffer, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, config: SearchConfig, shapes: dict[str, tuple],
                    depends_on: str | None = None) -> SearchState:
    """Read a checkpoint written by :func:`save_checkpoint` for the same config and weights (and, where both it
    and ``depends_on`` name one, the same model and data fingerprint)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(archive["meta"].tobytes())
            packed = {key[5:]: archive[key] for key in archive.files if key.startswith("mask/")}
            weights = {key[7:]: archive[key] for key in archive.files if key.startswith("weight/")} or None
    except (OSError, ValueError, KeyError) as e:
        raise OnnxDeError(f"{path}: not a readable onnx-de checkpoint: {e}") from e
    if meta.get("version") not in READABLE_VERSIONS:
        raise OnnxDeError(f"{path}: checkpoint version {meta.get('version')} is not {CHECKPOINT_VERSION}")
    settings = {"refits": 0, **meta["config"]}  # version 2 had no refits setting
    if settings != json.loads(json.dumps(config.to_dict())):
        raise ConfigError(f"{path}: the checkpoint was written with other settings; resume with the same ones")
    if {n: tuple(s) for n, s in meta["shapes"].items()} != {n: tuple(s) for n, s in shapes.items()}:
        raise ConfigError(f"{path}: the checkpoint is for other weights")
    if depends_on is not None and meta.get("depends_on") not in (None, depends_on):
        raise ConfigError(f"{path}: the checkpoint was searched on another model or other data (or other "
                          "--limit, --held-out or --augment); resume with the same ones")
    if weights is not None and {n: w.shape for n, w in weights.items()} != {n: tuple(s) for n, s in shapes.items()}:
        raise OnnxDeError(f"{path}: the checkpoint's refit weights do not match its masks")
    masks = {
        name: np.unpackbits(packed[name], count=int(np.prod(shape))).astype(bool).reshape(shape)
        for name, shape in shapes.items()
    }
    rng = np.random.default_rng()
    rng.bit_generator.state = meta["rng"]
    return SearchState(masks, rng, meta["generation"], meta["scale"], meta["trajectory"], meta["stopped"],
                       meta.get("refits", 0), weights)
