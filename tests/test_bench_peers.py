"""The peer benchmark's own pieces (tools/bench_peers.py): the graph rewrite it hands ONNX Runtime's 4-bit
quantizer, its magnitude-pruning baseline, and the rule that picks each method's setting on calibration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

import onnx_de

from helpers import run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import bench_peers  # noqa: E402


def test_gemm_as_matmul_keeps_the_outputs_of_a_real_model():
    teacher = onnx_de.open_model("zoo:mnist-mlp")
    rewritten = bench_peers.gemm_as_matmul(teacher.proto)
    onnx.checker.check_model(rewritten, full_check=True)
    assert [n.op_type for n in rewritten.graph.node].count("Gemm") == 0
    assert [n.op_type for n in rewritten.graph.node].count("MatMul") == 3
    digits = onnx_de.load_data("zoo:mnist-mlp", teacher, split="evaluation").take(32).inputs
    expected, actual = run(teacher.proto, digits)[0], run(rewritten, digits)[0]
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    assert [n.op_type for n in teacher.proto.graph.node].count("Gemm") == 3  # the input is left as it was


def test_magnitude_pruning_is_global_and_touches_only_the_named_weights():
    teacher = onnx_de.open_model("zoo:mnist-lenet5")
    names = [w.name for w in teacher.prunable]
    pruned = bench_peers.magnitude_pruned(teacher.proto, names, 0.8)
    before = {t.name: numpy_helper.to_array(t) for t in teacher.proto.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    zeros = sum(int((after[n] == 0).sum()) for n in names)
    assert abs(zeros / sum(after[n].size for n in names) - 0.8) < 1e-3
    kept = np.concatenate([np.abs(after[n][after[n] != 0]) for n in names])
    dropped = np.concatenate([np.abs(before[n][after[n] == 0]) for n in names])
    assert kept.min() >= dropped.max()  # one threshold over all layers
    for name in set(before) - set(names):
        np.testing.assert_array_equal(after[name], before[name])
    for name in names:  # survivors keep their exact values
        np.testing.assert_array_equal(after[name][after[name] != 0], before[name][after[name] != 0])


def test_settings_are_chosen_on_calibration_and_the_front_is_monotone():
    point = lambda name, size, cal, ev: bench_peers.Point("m", name, size, size, cal, ev, 0.0, 0.0)  # noqa: E731
    points = [point("a", 100, 0.999, 0.990), point("b", 50, 0.995, 0.970), point("c", 20, 0.980, 0.995),
              point("d", 70, 0.990, 0.985)]
    assert bench_peers.chosen(points, 0.99).setting == "b"  # smallest passing on calibration, not evaluation
    assert bench_peers.chosen(points, 0.9999) is None
    front = bench_peers.frontier(points)
    assert [p.setting for p in front] == ["c"]  # c is smallest and best on evaluation: it dominates the rest
    front = bench_peers.frontier(points + [point("e", 200, 1.0, 1.0)])
    assert [p.setting for p in front] == ["c", "e"]


def test_each_peer_point_meets_the_smallest_onnx_de_point_no_more_divergent():
    def point(method, name, size, evaluation, divergence):
        return bench_peers.Point(method, name, size, size, evaluation, evaluation, 0.0, 0.0, divergence)

    ours = [point("onnx-de", "small", 100, 0.94, 0.02), point("onnx-de", "mid", 200, 0.97, 0.004),
            point("onnx-de", "old", 50, 0.99, None)]  # measured before divergences were recorded: left out
    theirs = [point("nncodec", "coarse", 150, 0.96, 0.01), point("nncodec", "fine", 300, 0.99, 0.001),
              point("nncodec", "poor", 90, 0.90, 0.05)]  # under 0.95: not compared
    lines = bench_peers.divergence_lines(bench_peers.Results("m", 1000, "top1_agreement", {}, ours + theirs, {}))
    rows = [line for line in lines if line.startswith("| nncodec")]
    assert len(rows) == 2 and "KL" in lines[1]
    assert "| mid | 200 |" in rows[0] and rows[0].endswith("1.33x larger |")  # coarse: 150 B at 0.01
    assert "none as close" in rows[1]  # nothing of ours is as close as 0.001


def test_onnx_de_allocations_join_the_grid_and_merge_keeps_earlier_points(tmp_path):
    tool = Path(__file__).resolve().parents[1] / "tools" / "bench_peers.py"
    common = [sys.executable, str(tool), "mnist-mlp", "--out", str(tmp_path), "--methods", "onnx-de",
              "--sparsity", "0", "--schemes", "codebook"]
    subprocess.run([*common, "--bits", "4", "--budgets", "0.99"], check=True, capture_output=True)
    subprocess.run([*common, "--bits", "3", "--merge", "--entropy-weights", "0.03"], check=True, capture_output=True)
    points = {p.setting: p for p in bench_peers.Results.load(tmp_path / "mnist-mlp.json").points}
    allocated = [s for s in points if s.startswith("s=0 codebook auto@0.99 (")]
    assert {"s=0 codebook b=4", "s=0 codebook b=3", "s=0 codebook b=3 ew=0.03"} < set(points) and len(allocated) == 1
    assert points["s=0 codebook b=3 ew=0.03"].bytes < points["s=0 codebook b=3"].bytes  # cheaper symbols
    stored = json.loads((tmp_path / "mnist-mlp.json").read_text())  # both runs' commands and environments
    assert stored["command"].count("bench_peers.py") == 2 and stored["versions"].count("onnx-de ") == 2
    assert points[allocated[0]].calibration >= 0.99  # the allocation keeps its budget on calibration
    lossless = points["lossless"]  # the fp32 file through `onnx-de encode`
    assert lossless.calibration == lossless.evaluation == 1.0 and lossless.bytes < 0.95 * stored["fp32_bytes"]
    assert lossless.divergence == 0 < points["s=0 codebook b=3"].divergence  # the evaluation split's KL
