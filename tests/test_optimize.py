"""``optimize``: configs, the one-call pipeline on a real model, its reports, and interruption and resume."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
import pytest

import onnx_de
from onnx_de import ConfigError
from onnx_de.config import OptimizeConfig, load_config
from onnx_de.optimize import CHECKPOINT, LEVEL_PREFIX, OUTPUTS, optimize

from test_codec import run_unoptimized

CONFIG = """
sparsity = 0.9
bits = 4
seed = 3
mask_folds = 3
rounding = "nearest"
mantissa_bits = 12

[layers]
"re:fc.*" = { bits = 5 }
"fc3.weight" = { sparsity = 0.5, bits = 6 }
"re:fc[12].weight" = { sparsity = 0.8 }
"""


def test_config_round_trips_through_json_and_toml(tmp_path):
    (tmp_path / "c.toml").write_text(CONFIG)
    config = load_config(tmp_path / "c.toml")
    assert OptimizeConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    (tmp_path / "c.json").write_text(json.dumps(config.to_dict()))
    assert load_config(tmp_path / "c.json") == config
    assert config.seed == 3 and config.bits == 4 and config.rounding == "nearest" and config.mantissa_bits == 12
    assert config.mask_folds == 3


def test_exact_names_win_over_patterns_and_the_first_pattern_wins():
    config = load_config_text(CONFIG)
    search = config.search()
    assert list(search.per_layer) == ["fc3.weight", "re:fc[12].weight", "re:.*"]  # the order targets are read in
    assert search.per_layer["re:.*"] == 0.9
    assert list(config.layer_bits()) == ["fc3.weight", "re:fc.*"]


@pytest.mark.parametrize("text, message", [
    ("sparsity = 0.9\nspeed = 2\n", "unknown config key 'speed'"),
    ("sparsity = 0.9\n[layers]\n'fc1.weight' = { sparsity = 0.5, colour = 1 }\n", "layers.fc1.weight.colour"),
    ("bits = 'auto'\nsparsity = 0.9\n", "needs a fidelity budget"),
    ("bits = 4\n", "give a sparsity target, a fidelity budget, or both"),
    ("sparsity = 1.5\n", "sparsity must be at least 0 and below 1"),
    ("sparsity = 0.9\n[layers]\n're:(' = { bits = 3 }\n", "not a regular expression"),
    ("sparsity = 0.9\nversion = 7\n", "config version 7"),
    ("sparsity = = 0.9\n", "not valid TOML"),
    ("sparsity = 0.9\ninclude = 'fc1.weight'\n", "config key 'include' has a value of the wrong type"),
    ("sparsity = 0.9\nseed = 'one'\n", "config key 'seed'"),
    ("sparsity = 0.9\ncompensate = 1\n", "config key 'compensate'"),
    ("sparsity = 0.9\n[layers]\n'fc1.weight' = { sparsity = 'half' }\n", "layers.fc1.weight.sparsity"),
    ("sparsity = 0.9\nlayers = 3\n", "config key 'layers'"),
    ("sparsity = 0.9\nrefits = 2\ncompensate = false\n", "refits need compensation"),
    ("sparsity = 0.9\nmask_folds = 1\n", "mask_folds must be 0 or at least 2"),
    ("sparsity = 0.9\nmask_folds = 3\ncompensate = false\n", "mask_folds must be 0 or at least 2, with compensation"),
    ("sparsity = 0.9\nmask_folds = -2\n", "config key 'mask_folds'"),
    ("sparsity = 0.9\npool = 0.5\n", "config key 'pool'"),
    ("sparsity = 0.9\nfast_decode = 'yes'\n", "config key 'fast_decode'"),
    ("sparsity = 0.9\nrounding = 'stochastic'\n", "rounding must be one of feedback, nearest"),
    ("sparsity = 0.9\nmantissa_bits = 24\n", "mantissa bits must be an integer from 0 to 23"),
    ("sparsity = 0.9\nmantissa_bits = 10.5\n", "config key 'mantissa_bits'"),
    ("budget = 0.9\nmax_sparsity = 1\n", "max_sparsity must be at least 0 and below 1"),
    ("sparsity = 0.5\nbudget = 0.9\nmax_sparsity = 0.3\n", "give a budget and no sparsity"),
    ("max_sparsity = 0.3\n", "give a sparsity target, a fidelity budget, or both"),
    ("sparsity = 0.9\n[layers]\n'fc1.weight' = { bits = 12 }\n",
     "layers.fc1.weight.bits must be an integer from 1 to 8"),
    ("sparsity = 0.9\nscheme = 'step'\n[layers]\n'fc1.weight' = { bits = 15 }\n", "from 1 to 14 for step levels"),
    ("sparsity = 0.9\n[layers]\n'fc1.weight' = { bits = 'four' }\n", "layers.fc1.weight.bits"),
])
def test_bad_configs_name_what_is_wrong(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config_text(text, tmp_path)


def test_a_step_config_takes_per_layer_bits_past_8(tmp_path):
    config = load_config_text("sparsity = 0.9\nscheme = 'step'\nbits = 11\n[layers]\n'fc1.weight' = { bits = 13 }\n",
                              tmp_path)
    assert config.bits == 11 and config.layer_bits() == {"fc1.weight": 13}


def load_config_text(text: str, folder=None) -> OptimizeConfig:
    folder = Path(folder or tempfile.mkdtemp())
    (folder / "c.toml").write_text(text)
    return load_config(folder / "c.toml")


@pytest.fixture(scope="module")
def optimized(tmp_path_factory):
    folder = tmp_path_factory.mktemp("optimized")
    return optimize("zoo:mnist-mlp", "zoo:mnist-mlp", folder, sparsity=0.9, bits=4), folder


def test_optimize_writes_the_four_outputs_and_measures_the_decoded_container(optimized):
    result, folder = optimized
    assert sorted(p.name for p in folder.iterdir()) == sorted(OUTPUTS)  # no checkpoint or temporary file left
    report = json.loads((folder / "report.json").read_text())
    assert report["sizes"]["container"] == (folder / "model.ode").stat().st_size
    assert report["sizes"]["original"] == onnx_de.zoo_path("mnist-mlp").stat().st_size
    assert report["sizes"]["ratio"] > 30 and report["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert report["fidelity"]["top1_agreement"] >= 0.97
    # The reported fidelity is the decoded container's: recompute it from model.ode.
    decoded = onnx_de.decode(folder / "model.ode")
    again = onnx_de.evaluate("zoo:mnist-mlp", decoded, "zoo:mnist-mlp")
    assert again["top1_agreement"] == report["fidelity"]["top1_agreement"]
    data = onnx_de.load_data("zoo:mnist-mlp", onnx_de.open_model("zoo:mnist-mlp"), limit=32)
    for a, b in zip(run_unoptimized(onnx.load(str(folder / "model.onnx")), data.inputs),
                    run_unoptimized(decoded, data.inputs)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert set(report["layers"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert all(layer["bits"] == 4 for layer in report["layers"].values())
    assert report["rounded_parameter_values"] == 300 + 100 + 10  # the biases, to 10 mantissa bits


def test_report_html_is_one_self_contained_page_with_plots(optimized):
    _, folder = optimized
    page = (folder / "report.html").read_text()
    assert page.count("<svg") == 3 and "<script" not in page
    assert "src=" not in page and "href=" not in page and "url(" not in page  # nothing to fetch
    assert "fc1.weight" in page and "top1_agreement" in page


def test_an_interrupted_run_writes_nothing_and_resumes_to_the_same_container(optimized, tmp_path):
    result, _ = optimized

    def interrupt(record):
        if record["generation"] == 25:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        optimize("zoo:mnist-mlp", "zoo:mnist-mlp", tmp_path, sparsity=0.9, bits=4, progress=interrupt)
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]
    resumed = optimize("zoo:mnist-mlp", "zoo:mnist-mlp", tmp_path, sparsity=0.9, bits=4, resume=True)
    assert (tmp_path / "model.ode").read_bytes() == (result.output / "model.ode").read_bytes()
    assert resumed.fidelity == result.fidelity


def test_per_layer_overrides_reach_the_search_and_the_bits(tmp_path):
    config = OptimizeConfig(sparsity=0.8, bits=3, layers={"fc3.weight": {"sparsity": 0.3, "bits": 6}})
    result = optimize("zoo:mnist-mlp", "zoo:mnist-mlp", tmp_path, config)
    layers = result.to_dict()["layers"]
    assert layers["fc3.weight"]["sparsity"] == pytest.approx(0.3, abs=0.01) and layers["fc3.weight"]["bits"] == 6
    assert layers["fc1.weight"]["sparsity"] == pytest.approx(0.8, abs=0.01) and layers["fc1.weight"]["bits"] == 3


def test_sparsity_zero_quantizes_and_encodes_without_pruning(tmp_path):
    result = optimize("zoo:mnist-mlp", "zoo:mnist-mlp", tmp_path, sparsity=0, bits=5, scheme="step",
                      calibration_samples=64)
    assert result.sparsified.method == "none" and result.sparsified.sparsity == 0
    decoded = onnx_de.decode(tmp_path / "model.ode")
    levels = {t.name: numpy_helper.to_array(t) for t in decoded.graph.initializer}
    teacher = onnx_de.open_model("zoo:mnist-mlp")
    for weight in teacher.prunable:  # every weight kept, now on a 5-bit model-wide step
        assert np.count_nonzero(levels[weight.name]) == np.count_nonzero(teacher.initializer(weight.name))
        assert result.quantized.layers[weight.name]["bits"] == 5
    assert result.fidelity["top1_agreement"] >= 0.9


def test_a_budget_alone_picks_the_smallest_container_kept_on_held_out_and_all_calibration_samples(tmp_path):
    result = optimize("zoo:mnist-mlp", "zoo:mnist-mlp", tmp_path, budget=0.97, calibration_samples=96)
    tried = result.to_dict()["budget_search"]
    kept = [t for t in tried if t["kept"]]
    # kept: the budget holds on the held-out samples and on all the calibration samples
    assert kept and all(min(t["held_out_metric"], t["calibration_metric"]) >= 0.97 for t in kept)
    assert all(min(t["held_out_metric"], t["calibration_metric"]) < 0.97 for t in tried if not t["kept"])
    best = min(kept, key=lambda t: t["container"])
    assert (result.sparsified.config["sparsity"], result.quantized.scheme) == (best["sparsity"], best["scheme"])
    assert result.quantized.average_bits == pytest.approx(best["bits"], abs=1e-4)  # the record rounds to 4 places
    assert (tried[0]["sparsity"], tried[0]["scheme"], tried[0]["bits"]) == (0.0, "codebook", 6)  # unpruned first
    # Then bits per layer at the level of the smallest equal-width container.
    equal = [t for t in tried if not t["allocated"]]
    smallest = min((t for t in equal if t["kept"]), key=lambda t: t["container"])
    allocated = [t for t in tried if t["allocated"]]
    assert allocated
    assert {(t["sparsity"], t["scheme"]) for t in allocated} == {(smallest["sparsity"], smallest["scheme"])}
    # The chosen setting, rebuilt into the final container, has the size the search measured.
    assert result.container_bytes == best["container"]
    # The report sets the budget against the unseen samples' fidelity.
    check = result.to_dict()["budget"]
    assert check["judged_on"] == "held-out and all calibration samples" and check["value"] == 0.97
    assert check["kept_on_evaluation"] == (result.fidelity["top1_agreement"] >= 0.97)
    assert "budget" in result.summary() and "fidelity budget" in (tmp_path / "report.html").read_text()
    levels = sorted({t["sparsity"] for t in tried})
    failed = [level for level in levels if not any(t["kept"] for t in tried if t["sparsity"] == level)]
    assert not failed or failed == [levels[-1]]  # the ladder stops at the first level that keeps nothing
    for level in failed:  # its unquantized student missed the budget, and nothing was quantized; or it widened
        rows = [t for t in equal if t["sparsity"] == level]  # to the finest step, or until 3 wider settings did
        metrics = [min(t["held_out_metric"], t["calibration_metric"]) for t in rows]  # not raise the lower metric
        assert [t["scheme"] for t in rows] == ["unquantized"] and rows[0]["container"] is None or (
            (rows[-1]["scheme"], rows[-1]["bits"]) == ("step", 14) or (
                level > 0 and len(metrics) > 3 and max(metrics[-3:]) <= max(metrics[:-3])))
    # The chosen level's unquantized student keeps the budget on the held-out samples too.
    calibration = onnx_de.load_data("zoo:mnist-mlp", result.sparsified.student, split="calibration", limit=96)
    held_out = calibration.hold_out(len(calibration) // 4)[1]
    assert onnx_de.evaluate("zoo:mnist-mlp", result.sparsified.student, held_out)["top1_agreement"] >= 0.97


def test_max_sparsity_bounds_the_levels_a_budget_search_tries(tmp_path):
    # Below the ladder's first sparse level (0.5), only the lighter levels up to the bound are tried.
    result = optimize("zoo:mnist-mlp", "zoo:mnist-mlp", tmp_path, budget=0.97, max_sparsity=0.3, bits=4,
                      calibration_samples=96)
    levels = [t["sparsity"] for t in result.tried]
    assert levels[0] == 0.0 and 0.3 in levels and set(levels) <= {0.0, 0.3, 0.1}
    assert result.sparsified.config["sparsity"] in (0.0, 0.3)
    assert result.to_dict()["config"]["max_sparsity"] == 0.3
    # 0: quantization only.
    quantized_only = optimize("zoo:mnist-mlp", "zoo:mnist-mlp", tmp_path / "q", budget=0.97, max_sparsity=0,
                              calibration_samples=96)
    assert {t["sparsity"] for t in quantized_only.tried} == {0.0} and quantized_only.sparsified.sparsity == 0
    assert any(t["allocated"] for t in quantized_only.tried)


def test_an_interrupted_budget_search_resumes_from_its_finished_levels(tmp_path):
    settings = {"budget": 0.97, "bits": 4, "calibration_samples": 96}
    whole = optimize("zoo:mnist-mlp", "zoo:mnist-mlp", tmp_path / "whole", **settings)
    first, second = sorted({t["sparsity"] for t in whole.tried} - {0.0})[:2]
    starts = []

    def interrupt(record):  # in the second level's search, after its first checkpoint (generation 10)
        starts.extend([record["sparsity"]] if record["generation"] == 1 else [])
        if len(starts) == 2 and record["generation"] == 15:
            raise KeyboardInterrupt

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        optimize("zoo:mnist-mlp", "zoo:mnist-mlp", cut, progress=interrupt, **settings)
    assert sorted(p.name for p in cut.iterdir()) == [f"{LEVEL_PREFIX}{first:g}.npz",
                                                     f"{LEVEL_PREFIX}{second:g}.checkpoint.npz"]
    with pytest.raises(ConfigError, match="searched with other settings, model or data"):  # not silently reused
        optimize("zoo:mnist-mlp", "zoo:mnist-mlp", cut, resume=True, seed=5, **settings)
    with pytest.raises(ConfigError, match="searched with other settings, model or data"):  # another refit
        optimize("zoo:mnist-mlp", "zoo:mnist-mlp", cut, resume=True, mask_folds=2, **settings)
    generations = []
    resumed = optimize("zoo:mnist-mlp", "zoo:mnist-mlp", cut, resume=True,
                       progress=lambda record: generations.append(record["generation"]), **settings)
    assert generations[0] == 11  # the second level's search went on from its checkpoint; the first was not redone
    assert resumed.tried == whole.tried
    assert (cut / "model.ode").read_bytes() == (tmp_path / "whole" / "model.ode").read_bytes()
    assert sorted(p.name for p in cut.iterdir()) == sorted(OUTPUTS)  # the levels' files are gone


def test_mask_folds_choose_the_refit_in_the_pipeline(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="onnx_de.compensate")
    result = optimize("zoo:mnist-mlp", "zoo:mnist-mlp", tmp_path, sparsity=0.9, bits=4, mask_folds=3,
                      calibration_samples=192)
    assert "refits judged on held-out folds" in caplog.text  # the passes were compared by cross-validation
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["config"]["mask_folds"] == 3
    assert report["masks_from"] == result.sparsified.masks_from in ("search", "magnitude", "wanda")
    assert "(the least-squares refit pass kept)" in (tmp_path / "report.html").read_text()


def test_resuming_with_nothing_to_resume_says_so_and_runs_from_the_start(tmp_path, caplog):
    result = optimize("zoo:mnist-mlp", "zoo:mnist-mlp", tmp_path, sparsity=0, bits=8, calibration_samples=32,
                      resume=True)
    assert "holds no interrupted search to continue" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(OUTPUTS) and result.container_bytes > 0


def test_a_budget_nothing_keeps_returns_the_lossless_container(tmp_path, caplog):
    result = optimize("zoo:mnist-mlp", "zoo:mnist-mlp", tmp_path, budget=0.97, bits=1, calibration_samples=96)
    tried = result.to_dict()["budget_search"]
    assert [(t["sparsity"], t["bits"], t["kept"]) for t in tried] == [(0.0, 1, False)]  # sparser only loses more
    assert "no quantized setting keeps the budget" in caplog.text
    assert result.quantized.scheme == "lossless" and result.sparsified.sparsity == 0
    assert result.fidelity["top1_agreement"] == 1.0  # decoded from the container: the teacher, bit for bit
    assert result.to_dict()["budget"]["kept_on_evaluation"]
    assert "and on the unseen samples" in result.summary()
    decoded = {t.name: numpy_helper.to_array(t) for t in onnx_de.decode(tmp_path / "model.ode").graph.initializer}
    teacher = onnx_de.open_model("zoo:mnist-mlp")
    assert teacher.prunable
    for weight in teacher.prunable:
        assert np.array_equal(decoded[weight.name], teacher.initializer(weight.name))
