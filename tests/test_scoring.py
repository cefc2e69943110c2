"""The Scorer against full runs of plain graphs: partial execution and ONNX Runtime's optimized graph, on real
models with skip connections and folded normalizations."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest

import onnx_de
from onnx_de.evaluate import resolve_metric
from onnx_de.graphs import downstream_of, promote_weights
from onnx_de.runtime import cuda_devices, resolve_device
from onnx_de.runtime_graph import runtime_graph
from onnx_de.scoring import Scorer


@pytest.mark.parametrize("name, samples", [("mnist-lenet5", 64), ("ppocr-cls", 16), ("efficientnet-lite0", 4)])
def test_partial_execution_scores_like_a_full_run(name, samples):
    model = onnx_de.open_model(f"zoo:{name}")
    data = onnx_de.load_data(f"zoo:{name}", model, limit=samples)
    names = [w.name for w in model.prunable]
    spec = resolve_metric(None, model, f"zoo:{name}")
    partial = Scorer(model, data, names, spec, optimized_graph=True)
    full = Scorer(model, data, names, spec, partial=False, optimized_graph=False)
    assert partial.partial and partial._runtime.optimized and not full._runtime.optimized
    rng = np.random.default_rng(0)
    layers = [names[0], names[len(names) // 2], names[-1]]
    assert partial.refresh(set(layers)) == pytest.approx(full.refresh(set(layers)), rel=1e-5, abs=1e-9)
    for layer in layers:
        idx = rng.choice(partial.weights[layer].size, partial.weights[layer].size // 4, replace=False)
        expected = full.score(layer, idx)
        assert expected > 0
        assert partial.score(layer, idx) == pytest.approx(expected, rel=1e-3, abs=1e-9)
    # after a commit the frontiers are stale: scores fall back to full runs until the next refresh
    partial.commit(layers[1], np.arange(10))
    full.commit(layers[1], np.arange(10))
    assert partial.score(layers[2], np.arange(5)) == pytest.approx(full.score(layers[2], np.arange(5)), rel=1e-3, abs=1e-9)


def test_sessions_sharing_one_arena_compute_what_a_session_with_its_own_does():
    models = {name: onnx_de.open_model(f"zoo:{name}") for name in ("mnist-lenet5", "mnist-mlp")}
    digits = {name: onnx_de.load_data(f"zoo:{name}", model, limit=32) for name, model in models.items()}
    expected = {name: onnx_de.run_model(onnx_de.create_session(model), digits[name]) for name, model in models.items()}
    shared = {name: onnx_de.create_session(model, arena="shared") for name, model in models.items()}
    for _ in range(2):  # interleaved, so that each run reuses memory the other session's run freed
        for name, session in shared.items():
            for got, want in zip(onnx_de.run_model(session, digits[name]), expected[name]):
                np.testing.assert_array_equal(got, want)
    with pytest.raises(onnx_de.ConfigError, match="arena must be one of"):
        onnx_de.create_session(models["mnist-mlp"], arena="pooled")


@pytest.mark.parametrize("name, samples, metric", [("mnist-lenet5", 64, None), ("ppocr-cls", 16, None),
                                                    ("ppocr-det", 2, None), ("mnist-mlp", 64, "generic")])
def test_the_divergence_computed_in_the_graph_equals_numpy_s(name, samples, metric):
    """kl (class logits; ppocr-cls: probabilities), bkl (a probability map) and nmse: the float32 sums the
    partial graphs return give the divergence the host computes in float64 from their outputs, to float32
    rounding (log-probabilities near 0 carry about 1e-8 of it into a KL)."""
    model = onnx_de.open_model(f"zoo:{name}")
    data = onnx_de.load_data(f"zoo:{name}", model, limit=samples)
    names = [w.name for w in model.prunable]
    spec = resolve_metric(metric, model, f"zoo:{name}")
    host, graph = (Scorer(model, data, names, spec, graph_divergence=g) for g in (False, True))
    assert graph._graph_divergence and not host._graph_divergence
    rng = np.random.default_rng(0)
    layers = [names[0], names[len(names) // 2], names[-1]]
    assert graph.refresh(set(layers)) == host.refresh(set(layers))  # full runs: numpy on both
    for layer in layers:
        idx = rng.choice(host.weights[layer].size, host.weights[layer].size // 4, replace=False)
        expected = host.score(layer, idx)
        assert expected > host.divergence() * (1 + 1e-3)  # the candidate matters
        assert graph.score(layer, idx) == pytest.approx(expected, rel=1e-4, abs=5e-8)
        assert graph.score_values(layer, host.weights[layer] * 0.9) == pytest.approx(
            host.score_values(layer, host.weights[layer] * 0.9), rel=1e-4, abs=5e-8)


def test_an_output_that_later_nodes_read_scores_like_a_full_run(tmp_path):
    """LeNet-5 with its hidden ``relu`` also an output: that output is a frontier tensor of the last layer, and
    the last layer's partial run leaves it as the refresh computed it (nmse reads every output)."""
    proto = onnx.shape_inference.infer_shapes(onnx_de.open_model("zoo:mnist-lenet5").proto)
    proto.graph.output.append(next(v for v in proto.graph.value_info if v.name == "relu"))
    onnx.save(proto, tmp_path / "two-outputs.onnx")
    model = onnx_de.open_model(tmp_path / "two-outputs.onnx")
    data = onnx_de.load_data("zoo:mnist-lenet5", model, limit=64)
    names = [w.name for w in model.prunable]
    spec = onnx_de.MetricSpec("generic")
    full = Scorer(model, data, names, spec, partial=False)
    host, graph = (Scorer(model, data, names, spec, graph_divergence=g) for g in (False, True))
    assert host._downstream[names[-1]].outputs == ["logits"] and "relu" in host._downstream[names[-1]].frontier
    for scorer in (full, host, graph):
        scorer.refresh(set(names))
    for layer in names:
        idx = np.arange(0, full.weights[layer].size, 4)
        expected = full.score(layer, idx)
        assert host.score(layer, idx) == pytest.approx(expected, rel=1e-4, abs=1e-9)
        assert graph.score(layer, idx) == pytest.approx(expected, rel=1e-4, abs=1e-9)


