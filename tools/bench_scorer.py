"""Scorer throughput: candidates scored per second versus plain forward passes of the same session and batch,
and versus the naive baseline that builds a new ONNX Runtime session per candidate. Prints a Markdown table.

The Scorer is timed as the search uses it: per generation one refresh (a full run that also keeps the
frontiers) and a population of 16 candidates, each 1% of a layer's weights, the layer drawn as a global search
draws it at the start (in proportion to its size: what it may lose), scored by partial execution on ONNX
Runtime's optimized graph with the per-layer sessions sharing one memory arena. Side by side, on the same
candidates: layers drawn uniformly (the tables before 2026-11-28, which gave the small early layers, whose
candidates run almost the whole graph, the chance of the largest); no memory arena, each run allocating
afresh; every candidate a full run; and the model's own graph with the weights promoted to inputs. Untimed
first: a refresh of every layer and three candidates per layer, which build the per-layer sessions and warm
them up, as the first generations of a long search do; the table is the steady state. The last column is the
process's peak resident memory so far (the Scorers of a model stay alive until the next one): run one model
per invocation to read it per model.

    python tools/bench_scorer.py mnist-mlp efficientnet-lite0 --generations 3
    python tools/bench_scorer.py ppocr-det --device cuda     # every session on the GPU (onnxruntime-gpu)
    python tools/bench_scorer.py ppocr-det --layers          # per layer: what one candidate costs, and why

With ``--layers`` it prints instead, per prunable layer, the chance a search draws it, the nodes its partial
run executes, and the milliseconds of one candidate (1% of its elements) against a full run of the same
Scorer: where a model's candidate time goes.
"""

from __future__ import annotations

import argparse
import functools
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


# Columns of Scorer rates: label -> Scorer options over the default (ONNX Runtime's optimized graph, partial
# execution, the shared arena), and how candidates' layers are drawn.
CONFIGURATIONS = {
    "partial": ({}, "search"),
    "partial, layers drawn uniformly": ({}, "uniform"),
    "partial, no arena": ({"arena": "off"}, "search"),
    "full runs": ({"partial": False}, "search"),
    "model's own graph, partial": ({"optimized_graph": False}, "search"),
}


