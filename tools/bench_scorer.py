"""Scorer throughput: candidates scored per second versus plain forward passes of the same session and batch,
and versus the naive baseline that builds a new ONNX Runtime session per candidate. Prints a Markdown table.

The Scorer is timed as the search uses it: per generation one refresh (a full run that also keeps the
frontiers) and a population of 16 candidates scored by partial execution on ONNX Runtime's optimized graph;
with partial execution off (every candidate a full run); and on the model's own graph with the weights
promoted to inputs (the Scorer before it ran the optimized graph). Untimed first: a refresh of every layer and
three candidates per layer, which build the per-layer sessions and warm them up, as the first generations of a
long search do; the table is the steady state. The last column is the process's peak resident memory so far
(the Scorers of a model stay alive until the next one): run one model per invocation to read it per model.

    python tools/bench_scorer.py mnist-mlp efficientnet-lite0 --generations 3
    python tools/bench_scorer.py ppocr-det --device cuda     # every session on the GPU (onnxruntime-gpu)
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="onnx-de-bench-"))

import numpy as np  # noqa: E402

import onnx_de  # noqa: E402
from onnx_de.evaluate import resolve_metric  # noqa: E402
from onnx_de.runtime import DEVICES, resolve_device  # noqa: E402
from onnx_de.scoring import Scorer  # noqa: E402
from onnx_de.sparsify import student_model  # noqa: E402
from bench_env import header  # noqa: E402


def measure(name: str, generations: int, samples: int | None, device: str) -> str:
    model = onnx_de.open_model(f"zoo:{name}")
    data = onnx_de.load_data(f"zoo:{name}", model, limit=samples)
    names = [w.name for w in model.prunable]
    spec = resolve_metric(None, model, f"zoo:{name}")
    rng = np.random.default_rng(0)
    population = 16

    def draw(scorer):
        return [(n, rng.choice(scorer.weights[n].size, max(1, scorer.weights[n].size // 100), replace=False))
                for n in rng.choice(names, population)]

    rates = {}
    for optimized, partial in ((True, True), (True, False), (False, True)):  # forced, not chosen by timing
        scorer = Scorer(model, data, names, spec, partial=partial, optimized_graph=optimized, device=device)
        scorer.refresh(set(names))
        for _ in range(3):
            for layer in names:
                scorer.score(layer, np.arange(1))
        started = time.perf_counter()
        for _ in range(generations):
            candidates = draw(scorer)
            scorer.refresh({n for n, _ in candidates})
            for layer, idx in candidates:
                scorer.score(layer, idx)
        rates[optimized, partial] = generations * population / (time.perf_counter() - started)

    session = onnx_de.create_session(model, device=device)
    onnx_de.run_model(session, data)
    started = time.perf_counter()
    for _ in range(population):
        onnx_de.run_model(session, data)
    plain = population / (time.perf_counter() - started)

    naive_count = 4
    started = time.perf_counter()
    for layer, idx in draw(scorer)[:naive_count]:
        weights = {layer: scorer.weights[layer].copy()}
        weights[layer].reshape(-1)[idx] = 0
        onnx_de.run_model(onnx_de.create_session(student_model(model, weights), device=device), data)
    naive = naive_count / (time.perf_counter() - started)
    best = rates[True, True]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return (f"| {name} | {len(data)} | {plain:.1f} | {best:.1f} | {rates[True, False]:.1f} | "
            f"{rates[False, True]:.1f} | {naive:.2f} | {best / plain:.2f}x | {best / naive:.1f}x | {peak:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--samples", type=int, help="calibration samples (default: the whole split)")
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="where every session runs (auto: the GPU where there is one)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(header(args.models), flush=True)
    print("| model | batch | plain forward/s | DE candidates/s (partial) | candidates/s (full runs) | "
          "candidates/s (model's own graph, partial) | naive (new session) candidates/s | partial / plain | "
          "partial / naive | peak RSS so far, GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        print(measure(name, args.generations, args.samples, device), flush=True)


if __name__ == "__main__":
    main()
