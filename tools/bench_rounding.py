"""Rounding benchmark: nearest against error-feedback rounding (``quantize(rounding=...)``) of the same sparse
student, at the same levels, and the mantissa bits kept by the float parameters left unquantized
(``quantize(mantissa_bits=...)``), side by side. Prints one Markdown row per setting, rounding and mantissa
width: container bytes and ratio to the fp32 model, and fidelity on the evaluation split (primary metric and KL
or relative L2).

A target ``NAME:SPARSITY`` first sparsifies the zoo model by DE (default settings, seed 0, with compensation);
``NAME`` quantizes the zoo model itself. Settings are ``SCHEME:BITS[:ENTROPY_WEIGHT]``.

    python tools/bench_rounding.py mnist-mlp:0.9 mnist-lenet5:0.96 --settings codebook:3 codebook:4 codebook:3:0.05
    python tools/bench_rounding.py ppocr-cls:0.7 --settings codebook:4 uniform:4 step:8 --threads 2
    python tools/bench_rounding.py ppocr-cls mnist-lenet5:0.96 --settings codebook:3 --roundings feedback \
        --mantissa-bits 23 12 10 8 7
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="onnx-de-bench-"))

import onnx_de  # noqa: E402
from onnx_de.codec import encode  # noqa: E402
from onnx_de.export import PARAMETER_MANTISSA_BITS  # noqa: E402
from onnx_de.quantize import quantize, weight_inputs  # noqa: E402
from onnx_de.quantizers import SCHEMES  # noqa: E402
from onnx_de.rounding import ROUNDINGS  # noqa: E402
from onnx_de.zoo import zoo_path  # noqa: E402
from bench_env import header  # noqa: E402
from bench_quantize import prepare  # noqa: E402

HEADER = ("| model | scheme | bits | entropy weight | rounding | mantissa bits | container bytes | smaller than "
          "fp32 | primary (evaluation) | KL or rel. L2 (evaluation) | seconds |")


def run(target: str, folder: Path, settings: list[tuple[str, int, float]], roundings: list[str],
        mantissas: list[int], threads: int | None) -> list[str]:
    """One row per setting, rounding and mantissa width for ``target``."""
    zoo, model, label, calibration = prepare(target, folder, threads)
    started = time.perf_counter()
    inputs = weight_inputs(onnx_de.open_model(model), calibration, threads)  # shared by every quantization
    statistics = time.perf_counter() - started
    original = zoo_path(zoo[4:]).stat().st_size
    rows = []
    for scheme, bits, weight in settings:
        for rounding in roundings:
            for mantissa in mantissas:
                result = quantize(model, zoo, bits=bits, scheme=scheme, teacher=zoo, eval_data=zoo, inputs=inputs,
                                  entropy_weight=weight, rounding=rounding, mantissa_bits=mantissa,
                                  intra_op_threads=threads)
                size = len(encode(result.student))
                f = result.fidelity
                spread = f"kl {f['kl']:.5f}" if "kl" in f else f"rel_l2 {f['rel_l2']:.5f}"
                rows.append(f"| {label} | {scheme} | {bits} | {weight:g} | {rounding} | {mantissa} | {size:,} | "
                            f"{original / size:.1f}x | {f['primary']} {f[f['primary']]:.4f} | {spread} | "
                            f"{result.seconds:.1f} |")
                print(rows[-1], flush=True)
    print(f"{label}: layer input statistics (energies and Hessians) in {statistics:.1f} s", flush=True)
    return rows


def _setting(text: str) -> tuple[str, int, float]:
    scheme, _, rest = text.partition(":")
    bits, _, weight = rest.partition(":")
    if scheme not in SCHEMES:
        raise argparse.ArgumentTypeError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    try:
        return scheme, int(bits), float(weight or 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SCHEME:BITS[:ENTROPY_WEIGHT], got {text!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="+", help="NAME or NAME:SPARSITY")
    parser.add_argument("--settings", nargs="+", type=_setting, default=[("codebook", 3, 0.0), ("codebook", 4, 0.0)],
                        metavar="SCHEME:BITS[:W]", help="default codebook:3 codebook:4")
    parser.add_argument("--roundings", nargs="+", choices=ROUNDINGS, default=list(ROUNDINGS),
                        help="survivors' roundings (default both)")
    parser.add_argument("--mantissa-bits", nargs="+", type=int, default=[PARAMETER_MANTISSA_BITS], metavar="M",
                        help=f"mantissa bits of the unquantized float parameters (default {PARAMETER_MANTISSA_BITS})")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    args = parser.parse_args()
    print(header(args.targets), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnx-de-bench-") as folder:
        for target in args.targets:
            rows += run(target, Path(folder), args.settings, args.roundings, args.mantissa_bits, args.threads)
    print()
    print(HEADER)
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(*rows, sep="\n")


if __name__ == "__main__":
    main()
