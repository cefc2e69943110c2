"""Quantization benchmark: codebook versus uniform levels at 3, 4 and 6 bits, and automatic per-layer bits at a
fidelity budget versus the fewest equal bits for every layer that meet the same budget. Prints Markdown tables.
With ``--curve``: equal bits (codebooks 1-8, or ``--scheme step`` 6-14) against automatic allocations at several
budgets, compared at equal fidelity on the evaluation split (each budget is set on calibration; the evaluation
split only judges).

A target ``NAME`` quantizes the zoo model itself; ``NAME:SPARSITY`` first sparsifies it by DE (default settings,
seed 0, with compensation) and quantizes the sparse student, with fidelity always against the original. The
budget is the primary metric on the calibration split, ``--points`` below the unquantized student's (1 point
= 0.01); fidelity is reported on the evaluation split.

    python tools/bench_quantize.py mnist-mlp:0.9 mnist-lenet5 ppocr-cls
    python tools/bench_quantize.py mnist-mlp:0.9 ppocr-cls --curve --points 0.5 1 2 3 5
    python tools/bench_quantize.py efficientnet-lite0 --fixed-only --grid step:8,9,10,11,12 codebook:8
    python tools/bench_quantize.py efficientnet-lite0 --curve --scheme step --points 1

``--grid SCHEME:BITS,...`` replaces the fixed rows' settings; their container bytes are those of ``encode``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="onnx-de-bench-"))

import onnx_de  # noqa: E402
from onnx_de.codec import encode  # noqa: E402
from onnx_de.evolution import SearchConfig  # noqa: E402
from onnx_de.quantize import quantize, weight_inputs  # noqa: E402
from onnx_de.quantizers import SCHEMES  # noqa: E402
from onnx_de.sparsify import sparsify  # noqa: E402
from onnx_de.zoo import zoo_path  # noqa: E402
from bench_env import header  # noqa: E402

DEFAULT_GRID = [(scheme, bits) for bits in (3, 4, 6) for scheme in ("codebook", "uniform")]


def prepare(target: str, folder: Path, threads: int | None):
    """The model to quantize (the zoo model, or its DE student), its label, and the calibration split."""
    name, _, sparsity = target.partition(":")
    zoo = f"zoo:{name}"
    model = zoo
    if sparsity:
        model = folder / f"{name}-{sparsity}.onnx"
        sparsify(zoo, zoo, config=SearchConfig(sparsity=float(sparsity)), output=model, intra_op_threads=threads)
    calibration = onnx_de.load_data(zoo, onnx_de.open_model(zoo), split="calibration")
    label = f"{name} {float(sparsity):.0%} sparse" if sparsity else name
    return zoo, model, label, calibration


def primary(fidelity: dict) -> float:
    return fidelity[fidelity["primary"]]


def run(target: str, folder: Path, points: float, threads: int | None, fixed_only: bool = False,
        auto_only: bool = False, grid: list[tuple[str, int]] = DEFAULT_GRID):
    zoo, model, label, calibration = prepare(target, folder, threads)
    start = primary(onnx_de.evaluate(zoo, model, calibration, intra_op_threads=threads))
    options = dict(teacher=zoo, eval_data=zoo, intra_op_threads=threads)
    original = zoo_path(zoo[4:]).stat().st_size
    fixed_rows = []
    for scheme, bits in grid if not auto_only else ():
        result = quantize(model, zoo, bits=bits, scheme=scheme, **options)
        on_calibration = onnx_de.evaluate(zoo, result.student, calibration, intra_op_threads=threads)
        size = len(encode(result.student))
        f = result.fidelity
        fixed_rows.append(f"| {label} | {scheme} | {bits} | {size:,} | {original / size:.2f}x | "
                          f"{f['primary']} {f[f['primary']]:.4f} | {primary(on_calibration):.4f} | "
                          f"{result.seconds:.1f} |")
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


def curve(target: str, folder: Path, points: list[float], threads: int | None, scheme: str = "codebook",
          widths: range = range(1, 9)) -> list[str]:
    """Automatic allocations at budgets ``points`` below the unquantized student's calibration metric, each against
    equal bits of ``scheme`` for every layer at equal evaluation fidelity: the fewest equal bits at least as good,
    and the equal-bits curve (``widths``) interpolated linearly at the allocation's fidelity. One row per budget."""
    zoo, model, label, calibration = prepare(target, folder, threads)
    start = primary(onnx_de.evaluate(zoo, model, calibration, intra_op_threads=threads))
    options = dict(teacher=zoo, eval_data=zoo, intra_op_threads=threads, scheme=scheme)
    options["inputs"] = weight_inputs(onnx_de.open_model(model), calibration, threads)  # shared by every quantization
    equal = {}
    for bits in widths:
        result = quantize(model, zoo, bits=bits, **options)
        equal[bits] = primary(result.fidelity)
        print(f"{label}: {scheme} {bits} equal bits: evaluation {equal[bits]:.4f}, "
              f"{len(encode(result.student)):,} container bytes", flush=True)
    rows = []
    for point in points:
        budget = round(start - point / 100, 4)
        result = quantize(model, zoo, bits="auto", budget=budget, **options)
        average, fidelity = result.average_bits, primary(result.fidelity)
        fewest = next((bits for bits, value in equal.items() if value >= fidelity), None)
        interpolated = _bits_at(equal, fidelity)
        fewest_text = f"{fewest} ({equal[fewest]:.3f}) | {1 - average / fewest:.0%}" if fewest else "none | "
        curve_text = (f"{interpolated:.2f} | {1 - average / interpolated:.0%}" if interpolated
                      else f"below {min(equal)} bits | ")
        rows.append(f"| {label} | {budget:.3f} | {average:.2f} | {result.calibration_metric:.3f} / {fidelity:.3f} | "
                    f"{fewest_text} | {curve_text} | {len(encode(result.student)):,} | {result.seconds:.1f} |")
        print(rows[-1], flush=True)
    return rows


