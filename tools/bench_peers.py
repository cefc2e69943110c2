"""Side-by-side benchmark: onnx-de against the tools a user would pick instead, on the same models, data and machine.

For each zoo model every method runs at a grid of settings; each setting's artifact (the bytes a user would ship)
is decoded back to an ONNX model and run in ONNX Runtime on the calibration and the evaluation split. Settings
are *chosen on the calibration split* (the smallest artifact whose calibration metric keeps a threshold) and
*reported on the evaluation split*, for onnx-de and the peers alike.

Methods (all start from the same fp32 model, Constant-node weights folded into initializers, as onnx-de does;
ratios are to the zoo's fp32 ``.onnx`` file):

- ``onnx-de``: the fp32 file through ``onnx-de encode`` (setting ``lossless``), and DE sparsity (with
  compensation) x bits x scheme (codebook or uniform levels, per tensor or per channel, or model-wide steps),
  the ``.ode`` container (sparsity 0: quantization only); with ``--budgets``,
  also bits allocated per layer within each calibration budget (setting ``auto@BUDGET``), with
  ``--max-divergences`` within each cap on the calibration divergence (``auto<=CAP``); with
  ``--entropy-weights``, also entropy-constrained codebooks at each weight (setting ``... ew=W``).
- ``zstd-19``, ``zipnn``: lossless compression of the fp32 file.
- ``ort-dynamic``: ONNX Runtime ``quantize_dynamic`` int8 weights, per tensor / per channel.
- ``ort-static-qdq``: ``quantize_static`` (QDQ, int8 weights and activations, calibrated on the calibration split).
- ``ort-matmulnbits``: ONNX Runtime's 4-bit ``MatMulNBits`` after rewriting Gemm as MatMul + Add (no Conv).
- ``PRUNER+int8+zstd``: post-training pruning, ``quantize_dynamic`` per channel, zstd-19. Pruners: global
  magnitude, and onnxsim's Wanda and SparseGPT (``pip install --no-deps onnxsim``), calibrated on the
  calibration split.
- ``nncodec``: the MPEG NNC reference codec (DeepCABAC) at a grid of quantization parameters; the artifact is
  its bitstream plus the zstd-19 graph without weights. ``PRUNER+nncodec``: the same after pruning.

Writes ``OUT/NAME.json`` (every point, the command and package versions), ``OUT/NAME.md`` (the tables) and
``OUT/NAME.svg`` (size against evaluation fidelity), and prints the tables. Peers that are not installed or do not apply are listed with
the reason. Set-up (torch first, so that nothing pulls a CUDA torch; NNCodec declares torchvision and opencv,
only used by its training helpers, which this tool replaces with empty modules; onnxsim's onnxruntime extra
would replace onnxruntime-gpu)::

    pip install torch==2.13.0 && pip install -e '.[bench]' && pip install --no-deps nncodec onnxsim==0.8.1
    python tools/bench_peers.py mnist-mlp mnist-lenet5 --out docs/peers
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import sys
import tempfile
import time
import traceback
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="onnx-de-bench-"))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import zstandard  # noqa: E402
from onnx import numpy_helper  # noqa: E402

import onnx_de  # noqa: E402
from onnx_de.augment import shifted_copies  # noqa: E402
from onnx_de.data import Dataset, load_data  # noqa: E402
from onnx_de.evaluate import resolve_metric  # noqa: E402
from onnx_de.evolution import SearchConfig  # noqa: E402
from onnx_de.metrics import fidelity  # noqa: E402
from onnx_de.model import Model  # noqa: E402
from onnx_de.quantize import quantize, weight_inputs  # noqa: E402
from onnx_de.sparsify import sparsify  # noqa: E402
from onnx_de.zoo import open_model, zoo_path  # noqa: E402
from bench_env import header, versions  # noqa: E402

THRESHOLDS = (0.99, 0.98, 0.97)
RELEVANT = 0.95  # peer points below this evaluation fidelity are left out of the dominance count
PLOT_FLOOR = 0.8  # the plot's fidelity axis starts here at the lowest
DE_SPARSITY = (0.0, 0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.965)
DE_BITS = (2, 3, 4, 5, 6)
DE_SCHEMES = ("codebook", "uniform")
PRUNE_SPARSITY = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)
NNC_QP = (-48, -44, -40, -36, -32, -28, -24, -20, -16, -12, -8)
PRUNED_QP = (-32, -28, -24, -20, -16)
PRUNERS = ("magnitude", "wanda", "sparsegpt")
METHODS = ("onnx-de", "zstd-19", "zipnn", "ort-dynamic", "ort-static-qdq", "ort-matmulnbits",
           *(f"{p}+int8+zstd" for p in PRUNERS), "nncodec", *(f"{p}+nncodec" for p in PRUNERS))
STEP_METHODS = {"lossless": {"zstd-19", "zipnn"}, "ort": {"ort-dynamic", "ort-static-qdq", "ort-matmulnbits"},
                "pruned+int8": {f"{p}+int8+zstd" for p in PRUNERS},
                "nncodec": {"nncodec", *(f"{p}+nncodec" for p in PRUNERS)}}  # the methods each step runs


@dataclass
class Point:
    """One method at one setting: what it ships and how the decoded model behaves."""

    method: str
    setting: str
    bytes: int
    zstd_bytes: int
    calibration: float
    evaluation: float
    encode_s: float
    decode_s: float
    divergence: float | None = None  # evaluation split: KL for classifiers, else relative L2 (None: measured before
    # the tool recorded it)


@dataclass
class Results:
    """Every point measured on one model, and what could not be run: what the tables and the plot show."""

    name: str
    fp32_bytes: int
    metric: str
    samples: dict[str, int]
    points: list[Point]
    skipped: dict[str, str]

    @classmethod
    def load(cls, path: Path) -> "Results":
        data = json.loads(path.read_text())
        return cls(data["model"], data["fp32_bytes"], data["metric"], data.get("samples", {}),
                   [Point(**p) for p in data["points"]], data["skipped"])

    def save(self, folder: Path, command: str, run_versions: str) -> None:
        """``NAME.json`` (every point, the commands and package versions of the runs that measured them),
        ``NAME.md`` (the tables) and ``NAME.svg``."""
        (folder / f"{self.name}.json").write_text(json.dumps(
            {"model": self.name, "fp32_bytes": self.fp32_bytes, "metric": self.metric, "samples": self.samples,
             "command": command, "versions": run_versions, "machine": platform.node(),
             "points": [asdict(p) for p in self.points], "skipped": self.skipped}, indent=1))
        (folder / f"{self.name}.md").write_text(tables(self) + "\n")
        (folder / f"{self.name}.svg").write_text(plot(self))


@dataclass
class Case:
    """One zoo model with its data, metric and the teacher's outputs on both splits."""

    name: str
    teacher: Model
    fp32_bytes: int
    splits: dict[str, Dataset]
    spec: object
    reference: dict[str, list[np.ndarray]]
    threads: int | None
    fixed_batch: int | None = None  # the teacher's fixed batch size, if it has one
    points: list[Point] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def judge(self, method: str, setting: str, artifact: bytes, decoded: bytes | onnx.ModelProto,
              encode_s: float, decode_s: float) -> Point:
        """Run the decoded model on both splits and record the point."""
        payload = decoded if isinstance(decoded, bytes) else decoded.SerializeToString()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = self.threads
        session = ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
        scores = {}
        for split, data in self.splits.items():
            outputs = onnx_de.runtime.run_model(session, data)
            result = fidelity(self.reference[split], outputs, self.spec, data.labels)
            scores[split] = result[result["primary"]]
        point = Point(method, setting, len(artifact), len(_zstd(artifact)), scores["calibration"],
                      scores["evaluation"], encode_s, decode_s, divergence(result))
        self.points = [p for p in self.points if (p.method, p.setting) != (method, setting)] + [point]
        print(f"  {method:<20} {setting:<24} {len(artifact):>10,} B  {self.fp32_bytes / len(artifact):7.1f}x  "
              f"cal {point.calibration:.4f}  eval {point.evaluation:.4f}", flush=True)
        return point

    def results(self) -> Results:
        samples = {split: len(data) for split, data in self.splits.items()}
        return Results(self.name, self.fp32_bytes, self.spec.primary, samples, self.points, self.skipped)