def one_percent(rng: np.random.Generator, size: float) -> np.ndarray:
    """A candidate: 1% of a layer's ``size`` elements (at least one), flat indices drawn without replacement."""
    return rng.choice(int(size), max(1, int(size) // 100), replace=False)


def measure(name: str, generations: int, samples: int | None, device: str) -> str:
    model = onnx_de.open_model(f"zoo:{name}")
    data = onnx_de.load_data(f"zoo:{name}", model, limit=samples)
    names = [w.name for w in model.prunable]
    sizes = np.array([w.size for w in model.prunable], dtype=np.float64)
    chances = {"search": sizes / sizes.sum(), "uniform": None}  # the search: in proportion to what a layer may lose
    spec = resolve_metric(None, model, f"zoo:{name}")
    population = 16

    def draw(rng, layers_drawn: str):
        layers = rng.choice(len(names), population, p=chances[layers_drawn])
        return [(names[i], one_percent(rng, sizes[i])) for i in layers]

    rates = {}
    for label, (options, layers_drawn) in CONFIGURATIONS.items():  # forced, not chosen by timing
        scorer = Scorer(model, data, names, spec, device=device, **{"optimized_graph": True, **options})
        scorer.refresh(set(names))
        for _ in range(3):
            for layer in names:
                scorer.score(layer, np.arange(1))
        rng = np.random.default_rng(0)  # every column scores the same candidates (per way of drawing)
        started = time.perf_counter()
        for _ in range(generations):
            candidates = draw(rng, layers_drawn)
            scorer.refresh({n for n, _ in candidates})
            for layer, idx in candidates:
                scorer.score(layer, idx)
        rates[label] = generations * population / (time.perf_counter() - started)

    session = onnx_de.create_session(model, device=device)
    onnx_de.run_model(session, data)
    started = time.perf_counter()
    for _ in range(population):
        onnx_de.run_model(session, data)
    plain = population / (time.perf_counter() - started)

    naive_count = 8
    started = time.perf_counter()
    for layer, idx in draw(np.random.default_rng(0), "search")[:naive_count]:
        weights = {layer: np.array(model.initializer(layer))}
        weights[layer].reshape(-1)[idx] = 0
        onnx_de.run_model(onnx_de.create_session(student_model(model, weights), device=device), data)
    naive = naive_count / (time.perf_counter() - started)
    best = rates["partial"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    cells = [name, len(data), f"{plain:.1f}", *(f"{rate:.1f}" for rate in rates.values()), f"{naive:.2f}",
             f"{best / plain:.2f}x", f"{best / naive:.1f}x", f"{peak:.1f}"]
    return "| " + " | ".join(map(str, cells)) + " |"


def per_layer(name: str, repeats: int, samples: int | None, device: str) -> list[str]:
    """One row per prunable layer: draw chance, partial-run nodes, candidate and full-run milliseconds."""
    model = onnx_de.open_model(f"zoo:{name}")
    data = onnx_de.load_data(f"zoo:{name}", model, limit=samples)
    names = [w.name for w in model.prunable]
    sizes = np.array([w.size for w in model.prunable], dtype=np.float64)
    scorer = Scorer(model, data, names, resolve_metric(None, model, f"zoo:{name}"), device=device)
    scorer.refresh(set(names))
    rng = np.random.default_rng(0)
    candidates = {n: one_percent(rng, s) for n, s in zip(names, sizes)}
    for layer in names:  # untimed: builds each layer's session and its first-run memory
        scorer.score(layer, candidates[layer])

    def milliseconds(run) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        return 1000 * float(np.median(times))

    before = milliseconds(scorer.student_outputs)
    chances = sizes / sizes.sum()
    costs = [milliseconds(functools.partial(scorer.score, layer, candidates[layer])) for layer in names]
    full = (before + milliseconds(scorer.student_outputs)) / 2  # timed before and after the layers: drift
    nodes = len(scorer._runtime.proto.graph.node)
    rows = [f"| {name} | {layer} | {int(size):,} | {chance:.3f} | "
            f"{len(scorer._downstream[layer].nodes) if scorer.partial else nodes} | {cost:.1f} | {cost / full:.2f} |"
            for layer, size, chance, cost in zip(names, sizes, chances, costs)]
    expected = float(np.dot(chances, costs))
    rows.append(f"| {name} | **expected per candidate (chance-weighted)** | {int(sizes.sum()):,} | 1 | | "
                f"**{expected:.1f}** | **{expected / full:.2f}** |")
    rows.append(f"| {name} | full run of the Scorer's graph (mean of before and after) | | | {nodes} | "
                f"{full:.1f} | 1.00 |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--samples", type=int, help="calibration samples (default: the whole split)")
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="where every session runs (auto: the GPU where there is one)")
    parser.add_argument("--layers", action="store_true",
                        help="per layer: draw chance, partial-run nodes, ms per candidate against a full run")
    parser.add_argument("--repeats", type=int, default=5, help="--layers: timed runs per layer (median)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(header(args.models), flush=True)
    if args.layers:
        columns = ["model", "layer", "elements", "chance drawn", "nodes run", "ms per candidate",
                   "candidate / full run"]
        print("| " + " | ".join(columns) + " |")
        print("|" + "---|" * len(columns))
        for name in args.models:
            print("\n".join(per_layer(name, args.repeats, args.samples, device)), flush=True)
        return
    columns = ["model", "batch", "plain forward/s", *(f"candidates/s ({label})" for label in CONFIGURATIONS),
               "naive (new session) candidates/s", "partial / plain", "partial / naive", "peak RSS so far, GiB"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for name in args.models:
        print(measure(name, args.generations, args.samples, device), flush=True)


if __name__ == "__main__":
    main()
