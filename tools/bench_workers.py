"""Parallel scoring: one Scorer using every core per operator versus a ScorerPool of single-threaded replicas.

Both score the same generations (a refresh and 16 candidates each) after the same untimed warm-up; the
table gives candidates per second and their ratio.

    python tools/bench_workers.py mnist-lenet5 ppocr-cls --workers 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="onnx-de-bench-"))

import numpy as np  # noqa: E402

import onnx_de  # noqa: E402
from onnx_de.evaluate import resolve_metric  # noqa: E402
from onnx_de.parallel import ScorerPool  # noqa: E402
from onnx_de.scoring import Scorer  # noqa: E402


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
    args = parser.parse_args()
    print(f"| model | one Scorer, {os.cpu_count()} threads: candidates/s | {args.workers} replicas x 1 thread: "
          "candidates/s | ratio |")
    print("|---|---|---|---|")
    for name in args.models:
        model = onnx_de.open_model(f"zoo:{name}")
        data = onnx_de.load_data(f"zoo:{name}", model)
        names = [w.name for w in model.prunable]
        spec = resolve_metric(None, model, f"zoo:{name}")
        one = rate(Scorer(model, data, names, spec), names, args.generations)
        pool = rate(ScorerPool(model, data, names, spec, workers=args.workers, intra_op_threads=1), names,
                    args.generations)
        print(f"| {name} | {one:.1f} | {pool:.1f} | {pool / one:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