def _bits_at(equal: dict[int, float], fidelity: float) -> float | None:
    """The equal-bits curve's bits at ``fidelity``, linear between neighbouring widths (monotone envelope)."""
    envelope, best = [], -1.0
    for bits in sorted(equal):
        best = max(best, equal[bits])
        envelope.append((bits, best))
    if fidelity <= envelope[0][1]:
        return None
    for (low, low_value), (high, high_value) in zip(envelope, envelope[1:]):
        if low_value < fidelity <= high_value:
            return low + (high - low) * (fidelity - low_value) / (high_value - low_value)
    return None


def _widths(text: str) -> range:
    low, _, high = text.partition("-")
    try:
        return range(int(low), int(high or low) + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW-HIGH, got {text!r}") from None


def _grid(text: str) -> list[tuple[str, int]]:
    scheme, _, widths = text.partition(":")
    try:
        return [(scheme, int(width)) for width in widths.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SCHEME:BITS,..., got {text!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="+", help="NAME or NAME:SPARSITY")
    parser.add_argument("--points", type=float, nargs="+", default=[1.0],
                        help="budget: points below the unquantized model (with --curve, several)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    parser.add_argument("--fixed-only", action="store_true", help="only the 3, 4 and 6-bit rows (no allocation)")
    parser.add_argument("--auto-only", action="store_true", help="only the allocation row (no 3, 4 and 6-bit rows)")
    parser.add_argument("--grid", nargs="+", type=_grid, metavar="SCHEME:BITS,...",
                        help="the fixed rows' settings (default codebook and uniform at 3, 4 and 6 bits)")
    parser.add_argument("--curve", action="store_true",
                        help="equal bits against allocations at each --points budget, at equal fidelity")
    parser.add_argument("--scheme", choices=SCHEMES, default="codebook", help="with --curve: the levels")
    parser.add_argument("--widths", type=_widths, metavar="LOW-HIGH",
                        help="with --curve: the equal widths (default 1-8; step: 6-14)")
    args = parser.parse_args()
    print(header(args.targets), flush=True)
    if args.curve:
        rows = []
        with tempfile.TemporaryDirectory(prefix="onnx-de-bench-") as folder:
            for target in args.targets:
                rows += curve(target, Path(folder), args.points, args.threads, args.scheme,
                              args.widths or (range(6, 15) if args.scheme == "step" else range(1, 9)))
        print()
        print("| model | budget (calibration) | auto: average bits | auto: calibration / evaluation | fewest equal "
              "bits at least as good (evaluation) | bits saved | equal-bits curve at the same fidelity | bits saved "
              "| auto: container bytes | seconds |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        print(*rows, sep="\n")
        return
    if len(args.points) != 1:
        parser.error("several --points need --curve")
    fixed, auto = [], []
    with tempfile.TemporaryDirectory(prefix="onnx-de-bench-") as folder:
        for target in args.targets:
            grid = [setting for settings in args.grid for setting in settings] if args.grid else DEFAULT_GRID
            rows, row = run(target, Path(folder), args.points[0], args.threads, args.fixed_only, args.auto_only, grid)
            fixed += rows
            auto += [row] if row else []
            print(*rows, *([row] if row else []), sep="\n", flush=True)
    if fixed:
        print()
        print("| model | scheme | bits | container bytes | smaller than fp32 | fidelity (evaluation split) "
              "| primary on calibration | seconds |")
        print("|---|---|---|---|---|---|---|---|")
        print(*fixed, sep="\n")
    if not auto:
        return
    print()
    print("| model | unquantized (calibration) | budget (calibration) | auto: average bits | auto: calibration | "
          "auto: evaluation | fewest equal bits meeting the budget: evaluation | bits saved | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(*auto, sep="\n")


if __name__ == "__main__":
    main()
