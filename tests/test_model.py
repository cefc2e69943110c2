"""Model loading and weight discovery on real zoo models and on small models built here."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_de
from onnx_de import ConfigError, ModelError, WeightSelection, load_model
from onnx_de.data import Dataset

from helpers import IR_VERSION, OPSET, assert_same_outputs, gemm_model, save


def by_name(model):
    return {w.name: w for w in model.weights}


def test_mnist_weights_have_ops_shapes_and_output_axes(mlp, lenet):
    found = by_name(mlp)
    assert [w.name for w in mlp.prunable] == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert found["fc1.weight"].shape == (300, 784) and found["fc1.weight"].op_type == "Gemm"
    assert found["fc1.weight"].out_axis == 0  # torch exports Gemm with transB=1
    assert found["fc1.bias"].role == "bias" and not found["fc1.bias"].prunable
    conv = by_name(lenet)["conv2.weight"]
    assert (conv.op_type, conv.shape, conv.out_axis, conv.size) == ("Conv", (50, 20, 5, 5), 0, 25000)
    assert [s.name for s in lenet.inputs] == ["input"] and lenet.inputs[0].shape == (None, 1, 28, 28)


@pytest.mark.parametrize("trans_b, axis", [(1, 0), (0, 1)])
def test_gemm_output_axis_follows_transB_and_matmul_uses_last_axis(tmp_path, trans_b, axis):
    model = load_model(save(gemm_model(np.random.default_rng(0), trans_b), tmp_path / "m.onnx"),
                       WeightSelection(min_size=0))
    found = by_name(model)
    assert found["W"].out_axis == axis
    assert found["V"].op_type == "MatMul" and found["V"].out_axis == 1
    assert found["b"].role == "bias"


def test_conv_transpose_and_lstm_axes(tmp_path):
    rng = np.random.default_rng(1)
    deconv = rng.normal(size=(4, 6, 3, 3)).astype(np.float32)  # (C_in, C_out, k, k)
    w = rng.normal(size=(1, 4 * 5, 6)).astype(np.float32)
    r = rng.normal(size=(1, 4 * 5, 5)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ConvTranspose", ["x", "D"], ["d"]),
            helper.make_node("Reshape", ["d", "shape"], ["seq"]),
            helper.make_node("LSTM", ["seq", "W", "R"], ["y"], hidden_size=5),
        ],
        "rnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 1, 1, 5])],
        [numpy_helper.from_array(deconv, "D"), numpy_helper.from_array(w, "W"), numpy_helper.from_array(r, "R"),
         numpy_helper.from_array(np.array([16, 1, 6], np.int64), "shape")],
    )
    model = load_model(save(helper.make_model(graph, opset_imports=OPSET, ir_version=IR_VERSION), tmp_path / "rnn.onnx"),
                       WeightSelection(min_size=0))
    found = by_name(model)
    assert (found["D"].op_type, found["D"].out_axis) == ("ConvTranspose", 1)
    assert (found["W"].op_type, found["W"].out_axis, found["R"].out_axis) == ("LSTM", 1, 1)
    assert "shape" not in found  # int64 Reshape operand is no weight
    out = onnx_de.run_model(onnx_de.create_session(model), Dataset({"x": np.ones((1, 4, 2, 2), np.float32)}))
    assert out[0].shape == (16, 1, 1, 5)


def test_include_exclude_and_size_threshold(mlp):
    proto = mlp.proto
    small = load_model(proto, WeightSelection(min_size=2000))
    assert [w.name for w in small.prunable] == ["fc1.weight", "fc2.weight"]
    assert by_name(small)["fc3.weight"].reason.startswith("fewer than 2000")
    included = load_model(proto, WeightSelection(include=("fc3.weight",), min_size=2000))
    assert [w.name for w in included.prunable] == ["fc3.weight"]  # include overrides the threshold
    excluded = load_model(proto, WeightSelection(include=("re:fc[12]\\.weight",), exclude=("fc2.weight",)))
    assert [w.name for w in excluded.prunable] == ["fc1.weight"]  # exclude wins
    with pytest.raises(ConfigError, match="matches no weight"):
        load_model(proto, WeightSelection(exclude=("re:conv.*",)))
    with pytest.raises(ConfigError, match="bad regular expression"):
        WeightSelection(include=("re:(",))


def test_paddle_constant_weights_are_folded_and_outputs_unchanged():
    path = onnx_de.zoo_path("ppocr-cls")
    model = onnx_de.open_model("zoo:ppocr-cls")
    assert model.folded_constants == 308
    assert not any(n.op_type == "Constant" for n in model.proto.graph.node)
    convs = [w for w in model.weights if w.op_type == "Conv" and w.role == "weight"]
    assert len(convs) == 53 and all(w.graph == "main" for w in convs)
    x = np.random.default_rng(2).normal(size=(2, 3, 48, 192)).astype(np.float32)
    assert_same_outputs(onnx.load(str(path)), model.proto, {"x": x})


def test_external_data_is_loaded(tmp_path):
    proto = gemm_model(np.random.default_rng(3))
    external = onnx.ModelProto()
    external.CopyFrom(proto)  # onnx.save moves the tensors of the proto it is given out to the file
    path = tmp_path / "ext.onnx"
    onnx.save(external, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.weights", size_threshold=0)
    assert (tmp_path / "ext.weights").exists()
    model = load_model(path)
    np.testing.assert_array_equal(model.initializer("W"), numpy_helper.to_array(proto.graph.initializer[0]))
    assert_same_outputs(proto, model.proto, {"x": np.ones((3, 64), np.float32)})
    (tmp_path / "ext.weights").unlink()
    with pytest.raises(ModelError, match="external data"):
        load_model(path)


def test_weights_inside_if_subgraphs_are_found_and_reported(tmp_path):
    rng = np.random.default_rng(4)

    def branch(name: str) -> onnx.GraphProto:
        weight = numpy_helper.from_array(rng.normal(size=(64, 32)).astype(np.float32), f"{name}_W")
        return helper.make_graph([helper.make_node("MatMul", ["x", f"{name}_W"], [f"{name}_y"])], name, [],
                                 [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["N", 32])], [weight])

    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], then_branch=branch("then"), else_branch=branch("else"))],
        "cond",
        [helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
    )
    model = load_model(save(helper.make_model(graph, opset_imports=OPSET, ir_version=IR_VERSION), tmp_path / "if.onnx"))
    found = by_name(model)
    assert found["then_W"].graph.endswith("then_branch") and found["else_W"].graph.endswith("else_branch")
    assert not found["then_W"].prunable and "subgraph" in found["then_W"].reason
    with pytest.raises(ModelError, match="nothing to prune"):
        load_model(model.proto, require_prunable=True)


def test_bad_files_give_model_errors(tmp_path):
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    with pytest.raises(ModelError, match="not a readable ONNX model|not an ONNX model"):
        load_model(text)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(onnx_de.zoo_path("mnist-mlp").read_bytes()[:5000])
    with pytest.raises(ModelError):
        load_model(truncated)
    with pytest.raises(ModelError, match="no such file"):
        load_model(tmp_path / "missing.onnx")
    with pytest.raises(ModelError):
        load_model(b"\x08\x07garbage")
