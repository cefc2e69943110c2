"""The onnx-de command, run as a user runs it: a real process, real files, exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnx_de

from helpers import IR_VERSION, OPSET

FIXTURES = Path(__file__).parent / "fixtures"


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnx_de", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "ONNX_DE_DEBUG": ""}, timeout=600)


def assert_one_line_error(done: subprocess.CompletedProcess, expected: str) -> None:
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("onnx-de: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in done.stderr


def test_zoo_list_shows_the_six_models():
    done = cli("zoo", "list", "--json")
    assert done.returncode == 0
    assert len(json.loads(done.stdout)) == 6


def test_inspect_table_and_json():
    table = cli("inspect", "zoo:mnist-lenet5")
    assert table.returncode == 0 and "conv2.weight  Conv  50x20x5x5" in table.stdout
    summary = json.loads(cli("inspect", "zoo:mnist-mlp", "--json", "--min-size", "2000").stdout)
    assert [w["name"] for w in summary["weights"] if w["prunable"]] == ["fc1.weight", "fc2.weight"]
    assert summary["prunable_parameters"] == 300 * 784 + 100 * 300


def test_output_cut_short_by_its_reader_ends_quietly():
    """``onnx-de inspect ... | head``: the reader closes the pipe (here before anything is written); no error."""
    process = subprocess.Popen([sys.executable, "-m", "onnx_de", "inspect", "zoo:mnist-mlp"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "ONNX_DE_DEBUG": ""})
    process.stdout.close()  # long before the command has imported onnxruntime and read the model
    assert process.wait(timeout=600) == 141 and process.stderr.read() == ""


def test_eval_of_a_model_against_itself_is_perfect_with_stable_keys():
    done = cli("eval", "zoo:mnist-mlp", "zoo:mnist-mlp", "--data", "zoo:mnist-mlp", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert {"top1_agreement", "accuracy", "kl", "rel_l2", "cosine", "metric", "primary"} <= set(result)
    assert (result["top1_agreement"], result["rel_l2"], result["kl"]) == (1.0, 0.0, 0.0)


def test_demo_writes_its_outputs(tmp_path):
    done = cli("demo", "-o", str(tmp_path / "demo"))
    assert done.returncode == 0, done.stderr
    assert "smaller" in done.stdout and "top1_agreement" in done.stdout
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["sparsity"] == pytest.approx(0.9, abs=1e-3) and report["fidelity"]["top1_agreement"] >= 0.97
    assert report["sizes"]["ratio"] >= 40  # measured 42.6x at 0.983 (3-bit codebooks, 3 shifted copies)
    decoded = onnx_de.decode(tmp_path / "demo" / "model.ode")
    assert onnx_de.evaluate("zoo:mnist-mlp", decoded, "zoo:mnist-mlp")["top1_agreement"] == report["fidelity"]["top1_agreement"]
    assert not [p for p in (tmp_path / "demo").iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_optimize_with_a_config_file_and_an_override(tmp_path):
    (tmp_path / "c.toml").write_text("sparsity = 0.8\nbits = 6\n[layers]\n'fc3.weight' = { bits = 8 }\n")
    done = cli("optimize", "zoo:mnist-mlp", "--data", "zoo:mnist-mlp", "-o", str(tmp_path / "out"),
               "--config", str(tmp_path / "c.toml"), "--bits", "5", "--exclude", "fc2.weight", "--no-compensate",
               "--prior", "activation", "--fast-decode", "--per-layer", "fc3.weight=0.5", "--augment", "1",
               "--augment-shift", "2", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["config"]["augment"], report["config"]["augment_shift"]) == (1, 2)
    assert report["config"]["bits"] == 5 and report["layers"]["fc3.weight"]["bits"] == 8
    assert report["config"]["layers"]["fc3.weight"] == {"bits": 8, "sparsity": 0.5}  # merged with the file's
    assert report["layers"]["fc3.weight"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert "fc2.weight" not in report["layers"] and report["config"]["exclude"] == ["fc2.weight"]
    assert report["config"]["compensate"] is False and report["config"]["prior"] == "activation"
    assert report["layers"]["fc1.weight"]["bits"] == 5
    assert report["layers"]["fc1.weight"]["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert (tmp_path / "out" / "model.ode").stat().st_size == report["sizes"]["container"]
    assert report["config"]["fast_decode"] is True
    container = onnx_de.inspect_container(tmp_path / "out" / "model.ode")
    assert all(t["values"] == "raw" for t in container["tensors"])


def test_quantize_writes_a_model_with_integer_weights(tmp_path):
    output = tmp_path / "q.onnx"
    done = cli("quantize", "zoo:mnist-mlp", "--data", "zoo:mnist-mlp", "--bits", "6", "--scheme", "uniform",
               "--layer-bits", "fc3.weight=8,re:fc2.*=7", "-o", str(output), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert {name: layer["bits"] for name, layer in result["layers"].items()} == {
        "fc1.weight": 6, "fc2.weight": 7, "fc3.weight": 8}
    assert result["fidelity"]["top1_agreement"] >= 0.98
    stored = {t.name: t.data_type for t in onnx.load(str(output)).graph.initializer}
    assert stored["fc1.weight.quantized"] == onnx.TensorProto.INT8 and "fc1.weight" not in stored
    assert result["settings"]["rounding"] == "feedback" and result["settings"]["mantissa_bits"] == 10  # defaults
    assert result["rounded_parameter_values"] == 300 + 100 + 10  # the biases
    nearest = cli("quantize", "zoo:mnist-mlp", "--data", "zoo:mnist-mlp", "--bits", "6", "--scheme", "uniform",
                  "--rounding", "nearest", "--mantissa-bits", "23", "-o", str(tmp_path / "n.onnx"), "--json")
    assert nearest.returncode == 0, nearest.stderr
    assert json.loads(nearest.stdout)["settings"]["rounding"] == "nearest"
    assert json.loads(nearest.stdout)["rounded_parameter_values"] == 0


def test_quantize_allocates_bits_within_a_divergence_cap(tmp_path):
    common = ["quantize", "zoo:mnist-mlp", "--data", "zoo:mnist-mlp", "-o", str(tmp_path / "q.onnx")]
    done = cli(*common, "--max-divergence", "0.002", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["settings"]["max_divergence"] == 0.002 and result["calibration_divergence"] <= 0.002
    assert "divergence" in cli(*common, "--max-divergence", "0.002").stdout
    assert_one_line_error(cli(*common, "--max-divergence", "0"), "must be a number > 0")
    assert cli(*common, "--max-divergence", "0.002", "--budget", "0.98").returncode == 2  # one or the other


def test_sparsify_reads_image_folders_with_the_preprocessing_given(tmp_path):
    from PIL import Image

    digits = onnx_de.load_data("zoo:mnist-lenet5", onnx_de.open_model("zoo:mnist-lenet5"), split="evaluation")
    for split, rows in (("calib", range(0, 24)), ("eval", range(24, 40))):
        (tmp_path / split).mkdir()
        for i in rows:  # real digits written as 8-bit grey PNGs
            pixels = np.round(digits.inputs["input"][i, 0] * 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / split / f"{i:03d}.png")
    output = tmp_path / "s.onnx"
    done = cli("sparsify", "zoo:mnist-lenet5", "--data", str(tmp_path / "calib"), "--eval-data",
               str(tmp_path / "eval"), "--preprocess", "size=28x28,color=gray,scale=255", "--sparsity", "0.5",
               "--method", "magnitude", "--no-compensate", "-o", str(output), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["fidelity"]["samples"] == 16 and result["fidelity"]["top1_agreement"] >= 0.9
    assert output.exists()
    done = cli("sparsify", "zoo:mnist-lenet5", "--data", str(tmp_path / "calib"), "--sparsity", "0.5",
               "-o", str(tmp_path / "t.onnx"))
    assert_one_line_error(done, "needs a preprocessing spec")


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "notes.onnx").write_text("hello, I am a text file\n")
    (folder / "truncated.onnx").write_bytes(onnx_de.zoo_path("mnist-lenet5").read_bytes()[:20000])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    onnx.save(helper.make_model(graph, opset_imports=OPSET, ir_version=IR_VERSION), str(folder / "relu.onnx"))
    np.savez(folder / "shape.npz", input=np.zeros((3, 28, 28), np.float32))
    np.savez(folder / "dtype.npz", input=np.zeros((3, 784), np.float64))
    nan = np.zeros((3, 784), np.float32)
    nan[1, 5] = np.nan
    np.savez(folder / "nan.npz", input=nan)
    np.savez(folder / "flat.npz", input=np.zeros((8, 784), np.float32))
    container = (FIXTURES / "mnist-mlp-de90-q4-v1.ode").read_bytes()
    (folder / "truncated.ode").write_bytes(container[: len(container) // 2])
    damaged = bytearray(container)
    damaged[len(container) // 2] ^= 1
    (folder / "damaged.ode").write_bytes(bytes(damaged))
    return folder


@pytest.mark.parametrize(
    "args, expected",
    [
        (("inspect", "{bad}/notes.onnx"), "not a readable ONNX model"),
        (("inspect", "{bad}/truncated.onnx"), "not a readable ONNX model"),
        (("inspect", "{bad}/missing.onnx"), "no such file"),
        (("inspect", "{bad}/relu.onnx"), "nothing to prune"),
        (("inspect", "zoo:mnist-mlp", "--include", "re:conv.*"), "matches no weight"),
        (("eval", "zoo:mnist-mlp", "zoo:mnist-mlp", "--data", "{bad}/shape.npz"), "the model wants 784"),
        (("eval", "zoo:mnist-mlp", "zoo:mnist-mlp", "--data", "{bad}/dtype.npz"), "dtype float64"),
        (("eval", "zoo:mnist-mlp", "zoo:mnist-mlp", "--data", "{bad}/nan.npz"), "1 NaN"),
        (("eval", "zoo:mnist-mlp", "zoo:mnist-lenet5", "--data", "zoo:mnist-mlp"), "differ from the teacher"),
        (("eval", "zoo:mnist-mlp", "zoo:mnist-mlp", "--data", "{bad}"), "needs a preprocessing spec"),
        (("zoo", "path", "yolov3"), "no zoo model 'yolov3'"),
        (("sparsify", "zoo:mnist-mlp", "--data", "zoo:mnist-mlp", "-o", "{bad}/s.onnx", "--budget", "1.5"),
         "budget must be in (0, 1]"),
        (("sparsify", "zoo:mnist-mlp", "--data", "zoo:mnist-mlp", "-o", "{bad}/s.onnx", "--refits", "2",
          "--no-compensate"), "interim refits (refits > 0) belong to the DE search with compensation"),
        (("sparsify", "zoo:mnist-mlp", "--data", "zoo:mnist-mlp", "-o", "{bad}/s.onnx", "--refits", "-1"),
         "refits must be >= 0"),
        (("sparsify", "zoo:mnist-mlp", "--data", "zoo:mnist-mlp", "-o", "{bad}/s.onnx", "--held-out", "1"),
         "held_out must be in [0, 1)"),
        (("sparsify", "zoo:mnist-mlp", "--data", "zoo:mnist-mlp", "-o", "{bad}/s.onnx", "--mask-folds", "1"),
         "mask_folds must be 0 or at least 2"),
        (("sparsify", "zoo:mnist-mlp", "--data", "zoo:mnist-mlp", "-o", "{bad}/s.onnx", "--workers", "0"),
         "workers must be >= 1"),
        (("sparsify", "zoo:mnist-mlp", "--data", "zoo:mnist-mlp", "-o", "{bad}/s.onnx", "--executor", "threads"),
         "executor must be 'local', 'ray' or 'ray:ADDRESS'"),
        (("optimize", "zoo:mnist-mlp", "--data", "zoo:mnist-mlp", "-o", "{bad}/out", "--sparsity", "0.5",
          "--executor", "ray:"), "executor must be"),
        (("quantize", "zoo:mnist-mlp", "--data", "zoo:mnist-mlp", "-o", "{bad}/q.onnx"), "need a fidelity budget"),
        (("quantize", "zoo:mnist-mlp", "--data", "zoo:mnist-mlp", "-o", "{bad}/q.onnx", "--bits", "0"),
         "bits must be auto or an integer from 1 to 8 for codebook levels, got 0"),
        (("quantize", "{bad}/relu.onnx", "--data", "zoo:mnist-mlp", "-o", "{bad}/q.onnx", "--bits", "4"),
         "nothing to prune"),
        (("quantize", "zoo:mnist-mlp", "--data", "zoo:mnist-mlp", "-o", "{bad}/q.onnx", "--bits", "4",
          "--layer-bits", "fc1.weight=12"),
         "layer bits fc1.weight must be an integer from 1 to 8 for codebook levels, got 12"),
        (("optimize", "zoo:mnist-mlp", "--data", "zoo:mnist-mlp", "-o", "{bad}/out", "--sparsity", "0.5",
          "--layer-bits", "fc1.weight=four"), "per-layer setting 'fc1.weight=four' is not NAME=BITS"),
        (("encode", "{bad}/notes.onnx", "-o", "{bad}/x.ode"), "not a readable ONNX model"),
        (("decode", "{bad}/notes.onnx", "-o", "{bad}/x.onnx"), "not an onnx-de container"),
        (("decode", "{bad}/truncated.ode", "-o", "{bad}/x.onnx"), "truncated"),
        (("decode", "{bad}/damaged.ode", "-o", "{bad}/x.onnx"), "checksum mismatch"),
        (("inspect", "{bad}/damaged.ode"), "checksum mismatch"),
        (("optimize", "zoo:mnist-mlp", "--data", "zoo:mnist-mlp", "-o", "{bad}/out", "--config", "{bad}/notes.onnx"),
         "not valid TOML"),
        (("optimize", "zoo:mnist-mlp", "--data", "zoo:mnist-mlp", "-o", "{bad}/out"),
         "give a sparsity target, a fidelity budget, or both"),
        (("optimize", "{bad}/relu.onnx", "--data", "zoo:mnist-mlp", "-o", "{bad}/out", "--sparsity", "0.5"),
         "nothing to prune"),
        (("optimize", "zoo:mnist-mlp", "--data", "zoo:mnist-mlp", "-o", "{bad}/out", "--sparsity", "0.5",
          "--budget", "0.9", "--max-sparsity", "0.3"), "max_sparsity bounds the search of a budget alone"),
        (("sparsify", "zoo:mnist-mlp", "--data", "{bad}/flat.npz", "-o", "{bad}/s.onnx", "--augment", "2"),
         "augmentation shifts images, and no input is one"),
        (("optimize", "zoo:mnist-mlp", "--data", "zoo:mnist-mlp", "-o", "{bad}/out", "--sparsity", "0.5",
          "--augment", "-1"), "config key 'augment'"),
        (("optimize", "zoo:mnist-mlp", "--data", "zoo:mnist-mlp", "-o", "{bad}/out", "--sparsity", "0.5",
          "--mask-folds", "1"), "mask_folds must be 0 or at least 2, with compensation"),
        (("quantize", "zoo:mnist-lenet5", "--data", "zoo:mnist-lenet5", "-o", "{bad}/q.onnx", "--bits", "4",
          "--augment", "1", "--augment-shift", "0"), "a shift of at least 1 pixel"),
    ],
)
def test_bad_inputs_get_one_line_errors(bad_inputs, args, expected):
    assert_one_line_error(cli(*(a.format(bad=bad_inputs) for a in args)), expected)
    assert not (bad_inputs / "x.onnx").exists() and not (bad_inputs / "x.ode").exists()
    assert not (bad_inputs / "out").exists() or not any((bad_inputs / "out").iterdir())


def test_encode_inspect_decode_round_trip(tmp_path):
    student = onnx_de.decode(FIXTURES / "mnist-mlp-de90-q4-v1.ode", dense=False)
    onnx.save(student, str(tmp_path / "student.onnx"))
    done = cli("encode", str(tmp_path / "student.onnx"), "-o", str(tmp_path / "student.ode"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "student.ode").read_bytes() == (FIXTURES / "mnist-mlp-de90-q4-v1.ode").read_bytes()
    done = cli("inspect", str(tmp_path / "student.ode"), "--json")
    summary = json.loads(done.stdout)
    assert summary["bytes"] == (tmp_path / "student.ode").stat().st_size
    assert {t["name"] for t in summary["tensors"]} >= {"fc1.weight.indices", "fc2.weight.indices"}
    assert "order-0 bound" in cli("inspect", str(tmp_path / "student.ode")).stdout
    done = cli("encode", str(tmp_path / "student.onnx"), "-o", str(tmp_path / "fast.ode"), "--fast-decode", "--json")
    assert done.returncode == 0, done.stderr
    assert {(t["mask"], t["values"]) for t in json.loads(done.stdout)["tensors"]} <= {("packed", "raw"), (None, "raw")}
    assert cli("decode", str(tmp_path / "fast.ode"), "-o", str(tmp_path / "fast.onnx")).returncode == 0
    assert cli("decode", str(tmp_path / "student.ode"), "-o", str(tmp_path / "dense.onnx")).returncode == 0
    # The container's student (of an earlier MNIST teacher), decoded by the CLI, is the one the API decodes.
    done = cli("eval", str(tmp_path / "student.onnx"), str(tmp_path / "dense.onnx"), "--data", "zoo:mnist-mlp", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["top1_agreement"] == 1.0 and result["rel_l2"] < 1e-6


def test_usage_errors_exit_2():
    done = cli("eval", "a.onnx")
    assert done.returncode == 2
    assert_one_line_error(done, "the following arguments are required: student, --data (see onnx-de eval -h)")


def test_a_mismatched_teacher_is_refused_before_anything_is_written(tmp_path):
    output = tmp_path / "q.onnx"
    done = cli("quantize", "zoo:mnist-mlp", "--data", "zoo:mnist-mlp", "--bits", "4", "--teacher", "zoo:mnist-lenet5",
               "-o", str(output))
    assert_one_line_error(done, "differ from the teacher")
    assert not output.exists()