def divergence(result: dict) -> float:
    """The continuous divergence of a fidelity result: its KL for a classifier, else its relative L2 error."""
    return float(result["kl"] if "kl" in result else result["rel_l2"])


def _zstd(payload: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=19).compress(payload)


def _unzstd(payload: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompress(payload)


def open_case(name: str, threads: int | None) -> Case:
    zoo = f"zoo:{name}"
    teacher = open_model(zoo)
    splits = {split: load_data(zoo, teacher, split=split) for split in ("calibration", "evaluation")}
    session = onnx_de.runtime.create_session(teacher, intra_op_threads=threads)
    reference = {split: onnx_de.runtime.run_model(session, data) for split, data in splits.items()}
    return Case(name, teacher, zoo_path(name).stat().st_size, splits, resolve_metric(None, teacher, zoo),
                reference, threads, onnx_de.runtime.fixed_batch(session))


# ---------------------------------------------------------------- onnx-de


def run_onnx_de(case: Case, sparsities, widths, schemes, budgets=(), entropy_weights=(), augment: int = 0,
                layer_bits: dict[str, int] | None = None, max_divergences=()) -> None:
    """onnx-de's points: the fp32 file encoded losslessly, then DE with compensation to each sparsity and each
    quantization setting; with ``augment``, fitted on that many shifted copies of the calibration images too
    (settings labelled ``aug=K``); ``layer_bits`` fixes the bits of the layers it names in every setting
    (labelled ``NAME=BITS``); ``max_divergences``: bits per layer within each divergence cap (``auto<=CAP``)."""
    started = time.perf_counter()
    container = onnx_de.encode(zoo_path(case.name))  # what `onnx-de encode model.onnx` ships
    encode_s, started = time.perf_counter() - started, time.perf_counter()
    decoded = onnx_de.decode(container)
    case.judge("onnx-de", "lossless", container, decoded, encode_s, time.perf_counter() - started)
    calibration = shifted_copies(case.splits["calibration"], augment)
    for level in sparsities:
        started = time.perf_counter()
        if level:
            student = sparsify(case.teacher, calibration, config=SearchConfig(sparsity=level),
                               intra_op_threads=case.threads, metric=case.spec).student
        else:
            student = case.teacher
        searched = time.perf_counter() - started
        inputs = weight_inputs(student, calibration, case.threads)
        settings = [(label, width, None, 0.0, None) for label in schemes for width in widths]
        settings += [(label, "auto", budget, 0.0, None) for label in schemes for budget in budgets]
        settings += [(label, "auto", None, 0.0, cap) for label in schemes for cap in max_divergences]
        settings += [(label, width, None, weight, None) for label in schemes if label.startswith("codebook")
                     for width in widths for weight in entropy_weights if weight]
        for label, width, budget, weight, cap in settings:
            scheme, _, granularity = label.partition("-")  # codebook, uniform; -channel or -tensor
            started = time.perf_counter()
            result = quantize(student, calibration, bits=width, budget=budget, max_divergence=cap, scheme=scheme,
                              teacher=case.teacher,
                              per_channel={"": None, "channel": True, "tensor": False}[granularity],
                              metric=case.spec, intra_op_threads=case.threads, inputs=inputs,
                              entropy_weight=weight, layer_bits=layer_bits)
            container = onnx_de.encode(result.student)
            encode_s = searched + time.perf_counter() - started
            started = time.perf_counter()
            decoded = onnx_de.decode(container)
            decode_s = time.perf_counter() - started
            setting = (f"b={width}" if width != "auto" else f"auto@{budget:g}" if budget is not None
                       else f"auto<={cap:g}")
            setting += f" ({result.average_bits:.2f} b)" if width == "auto" else ""
            setting += f" ew={weight:g}" if weight else ""
            setting += "".join(f" {name}={bits}" for name, bits in (layer_bits or {}).items())
            setting += f" aug={augment}" if augment else ""
            case.judge("onnx-de", f"s={level:g} {label} {setting}", container, decoded, encode_s, decode_s)


# ---------------------------------------------------------------- lossless


def run_lossless(case: Case, methods) -> None:
    fp32 = zoo_path(case.name).read_bytes()
    if "zstd-19" in methods:
        started = time.perf_counter()
        artifact = _zstd(fp32)
        encode_s, started = time.perf_counter() - started, time.perf_counter()
        restored = _unzstd(artifact)
        case.judge("zstd-19", "level 19", artifact, restored, encode_s, time.perf_counter() - started)
    if "zipnn" in methods:
        try:
            from zipnn import ZipNN
        except ImportError as e:
            case.skipped["zipnn"] = f"not installed ({e})"
            return
        coder = ZipNN(input_format="byte", bytearray_dtype="float32")
        padded = bytearray(fp32) + bytearray(-len(fp32) % 4)  # zipnn reorders its input in place: a copy
        started = time.perf_counter()
        artifact = bytes(coder.compress(padded))
        encode_s, started = time.perf_counter() - started, time.perf_counter()
        restored = bytes(coder.decompress(artifact))[: len(fp32)]
        decode_s = time.perf_counter() - started
        if restored != fp32:
            raise RuntimeError("zipnn did not restore the file bit for bit")
        case.judge("zipnn", "float32", artifact, restored, encode_s, decode_s)


# ---------------------------------------------------------------- ONNX Runtime's quantizers


def run_ort(case: Case, methods, folder: Path) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    source = ort_source(case.teacher.proto, folder / f"{case.name}-fp32.onnx")
    target = folder / f"{case.name}-q.onnx"

    def attempt(method, setting, make):
        started = time.perf_counter()
        try:
            with _quiet():
                make()
            artifact = target.read_bytes()
            case.judge(method, setting, artifact, artifact, time.perf_counter() - started, 0.0)
        except Exception as e:  # a peer that fails on a model, or writes a model ORT refuses, is a result
            case.skipped[f"{method} {setting}"] = _first_line(e)
            print(f"  {method:<20} {setting:<24} failed: {_first_line(e)}", flush=True)

    if "ort-dynamic" in methods:
        for per_channel in (False, True):
            for weight_type in (QuantType.QInt8, QuantType.QUInt8):
                setting = f"{weight_type.name} {'per-channel' if per_channel else 'per-tensor'}"
                attempt("ort-dynamic", setting, lambda: quantize_dynamic(
                    source, target, per_channel=per_channel, weight_type=weight_type))

    if "ort-static-qdq" in methods:
        calibration = case.splits["calibration"]

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.batches = iter([{k: v[i : i + 1] for k, v in calibration.inputs.items()}
                                     for i in range(min(len(calibration), 128))])

            def get_next(self):
                return next(self.batches, None)

        for per_channel in (False, True):
            for method_name in ("MinMax", "Percentile"):
                from onnxruntime.quantization import CalibrationMethod
                setting = f"{method_name} {'per-channel' if per_channel else 'per-tensor'}"
                attempt("ort-static-qdq", setting, lambda: quantize_static(
                    source, target, Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    calibrate_method=getattr(CalibrationMethod, method_name)))

    if "ort-matmulnbits" in methods:
        rewritten = gemm_as_matmul(case.teacher.proto)
        if not any(n.op_type == "MatMul" for n in rewritten.graph.node):
            case.skipped["ort-matmulnbits"] = "does not apply: no Gemm or MatMul with a weight (conv-only model)"
            return
        try:
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
        except ImportError as e:
            case.skipped["ort-matmulnbits"] = f"not installed ({e}); pip install onnx-ir"
            return
        for block in (16, 32, 64, 128):
            def make(block=block):
                copy = onnx.ModelProto()
                copy.CopyFrom(rewritten)  # the quantizer rewrites the model it is given
                quantizer = MatMulNBitsQuantizer(copy, bits=4, block_size=block, is_symmetric=True)
                quantizer.process()
                onnx.save(quantizer.model.model, target)
            attempt("ort-matmulnbits", f"4 bits, block {block}", make)


def ort_source(proto: onnx.ModelProto, path: Path) -> Path:
    """The model as ONNX Runtime's quantizers want it: without the exporter's ``value_info`` (stale entries for
    the weights make their shape-inference pass fail: "Inferred shape and existing shape differ"), then through
    ``quant_pre_process``, the pre-processing their warning asks for (skipped where it fails)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    del model.graph.value_info[:]
    plain = path.with_suffix(".plain.onnx")
    onnx.save(model, plain)
    try:
        with _quiet():
            quant_pre_process(str(plain), str(path))
    except Exception as e:
        print(f"  quant_pre_process failed ({_first_line(e)}); quantizing the model as it is", flush=True)
        return plain
    return path


def gemm_as_matmul(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Gemm nodes with a weight initializer (alpha = beta = 1, no transA) as MatMul + Add, which MatMulNBits takes."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    weights = {t.name: t for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in weights or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        tensor = weights[node.input[1]]
        if attrs.get("transB", 0):
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).T.copy(), tensor.name))
        product = node.output[0] + "_matmul" if len(node.input) > 2 and node.input[2] else node.output[0]
        nodes.append(onnx.helper.make_node("MatMul", node.input[:2], [product], name=node.name + "_matmul"))
        if product != node.output[0]:
            nodes.append(onnx.helper.make_node("Add", [product, node.input[2]], [node.output[0]],
                                               name=node.name + "_add"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.value_info[:]  # the exporter's shapes of the transposed weights are stale now
    return model


# ---------------------------------------------------------------- pruning and NNCodec


def magnitude_pruned(proto: onnx.ModelProto, names: list[str], sparsity: float) -> onnx.ModelProto:
    """Global magnitude pruning of the weights ``names`` (one threshold over all of them)."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    tensors = {t.name: t for t in model.graph.initializer if t.name in names}
    values = {n: numpy_helper.to_array(t) for n, t in tensors.items()}
    magnitudes = np.concatenate([np.abs(v).reshape(-1) for v in values.values()])
    threshold = np.partition(magnitudes, int(sparsity * len(magnitudes)))[int(sparsity * len(magnitudes))]
    for name, tensor in tensors.items():
        pruned = np.where(np.abs(values[name]) < threshold, 0, values[name]).astype(values[name].dtype)
        tensor.CopyFrom(numpy_helper.from_array(pruned, name))
    return model


def pruners(case: Case) -> dict[str, object]:
    """Post-training pruners a user has at hand, each ``(proto, sparsity) -> proto``: global magnitude, and
    onnxsim's Wanda and SparseGPT (calibrated on the calibration split) where onnxsim is installed."""
    names = [w.name for w in case.teacher.prunable]
    found = {"magnitude": lambda proto, level: magnitude_pruned(proto, names, level)}
    try:
        from onnxsim import pruning
    except ImportError as e:
        case.skipped["wanda, sparsegpt"] = f"onnxsim not installed ({e})"
        return found
    calibration = case.splits["calibration"]
    size = case.fixed_batch or 64  # a model with a fixed batch (ddddocr-det: 1) gets batches of that size
    batches = [{k: v[i : i + size] for k, v in calibration.inputs.items()} for i in range(0, len(calibration), size)]
    providers = ["CPUExecutionProvider"]
    found["wanda"] = lambda proto, level: pruning.apply_wanda_pruning(
        proto, calibration_data=batches, sparsity=level, providers=providers)
    found["sparsegpt"] = lambda proto, level: pruning.apply_sparsegpt_pruning(
        proto, calibration_data=batches, sparsity=level, providers=providers)
    return found


def run_pruned_int8(case: Case, folder: Path, sparsities, chosen_pruners) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = folder / f"{case.name}-pruned-q.onnx"
    for label, prune in pruners(case).items():
        method = f"{label}+int8+zstd"
        if method not in chosen_pruners:
            continue
        for level in sparsities:
            started = time.perf_counter()
            try:
                with _quiet():
                    source = ort_source(prune(case.teacher.proto, level), folder / f"{case.name}-pruned.onnx")
                    quantize_dynamic(source, target, per_channel=True, weight_type=QuantType.QInt8)
            except Exception as e:
                case.skipped[f"{method} s={level}"] = _first_line(e)
                continue
            artifact = _zstd(target.read_bytes())
            encode_s, started = time.perf_counter() - started, time.perf_counter()
            decoded = _unzstd(artifact)
            case.judge(method, f"s={level:g} int8 per-channel", artifact, decoded, encode_s,
                       time.perf_counter() - started)


def import_nncodec():
    """NNCodec's ``compress``/``decompress``. Its package imports torchvision and cv2 for training helpers
    this tool never calls; where they are missing, empty placeholder modules stand in for them."""

    class Placeholder(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return Placeholder(f"{self.__name__}.{name}")

        def __call__(self, *args, **kwargs):
            return Placeholder(self.__name__ + "()")

        def __mro_entries__(self, bases):
            return (object,)

    for module in ("torchvision", "torchvision.datasets", "torchvision.transforms", "torchvision.models", "cv2"):
        try:
            __import__(module)
        except ImportError:
            sys.modules[module] = Placeholder(module)
    from nncodec.nnc import compress, decompress

    return compress, decompress


SHAPE_OPS = {"Resize", "Upsample", "Reshape", "Expand", "Tile", "Slice", "Pad", "Range", "ConstantOfShape"}


def coded_by_nncodec(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The float tensors handed to NNCodec: weights and other parameters of 8 elements or more. Small ones and
    those that steer shapes (ppocr-det's Resize scales ``[1, 1, 2, 2]``: NNCodec quantizes them like weights,
    and the model no longer loads) stay, losslessly, in the zstd'd graph."""
    steering = {name for node in proto.graph.node if node.op_type in SHAPE_OPS for name in node.input}
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer
            if t.data_type == onnx.TensorProto.FLOAT and t.name not in steering
            and int(np.prod(t.dims, dtype=np.int64)) >= 8}


def run_nncodec(case: Case, qps, pruned_qps, sparsities, methods) -> None:
    try:
        compress, decompress = import_nncodec()
    except ImportError as e:
        case.skipped["nncodec"] = f"not installed ({e})"
        return
    jobs = [("nncodec", case.teacher.proto, "", qps)] if "nncodec" in methods else []
    for label, prune in pruners(case).items():
        if f"{label}+nncodec" in methods:
            for level in sparsities:
                try:
                    with _quiet():
                        proto = prune(case.teacher.proto, level)
                except Exception as e:
                    case.skipped[f"{label}+nncodec s={level}"] = _first_line(e)
                    continue
                jobs.append((f"{label}+nncodec", proto, f"s={level:g} ", pruned_qps))
    for method, proto, prefix, grid in jobs:
        floats = coded_by_nncodec(proto)
        skeleton = onnx.ModelProto()
        skeleton.CopyFrom(proto)
        for tensor in skeleton.graph.initializer:
            if tensor.name in floats:
                tensor.ClearField("raw_data")
                tensor.ClearField("float_data")
        graph = _zstd(skeleton.SerializeToString())
        for qp in grid:
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as scratch, _quiet():
                stream = bytes(compress({n: np.ascontiguousarray(v, np.float32) for n, v in floats.items()},
                                        bitstream_path=f"{scratch}/model.nnc", qp=qp, return_bitstream=True))
            artifact = len(graph).to_bytes(4, "little") + graph + stream
            encode_s, started = time.perf_counter() - started, time.perf_counter()
            with _quiet():
                restored = decompress(bytearray(stream))
            model = onnx.ModelProto()
            model.ParseFromString(_unzstd(graph))
            for tensor in model.graph.initializer:
                if tensor.name in restored:
                    value = np.asarray(restored[tensor.name], np.float32).reshape(floats[tensor.name].shape)
                    tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
            case.judge(method, f"{prefix}qp {qp}", artifact, model, encode_s, time.perf_counter() - started)


class _quiet:
    """Silence a library's prints to stdout for the duration."""

    def __enter__(self):
        self.saved, sys.stdout = sys.stdout, io.StringIO()

    def __exit__(self, *exc):
        sys.stdout = self.saved


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (type(error).__name__ + ": " + (text[0] if text else ""))[:200]


# ---------------------------------------------------------------- results


def chosen(points: list[Point], threshold: float) -> Point | None:
    """The smallest artifact whose *calibration* metric keeps ``threshold``."""
    passing = [p for p in points if p.calibration >= threshold]
    return min(passing, key=lambda p: p.bytes) if passing else None


def frontier(points: list[Point]) -> list[Point]:
    """onnx-de's size/evaluation-fidelity Pareto front, smallest first."""
    front, best = [], -1.0
    for point in sorted(points, key=lambda p: (p.bytes, -p.evaluation)):
        if point.evaluation > best:
            front.append(point)
            best = point.evaluation
    return front


def tables(case: Results) -> str:
    methods = [m for m in METHODS if any(p.method == m for p in case.points)]
    lines = [f"### {case.name} ({case.fp32_bytes:,} bytes fp32; metric: {case.metric}; calibration "
             f"{case.samples.get('calibration', '?')} / evaluation {case.samples.get('evaluation', '?')} samples)",
             "", "Chosen on calibration (smallest artifact keeping the threshold there), judged on evaluation:", "",
             "| threshold | method | setting | bytes | ratio | ratio after zstd-19 | calibration | evaluation | "
             "encode s | decode s |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    verdicts = []
    for threshold in THRESHOLDS:
        picks = {m: chosen([p for p in case.points if p.method == m], threshold) for m in methods}
        for method, p in picks.items():
            if p is None:
                lines.append(f"| {threshold} | {method} | none keeps it | | | | | | | |")
                continue
            lines.append(f"| {threshold} | {method} | {p.setting} | {p.bytes:,} | {case.fp32_bytes / p.bytes:.1f}x | "
                         f"{case.fp32_bytes / min(p.bytes, p.zstd_bytes):.1f}x | {p.calibration:.4f} | "
                         f"{p.evaluation:.4f} | {p.encode_s:.1f} | {p.decode_s:.2f} |")
        ours = picks.get("onnx-de")
        peers = [p for m, p in picks.items() if m != "onnx-de" and p is not None]
        if peers and not ours:
            best = min(peers, key=lambda p: min(p.bytes, p.zstd_bytes))
            verdicts.append(f"- {threshold}: **no onnx-de setting keeps it**; best peer {best.method} "
                            f"{min(best.bytes, best.zstd_bytes):,} B (eval {best.evaluation:.4f})")
        if ours and peers:
            best = min(peers, key=lambda p: min(p.bytes, p.zstd_bytes))
            verdicts.append(f"- {threshold}: onnx-de {ours.bytes:,} B (eval {ours.evaluation:.4f}) vs best peer "
                            f"{best.method} {min(best.bytes, best.zstd_bytes):,} B (eval {best.evaluation:.4f}): "
                            f"**{_smaller(min(best.bytes, best.zstd_bytes), ours.bytes)}**"
                            + ("" if ours.evaluation >= best.evaluation else
                               "; the peer's evaluation fidelity is higher"))
    front = frontier([p for p in case.points if p.method == "onnx-de"])
    beaten, relevant = [], [p for p in case.points if p.method != "onnx-de" and p.evaluation >= RELEVANT]
    for p in relevant:
        ours = [q for q in front if q.evaluation >= p.evaluation]
        smallest = min(ours, key=lambda q: q.bytes) if ours else None
        if smallest is None or smallest.bytes >= min(p.bytes, p.zstd_bytes):
            beaten.append(f"{p.method} {p.setting} ({min(p.bytes, p.zstd_bytes):,} B, eval {p.evaluation:.4f})")
    curve = []
    for level in THRESHOLDS:
        ours = [p for p in case.points if p.method == "onnx-de" and p.evaluation >= level]
        theirs = [p for p in case.points if p.method != "onnx-de" and p.evaluation >= level]
        if theirs and not ours:
            b = min(theirs, key=lambda p: min(p.bytes, p.zstd_bytes))
            curve.append(f"- {level}: **no onnx-de point reaches it**; {b.method} {b.setting} "
                         f"{min(b.bytes, b.zstd_bytes):,} B (eval {b.evaluation:.4f})")
        if ours and theirs:
            a = min(ours, key=lambda p: p.bytes)
            b = min(theirs, key=lambda p: min(p.bytes, p.zstd_bytes))
            curve.append(f"- {level}: onnx-de {a.setting} {a.bytes:,} B (eval {a.evaluation:.4f}) vs {b.method} "
                         f"{b.setting} {min(b.bytes, b.zstd_bytes):,} B (eval {b.evaluation:.4f}): "
                         f"**{_smaller(min(b.bytes, b.zstd_bytes), a.bytes)}**")
    lines += ["", "Best peer against onnx-de, both chosen on calibration:", "", *verdicts, "",
              "The curves read at an evaluation fidelity (the smallest point of each side that reaches it on the "
              "evaluation split; no selection rule, so an upper bound for both):", "", *curve, "",
              f"Peer points with evaluation fidelity >= {RELEVANT} that onnx-de's evaluation curve does not beat "
              f"(no onnx-de point as small or smaller at equal or better evaluation fidelity): {len(beaten)} of "
              f"{len(relevant)}"
              + (": " + "; ".join(beaten) if beaten else "") + "."]
    lines += divergence_lines(case)
    if case.skipped:
        lines += ["", "Not run or failed: " + "; ".join(f"{k}: {v}" for k, v in case.skipped.items()) + "."]
    return "\n".join(lines)


def divergence_lines(case: Results) -> list[str]:
    """Each peer point at >= RELEVANT against the smallest onnx-de point whose evaluation divergence is no larger:
    a continuous reading where the primary metric moves in coarse steps (64 crops: 1/64 each)."""
    name = "KL" if case.metric == "top1_agreement" else "relative L2"  # what divergence() takes for the zoo metric
    ours = [p for p in case.points if p.method == "onnx-de" and p.divergence is not None]
    theirs = [p for p in case.points if p.method != "onnx-de" and p.divergence is not None and p.evaluation >= RELEVANT]
    if not ours or not theirs:
        return []
    lines = ["", f"Read by divergence on the evaluation split ({name}; points measured before the tool recorded it "
             f"are left out): each peer point at >= {RELEVANT} against the smallest onnx-de point with no larger "
             f"{name}:", "",
             f"| peer | setting | bytes | evaluation | {name} | onnx-de | bytes | evaluation | {name} | onnx-de |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---|"]
    for p in sorted(theirs, key=lambda p: min(p.bytes, p.zstd_bytes)):
        size = min(p.bytes, p.zstd_bytes)
        match = min((q for q in ours if q.divergence <= p.divergence), key=lambda q: q.bytes, default=None)
        if match is None:
            lines.append(f"| {p.method} | {p.setting} | {size:,} | {p.evaluation:.4f} | {p.divergence:.3g} | "
                         f"none as close | | | | |")
            continue
        lines.append(f"| {p.method} | {p.setting} | {size:,} | {p.evaluation:.4f} | {p.divergence:.3g} | "
                     f"{match.setting} | {match.bytes:,} | {match.evaluation:.4f} | {match.divergence:.3g} | "
                     f"{_smaller(size, match.bytes)} |")
    return lines


def _smaller(theirs: int, ours: int) -> str:
    return f"{theirs / ours:.2f}x smaller" if theirs >= ours else f"{ours / theirs:.2f}x larger"


def plot(case: Results) -> str:
    """Size (log ratio) against evaluation fidelity: onnx-de's front as a line, every point as a marker."""
    width, height, left, top = 760, 420, 60, 20
    plot_w, plot_h = width - left - 200, height - top - 50
    ratios = [case.fp32_bytes / p.bytes for p in case.points]
    x_lo, x_hi = np.log10(max(min(ratios), 0.5)), np.log10(max(ratios) * 1.2)
    y_lo = max(min(p.evaluation for p in case.points), PLOT_FLOOR)  # lower points sit on the bottom edge
    palette = ("#c44e52", "#8c8c8c", "#937860", "#4c72b0", "#55a868", "#8172b3", "#da8bc3", "#ccb974",
               "#17becf", "#dd8452", "#64b5cd", "#2ca02c", "#9467bd")
    colors = dict(zip(METHODS, palette))

    def xy(p):
        x = left + plot_w * (np.log10(case.fp32_bytes / p.bytes) - x_lo) / (x_hi - x_lo)
        y = top + plot_h * (1 - (max(p.evaluation, y_lo) - y_lo) / (1 - y_lo + 1e-9))
        return x, y

    items = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
             f"font-family='sans-serif' font-size='11'>",
             f"<rect x='{left}' y='{top}' width='{plot_w}' height='{plot_h}' fill='none' stroke='#ccc'/>"]
    for decade in range(int(np.floor(x_lo)), int(np.ceil(x_hi)) + 1):
        for step in (1, 2, 5):
            value = step * 10.0 ** decade
            if x_lo <= np.log10(value) <= x_hi:
                x = left + plot_w * (np.log10(value) - x_lo) / (x_hi - x_lo)
                items.append(f"<line x1='{x:.1f}' y1='{top}' x2='{x:.1f}' y2='{top + plot_h}' stroke='#eee'/>"
                             f"<text x='{x - 8:.1f}' y='{top + plot_h + 14}'>{value:g}x</text>")
    for i in range(5):
        value = y_lo + (1 - y_lo) * i / 4
        y = top + plot_h * (1 - i / 4)
        items.append(f"<text x='4' y='{y + 4:.1f}'>{value:.3f}</text>")
    items.append(f"<text x='{left + plot_w / 2 - 100}' y='{height - 8}'>times smaller than the fp32 .onnx "
                 f"(log)</text><text x='4' y='12'>{case.metric} (evaluation split)</text>")
    front = frontier([p for p in case.points if p.method == "onnx-de"])
    if front:
        path = " ".join("{:.1f},{:.1f}".format(*xy(p)) for p in front)
        items.append(f"<polyline points='{path}' fill='none' stroke='{colors['onnx-de']}' stroke-width='1.5'/>")
    for p in case.points:
        x, y = xy(p)
        items.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='3' fill='{colors[p.method]}'>"
                     f"<title>{p.method} {p.setting}: {p.bytes:,} B, eval {p.evaluation:.4f}</title></circle>")
    for i, method in enumerate(m for m in METHODS if any(p.method == m for p in case.points)):
        y = top + 14 + 16 * i
        items.append(f"<circle cx='{left + plot_w + 16}' cy='{y - 4}' r='4' fill='{colors[method]}'/>"
                     f"<text x='{left + plot_w + 26}' y='{y}'>{method}</text>")
    items.append(f"<text x='{left}' y='{top + plot_h + 30}'>{case.name}</text></svg>")
    return "".join(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="zoo model names")
    parser.add_argument("--out", type=Path, default=Path("docs/peers"), help="folder for NAME.json, .md and .svg")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of: " + ", ".join(METHODS))
    parser.add_argument("--sparsity", default=",".join(map(str, DE_SPARSITY)), help="onnx-de's sparsity grid")
    parser.add_argument("--bits", default=",".join(map(str, DE_BITS)), help="onnx-de's bits grid")
    parser.add_argument("--schemes", default=",".join(DE_SCHEMES),
                        help="onnx-de's quantization schemes: codebook or uniform, each at its default granularity "
                             "or with -channel / -tensor (e.g. codebook-channel), or step (model-wide; bits to 14)")
    parser.add_argument("--prune", default=",".join(map(str, PRUNE_SPARSITY)), help="magnitude pruning grid")
    parser.add_argument("--qp", default=",".join(map(str, NNC_QP)), help="NNCodec's quantization parameters")
    parser.add_argument("--pruned-qp", default=",".join(map(str, PRUNED_QP)),
                        help="NNCodec's quantization parameters after pruning")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    parser.add_argument("--budgets", default="", help="onnx-de's calibration budgets for bits per layer")
    parser.add_argument("--entropy-weights", default="",
                        help="onnx-de's entropy weights for codebooks (also run at 0; default: none)")
    parser.add_argument("--max-divergences", default="", metavar="CAP,...",
                        help="onnx-de's divergence caps for bits per layer (instead of a budget; default: none)")
    parser.add_argument("--layer-bits", default="", metavar="NAME=BITS,...",
                        help="onnx-de: fixed bits for the layers named, in every setting (default: none)")
    parser.add_argument("--augment", type=int, default=0,
                        help="onnx-de: also fit on this many shifted copies of the calibration images (default 0)")
    parser.add_argument("--append", action="store_true",
                        help="keep the points of methods not run now from an earlier OUT/NAME.json")
    parser.add_argument("--merge", action="store_true",
                        help="keep every point of an earlier OUT/NAME.json but those measured again now")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite OUT/NAME.md and OUT/NAME.svg from OUT/NAME.json")
    args = parser.parse_args()
    if args.render:
        for name in args.models:
            results = Results.load(args.out / f"{name}.json")
            stored = json.loads((args.out / f"{name}.json").read_text())
            results.save(args.out, stored["command"], stored["versions"])
            print(tables(results))
        return
    logging.basicConfig(level=logging.ERROR)  # the quantizers' advice and per-node notes
    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
    methods = set(args.methods.split(","))
    unknown = methods - set(METHODS)
    if unknown:
        parser.error(f"unknown methods: {', '.join(sorted(unknown))}")
    floats = lambda text: [float(v) for v in text.split(",") if v]  # noqa: E731
    layer_bits = {name: int(bits) for name, _, bits in (item.rpartition("=") for item in args.layer_bits.split(",")
                                                         if item)}
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out.resolve()  # the steps run in a scratch directory
    print(header(args.models))
    print(f"# {' '.join(sys.argv)}")
    for name in args.models:
        command, run_versions = "python " + " ".join(sys.argv), versions()
        case = open_case(name, args.threads)
        saved = args.out / f"{name}.json"
        if (args.append or args.merge) and saved.exists():  # keep the other methods' points of an earlier run
            earlier = Results.load(saved)
            case.points = [p for p in earlier.points if args.merge or p.method not in methods]
            rerun = methods | {step for step, covered in STEP_METHODS.items() if covered & methods}
            case.skipped = {k: v for k, v in earlier.skipped.items() if k.split(" ")[0] not in rerun}
            stored = json.loads(saved.read_text())
            command = stored["command"] + " && " + command
            run_versions = stored["versions"] + " && " + run_versions
        print(f"## {name}", flush=True)
        with tempfile.TemporaryDirectory(prefix="onnx-de-peers-") as scratch:
            folder = Path(scratch)
            steps = [
                ("onnx-de", lambda: run_onnx_de(case, floats(args.sparsity), [int(b) for b in floats(args.bits)],
                                                  args.schemes.split(","), floats(args.budgets),
                                                  floats(args.entropy_weights), args.augment, layer_bits,
                                                  floats(args.max_divergences))),
                ("lossless", lambda: run_lossless(case, methods)),
                ("ort", lambda: run_ort(case, methods, folder)),
                ("pruned+int8", lambda: run_pruned_int8(case, folder, floats(args.prune), methods)),
                ("nncodec", lambda: run_nncodec(case, [int(q) for q in floats(args.qp)],
                                                [int(q) for q in floats(args.pruned_qp)], floats(args.prune),
                                                methods)),
            ]
            previous = os.getcwd()
            os.chdir(folder)  # ONNX Runtime's quantizers leave temporary files in the working directory
            try:
                run_steps(case, steps, methods, out, command, run_versions)
            finally:
                os.chdir(previous)
        print(tables(case.results()), flush=True)


def run_steps(case: Case, steps, methods: set[str], out: Path, command: str, run_versions: str) -> None:
    """Run each step some chosen method needs, saving the results after each; a crash is recorded, not fatal."""
    for step, work in steps:
        if not STEP_METHODS.get(step, {step}) & methods:
            continue
        try:
            work()
        except Exception as e:  # one peer's crash must not lose the others' results
            case.skipped[step] = _first_line(e)
            traceback.print_exc()
        case.results().save(out, command, run_versions)


if __name__ == "__main__":
    main()
