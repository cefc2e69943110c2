"""The zoo: every real model fetches (sha256 verified), loads, runs on its own data, and the fidelity
harness gives perfect agreement for the model against itself and worse numbers for a degraded copy."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnx_de
from onnx_de import ZooError, evaluate
from onnx_de.zoo import cache_dir, zoo_entries

FAST = ["mnist-mlp", "mnist-lenet5", "ppocr-det", "ppocr-cls", "efficientnet-lite0"]
ALL = [*FAST, pytest.param("ddddocr-det", marks=pytest.mark.slow)]


def test_zoo_lists_six_models_with_sources_and_licenses():
    entries = zoo_entries()
    assert list(entries) == ["mnist-mlp", "mnist-lenet5", "ppocr-det", "ppocr-cls", "efficientnet-lite0", "ddddocr-det"]
    for entry in entries.values():
        assert entry.license and entry.preprocessing and len(entry.source["sha256"]) == 64
        assert entry.data["calibration"] > 0 and entry.data["evaluation"] > 0


@pytest.mark.parametrize("name", ALL)
def test_model_fetches_loads_runs_and_agrees_with_itself(name):
    path = onnx_de.fetch(name)
    model = onnx_de.open_model(f"zoo:{name}")
    assert path.exists() and model.prunable
    calibration = onnx_de.load_data(f"zoo:{name}", model, split="calibration")
    result = evaluate(model, model, f"zoo:{name}")
    assert result["samples"] == zoo_entries()[name].data["evaluation"] and len(calibration) > 0
    assert result[result["primary"]] == 1.0
    assert result["rel_l2"] == 0.0 and result["cosine"] == pytest.approx(1.0)


def degrade(model: onnx_de.Model, path, scale: float) -> str:
    """A copy of ``model`` with Gaussian noise (``scale`` x the tensor's std) added to its largest weight."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    target = max(model.prunable, key=lambda w: w.size).name
    for index, tensor in enumerate(proto.graph.initializer):
        if tensor.name == target:
            value = numpy_helper.to_array(tensor)
            noisy = value + np.random.default_rng(0).normal(0, scale * value.std(), value.shape).astype(value.dtype)
            proto.graph.initializer[index].CopyFrom(numpy_helper.from_array(noisy, target))
    onnx.save(proto, str(path))
    return str(path)


def test_degraded_classifier_scores_worse_on_every_metric(tmp_path, mlp):
    result = evaluate(mlp, degrade(mlp, tmp_path / "noisy.onnx", 3.0), "zoo:mnist-mlp")
    assert result["top1_agreement"] < 0.95
    assert result["accuracy"] < result["teacher_accuracy"]
    assert result["kl"] > 0.05 and result["rel_l2"] > 0.05 and result["cosine"] < 0.99


def test_degraded_segmenter_scores_worse(tmp_path):
    det = onnx_de.open_model("zoo:ppocr-det")
    result = evaluate(det, degrade(det, tmp_path / "det.onnx", 1.0), "zoo:ppocr-det")
    assert result["mask_iou"] < 0.95 and result["rel_l2"] > 0 and result["cosine"] < 1


@pytest.mark.slow
def test_degraded_detector_loses_objects(tmp_path):
    model = onnx_de.open_model("zoo:ddddocr-det")
    result = evaluate(model, degrade(model, tmp_path / "dd.onnx", 1.0), "zoo:ddddocr-det")
    assert result["teacher_objects"] >= 10
    assert result["detection_recall"] < 1.0 and result["rel_l2"] > 0 and result["cosine"] < 1


def test_tampered_cached_model_fails_its_hash_check():
    path = onnx_de.fetch("ppocr-cls")
    original = path.read_bytes()
    try:
        path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with pytest.raises(ZooError, match="sha256"):
            onnx_de.fetch("ppocr-cls")
    finally:
        path.write_bytes(original)
    assert str(path).startswith(str(cache_dir()))


def test_unknown_zoo_model():
    with pytest.raises(ZooError, match="no zoo model 'resnet'.*mnist-mlp"):
        onnx_de.zoo_path("resnet")
