"""Compensation judged on held-out images: does keeping or reverting each layer's refit by the divergence on
calibration samples the regression never saw generalise better than judging it on the samples it was fit to?

Prunes every layer of a zoo model to ``--sparsity`` by a saliency order (no search), then measures on the
evaluation split: no compensation; compensation fit and judged on the whole calibration split (what ``sparsify``
does); compensation fit on three quarters and judged on the quarter held out (whole photographs or fonts where
the zoo's data has them: ``Dataset.hold_out``). Prints one line each.

    python tools/bench_compensation.py efficientnet-lite0 --sparsity 0.3 --prior activation
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="onnx-de-bench-"))

import numpy as np  # noqa: E402

from onnx_de.compensate import LayerProbe, compensate, saliency  # noqa: E402
from onnx_de.data import load_data  # noqa: E402
from onnx_de.evaluate import evaluate, evaluation_data, resolve_metric  # noqa: E402
from onnx_de.evolution import SearchConfig  # noqa: E402
from onnx_de.scoring import Scorer  # noqa: E402
from onnx_de.sparsify import prune_by_saliency, student_model  # noqa: E402
from onnx_de.zoo import open_model  # noqa: E402
from bench_env import header  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="zoo model")
    parser.add_argument("--sparsity", type=float, default=0.3, help="every layer's fraction of zeros")
    parser.add_argument("--prior", default="activation", help="saliency order (magnitude, activation, hessian)")
    args = parser.parse_args()
    print(header([args.name]), flush=True)
    zoo = f"zoo:{args.name}"
    teacher = open_model(zoo, require_prunable=True)
    calibration = load_data(zoo, teacher, split="calibration")
    spec = resolve_metric(None, teacher, zoo, zoo)
    evaluation = evaluation_data(None, zoo, teacher)
    prunable = teacher.prunable
    names = [w.name for w in prunable]
    fitted, judged = calibration.hold_out(len(calibration) // 4)
    probe = LayerProbe(teacher, prunable, calibration)
    masks = prune_by_saliency(saliency(probe, args.prior),
                              SearchConfig(sparsity=args.sparsity, per_layer={"re:.*": args.sparsity}))
    pruned = {name: np.where(masks[name], probe.teacher[name], 0).astype(np.float32) for name in names}

    def measure(label: str, scorer: Scorer | None = None, fit_probe: LayerProbe | None = None) -> None:
        started = time.perf_counter()
        weights = pruned
        if scorer is not None:
            for name in names:
                scorer.weights[name][...] = pruned[name]
            compensate(scorer, fit_probe, {name: mask.copy() for name, mask in masks.items()})
            weights = scorer.weights
        f = evaluate(teacher, student_model(teacher, weights), evaluation, metric=spec)
        print(f"{label}: {f['primary']} {f[f['primary']]:.4f}, KL {f.get('kl', float('nan')):.4f}, "
              f"rel. L2 {f['rel_l2']:.4f} ({time.perf_counter() - started:.0f} s)", flush=True)

    measure("no compensation")
    measure("fit and judged on all calibration samples", Scorer(teacher, calibration, names, spec), probe)
    measure(f"fit on {len(fitted)}, judged on {len(judged)} held out",
            Scorer(teacher, judged, names, spec), LayerProbe(teacher, prunable, fitted))


if __name__ == "__main__":
    main()
