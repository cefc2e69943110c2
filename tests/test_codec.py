"""The container (.ode): lossless round trips on real models, golden bytes, and every kind of bad file."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import onnx_de
from onnx_de import FormatError, UnsupportedVersionError
from onnx_de.codec import frames, rans
from onnx_de.codec.container import KIND_INDEX, read_sections, write_sections
from onnx_de.codec.encoder import MIN_ELEMENTS, constant_tensor
from onnx_de.codec.records import decode_record, encode_record, record_streams
from onnx_de.export import export_quantized
from onnx_de.quantizers import quantize_tensor

from helpers import IR_VERSION

FIXTURES = Path(__file__).parent / "fixtures"
FUZZ_EXAMPLES = int(os.environ.get("ONNX_DE_FUZZ_EXAMPLES", "300"))  # >= 10000 for the slow run
SETTINGS = [("codebook", {}), ("codebook", {"axis": 0}), ("uniform", {"axis": 0}), ("uniform", {"axis": 0, "symmetric": False}),
            ("uniform", {"symmetric": False})]


def assert_same_model(original: onnx.ModelProto, restored: onnx.ModelProto) -> None:
    """Every initializer and every tensor of a Constant node equal bit for bit (same name, type, dims; the
    data may be held in another field) and everything else identical."""
    a, b = onnx.ModelProto(), onnx.ModelProto()
    a.CopyFrom(original)
    b.CopyFrom(restored)
    assert [t.name for t in a.graph.initializer] == [t.name for t in b.graph.initializer]
    for x, y in zip(a.graph.initializer, b.graph.initializer):
        assert (x.data_type, list(x.dims)) == (y.data_type, list(y.dims)), x.name
        assert numpy_helper.to_array(x).tobytes() == numpy_helper.to_array(y).tobytes(), x.name
    del a.graph.initializer[:], b.graph.initializer[:]
    assert len(a.graph.node) == len(b.graph.node)
    for x, y in zip(a.graph.node, b.graph.node):
        x, y = constant_tensor(x), constant_tensor(y)
        if x is not None and y is not None:
            assert numpy_helper.to_array(x).tobytes() == numpy_helper.to_array(y).tobytes(), x.name
            for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                x.ClearField(field)
                y.ClearField(field)
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def run_unoptimized(model: onnx.ModelProto, inputs: dict) -> list[np.ndarray]:
    session = onnx_de.create_session(onnx_de.load_model(model), optimize=False)
    return onnx_de.run_model(session, onnx_de.Dataset(inputs))


def quantized_export(name: str, scheme: str, options: dict, sparsity: float = 0.8) -> tuple:
    """A zoo model magnitude-pruned to ``sparsity`` and exported with 4-bit quantized weights."""
    model = onnx_de.open_model(f"zoo:{name}")
    quantized = {}
    for w in model.prunable:
        weight = model.initializer(w.name).copy()
        weight[np.abs(weight) < np.quantile(np.abs(weight), sparsity)] = 0
        axis = w.out_axis if "axis" in options else None
        quantized[w.name] = quantize_tensor(weight, 4, scheme, symmetric=options.get("symmetric", True), axis=axis)
    return model, export_quantized(model, quantized)


def small_model() -> onnx.ModelProto:
    """A fixed model with every record kind: sparse codebook indices, per-channel uint8 with zero points,
    a sparse float weight, a dense float weight, a small bias kept in the graph, and -0.0 and NaN bits."""
    rng = np.random.default_rng(20261124)
    indices = rng.integers(1, 9, size=(16, 24)).astype(np.uint8)
    indices[rng.random(indices.shape) < 0.75] = 0
    indices[3] = 0  # a dead row
    indices[:, 5] = 0  # a dead column
    table = np.concatenate([[0.0], np.linspace(-1, 1, 8)]).astype(np.float32)
    zero_point = rng.integers(100, 156, size=8).astype(np.uint8)
    levels = rng.integers(0, 256, size=(8, 24)).astype(np.uint8)
    levels = np.where(rng.random(levels.shape) < 0.6, zero_point[:, None], levels).astype(np.uint8)
    scale = rng.uniform(0.001, 0.01, size=8).astype(np.float32)
    sparse = rng.normal(size=(8, 24)).astype(np.float32)
    sparse[rng.random(sparse.shape) < 0.9] = 0
    sparse[0, :4] = [-0.0, np.nan, np.inf, -np.inf]
    dense = rng.normal(size=(24, 6)).astype(np.float32)
    bias = rng.normal(size=6).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["idx"], ["idx32"], to=TensorProto.INT32),
        helper.make_node("Gather", ["table", "idx32"], ["W1"], axis=0),
        helper.make_node("MatMul", ["x", "W1"], ["h1"]),
        helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["W2"], axis=0),
        helper.make_node("Gemm", ["h1", "W2"], ["h2"], transB=1),
        helper.make_node("Gemm", ["h2", "S"], ["h3"], transB=0),
        helper.make_node("Gemm", ["h3", "D", "bias"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])],
        [numpy_helper.from_array(a, n) for a, n in ((indices, "idx"), (table, "table"), (levels, "q"),
                                                      (scale, "scale"), (zero_point, "zp"), (sparse, "S"),
                                                      (dense, "D"), (bias, "bias"))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=IR_VERSION,
                             producer_name="onnx-de-tests")


@pytest.fixture(scope="module")
def small():
    model = small_model()
    return model, onnx_de.encode(model)


@pytest.fixture(scope="module")
def with_constants():
    """A model whose weight is the tensor of a Constant node (as in Paddle exports), beside a tensor Constant
    too small for a record and a ``value_floats`` one; and its container."""
    weight = np.random.default_rng(7).normal(size=(16, 8)).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["b"], value_floats=[0.5] * 8),
             helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(weight, "W")),
             helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(np.full(8, 2, np.float32), "s")),
             helper.make_node("MatMul", ["x", "W"], ["h"]),
             helper.make_node("Add", ["h", "b"], ["a"]),
             helper.make_node("Mul", ["a", "s"], ["y"])]
    graph = helper.make_graph(nodes, "constants", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=IR_VERSION)
    return model, onnx_de.encode(model)


# --- round trips ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist-mlp", "mnist-lenet5", "ppocr-cls"])
@pytest.mark.parametrize("scheme, options", SETTINGS)
def test_quantized_zoo_models_round_trip_exactly_and_decode_to_the_same_outputs(name, scheme, options):
    model, exported = quantized_export(name, scheme, options)
    payload = onnx_de.encode(exported)
    assert_same_model(exported, onnx_de.decode(payload, dense=False))
    dense = onnx_de.decode(payload)
    onnx.checker.check_model(dense, full_check=True)
    assert not {n.op_type for n in dense.graph.node} & {"DequantizeLinear", "Gather"}
    # Folding computes exactly what DequantizeLinear/Gather compute in ONNX Runtime, bit for bit.
    weights = [w.name for w in model.prunable]
    probe = onnx.ModelProto()
    probe.CopyFrom(exported)
    probe.graph.output.extend(helper.make_tensor_value_info(w, TensorProto.FLOAT, [None] * len(model.initializer(w).shape)) for w in weights)
    data = onnx_de.load_data(f"zoo:{name}", model, limit=16)
    computed = run_unoptimized(probe, data.inputs)[-len(weights):]
    folded = {t.name: numpy_helper.to_array(t) for t in dense.graph.initializer}
    for weight, array in zip(weights, computed):
        np.testing.assert_array_equal(folded[weight], array)
    # Kernels differ (constant weights are pre-packed, an export may be fused into integer kernels): tolerance.
    for a, b in zip(*(run_unoptimized(m, data.inputs) for m in (exported, dense))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # The pruned weights cost only their mask: far below the 4-bit quantized file.
    assert len(payload) < 0.45 * len(exported.SerializeToString())


@pytest.mark.parametrize("name", ["mnist-lenet5", "ppocr-cls"])
def test_fast_decode_containers_use_zstd_alone_round_trip_exactly_and_stay_near_the_smallest(name):
    _, exported = quantized_export(name, "codebook", {})
    smallest, fast = onnx_de.encode(exported), onnx_de.encode(exported, fast_decode=True)
    assert_same_model(exported, onnx_de.decode(fast, dense=False))
    assert_same_model(onnx_de.decode(smallest), onnx_de.decode(fast))
    tensors = onnx_de.inspect_container(fast)["tensors"]
    assert tensors and all(t["mask"] in (None, "packed") and t["values"] == "raw" for t in tensors)
    assert any(t["mask"] == "packed" for t in tensors)
    assert len(smallest) <= len(fast) <= 1.1 * len(smallest)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(os.path.dirname(onnx.__file__), "backend", "test",
                                                                "data", "**", "model.onnx"), recursive=True)),
                         ids=lambda p: Path(p).parent.name)
def test_every_onnx_backend_test_model_round_trips_bit_exactly(path):
    original = onnx.load(path)
    assert_same_model(original, onnx_de.decode(onnx_de.encode(path), dense=False))


def test_sparse_float_weights_cost_a_mask_plus_their_survivors():
    model = onnx_de.open_model("zoo:mnist-mlp")
    sparse = onnx.ModelProto()
    sparse.CopyFrom(model.proto)
    for tensor in sparse.graph.initializer:
        if tensor.name == "fc1.weight":
            weight = numpy_helper.to_array(tensor).copy()
            weight[np.abs(weight) < np.quantile(np.abs(weight), 0.9)] = 0
            tensor.CopyFrom(numpy_helper.from_array(weight, tensor.name))
    payload = onnx_de.encode(sparse)
    assert_same_model(sparse, onnx_de.decode(payload, dense=False))
    fc1 = next(t for t in onnx_de.inspect_container(payload)["tensors"] if t["name"] == "fc1.weight")
    assert fc1["mask"] and fc1["values"] == "raw" and fc1["kept"] == (weight != 0).sum()
    assert fc1["bytes"] < 0.1 * weight.nbytes


def test_tensors_of_one_value_round_trip_and_cost_no_symbol_bits():
    """A tensor whose elements are all one value (a constant bias, a weight pruned to nothing) has a table that
    gives one symbol all of 2**16: coded in no bits (the coder itself refuses a certain symbol)."""
    edited = onnx.ModelProto()
    edited.CopyFrom(onnx_de.open_model("zoo:mnist-mlp").proto)
    constant = {"fc1.bias": np.zeros(300, np.float32), "fc2.bias": np.full(100, 0.25, np.float32),
                "fc2.weight": np.zeros((100, 300), np.float32)}
    for tensor in edited.graph.initializer:
        if tensor.name in constant:
            tensor.CopyFrom(numpy_helper.from_array(constant[tensor.name], tensor.name))
    model = onnx_de.open_model(edited)
    x = onnx_de.load_data("zoo:mnist-mlp", model, limit=8).inputs["input"]
    expected = onnx_de.create_session(model).run(None, {"input": x})[0]
    for fast_decode in (False, True):
        payload = onnx_de.encode(edited, fast_decode=fast_decode)
        assert_same_model(edited, onnx_de.decode(payload, dense=False))
        np.testing.assert_array_equal(onnx_de.InferenceSession(payload).run(None, {"input": x})[0], expected)
    tensors = {t["name"]: t for t in onnx_de.inspect_container(onnx_de.encode(edited))["tensors"]}
    assert all(tensors[name]["bytes"] <= 16 for name in constant)
    certain = np.array([[rans.TOTAL, 0, 0], [100, 65336, 100]])
    models = np.array([0, 1, 0, 1, 1, 0])
    symbols = np.array([0, 1, 0, 2, 1, 0])
    assert rans.encode(np.zeros(50, np.int64), certain[0]) == b""
    assert (rans.decode(b"", 50, certain[0]) == 0).all()
    assert (rans.decode(rans.encode(symbols, certain, models), 6, certain, models) == symbols).all()


def test_weights_in_constant_nodes_are_coded_and_restored_bit_for_bit():
    """Paddle exports keep their weights in Constant nodes: each big enough gets a record, as an initializer
    would, and goes back into its node; the decoded model computes the same outputs."""
    path = onnx_de.zoo_path("ppocr-cls")
    original = onnx.load(path)
    constants = [t for t in map(constant_tensor, original.graph.node)
                 if t is not None and int(np.prod(t.dims)) >= MIN_ELEMENTS]
    assert not original.graph.initializer and len(constants) > 50
    payload = onnx_de.encode(path)
    summary = onnx_de.inspect_container(payload)
    assert len(summary["tensors"]) == len(constants)
    assert summary["sections"]["graph"] < 0.1 * summary["bytes"]
    assert len(payload) < 0.97 * len(frames.compress(Path(path).read_bytes()))  # the file through zstd -19
    assert_same_model(original, onnx_de.decode(payload, dense=False))
    assert_same_model(original, onnx_de.decode(payload))
    x = onnx_de.load_data("zoo:ppocr-cls", onnx_de.open_model(original), limit=4).inputs["x"]
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for restored, got in zip(expected, onnx_de.InferenceSession(payload).run(None, {"x": x})):
        np.testing.assert_array_equal(got, restored)


def test_dense_float_models_round_trip_bit_exactly():
    model = onnx_de.open_model("zoo:efficientnet-lite0").proto
    assert_same_model(model, onnx_de.decode(onnx_de.encode(model), dense=False))


def test_every_record_kind_round_trips_including_negative_zero_and_nan_also_for_fast_decoding(small):
    model, payload = small
    assert_same_model(model, onnx_de.decode(payload, dense=False))
    summary = onnx_de.inspect_container(payload)
    tensors = {t["name"]: t for t in summary["tensors"]}
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    kept = (arrays["q"] != arrays["zp"][:, None]).sum()
    assert tensors["q"]["mask"] and tensors["q"]["kept"] == kept  # masked against the zero points
    assert "bias" not in tensors  # small tensors stay in the graph section
    x = np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)
    dense = onnx_de.decode(payload)
    assert {n.op_type for n in dense.graph.node} == {"MatMul", "Gemm"}
    np.testing.assert_array_equal(onnx_de.InferenceSession(payload).run(None, {"x": x})[0],
                                  onnx_de.InferenceSession(payload, dense=False).run(None, {"x": x})[0])
    fast = onnx_de.encode(model, fast_decode=True)
    assert_same_model(model, onnx_de.decode(fast, dense=False))
    assert_same_model(dense, onnx_de.decode(fast))


def test_symbol_and_mask_streams_are_near_their_order0_bound():
    _, exported = quantized_export("mnist-lenet5", "codebook", {}, sparsity=0.9)
    totals = onnx_de.inspect_container(onnx_de.encode(exported))["totals"]
    assert totals["symbols"] <= 1.01 * totals["symbols_bound"]
    assert totals["mask"] <= totals["mask_bound"] * 1.01


def test_rans_round_trips_any_symbols_with_several_models():
    rng = np.random.default_rng(1)
    for count in (0, 1, 7, 3000):
        models = rng.integers(0, 3, size=count)
        counts = rng.integers(0, 50, size=(3, 5))
        counts[:, 0] += 1
        symbols = np.array([rng.choice(np.flatnonzero(counts[m])) for m in models], dtype=np.int64)
        table = rans.quantize_frequencies(counts)
        assert (table.sum(axis=1) == rans.TOTAL).all() and ((table > 0) == (counts > 0)).all()
        stream = rans.encode(symbols, table, models)
        assert (rans.decode(stream, count, table, models) == symbols).all()


# --- determinism and compatibility ------------------------------------------------------------------------


def test_a_dequantized_value_a_subgraph_also_reads_survives_decoding():
    """The decoder folds Cast + Gather into plain values; a Cast output an If branch reads must stay defined."""
    branch = helper.make_graph([helper.make_node("Identity", ["wide"], ["z"])], "branch", [],
                               [helper.make_tensor_value_info("z", TensorProto.INT32, [96])])
    graph = helper.make_graph(
        [helper.make_node("Cast", ["indices"], ["wide"], to=TensorProto.INT32),
         helper.make_node("Gather", ["table", "wide"], ["w"], axis=0),
         helper.make_node("Add", ["x", "w"], ["y"]),
         helper.make_node("If", ["flag"], ["out"], then_branch=branch, else_branch=branch)],
        "subgraph_reads",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [96]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [96]),
         helper.make_tensor_value_info("out", TensorProto.INT32, [96])],
        [numpy_helper.from_array(np.arange(96, dtype=np.uint8) % 4, "indices"),
         numpy_helper.from_array(np.float32([0, 0.5, 1, 1.5]), "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)
    decoded = onnx_de.decode(onnx_de.encode(model))
    onnx.checker.check_model(decoded, full_check=True)
    feeds = {"x": np.ones(96, np.float32), "flag": np.array(True)}

    def outputs(m: onnx.ModelProto) -> list[np.ndarray]:
        return onnx_de.create_session(onnx_de.load_model(m), optimize=False).run(None, feeds)

    for a, b in zip(outputs(model), outputs(decoded)):
        np.testing.assert_array_equal(a, b)


def test_same_model_gives_identical_bytes(small):
    model, payload = small
    assert onnx_de.encode(model) == payload
    assert onnx_de.encode(model.SerializeToString()) == payload


def test_golden_bytes_of_format_version_1(small):
    """The committed fixture is what this version writes for the fixed model. If the encoder changes on purpose,
    keep the old fixture (it must still decode) and add a new one: ONNX_DE_WRITE_FIXTURES=1 writes them.
    small-v1.ode predates the ``levels-zstd`` coding; small-v1-r2.ode has it."""
    model, payload = small
    fast = onnx_de.encode(model, fast_decode=True)
    for golden, written in ((FIXTURES / "small-v1-r2.ode", payload), (FIXTURES / "small-fast-v1.ode", fast)):
        if os.environ.get("ONNX_DE_WRITE_FIXTURES"):
            write_fixture(golden, written)
        assert written == golden.read_bytes(), golden.name
    assert "packed" in {t["mask"] for t in onnx_de.inspect_container(fast)["tensors"]}
    assert {t["values"] for t in onnx_de.inspect_container(payload)["tensors"]} >= {"levels", "levels-zstd", "raw"}


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.glob("*.ode")))
def test_committed_fixtures_still_decode_to_the_same_tensors(fixture):
    expected = json.loads((FIXTURES / fixture).with_suffix(".json").read_text())
    model = onnx_de.decode((FIXTURES / fixture).read_bytes(), dense=False)
    assert tensor_digests(model) == expected


def tensor_digests(model: onnx.ModelProto) -> dict:
    digests = {}
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        digests[tensor.name] = [array.dtype.str, list(array.shape), hashlib.sha256(array.tobytes()).hexdigest()]
    return digests


def write_fixture(path: Path, payload: bytes) -> None:
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(payload)
    digests = tensor_digests(onnx_de.decode(payload, dense=False))
    path.with_suffix(".json").write_text(json.dumps(digests, indent=1) + "\n")


# --- bad files --------------------------------------------------------------------------------------------


def rebuild(payload: bytes, section: int, new_payload: bytes) -> bytes:
    """``payload`` with one section replaced and every checksum recomputed (a crafted, not a damaged, file)."""
    sections = [(s.kind, bytes(s.payload)) for s in read_sections(payload)]
    sections[section] = (sections[section][0], new_payload)
    return write_sections(sections)


def with_index(payload: bytes, edit) -> bytes:
    index = json.loads(frames.decompress(read_sections(payload)[0].payload, 1 << 30, "index"))
    edit(index)
    return rebuild(payload, 0, frames.compress(json.dumps(index).encode()))


def test_a_flipped_byte_names_its_section(small):
    _, payload = small
    sections = read_sections(payload)
    places = {"header": 17, "index section": sections[0].offset + 3, "graph section": sections[1].offset + 5,
              "tensor section 0 ('idx')": sections[2].offset + 2}
    for name, offset in places.items():
        damaged = bytearray(payload)
        damaged[offset] ^= 0x10
        with pytest.raises(FormatError, match=name.replace("(", r"\(").replace(")", r"\)")):
            onnx_de.decode(bytes(damaged))


def test_each_kind_of_bad_file_gets_its_own_error(small, tmp_path):
    _, payload = small
    cases = {
        "no magic": b"not a container at all, just text",
        r"truncated": payload[: len(payload) - 10],
        "header: truncated": payload[:12],
        "stray bytes": payload + b"\0",
        "reserved flags": payload[:10] + b"\1\0" + payload[12:],
    }
    for message, data in cases.items():
        with pytest.raises(FormatError, match=message):
            onnx_de.decode(data)
    with pytest.raises(UnsupportedVersionError, match="version 2"):
        onnx_de.decode(payload[:8] + b"\2\0" + payload[10:])
    with pytest.raises(FormatError, match="empty file"):
        onnx_de.decode((tmp_path / "empty.ode").write_bytes(b"") or tmp_path / "empty.ode")
    with pytest.raises(FormatError, match="no such file"):
        onnx_de.decode(tmp_path / "missing.ode")


def test_absurd_declared_sizes_are_refused_before_allocation(small):
    _, payload = small

    def huge(index):
        index["tensors"][0]["shape"] = [1 << 40, 1 << 20]

    with pytest.raises(FormatError, match="does not match|limit"):
        onnx_de.decode(with_index(payload, huge))
    with pytest.raises(FormatError, match="limit"):
        onnx_de.decode(payload, max_bytes=1000)
    bomb = frames.compress(b"\0" * (1 << 22))
    started = time.perf_counter()
    with pytest.raises(FormatError, match="limit"):
        onnx_de.decode(rebuild(payload, 1, bomb), max_bytes=1 << 20)
    assert time.perf_counter() - started < 5


def test_malformed_index_records_are_format_errors(small):
    _, payload = small
    edits = [
        lambda i: i["tensors"][0].update(extra=1),
        lambda i: i["tensors"][0].update(initializer=99),
        lambda i: i["tensors"][0].update(dtype=7),
        lambda i: i["tensors"][0]["values"].update(coding="magic"),
        lambda i: i["tensors"][0].update(mask={"method": "order0", "ones": -1}),
        lambda i: i["tensors"][0]["streams"].update(mask=10**9),
        lambda i: i.update(tensors=i["tensors"][:-1]),
        lambda i: i.update(tensors="nope"),
    ]
    for edit in edits:
        with pytest.raises(FormatError):
            onnx_de.decode(with_index(payload, edit))


def test_a_constant_record_must_name_its_own_constant_node(with_constants):
    model, payload = with_constants
    (record,) = onnx_de.inspect_container(payload)["tensors"]
    assert record["name"] == "W"
    x = np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32)
    np.testing.assert_array_equal(onnx_de.InferenceSession(payload).run(None, {"x": x})[0],
                                  run_unoptimized(model, {"x": x})[0])
    edits = {
        "out of range": lambda i: i["tensors"][0].update(constant=99),
        "not a tensor": lambda i: i["tensors"][0].update(constant=3),  # the MatMul
        "name or dtype does not match": lambda i: i["tensors"][0].update(constant=2),  # the small Constant
        "exactly one": lambda i: i["tensors"][0].update(initializer=0),
        "exactly one of": lambda i: i["tensors"][0].pop("constant"),
    }
    for message, edit in edits.items():
        with pytest.raises(FormatError, match=f"tensor record 0: .*{message}"):
            onnx_de.decode(with_index(payload, edit))


def test_a_graph_that_names_a_tensor_twice_still_round_trips():
    """An invalid graph (two initializers, and a Constant node, named alike) is kept as it is: one tensor per
    name gets a record, the others stay in the graph section, and the file decodes."""
    tensors = [numpy_helper.from_array(np.full((16, 8), value, np.float32), name)
               for value, name in ((1, "W"), (3, "V"), (4, "V"))]
    constant = helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(np.full((16, 8), 2, np.float32)))
    graph = helper.make_graph([constant, helper.make_node("MatMul", ["x", "W"], ["y"])], "twice",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=IR_VERSION)
    payload = onnx_de.encode(model)
    assert [t["name"] for t in onnx_de.inspect_container(payload)["tensors"]] == ["W", "V"]
    assert_same_model(model, onnx_de.decode(payload, dense=False))


def test_fine_step_levels_code_their_tables_with_zstd_and_hostile_tables_are_refused():
    steps = np.round(np.random.default_rng(3).laplace(size=(64, 300)) * 80).astype(np.int16)  # ~900 levels
    record, streams = encode_record(steps)
    assert record["values"]["coding"] == "levels-zstd"
    plain_tables = record["values"]["levels"] * (2 + 2)
    assert len(streams["levels"]) + len(streams["frequencies"]) < plain_tables / 3
    views = {name: memoryview(streams[name]) for name in record_streams(record)}
    restored, _ = decode_record(record, views, steps.shape, steps.dtype)
    assert np.array_equal(restored, steps)
    # Steps that run past the largest int16 bit pattern, and a levels frame of the wrong size.
    overflowing = dict(views, levels=memoryview(frames.compress(np.full(record["values"]["levels"], 300, "<u2")
                                                                .view(np.uint8).reshape(-1, 2).T.tobytes())))
    with pytest.raises(FormatError, match="overflow"):
        decode_record(record, overflowing, steps.shape, steps.dtype)
    with pytest.raises(FormatError, match="levels: zstd frame declares"):
        decode_record(record, dict(views, levels=memoryview(frames.compress(b"\0" * 6))), steps.shape, steps.dtype)


def test_a_packed_mask_must_declare_exactly_its_size(small):
    model, _ = small
    fast = onnx_de.encode(model, fast_decode=True)
    index = json.loads(frames.decompress(read_sections(fast)[0].payload, 1 << 30, "index"))
    number, record = next((n, r) for n, r in enumerate(index["tensors"]) if r["mask"] == {"method": "packed"})
    section = bytes(read_sections(fast)[2 + number].payload)
    fill, mask = record["streams"]["fill"], record["streams"]["mask"]
    expected = (int(np.prod(record["shape"])) + 7) // 8
    for declared in (expected - 1, expected + 1, 1 << 24):  # refused on the frame's header, before decompressing
        bad_mask = frames.compress(b"\xff" * declared)
        crafted = rebuild(fast, 2 + number, section[:fill] + bad_mask + section[fill + mask :])
        crafted = with_index(crafted, lambda i: i["tensors"][number]["streams"].update(mask=len(bad_mask)))
        with pytest.raises(FormatError, match=f"tensor section {number}.*mask stream"):
            onnx_de.decode(crafted)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                            HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_containers_raise_only_format_errors(small, with_constants, data):
    """Random damage to the raw bytes, and crafted damage behind valid checksums, in every section, of a
    smallest and of a fast-decoding container, and of one holding a Constant node's tensor."""
    model, payload = data.draw(st.sampled_from([small, with_constants]))
    if data.draw(st.booleans()):
        payload = onnx_de.encode(model, fast_decode=True)
    sections = read_sections(payload)
    kind = data.draw(st.sampled_from(["bytes", "section"]))
    if kind == "bytes":
        mutated = bytearray(payload)
        for _ in range(data.draw(st.integers(1, 4))):
            position = data.draw(st.integers(0, len(mutated) - 1))
            action = data.draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
            if action == "flip":
                mutated[position] ^= data.draw(st.integers(1, 255))
            elif action == "delete":
                del mutated[position]
            elif action == "insert":
                mutated.insert(position, data.draw(st.integers(0, 255)))
            else:
                del mutated[position:]
            if not mutated:
                mutated = bytearray(b"\0")
        candidate = bytes(mutated)
    else:
        number = data.draw(st.integers(0, len(sections) - 1))
        section = bytearray(sections[number].payload)
        if number == 0 or data.draw(st.booleans()) and number == 1:
            raw = bytearray(frames.decompress(section, 1 << 30, "x"))
            position = data.draw(st.integers(0, max(len(raw) - 1, 0)))
            raw[position : position + 1] = data.draw(st.binary(min_size=0, max_size=3))
            section = bytearray(frames.compress(bytes(raw)))
        elif section:
            position = data.draw(st.integers(0, len(section) - 1))
            section[position] ^= data.draw(st.integers(1, 255))
        candidate = rebuild(payload, number, bytes(section))
    started = time.perf_counter()
    try:
        onnx_de.decode(candidate, max_bytes=1 << 24)
    except FormatError:
        pass
    assert time.perf_counter() - started < 10


def test_rebuilt_index_with_valid_checksums_decodes(small):
    """The crafting helper itself writes valid files: without an edit, the model decodes unchanged."""
    model, payload = small
    assert_same_model(model, onnx_de.decode(with_index(payload, lambda i: None), dense=False))
    assert read_sections(payload)[0].kind == KIND_INDEX
