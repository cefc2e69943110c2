"""Side-by-side sparsification benchmark: DE versus magnitude and Wanda baselines, with and without compensation.

Every method prunes the same model to the same target on the same calibration split; fidelity is measured on
the evaluation split. "magnitude@DE" and "wanda@DE" prune each layer to the sparsity DE chose for it, so the
comparison is at equal per-layer sparsity. Prints a Markdown table (paste into BENCHMARKS.md).

DE with compensation resumes DE's own final checkpoint (same seed and settings, so the same masks) and only
adds the compensation; its seconds are the search's plus the compensation's. With ``--refits N`` the search
itself refits the survivors N times, so there is only the DE + compensation row, and the baselines' per-layer
sparsity is that search's. With ``--uniform`` every method prunes each layer to the target (the paper's
per-layer mode, ``--per-layer re:.*=SPARSITY``), so all rows share one per-layer sparsity by construction.

    python tools/bench_sparsify.py mnist-mlp:0.9 mnist-lenet5:0.8 mnist-lenet5:0.9 [--augment 3] [--uniform]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="onnx-de-bench-"))

from onnx_de.evolution import SearchConfig  # noqa: E402
from onnx_de.sparsify import sparsify  # noqa: E402
from bench_env import header  # noqa: E402


def run(name: str, sparsity: float, seed: int, limit: int | None, threads: int | None, de_only: bool = False,
        refits: int = 0, allocation_only: bool = False, search: dict | None = None, held_out: float = 0.0,
        mask_folds: int = 0, augment: int = 0, uniform: bool = False):
    """Yield one table row per method and setting, as each finishes."""
    zoo = f"zoo:{name}"
    targets = dict(sparsity=sparsity, per_layer={"re:.*": sparsity} if uniform else {})
    de = {}
    options = dict(calibration_samples=limit, intra_op_threads=threads, held_out=held_out, augment=augment)
    shifted = [f"{augment} shifted copies"] if augment else []
    with tempfile.TemporaryDirectory(prefix="onnx-de-bench-") as folder:
        checkpoint = Path(folder) / "search.npz"
        for compensate in (False, True) if not refits else (True,):
            config = SearchConfig(**targets, seed=seed, refits=refits, **(search or {}))
            result = sparsify(zoo, zoo, config=config, compensate=compensate, checkpoint=checkpoint,
                              resume=compensate, mask_folds=mask_folds if compensate else 0, **options)
            if compensate and not refits:
                result.seconds += de[False].seconds
            de[compensate] = result
            label = ", ".join(["DE (each layer)" if uniform else "DE (global)",
                               *[f"{k} {v}" for k, v in (search or {}).items()],
                               *([f"{refits} refits"] if refits else []),
                               *([f"{held_out:.0%} held out"] if held_out else []), *shifted,
                               *([f"masks chosen by {mask_folds}-fold cross-validation"] if mask_folds and compensate
                                 else [])])
            yield _row(name, sparsity, label, compensate, result)
    if de_only:
        return
    if uniform:  # label suffix -> the baselines' targets
        baselines = {" (each layer)": SearchConfig(**targets, seed=seed)}
    else:
        allocation = {layer: info["sparsity"] for layer, info in next(iter(de.values())).layers.items()}
        baselines = {" (global)": SearchConfig(sparsity=sparsity, seed=seed),
                     "@DE per-layer": SearchConfig(sparsity=sparsity, per_layer=allocation, seed=seed)}
        if allocation_only:
            del baselines[" (global)"]
    for method in ("magnitude", "wanda"):
        for compensate in (False, True):
            for suffix, config in baselines.items():
                result = sparsify(zoo, zoo, config=config, method=method, compensate=compensate, **options)
                yield _row(name, sparsity, ", ".join([method + suffix, *shifted]), compensate, result)


def _row(name, sparsity, label, compensate, result) -> str:
    f = result.fidelity
    primary = f[f["primary"]]
    return (f"| {name} | {sparsity:.0%} | {label} | {'yes' if compensate else 'no'} | {result.sparsity:.4f} | "
            f"{f['primary']} {primary:.3f} | {f['kl'] if 'kl' in f else f['rel_l2']:.4f} | {result.seconds:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="+", help="NAME:SPARSITY")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="calibration samples (default: the zoo's whole split)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    parser.add_argument("--de-only", action="store_true", help="only the DE rows (the baselines do not change)")
    parser.add_argument("--refits", type=int, default=0, help="interim refits during the search (default 0)")
    parser.add_argument("--prior", help="DE's candidate prior (default: SearchConfig's)")
    parser.add_argument("--pool", type=float, help="DE's candidate pool (default: SearchConfig's)")
    parser.add_argument("--allocation-only", action="store_true",
                        help="of the baselines, only those at DE's per-layer sparsity (the global ones do not change)")
    parser.add_argument("--held-out", type=float, default=0.0,
                        help="fraction of calibration samples kept from the search to judge the refits (default 0)")
    parser.add_argument("--mask-folds", type=int, default=0,
                        help="choose among the refits from DE's, magnitude's and Wanda's masks by K-fold "
                             "cross-validation (default 0: on the samples they were fitted to)")
    parser.add_argument("--augment", type=int, default=0,
                        help="add this many shifted copies of the calibration images, for every method (default 0)")
    parser.add_argument("--uniform", action="store_true",
                        help="every method prunes each layer to the target (the paper's per-layer mode) instead of "
                             "one global target")
    args = parser.parse_args()
    print(header(args.targets), flush=True)
    print()
    print("| model | target | method | compensation | sparsity | fidelity (evaluation split) | KL or rel. L2 | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for target in args.targets:
        name, _, sparsity = target.partition(":")
        search = {k: v for k, v in (("prior", args.prior), ("pool", args.pool)) if v is not None}
        for row in run(name, float(sparsity), args.seed, args.limit, args.threads, args.de_only, args.refits,
                       args.allocation_only, search, args.held_out, args.mask_folds, args.augment,
                       args.uniform):
            print(row, flush=True)


if __name__ == "__main__":
    main()
