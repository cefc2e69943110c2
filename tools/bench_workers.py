"""Parallel scoring: one Scorer using every core per operator or one thread, a ScorerPool of single-threaded
replicas in threads, and Ray actors (1 to ``--workers``, one thread each) on a local Ray instance started once
for the run.

Each scores the same generations (a refresh and 16 candidates each) after the same untimed warm-up; the
table gives candidates per second and the ratio of each to the single Scorer.

    python tools/bench_workers.py mnist-lenet5 ppocr-cls --workers 2 [--no-ray]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="onnx-de-bench-"))

import numpy as np  # noqa: E402

import onnx_de  # noqa: E402
from onnx_de.distributed import RayScorerPool  # noqa: E402
from onnx_de.evaluate import resolve_metric  # noqa: E402
from onnx_de.parallel import ScorerPool  # noqa: E402
from onnx_de.scoring import Scorer  # noqa: E402
from bench_env import header  # noqa: E402


def rate(scorer, names: list[str], generations: int) -> float:
    """Candidates per second over ``generations`` generations of 16 random candidates, after a warm-up."""
    scorer.refresh(set(names))
    scorer.score_many([(name, np.arange(1)) for name in names for _ in range(3)])
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for _ in range(generations):
        candidates = [(n, rng.choice(scorer.weights[n].size, max(1, scorer.weights[n].size // 100), replace=False))
                      for n in rng.choice(names, 16)]
        scorer.refresh({n for n, _ in candidates})
        scorer.score_many(candidates)
    return generations * 16 / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--generations", type=int, default=5)
    parser.add_argument("--no-ray", dest="ray", action="store_false", help="leave out the Ray executor")
    args = parser.parse_args()
    print(header(args.models), flush=True)
    columns = [f"one Scorer, {os.cpu_count()} threads", "one Scorer, 1 thread",
               f"local: {args.workers} replicas x 1 thread"]
    if args.ray:
        import ray

        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, logging_level="warning")
        columns += [f"Ray: {count} actor{'s' * (count > 1)} x 1 thread" for count in range(1, args.workers + 1)]
    print("| model | " + " | ".join(f"{c}: candidates/s" for c in columns) + " | " +
          " | ".join(f"{c} / one Scorer" for c in columns[1:]) + " |")
    print("|---|" + "---|" * (2 * len(columns) - 1))
    for name in args.models:
        model = onnx_de.open_model(f"zoo:{name}")
        data = onnx_de.load_data(f"zoo:{name}", model)
        names = [w.name for w in model.prunable]
        spec = resolve_metric(None, model, f"zoo:{name}")
        pools = [lambda: Scorer(model, data, names, spec), lambda: Scorer(model, data, names, spec, intra_op_threads=1),
                 lambda: ScorerPool(model, data, names, spec, workers=args.workers, intra_op_threads=1)]
        if args.ray:
            pools += [lambda count=count: RayScorerPool(model, data, names, spec, workers=count, intra_op_threads=1)
                      for count in range(1, args.workers + 1)]
        rates = []
        for make in pools:
            scorer = make()
            try:
                rates.append(rate(scorer, names, args.generations))
            finally:
                scorer.close()
        print(f"| {name} | " + " | ".join(f"{r:.1f}" for r in rates) + " | " +
              " | ".join(f"{r / rates[0]:.2f}x" for r in rates[1:]) + " |", flush=True)


if __name__ == "__main__":
    main()
