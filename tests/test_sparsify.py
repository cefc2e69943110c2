"""Directed-Evolution sparsification on the real MNIST models: fidelity, exact zeros, determinism, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnx_de
from onnx_de import ConfigError
from onnx_de.evolution import SearchConfig
from onnx_de.scoring import Scorer
from onnx_de.sparsify import sparsify


def zero_masks(path, names) -> dict[str, np.ndarray]:
    """Which elements of the named initializers are exactly zero in the ONNX file at ``path``."""
    found = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if t.name in names}
    return {n: found[n] == 0 for n in names}


def test_scorer_feeds_weights_in_place_and_matches_a_plain_session(mlp):
    data = onnx_de.load_data("zoo:mnist-mlp", mlp, limit=64)
    scorer = Scorer(mlp, data, [w.name for w in mlp.prunable], onnx_de.MetricSpec("classification"))
    # weights fed as inputs skip ONNX Runtime's weight prepacking: equal up to float rounding
    np.testing.assert_allclose(scorer.student_outputs()[0], scorer.teacher_outputs[0], rtol=1e-4, atol=1e-4)
    assert scorer.divergence() < 1e-9
    tentative = scorer.score("fc1.weight", np.arange(0, 235200, 3))
    assert tentative > 1e-3 and scorer.divergence() < 1e-9  # zeroed for the run, restored after it
    scorer.weights["fc3.weight"][:] = 0
    assert scorer.divergence() > 1.0


@pytest.fixture(scope="module")
def mlp90(tmp_path_factory):
    path = tmp_path_factory.mktemp("de") / "mlp90.onnx"
    result = sparsify("zoo:mnist-mlp", "zoo:mnist-mlp", config=SearchConfig(sparsity=0.9), output=path)
    return result, path


def test_de_with_compensation_keeps_97_5_percent_agreement_at_90_percent_sparsity(mlp90):
    result, path = mlp90
    assert result.sparsity == pytest.approx(0.9, abs=1e-5)
    assert result.fidelity["top1_agreement"] >= 0.975  # measured 0.979 (seeds 1, 2: 0.978, 0.980)
    assert result.fidelity["split"] == "evaluation"
    # the written file runs in ONNX Runtime and gives the reported fidelity
    again = onnx_de.evaluate("zoo:mnist-mlp", path, "zoo:mnist-mlp")
    assert again["top1_agreement"] == result.fidelity["top1_agreement"]


def test_pruned_weights_are_exactly_zero_in_the_written_model(mlp90):
    result, path = mlp90
    written = zero_masks(path, list(result.masks))
    for name, mask in result.masks.items():
        assert written[name][~mask].all()  # every pruned weight is exactly zero
        # survivors may be refit to zero only where their input is always zero (dead MNIST border pixels)
        assert np.count_nonzero(written[name] & mask) <= 0.02 * mask.size
    teacher = onnx_de.open_model("zoo:mnist-mlp")
    assert not any((teacher.initializer(n) == 0).any() for n in result.masks)


def test_de_beats_magnitude_pruning_at_the_same_per_layer_sparsity():
    # At DE's own allocation. Measured margin: 0.9-1.0 points of agreement (0.915-0.920 against 0.906-0.910 on
    # two CPUs); 5 points are not reached here (the next test: with every layer at the target they are).
    de = sparsify("zoo:mnist-mlp", "zoo:mnist-mlp", config=SearchConfig(sparsity=0.9), compensate=False)
    allocation = {name: layer["sparsity"] for name, layer in de.layers.items()}
    magnitude = sparsify("zoo:mnist-mlp", "zoo:mnist-mlp", method="magnitude", compensate=False,
                         config=SearchConfig(sparsity=0.9, per_layer=allocation))
    assert magnitude.layers == de.layers
    assert de.fidelity["top1_agreement"] > magnitude.fidelity["top1_agreement"] + 0.005


def test_de_beats_magnitude_pruning_by_five_points_with_every_layer_at_the_target():
    # The paper's per-layer mode: both prune each layer to 90%, so only the choice of weights differs.
    # Measured: 0.551 against 0.399 (seeds 1 and 2: 0.562, 0.534).
    config = SearchConfig(per_layer={"re:.*": 0.9})
    de = sparsify("zoo:mnist-mlp", "zoo:mnist-mlp", config=config, compensate=False)
    magnitude = sparsify("zoo:mnist-mlp", "zoo:mnist-mlp", config=config, method="magnitude", compensate=False)
    assert magnitude.layers == de.layers
    assert all(layer["sparsity"] == pytest.approx(0.9, abs=1e-3) for layer in de.layers.values())
    assert de.fidelity["top1_agreement"] > magnitude.fidelity["top1_agreement"] + 0.05


def test_same_seed_same_masks_other_seed_other_masks():
    def masks(seed):
        config = SearchConfig(sparsity=0.7, seed=seed)
        return sparsify("zoo:mnist-mlp", "zoo:mnist-mlp", config=config, calibration_samples=128,
                        compensate=False, eval_data=None).masks

    first, second, other = masks(1), masks(1), masks(2)
    assert all(np.array_equal(first[n], second[n]) for n in first)
    assert not all(np.array_equal(first[n], other[n]) for n in first)


def test_killed_search_resumes_to_the_same_result(tmp_path):
    common = ["zoo:mnist-lenet5", "--data", "zoo:mnist-lenet5", "--sparsity", "0.9", "--limit", "256", "--seed", "3"]
    env = {**os.environ, "ONNX_DE_DEBUG": ""}
    reference = tmp_path / "reference.onnx"
    done = subprocess.run([sys.executable, "-m", "onnx_de", "sparsify", *common, "-o", str(reference)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr

    output, checkpoint = tmp_path / "resumed.onnx", tmp_path / "state.npz"
    command = [sys.executable, "-m", "onnx_de", "sparsify", *common, "-o", str(output), "--checkpoint", str(checkpoint)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.exists() and not output.exists()  # killed mid-search: a checkpoint, no partial output
    done = subprocess.run([*command, "--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    names = [w.name for w in onnx_de.open_model("zoo:mnist-lenet5").prunable]
    assert not checkpoint.exists()  # a finished run leaves no checkpoint behind
    expected, resumed = zero_masks(reference, names), zero_masks(output, names)
    assert all(np.array_equal(expected[n], resumed[n]) for n in names)


class _Interrupt(Exception):
    pass


def test_interim_refits_resume_to_the_same_masks_and_weights(tmp_path):
    config = SearchConfig(sparsity=0.9, refits=3, checkpoint_every=1000)
    options = dict(config=config, calibration_samples=256, eval_data=None, mask_candidates=())
    reference = sparsify("zoo:mnist-mlp", "zoo:mnist-mlp", **options)
    refits = [r for r in reference.trajectory if "refit_divergence" in r]
    assert len(refits) == 3 and all(r["refit_divergence"] <= r["divergence"] for r in refits)
    assert any(r["refit_divergence"] < 0.5 * r["divergence"] for r in refits)  # a refit that changed something

    def stop_after_first_refit(record):
        if record["generation"] == refits[0]["generation"] + 1:  # the refit's checkpoint is written; stop
            raise _Interrupt

    checkpoint = tmp_path / "state.npz"
    with pytest.raises(_Interrupt):
        sparsify("zoo:mnist-mlp", "zoo:mnist-mlp", checkpoint=checkpoint, progress=stop_after_first_refit, **options)
    assert checkpoint.exists()
    resumed = sparsify("zoo:mnist-mlp", "zoo:mnist-mlp", checkpoint=checkpoint, resume=True, **options)

    def untimed(trajectory):
        return [{k: v for k, v in r.items() if k != "candidates_per_s"} for r in trajectory]

    assert untimed(resumed.trajectory) == untimed(reference.trajectory)
    for name, mask in reference.masks.items():
        assert np.array_equal(resumed.masks[name], mask)
        assert np.array_equal(resumed.student.initializer(name), reference.student.initializer(name))
    with pytest.raises(ConfigError, match="refits"):
        sparsify("zoo:mnist-mlp", "zoo:mnist-mlp", compensate=False, **options)


def test_a_checkpoint_is_not_resumed_on_other_data(tmp_path):
    checkpoint = tmp_path / "state.npz"
    options = dict(config=SearchConfig(sparsity=0.3), eval_data=None, mask_candidates=(), checkpoint=checkpoint)
    first = sparsify("zoo:mnist-mlp", "zoo:mnist-mlp", calibration_samples=64, **options)
    assert checkpoint.exists()  # no output written: the checkpoint stays
    for other in (dict(calibration_samples=63), dict(calibration_samples=64, augment=1),
                  dict(calibration_samples=64, held_out=0.25)):
        with pytest.raises(ConfigError, match="another model or other data"):
            sparsify("zoo:mnist-mlp", "zoo:mnist-mlp", resume=True, **other, **options)
    again = sparsify("zoo:mnist-mlp", "zoo:mnist-mlp", calibration_samples=64, resume=True, **options)
    assert again.trajectory == first.trajectory  # the same data: the finished search is taken as it was


def test_bad_targets_are_config_errors():
    with pytest.raises(ConfigError, match="sparsity"):
        SearchConfig(sparsity=1.2)
    with pytest.raises(ConfigError, match="prior"):
        SearchConfig(prior="oracle")
    with pytest.raises(ConfigError, match="refits"):
        SearchConfig(refits=-1)
    with pytest.raises(ConfigError, match="no per-layer target matches"):
        sparsify("zoo:mnist-mlp", "zoo:mnist-mlp", config=SearchConfig(per_layer={"conv9": 0.5}))


def test_budget_stops_the_search_before_calibration_agreement_falls_below_it():
    config = SearchConfig(sparsity=0.98, budget=0.97)
    result = sparsify("zoo:mnist-mlp", "zoo:mnist-mlp", config=config, compensate=False, calibration_samples=256)
    assert result.stopped == "budget" and result.sparsity < 0.98
    assert all(r["calibration_top1_agreement"] >= 0.97 for r in result.trajectory)
    calibration = onnx_de.load_data("zoo:mnist-mlp", result.student, split="calibration", limit=256)
    assert onnx_de.evaluate("zoo:mnist-mlp", result.student, calibration)["top1_agreement"] >= 0.97
    assert result.to_dict()["stopped"] == "budget"


def test_a_pool_of_scorer_replicas_scores_like_one_scorer(lenet):
    from onnx_de.parallel import ScorerPool

    data = onnx_de.load_data("zoo:mnist-lenet5", lenet, limit=64)
    names = [w.name for w in lenet.prunable]
    spec = onnx_de.MetricSpec("classification")
    one, pool = Scorer(lenet, data, names, spec, intra_op_threads=1), ScorerPool(lenet, data, names, spec, workers=2)
    rng = np.random.default_rng(0)
    candidates = [(n, rng.choice(one.weights[n].size, 50, replace=False)) for n in rng.choice(names, 5)]
    assert pool.refresh(set(names)) == pytest.approx(one.refresh(set(names)), abs=1e-9)
    np.testing.assert_allclose(pool.score_many(candidates), one.score_many(candidates), rtol=1e-4)
    pool.commit(names[0], np.arange(100))
    one.commit(names[0], np.arange(100))
    assert pool.refresh({names[1]}) == pytest.approx(one.refresh({names[1]}), rel=1e-4)
    assert all((replica.weights[names[0]].reshape(-1)[:100] == 0).all() for replica in pool.replicas)


def test_final_mask_candidates_never_lose_to_the_search_masks_on_calibration(mlp90):
    with_candidates, _ = mlp90
    plain = sparsify("zoo:mnist-mlp", "zoo:mnist-mlp", config=SearchConfig(sparsity=0.9), mask_candidates=(),
                     eval_data=None)
    assert with_candidates.divergence <= plain.divergence  # a pass from other masks is kept only if better
    assert with_candidates.layers == plain.layers  # the search's allocation is kept: same zeros per layer
    assert with_candidates.masks_from in {"search", "magnitude", "wanda"} and plain.masks_from == "search"
    assert set(with_candidates.compensated) == set(with_candidates.masks)  # whether each layer's refit was kept
    # the Wanda masks at the search's allocation, refit, are one of the passes: never better on calibration
    allocation = {name: layer["sparsity"] for name, layer in with_candidates.layers.items()}
    wanda = sparsify("zoo:mnist-mlp", "zoo:mnist-mlp", config=SearchConfig(sparsity=0.9, per_layer=allocation),
                     method="wanda", eval_data=None)
    assert wanda.layers == with_candidates.layers
    assert with_candidates.divergence <= wanda.divergence * (1 + 1e-6)
    with pytest.raises(ConfigError, match="mask candidates"):
        sparsify("zoo:mnist-mlp", "zoo:mnist-mlp", mask_candidates=("random",))


def test_held_out_samples_stay_out_of_the_search_and_judge_the_refits():
    teacher = onnx_de.open_model("zoo:mnist-mlp")
    calibration = onnx_de.load_data("zoo:mnist-mlp", teacher, split="calibration", limit=128)
    config = SearchConfig(sparsity=0.6, seed=3)
    searched = sparsify(teacher, calibration, config=config, held_out=0.25, compensate=False, eval_data=None)
    first = sparsify(teacher, calibration.part(0, 96), config=config, compensate=False, eval_data=None)
    assert all(np.array_equal(searched.masks[n], first.masks[n]) for n in first.masks)  # the last 32 unseen
    refit = sparsify(teacher, calibration, config=config, held_out=0.25, eval_data=None)
    assert refit.masks_from is not None  # the held-out samples chose a pass (here Wanda's, without a refit)
    judge = Scorer(teacher, calibration.part(96, None), list(refit.masks), onnx_de.MetricSpec("classification"))
    for name in refit.masks:
        judge.weights[name][...] = refit.student.initializer(name)
    assert judge.divergence() == pytest.approx(refit.divergence, rel=1e-6)  # measured on the held-out 32
    for bad in (1.0, -0.1, 0.001):
        with pytest.raises(ConfigError, match="held_out"):
            sparsify(teacher, calibration, config=config, held_out=bad)


def test_mask_folds_choose_the_pass_by_samples_its_refit_never_saw(tmp_path):
    # mnist-lenet5 at 80%: the refit from Wanda's masks fits the 512 calibration digits best and is kept by
    # default, but it is the worst on held-out folds; 4-fold cross-validation keeps another pass, whose refit
    # has the lower KL on the evaluation digits (BENCHMARKS.md, the v2 section: DE's own masks there; on this
    # project's AMD EPYC with AVX-512, whose float kernels give DE another student, magnitude's).
    config, checkpoint = SearchConfig(sparsity=0.8), tmp_path / "search.npz"
    in_sample = sparsify("zoo:mnist-lenet5", "zoo:mnist-lenet5", config=config, checkpoint=checkpoint)
    folds = sparsify("zoo:mnist-lenet5", "zoo:mnist-lenet5", config=config, checkpoint=checkpoint, resume=True,
                     mask_folds=4)  # the same search, from its checkpoint
    assert folds.layers == in_sample.layers
    assert in_sample.masks_from == "wanda" and folds.masks_from in ("search", "magnitude")
    assert folds.divergence > in_sample.divergence  # on the digits they were fitted to, Wanda's refit wins
    assert folds.fidelity["kl"] < in_sample.fidelity["kl"]  # on unseen digits, the pass cross-validation chose
    for bad in ({"mask_folds": 1}, {"mask_folds": -2}, {"mask_folds": 4, "held_out": 0.25},
                {"mask_folds": 9, "calibration_samples": 8}, {"mask_folds": 4, "compensate": False},
                {"mask_folds": 4, "method": "magnitude"}):
        with pytest.raises(ConfigError, match="mask_folds"):
            sparsify("zoo:mnist-lenet5", "zoo:mnist-lenet5", config=config, **bad)
