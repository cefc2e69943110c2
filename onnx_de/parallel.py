"""Scoring a generation's candidates in parallel: :class:`Scorer` replicas driven from threads.

The search talks to its scorer through ``refresh``, ``score_many``, ``commit``, ``student_outputs``,
``divergence``, ``primary_metric``, ``weights``, ``spec``, ``teacher_outputs`` and ``close``. :class:`ScorerPool` offers
the same over several replicas, each with its own ONNX Runtime sessions and weight copies, so that the
candidates of one generation are scored side by side (ONNX Runtime releases the GIL while it runs). Replica 0
holds the weights of record; the others copy them at each refresh. A distributed pool implements the same
methods.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .data import Dataset
from .errors import ConfigError, is_int
from .metrics import MetricSpec
from .model import Model
from .scoring import Scorer

__all__ = ["EXECUTORS", "ScorerPool", "create_scorer", "parse_executor"]

EXECUTORS = ("local", "ray")  # threads in this process; actors of a Ray cluster (``ray:ADDRESS`` joins one)


class ScorerPool:
    """``workers`` Scorer replicas; candidates are dealt out round-robin and scored in parallel threads.

    Args:
        model, data, weights, spec: as for :class:`~onnx_de.scoring.Scorer`.
        workers: number of replicas (and threads).
        intra_op_threads: ONNX Runtime threads per replica (default: the cores shared out among the workers).
        optimized_graph, device: as for :class:`~onnx_de.scoring.Scorer` (on ``cuda`` the replicas share the GPU).
    """

    def __init__(self, model: Model, data: Dataset, weights: list[str], spec: MetricSpec, *, workers: int,
                 intra_op_threads: int | None = None, optimized_graph: bool | None = None,
                 device: str = "cpu") -> None:
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        threads = intra_op_threads or max(1, (os.cpu_count() or 1) // workers)
        self.replicas = [
            Scorer(model, data, weights, spec, intra_op_threads=threads, optimized_graph=optimized_graph,
                   device=device)
            for _ in range(workers)
        ]
        primary = self.replicas[0]
        self.weights = primary.weights
        self.spec = primary.spec
        self.teacher_outputs = primary.teacher_outputs

    def refresh(self, layers: set[str]) -> float:
        """Copy the weights of record into every replica and refresh them all; return the divergence."""
        for replica in self.replicas[1:]:
            for name, weight in self.weights.items():
                np.copyto(replica.weights[name], weight)
        with ThreadPoolExecutor(len(self.replicas)) as pool:
            return list(pool.map(lambda replica: replica.refresh(layers), self.replicas))[0]

    def score_many(self, candidates: list[tuple[str, np.ndarray]]) -> list[float]:
        """The candidates' divergences, in order; replica ``i`` scores candidates ``i, i + workers, ...``."""
        count = len(self.replicas)
        with ThreadPoolExecutor(count) as pool:
            shares = list(pool.map(lambda i: self.replicas[i].score_many(candidates[i::count]), range(count)))
        scores = [0.0] * len(candidates)
        for i, share in enumerate(shares):
            scores[i::count] = share
        return scores

    def commit(self, name: str, indices: np.ndarray) -> None:
        for replica in self.replicas:
            replica.commit(name, indices)

    def student_outputs(self) -> list[np.ndarray]:
        return self.replicas[0].student_outputs()

    def divergence(self, outputs: list[np.ndarray] | None = None) -> float:
        return self.replicas[0].divergence(outputs)

    def primary_metric(self, outputs: list[np.ndarray]) -> float:
        return self.replicas[0].primary_metric(outputs)

    def close(self) -> None:
        """Nothing to release (the replicas' sessions go with the pool); every scorer of the search has it."""


def parse_executor(text: str, workers: int = 1) -> tuple[str, str | None]:
    """``local``, ``ray`` or ``ray:ADDRESS`` as (kind, address), checked along with its number of workers."""
    kind, colon, address = text.partition(":")
    if kind not in EXECUTORS or (kind == "local" and colon) or (colon and not address):
        raise ConfigError(f"executor must be 'local', 'ray' or 'ray:ADDRESS', got {text!r}")
    if not is_int(workers) or workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    return kind, address or None


def create_scorer(model: Model, data: Dataset, weights: list[str], spec: MetricSpec, *, executor: str = "local",
                  workers: int = 1, intra_op_threads: int | None = None, device: str = "cpu"):
    """The scorer a search runs on: one :class:`Scorer`, a :class:`ScorerPool` of ``workers`` threads, or a
    :class:`~onnx_de.distributed.RayScorerPool` of ``workers`` Ray actors (``executor`` ``ray`` or
    ``ray:ADDRESS``), on ``device`` (``cpu`` or ``cuda``; Ray actors score on CPUs). Call its ``close()`` when
    done."""
    kind, address = parse_executor(executor, workers)
    if kind == "ray":
        if device != "cpu":
            raise ConfigError(f"the Ray executor scores on CPUs; it cannot use device {device}")
        from .distributed import RayScorerPool

        return RayScorerPool(model, data, weights, spec, workers=workers, address=address,
                             intra_op_threads=intra_op_threads)
    if workers > 1:
        return ScorerPool(model, data, weights, spec, workers=workers, intra_op_threads=intra_op_threads,
                          device=device)
    return Scorer(model, data, weights, spec, intra_op_threads=intra_op_threads, device=device)
