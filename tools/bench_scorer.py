"""Scorer throughput: candidates scored per second versus plain forward passes of the same session and batch,
and versus the naive baseline that builds a new ONNX Runtime session per candidate. Prints a Markdown table.

    python tools/bench_scorer.py mnist-mlp efficientnet-lite0 --candidates 50
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
from onnx_de.scoring import Scorer  # noqa: E402
from onnx_de.sparsify import student_model  # noqa: E402


def measure(name: str, candidates: int, samples: int | None) -> str:
    model = onnx_de.open_model(f"zoo:{name}")
    data = onnx_de.load_data(f"zoo:{name}", model, limit=samples)
    names = [w.name for w in model.prunable]
    scorer = Scorer(model, data, names, resolve_metric(None, model, f"zoo:{name}"))
    rng = np.random.default_rng(0)
    draws = [(n, rng.choice(scorer.weights[n].size, max(1, scorer.weights[n].size // 100), replace=False))
             for n in rng.choice(names, candidates)]

    session = onnx_de.create_session(model)
    started = time.perf_counter()
    for _ in range(candidates):
        onnx_de.run_model(session, data)
    plain = candidates / (time.perf_counter() - started)

    started = time.perf_counter()
    for layer, idx in draws:
        scorer.score(layer, idx)
    scored = candidates / (time.perf_counter() - started)

    naive_count = max(3, candidates // 10)
    started = time.perf_counter()
    for layer, idx in draws[:naive_count]:
        weights = {layer: scorer.weights[layer].copy()}
        weights[layer].reshape(-1)[idx] = 0
        onnx_de.run_model(onnx_de.create_session(student_model(model, weights)), data)
    naive = naive_count / (time.perf_counter() - started)
    return (f"| {name} | {len(data)} | {plain:.1f} | {scored:.1f} | {naive:.2f} | "
            f"{scored / plain:.2f}x | {scored / naive:.1f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--samples", type=int, help="calibration samples (default: the whole split)")
    args = parser.parse_args()
    print("| model | batch | plain forward/s | scored candidates/s | naive (new session) candidates/s | "
          "scored / plain | scored / naive |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        print(measure(name, args.candidates, args.samples), flush=True)


if __name__ == "__main__":
    main()
