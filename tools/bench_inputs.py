"""Layer-input benchmark: what running the model once per layer costs the input statistics (quantize's energies
and Hessians) and the refit passes, against several layers' inputs per run (``LayerProbe.captures``) and the
teacher's inputs kept across passes, side by side in one process on the same data.

"one layer per run" sets ``compensate.CAPTURE_BYTES`` to 1 byte, which makes every capture its own model run and
keeps no teacher input (what the code did before); "shared runs" is the default (1 GiB). The refit is
``compensate`` from a random mask (``--sparsity`` of every ``--every``-th layer) with a magnitude-ordered
alternative at the same per-layer counts: two whole passes, as ``sparsify`` runs three. Both settings must give
the same statistics and the same refit weights; the script checks it.

    python tools/bench_inputs.py efficientnet-lite0 ddddocr-det --threads 1 --every 5 --limit 16
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="onnx-de-bench-"))

import numpy as np  # noqa: E402

from onnx_de import compensate as compensation  # noqa: E402
from onnx_de.compensate import LayerProbe, compensate, layer_inputs  # noqa: E402
from onnx_de.data import load_data  # noqa: E402
from onnx_de.evaluate import resolve_metric  # noqa: E402
from onnx_de.scoring import Scorer  # noqa: E402
from onnx_de.sparsify import lowest  # noqa: E402
from onnx_de.zoo import open_model  # noqa: E402
from bench_env import header  # noqa: E402

SETTINGS = {"one layer per run": 1, "shared runs": compensation.CAPTURE_BYTES}


def measure(name: str, threads: int | None, every: int, sparsity: float, limit: int | None) -> list[str]:
    """One row per setting: seconds of the input statistics and of two refit passes."""
    zoo = f"zoo:{name}"
    teacher = open_model(zoo, require_prunable=True)
    data = load_data(zoo, teacher, limit=limit)
    spec = resolve_metric(None, teacher, zoo, zoo)
    refit = teacher.prunable[::every]
    rng = np.random.default_rng(0)
    initial = {w.name: np.asarray(teacher.initializer(w.name)) for w in refit}
    masks = {n: rng.random(w.shape) >= sparsity for n, w in initial.items()}
    by_magnitude = lowest({n: np.abs(w) for n, w in initial.items()},
                          {n: int(mask.size - mask.sum()) for n, mask in masks.items()})
    rows, outcomes = [], []
    for label, capture_bytes in SETTINGS.items():
        compensation.CAPTURE_BYTES = capture_bytes
        started = time.perf_counter()
        statistics = layer_inputs(LayerProbe(teacher, teacher.prunable, data, intra_op_threads=threads))
        statistics_seconds = time.perf_counter() - started
        scorer = Scorer(teacher, data, list(initial), spec, intra_op_threads=threads)
        for n, mask in masks.items():
            scorer.weights[n][...] = np.where(mask, initial[n], 0)
        probe = LayerProbe(teacher, refit, data, intra_op_threads=threads)
        started = time.perf_counter()
        kept, _ = compensate(scorer, probe, {n: m.copy() for n, m in masks.items()},
                             alternatives={"magnitude": by_magnitude})
        refit_seconds = time.perf_counter() - started
        outcomes.append((statistics, {n: scorer.weights[n].copy() for n in initial}, kept))
        rows.append(f"| {name} | {len(data)} | {label} | {statistics_seconds:.1f} | {len(refit)} | "
                    f"{refit_seconds:.1f} | {scorer.divergence():.6g} |")
        print(rows[-1], flush=True)
        scorer.close()
    compensation.CAPTURE_BYTES = SETTINGS["shared runs"]
    (stats_a, weights_a, kept_a), (stats_b, weights_b, kept_b) = outcomes
    same = kept_a == kept_b and all(np.array_equal(weights_a[n], weights_b[n]) for n in weights_a) and all(
        (a is None and b is None) or (np.array_equal(a.energy, b.energy) and all(
            np.array_equal(x, y) for (x, _), (y, _) in zip(a.hessians, b.hessians)))
        for a, b in ((stats_a[n], stats_b[n]) for n in stats_a))
    print(f"{name}: the two settings give {'identical' if same else 'DIFFERENT'} statistics and refits", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", help="zoo models")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    parser.add_argument("--every", type=int, default=5, help="refit every K-th prunable layer (default 5)")
    parser.add_argument("--sparsity", type=float, default=0.3, help="fraction of zeros of the refit layers")
    parser.add_argument("--limit", type=int, help="calibration samples (default: the zoo's whole split)")
    args = parser.parse_args()
    print(header(args.names), flush=True)
    print()
    print("| model | samples | captures | input statistics s | layers refit | two refit passes s | divergence |")
    print("|---|---|---|---|---|---|---|")
    for name in args.names:
        measure(name, args.threads, args.every, args.sparsity, args.limit)


if __name__ == "__main__":
    main()