def test_downstream_of_the_last_layer_is_small_and_of_the_first_is_everything():
    model = onnx_de.open_model("zoo:efficientnet-lite0")
    names = [w.name for w in model.prunable]
    promoted = promote_weights(model.proto, names)
    first, last = downstream_of(promoted, [names[0]]), downstream_of(promoted, [names[-1]])
    assert len(first.nodes) == len(promoted.graph.node) and first.frontier == []
    assert len(last.nodes) <= 3 and last.outputs == ["logits"] and len(last.frontier) == 1


@pytest.mark.parametrize("name", ["ppocr-det", "efficientnet-lite0", "mnist-mlp"])
def test_the_optimized_graph_places_every_weight_element_once(name):
    model = onnx_de.open_model(f"zoo:{name}")
    names = [w.name for w in model.prunable]
    graph = runtime_graph(model, names)
    assert graph.optimized
    ops = {node.op_type for node in graph.proto.graph.node}
    if name != "mnist-mlp":  # convolutions run in ONNX Runtime's blocked layout
        assert "ReorderInput" in ops or "ReorderOutput" in ops
    used = {}
    for weight_name in names:
        weight = model.initializer(weight_name).reshape(-1)
        for place in graph.placements[weight_name]:
            held = graph.tensors[place.tensor].reshape(-1)
            np.testing.assert_allclose(held[place.positions], weight * place.scale, rtol=1e-6, atol=1e-7)
            positions = used.setdefault(place.tensor, set())
            assert not positions & set(place.positions.tolist())
            positions.update(place.positions.tolist())
    # zeroing a weight element zeroes exactly the runtime elements that hold it
    first = names[0]
    graph.zero(first, np.array([0, 3]))
    for place in graph.placements[first]:
        assert (graph.tensors[place.tensor].reshape(-1)[place.positions[[0, 3]]] == 0).all()


requires_gpu = pytest.mark.skipif(not cuda_devices(), reason="no CUDA GPU on this machine")
without_gpu = pytest.mark.skipif(bool(cuda_devices()), reason="a CUDA GPU is present")


@without_gpu
def test_without_a_gpu_auto_is_the_cpu_and_cuda_is_refused(caplog, tmp_path):
    with caplog.at_level(logging.INFO, logger="onnx_de.runtime"):
        assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    assert "running on the CPU" in caplog.text
    with pytest.raises(onnx_de.ConfigError, match="no CUDA GPU"):
        onnx_de.sparsify("zoo:mnist-mlp", "zoo:mnist-mlp", device="cuda", output=tmp_path / "s.onnx")
    assert not (tmp_path / "s.onnx").exists()
    with pytest.raises(onnx_de.ConfigError, match="device must be"):
        resolve_device("gpu")


@requires_gpu
@pytest.mark.parametrize("name, samples", [("mnist-lenet5", 64), ("efficientnet-lite0", 4)])
def test_the_cuda_scorer_scores_like_the_cpu_scorer(name, samples):
    model = onnx_de.open_model(f"zoo:{name}")
    data = onnx_de.load_data(f"zoo:{name}", model, limit=samples)
    names = [w.name for w in model.prunable]
    spec = onnx_de.MetricSpec("classification")
    cpu, gpu = (Scorer(model, data, names, spec, device=device) for device in ("cpu", "cuda"))
    assert gpu.divergence() < 1e-6  # teacher and student both on the GPU, full float32
    rng = np.random.default_rng(0)
    candidates = [(n, rng.choice(cpu.weights[n].size, max(1, cpu.weights[n].size // 10), replace=False))
                  for n in rng.choice(names, 6)]
    for scorer in (cpu, gpu):
        scorer.refresh(set(names))
    np.testing.assert_allclose(gpu.score_many(candidates), cpu.score_many(candidates), rtol=1e-2, atol=1e-7)
    gpu.commit(names[0], np.arange(10))
    cpu.commit(names[0], np.arange(10))
    assert gpu.divergence() == pytest.approx(cpu.divergence(), rel=1e-2, abs=1e-7)


@requires_gpu
def test_a_search_on_the_gpu_is_reproducible_and_keeps_fidelity():
    config = onnx_de.SearchConfig(sparsity=0.9)
    first, second = (onnx_de.sparsify("zoo:mnist-mlp", "zoo:mnist-mlp", config=config, device="cuda")
                     for _ in range(2))
    assert all(np.array_equal(first.masks[n], second.masks[n]) for n in first.masks)
    assert first.fidelity["top1_agreement"] >= 0.97
