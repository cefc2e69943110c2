"""Quantization benchmark: codebook versus uniform levels at 3, 4 and 6 bits, and automatic per-layer bits at a
fidelity budget versus the fewest equal bits for every layer that meet the same budget. Prints Markdown tables.

A target ``NAME`` quantizes the zoo model itself; ``NAME:SPARSITY`` first sparsifies it by DE (default settings,
seed 0, with compensation) and quantizes the sparse student, with fidelity always against the original. The
budget is the primary metric on the calibration split, ``--points`` below the unquantized student's (1 point
= 0.01); fidelity is reported on the evaluation split.

    python tools/bench_quantize.py mnist-mlp:0.9 mnist-lenet5 ppocr-cls
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="onnx-de-bench-"))

import onnx_de  # noqa: E402
from onnx_de.evolution import SearchConfig  # noqa: E402
from onnx_de.quantize import quantize  # noqa: E402
from onnx_de.sparsify import sparsify  # noqa: E402


def run(target: str, folder: Path, points: float, threads: int | None, fixed_only: bool = False,
        auto_only: bool = False):
    name, _, sparsity = target.partition(":")
    zoo = f"zoo:{name}"
    model = zoo
    if sparsity:
        model = folder / f"{name}-{sparsity}.onnx"
        sparsify(zoo, zoo, config=SearchConfig(sparsity=float(sparsity)), output=model, intra_op_threads=threads)
    calibration = onnx_de.load_data(zoo, onnx_de.open_model(zoo), split="calibration")
    base = onnx_de.evaluate(zoo, model, calibration, intra_op_threads=threads)
    start = base[base["primary"]]
    options = dict(teacher=zoo, eval_data=zoo, intra_op_threads=threads)
    label = f"{name} {float(sparsity):.0%} sparse" if sparsity else name
    fixed_rows, calibration_metric = [], {}
    for bits in (3, 4, 6) if not auto_only else ():
        for scheme in ("codebook", "uniform"):
            result = quantize(model, zoo, bits=bits, scheme=scheme, **options)
            on_calibration = onnx_de.evaluate(zoo, result.student, calibration, intra_op_threads=threads)
            calibration_metric[scheme, bits] = on_calibration[on_calibration["primary"]]
            f = result.fidelity
            fixed_rows.append(f"| {label} | {scheme} | {bits} | {f['primary']} {f[f['primary']]:.3f} | "
                              f"{calibration_metric[scheme, bits]:.3f} | {result.seconds:.1f} |")
    if fixed_only:
        return fixed_rows, None
    budget = round(start - points / 100, 4)
    auto = quantize(model, zoo, bits="auto", budget=budget, scheme="codebook", **options)
    equal = None
    for bits in range(1, 9):  # the fewest equal bits for every layer that meet the budget on calibration
        result = quantize(model, zoo, bits=bits, scheme="codebook", **options)
        on_calibration = onnx_de.evaluate(zoo, result.student, calibration, intra_op_threads=threads)
        if on_calibration[on_calibration["primary"]] >= budget:
            equal = result
            break
    f = auto.fidelity
    saved = f"{1 - auto.average_bits / equal.average_bits:.0%}" if equal else "n/a"
    equal_text = (f"{equal.average_bits:.0f} bits: {equal.fidelity[equal.fidelity['primary']]:.3f}"
                  if equal else "none within 8 bits")
    auto_row = (f"| {label} | {start:.3f} | {budget:.3f} | {auto.average_bits:.2f} | "
                f"{auto.calibration_metric:.3f} | {f['primary']} {f[f['primary']]:.3f} | {equal_text} | {saved} | "
                f"{auto.seconds:.1f} |")
    return fixed_rows, auto_row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="+", help="NAME or NAME:SPARSITY")
    parser.add_argument("--points", type=float, default=1.0, help="budget: points below the unquantized model")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    parser.add_argument("--fixed-only", action="store_true", help="only the 3, 4 and 6-bit rows (no allocation)")
    parser.add_argument("--auto-only", action="store_true", help="only the allocation row (no 3, 4 and 6-bit rows)")
    args = parser.parse_args()
    fixed, auto = [], []
    with tempfile.TemporaryDirectory(prefix="onnx-de-bench-") as folder:
        for target in args.targets:
            rows, row = run(target, Path(folder), args.points, args.threads, args.fixed_only, args.auto_only)
            fixed += rows
            auto += [row] if row else []
            print(*rows, *([row] if row else []), sep="\n", flush=True)
    print()
    print("| model | scheme | bits | fidelity (evaluation split) | primary on calibration | seconds |")
    print("|---|---|---|---|---|---|")
    print(*fixed, sep="\n")
    print()
    print("| model | unquantized (calibration) | budget (calibration) | auto: average bits | auto: calibration | "
          "auto: evaluation | fewest equal bits meeting the budget: evaluation | bits saved | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(*auto, sep="\n")


if __name__ == "__main__":
    main()
