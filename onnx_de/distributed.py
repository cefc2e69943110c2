"""Scoring a generation's candidates on Ray actors: :class:`RayScorerPool`.

Each actor holds a :class:`~onnx_de.scoring.Scorer` (its own ONNX Runtime sessions, the calibration batch and the
teacher's outputs), built once from one copy of the model and data in Ray's object store. The driver keeps the
weights of record in a local Scorer, which also runs the full passes the search and the compensation read
(``student_outputs``, ``divergence``). At each refresh the actors receive only the weight elements that changed
since the last one, as index and value arrays; candidates travel as index arrays, divergences come back.

A worker that dies (process killed, node lost) is replaced by a new actor brought to the current weights, and
its share of candidates is scored again there or on a surviving actor: the search state never leaves the driver,
and since a candidate's divergence does not depend on the actor that scored it, the search reaches the same masks.
Ray is an optional dependency (``pip install onnx-de[ray]``), imported only here.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from .data import Dataset
from .errors import ConfigError, ExecutorError, OnnxDeError, first_line
from .metrics import MetricSpec
from .model import Model
from .scoring import Scorer

__all__ = ["RayScorerPool"]

log = logging.getLogger(__name__)


class ScorerActor:
    """One Ray actor's Scorer; its weights follow the driver's through :meth:`refresh`."""

    def __init__(self, payload: tuple) -> None:
        model, data, weights, spec, threads = payload
        self.scorer = Scorer(model, data, weights, spec, intra_op_threads=threads)

    def pid(self) -> int:
        return os.getpid()

    def refresh(self, changes: list[tuple[str, np.ndarray, np.ndarray]], layers: list[str]) -> float:
        for name, indices, values in changes:
            self.scorer.weights[name].reshape(-1)[indices] = values
        return self.scorer.refresh(set(layers))

    def score_many(self, candidates: list[tuple[str, np.ndarray]]) -> list[float]:
        return self.scorer.score_many(candidates)


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("the Ray executor needs Ray: pip install 'onnx-de[ray]'") from None
    return ray


class RayScorerPool:
    """``workers`` Ray actors scoring a generation's candidates; the same methods as a Scorer for the search.

    Args:
        model, data, weights, spec: as for :class:`~onnx_de.scoring.Scorer`.
        workers: number of actors.
        address: the Ray cluster to join (``ray.init(address=...)``); ``None`` joins the cluster Ray finds on
            this machine or starts a local one, which :meth:`close` shuts down again.
        intra_op_threads: ONNX Runtime threads per operator in each actor (default 1); each actor reserves as
            many of the cluster's CPUs. The driver's own Scorer uses the same.
        start_timeout: seconds an actor may take to come up (its Scorer built) before it counts as lost.
        retries: times one share of candidates is sent again after its worker was lost.

    Raises:
        ConfigError: Ray is not installed, or the cluster has fewer CPUs than the actors need.
        ExecutorError: the cluster cannot be reached, or every worker was lost.
    """

    def __init__(self, model: Model, data: Dataset, weights: list[str], spec: MetricSpec, *, workers: int,
                 address: str | None = None, intra_op_threads: int | None = None, start_timeout: float = 600.0,
                 retries: int = 3) -> None:
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        ray = self._ray = _ray()
        self._started = not ray.is_initialized()
        if self._started:
            try:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            except Exception as e:  # ConnectionError, or Ray's own errors for a bad address
                raise ExecutorError(f"cannot join the Ray cluster {address or '(local)'}: {first_line(e)}") from e
        threads = intra_op_threads or 1
        available = ray.cluster_resources().get("CPU", 0)
        if available < workers * threads:
            self.close()
            raise ConfigError(f"the Ray cluster has {available:g} CPUs; {workers} workers with {threads} threads "
                              f"each need {workers * threads}")
        self.local = Scorer(model, data, weights, spec, intra_op_threads=threads)
        self.weights = self.local.weights
        self.spec = self.local.spec
        self.teacher_outputs = self.local.teacher_outputs
        self._initial = {name: weight.copy() for name, weight in self.weights.items()}
        self._synced = {name: weight.copy() for name, weight in self.weights.items()}  # what every actor holds
        self._layers: list[str] = []
        self._actor_class = ray.remote(num_cpus=threads, max_restarts=0)(ScorerActor)
        self._payload = ray.put((model, data, weights, spec, threads))
        self._start_timeout = start_timeout
        self._retries = retries
        self.actors: list = [self._actor_class.remote(self._payload) for _ in range(workers)]
        try:
            self._get([actor.pid.remote() for actor in self.actors], timeout=start_timeout)
        except self._lost() as e:  # an actor that could not be created (its Scorer failed, no CPU came free)
            self.close()
            raise ExecutorError(f"a Ray worker could not start: {first_line(e)}") from e
        except ExecutorError:
            self.close()
            raise

    def _get(self, refs, timeout: float | None = None):
        """``ray.get``, with an error raised inside an actor re-raised as itself (onnx-de's) or an ExecutorError."""
        ray = self._ray
        try:
            return ray.get(refs, timeout=timeout)
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, OnnxDeError):
                raise e.cause from None
            raise ExecutorError(f"a Ray worker failed: {first_line(e.cause or e)}") from e
        except ray.exceptions.GetTimeoutError as e:
            raise ExecutorError(f"Ray workers did not answer within {timeout:g} s") from e

    def refresh(self, layers: set[str]) -> float:
        """Send every actor the weights changed since the last refresh and refresh them; return the divergence."""
        self._layers = sorted(layers)
        changes = self._ray.put(_changes(self.weights, self._synced))
        for name, weight in self.weights.items():
            np.copyto(self._synced[name], weight)
        return self._gather(lambda position, actor: actor.refresh.remote(changes, self._layers))[0]

    def score_many(self, candidates: list[tuple[str, np.ndarray]]) -> list[float]:
        """The candidates' divergences, in order; actor ``i`` scores candidates ``i, i + workers, ...``."""
        count = len(self.actors)
        compact = [(name, _compact(indices)) for name, indices in candidates]
        shares = self._gather(lambda position, actor: actor.score_many.remote(compact[position::count]))
        scores: list[float] = [0.0] * len(candidates)
        for position, share in enumerate(shares):
            scores[position::count] = share
        return scores

    def _gather(self, submit) -> list:
        """``submit(position, actor)`` on every actor at once, and the results in order; a lost actor is
        replaced and its call submitted again, up to ``retries`` times."""
        pending = {position: submit(position, actor) for position, actor in enumerate(self.actors)}
        attempts = dict.fromkeys(pending, 0)
        results: list = [None] * len(self.actors)
        while pending:
            position, ref = next(iter(pending.items()))
            try:
                results[position] = self._get(ref)
                del pending[position]
            except self._lost() as e:
                attempts[position] += 1
                if attempts[position] > self._retries:
                    raise ExecutorError(f"Ray worker {position} was lost {attempts[position]} times: "
                                        f"{first_line(e)}") from e
                pending[position] = submit(position, self._replace(position, e))
        return results

    def _lost(self) -> tuple[type[BaseException], ...]:
        exceptions = self._ray.exceptions
        return exceptions.RayActorError, exceptions.ActorUnavailableError

    def _replace(self, position: int, error: BaseException):
        """A new actor in place of the lost one at ``position``, holding the current weights and frontiers."""
        log.warning("Ray worker %d lost (%s); starting a replacement", position, first_line(error))
        self._ray.kill(self.actors[position], no_restart=True)
        actor = self._actor_class.remote(self._payload)
        self.actors[position] = actor
        # the weights the other actors hold: the driver's as of the last refresh (they may have moved on since)
        changes = _changes(self._synced, self._initial)
        self._get(actor.refresh.remote(changes, self._layers), timeout=self._start_timeout)
        return actor

    def commit(self, name: str, indices: np.ndarray) -> None:
        """Zero weights for good on the driver; the actors receive them with the next refresh."""
        self.local.commit(name, indices)

    def student_outputs(self) -> list[np.ndarray]:
        return self.local.student_outputs()

    def divergence(self, outputs: list[np.ndarray] | None = None) -> float:
        return self.local.divergence(outputs)

    def primary_metric(self, outputs: list[np.ndarray]) -> float:
        return self.local.primary_metric(outputs)

    def close(self) -> None:
        """Stop the actors, and Ray itself where this pool started it."""
        for actor in getattr(self, "actors", []):
            self._ray.kill(actor, no_restart=True)
        self.actors = []
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()


def _changes(weights: dict[str, np.ndarray], base: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The elements of ``weights`` that differ from ``base``, as (name, flat indices, values)."""
    changes = []
    for name, weight in weights.items():
        flat = weight.reshape(-1)
        indices = np.flatnonzero(flat != base[name].reshape(-1))
        if len(indices):
            changes.append((name, _compact(indices), flat[indices].copy()))
    return changes


def _compact(indices: np.ndarray) -> np.ndarray:
    """Flat indices in the smallest integer type that holds them."""
    indices = np.asarray(indices)
    return indices.astype(np.int32) if indices.size and indices.max() < 2**31 else indices
