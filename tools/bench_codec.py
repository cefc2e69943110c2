"""Container benchmark: bytes of masks and symbols versus their order-0 bound and versus zstd-19 of the same
arrays, the whole container versus (graph + tables + bounds + raw tensors), encode and decode speed, and
opening an ONNX Runtime session from the container versus from the fp32 .onnx. Prints Markdown tables.

A target ``NAME`` magnitude-prunes the zoo model's prunable weights to ``--sparsity`` and exports them with
``--bits`` codebook levels (no search: the codec is what is measured); a target ``PATH.onnx`` encodes that
file as it is (e.g. a student written by ``onnx-de quantize``). Every container is decoded and checked to
restore each tensor bit for bit.

    python tools/bench_codec.py mnist-mlp mnist-lenet5 ppocr-cls ppocr-det efficientnet-lite0 --sparsity 0.5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="onnx-de-bench-"))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import zstandard  # noqa: E402
from onnx import numpy_helper  # noqa: E402

import onnx_de  # noqa: E402
from onnx_de.codec import frames, rans  # noqa: E402
from onnx_de.codec.decoder import read_container  # noqa: E402
from onnx_de.codec.records import LEVEL_CODINGS, bit_view  # noqa: E402
from onnx_de.export import export_quantized  # noqa: E402
from onnx_de.quantizers import quantize_tensor  # noqa: E402
from bench_env import header  # noqa: E402


def pruned_export(name: str, sparsity: float, bits: int) -> onnx.ModelProto:
    model = onnx_de.open_model(f"zoo:{name}")
    quantized = {}
    for w in model.prunable:
        weight = model.initializer(w.name).copy()
        weight[np.abs(weight) < np.quantile(np.abs(weight), sparsity)] = 0
        quantized[w.name] = quantize_tensor(weight, bits, "codebook")
    return export_quantized(model, quantized)


def zstd19(payload: bytes) -> int:
    return len(zstandard.ZstdCompressor(level=19).compress(payload))


def median_seconds(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(label: str, model: onnx.ModelProto, fp32_bytes: int, repeats: int) -> dict:
    serialized = model.SerializeToString()
    start = time.perf_counter()
    payload = onnx_de.encode(model)
    encode_s = time.perf_counter() - start
    decode_s = median_seconds(lambda: onnx_de.decode(payload, dense=False), repeats)
    restored = {t.name: numpy_helper.to_array(t) for t in onnx_de.decode(payload, dense=False).graph.initializer}
    fast = onnx_de.encode(model, fast_decode=True)
    restored_fast = {t.name: numpy_helper.to_array(t) for t in onnx_de.decode(fast, dense=False).graph.initializer}
    for tensor in model.graph.initializer:
        assert numpy_helper.to_array(tensor).tobytes() == restored[tensor.name].tobytes(), tensor.name
        assert numpy_helper.to_array(tensor).tobytes() == restored_fast[tensor.name].tobytes(), tensor.name
    row = {"label": label, "fp32": fp32_bytes, "onnx": len(serialized), "ode": len(payload), "ode_fast": len(fast),
           "encode_s": encode_s, "decode_s": decode_s, "mask": 0, "mask_bound": 0.0, "mask_zstd": 0, "symbols": 0,
           "symbols_bound": 0.0, "symbols_zstd": 0, "tables": 0, "raw": 0, "elements": 0}
    container = read_container(payload)
    for record, array, mask in container.tensors():
        streams = record["streams"]
        row["elements"] += array.size
        row["tables"] += streams.get("fill", 0) + streams.get("levels", 0) + streams.get("frequencies", 0)
        kept = np.ones(array.shape, bool) if mask is None else mask
        if mask is not None:
            row["mask"] += sum(v for k, v in streams.items() if k.startswith("mask"))
            row["mask_bound"] += rans.entropy_bits(np.bincount(mask.reshape(-1), minlength=2)) / 8
            row["mask_zstd"] += zstd19(np.packbits(mask.reshape(-1)).tobytes())
        if record["values"]["coding"] in LEVEL_CODINGS:
            _, symbols, counts = np.unique(bit_view(array[kept]), return_inverse=True, return_counts=True)
            row["symbols"] += streams["symbols"]
            row["symbols_bound"] += rans.entropy_bits(counts) / 8
            row["symbols_zstd"] += zstd19(symbols.astype(np.uint8 if counts.size <= 256 else np.uint16).tobytes())
        else:
            row["raw"] += streams["raw"]
    row["graph"] = container.graph_bytes + container.index_bytes
    row["reference"] = row["graph"] + row["tables"] + row["mask_bound"] + row["symbols_bound"] + row["raw"]
    return row


def session_rows(name: str, student: onnx.ModelProto, repeats: int, folder: Path) -> list[str]:
    """Open times: fp32 .onnx from disk versus InferenceSession(.ode) from disk, for the smallest and the
    fast-decoding container, side by side (each container timed right after the fp32 file)."""
    fp32 = onnx_de.zoo_path(name)
    options = dict(providers=["CPUExecutionProvider"])
    rows = []
    for fast in (False, True):
        ode = folder / f"{name}{'-fast' if fast else ''}.ode"
        onnx_de.encode(student, ode, fast_decode=fast)
        plain = median_seconds(lambda: ort.InferenceSession(str(fp32), **options), repeats)
        decoded = median_seconds(lambda: onnx_de.decode(ode), repeats)
        from_ode = median_seconds(lambda: onnx_de.InferenceSession(ode, **options), repeats)
        elements = sum(int(np.prod(t.dims)) for t in onnx_de.decode(ode).graph.initializer)
        rows.append(f"| {name} | {'fast decode' if fast else 'smallest'} | {ode.stat().st_size:,} | "
                    f"{plain * 1000:.0f} | {decoded * 1000:.0f} | {from_ode * 1000:.0f} | {from_ode / plain:.2f}x | "
                    f"{elements / decoded / 1e6:.1f} M/s |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="+", help="zoo names, or .onnx files to encode as they are")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--session", action="append", default=[], metavar="NAME",
                        help="also time InferenceSession(.ode) versus the fp32 .onnx for this zoo model")
    args = parser.parse_args()
    print(header([t for t in args.targets if not t.endswith('.onnx')]), flush=True)
    rows, dense_rows, session_lines = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for target in args.targets:
            if target.endswith(".onnx"):
                rows.append(measure(Path(target).name, onnx.load(target), 0, args.repeats))
                continue
            fp32 = onnx_de.zoo_path(target)
            original = onnx.load(str(fp32))
            student = pruned_export(target, args.sparsity, args.bits)
            rows.append(measure(f"{target} {args.sparsity:.0%} {args.bits}-bit", student, fp32.stat().st_size,
                                args.repeats))
            dense = measure(f"{target} fp32", original, fp32.stat().st_size, args.repeats)
            dense_rows.append(f"| {target} | {dense['fp32']:,} | {zstd19(fp32.read_bytes()):,} | {dense['ode']:,} | "
                              f"{dense['fp32'] / dense['ode']:.2f}x | {dense['encode_s']:.1f} | "
                              f"{dense['decode_s'] * 1000:.0f} |")
            if target in args.session:
                session_lines.extend(session_rows(target, student, args.repeats, Path(folder)))
    print("| model | .onnx fp32 | .onnx quantized | .ode | ratio to fp32 | masks (order-0 bound, zstd-19) "
          "| symbols (order-0 bound, zstd-19) | .ode / (graph + tables + bounds + raw) | encode s | decode ms "
          "| fast-decode .ode |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['fp32'] / r['ode']:.1f}x" if r["fp32"] else "-"
        fp32 = f"{r['fp32']:,}" if r["fp32"] else "-"
        print(f"| {r['label']} | {fp32} | {r['onnx']:,} | {r['ode']:,} | {ratio} | "
              f"{r['mask']:,} ({r['mask'] / max(r['mask_bound'], 1):.3f} of {r['mask_bound']:,.0f}, "
              f"zstd {r['mask_zstd']:,}) | {r['symbols']:,} ({r['symbols'] / max(r['symbols_bound'], 1):.4f} of "
              f"{r['symbols_bound']:,.0f}, zstd {r['symbols_zstd']:,}) | {r['ode'] / r['reference']:.3f} | "
              f"{r['encode_s']:.1f} | {r['decode_s'] * 1000:.0f} | "
              f"{r['ode_fast']:,} ({r['ode_fast'] / r['ode']:.3f}x) |")
    if dense_rows:
        print("\n| model (lossless) | .onnx fp32 | zstd-19 of the file | .ode | ratio | encode s | decode ms |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(dense_rows))
    if session_lines:
        print("\n| model | container | .ode bytes | open fp32 .onnx ms | decode(.ode) ms | InferenceSession(.ode) ms "
              "| .ode / fp32 | decoded weights/s |")
        print("|---|---|---|---|---|---|---|---|")
        print("\n".join(session_lines))
    print(f"\nframes: zstd level {frames.ZSTD_LEVEL}; onnx-de {onnx_de.__version__}, onnxruntime {ort.__version__}, "
          f"zstandard {zstandard.__version__}")


if __name__ == "__main__":
    main()
