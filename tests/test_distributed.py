"""The Ray executor on a real local Ray cluster (a head on 127.0.0.1 and its worker processes) with mnist-lenet5:
the same masks as the local executor, and a worker killed mid-search replaced without changing the result."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import onnx_de
from onnx_de import ConfigError, SearchConfig, sparsify
from onnx_de.distributed import RayScorerPool

SETTINGS = {"config": SearchConfig(sparsity=0.3), "calibration_samples": 128, "compensate": False,
            "eval_data": None, "workers": 2, "intra_op_threads": 1}


def _ray(*args: str) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("ray")), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def cluster():
    """A Ray head on 127.0.0.1 with two CPUs, started as a user would (``ray start``), with token
    authentication and a token of its own; its address. The test process joins it with the same token."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="ode-ray-")  # short: Ray's socket paths live under it
    token = Path(temp, "token")
    token.write_text(secrets.token_hex(32))
    settings = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"}
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    started = _ray("start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                   "--object-store-memory=200000000", "--include-dashboard=false", "--disable-usage-stats",
                   f"--temp-dir={temp}")
    try:
        assert started.returncode == 0, started.stderr
        yield f"127.0.0.1:{port}"
    finally:
        _ray("stop", "--force")
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def local_masks():
    return sparsify("zoo:mnist-lenet5", "zoo:mnist-lenet5", executor="local", **SETTINGS).masks


def test_ray_workers_find_the_local_executors_masks(cluster, local_masks):
    result = sparsify("zoo:mnist-lenet5", "zoo:mnist-lenet5", executor=f"ray:{cluster}", **SETTINGS)
    assert result.sparsity == pytest.approx(SETTINGS["config"].sparsity, abs=1e-3)
    assert result.trajectory and all(np.array_equal(result.masks[n], local_masks[n]) for n in local_masks)


def test_a_worker_killed_mid_search_is_replaced_and_the_result_is_unchanged(cluster, local_masks, caplog):
    killed = []

    def kill_one_worker(record: dict) -> None:
        if record["generation"] == 3:
            found = subprocess.run(["pgrep", "-f", "ray::ScorerActor"], capture_output=True, text=True).stdout.split()
            os.kill(int(found[0]), signal.SIGKILL)
            killed.append(int(found[0]))

    with caplog.at_level(logging.WARNING, logger="onnx_de.distributed"):
        result = sparsify("zoo:mnist-lenet5", "zoo:mnist-lenet5", executor=f"ray:{cluster}", progress=kill_one_worker,
                          **SETTINGS)
    assert killed and "starting a replacement" in caplog.text
    assert all(np.array_equal(result.masks[n], local_masks[n]) for n in local_masks)


def test_a_pool_scores_like_one_scorer_and_sends_only_changed_weights(cluster, lenet):
    data = onnx_de.load_data("zoo:mnist-lenet5", lenet, limit=64)
    names = [w.name for w in lenet.prunable]
    spec = onnx_de.MetricSpec("classification")
    one = onnx_de.scoring.Scorer(lenet, data, names, spec, intra_op_threads=1)
    pool = RayScorerPool(lenet, data, names, spec, workers=2, address=cluster, intra_op_threads=1)
    try:
        rng = np.random.default_rng(0)
        candidates = [(n, rng.choice(one.weights[n].size, 40, replace=False)) for n in rng.choice(names, 5)]
        assert pool.refresh(set(names)) == one.refresh(set(names))
        assert pool.score_many(candidates) == one.score_many(candidates)
        for scorer in (pool, one):
            scorer.commit(names[1], np.arange(200))
            scorer.weights[names[0]][0] = 0.5  # an edit outside commit (compensation, a rollback) reaches them too
        assert pool.refresh({names[2]}) == one.refresh({names[2]})
        assert pool.score_many(candidates[:3]) == one.score_many(candidates[:3])
    finally:
        pool.close()
    assert len(pool.actors) == 0


def test_a_cluster_too_small_for_the_workers_is_refused(cluster, lenet):
    data = onnx_de.load_data("zoo:mnist-lenet5", lenet, limit=8)
    with pytest.raises(ConfigError, match="2 CPUs; 3 workers"):
        RayScorerPool(lenet, data, [w.name for w in lenet.prunable], onnx_de.MetricSpec("classification"),
                      workers=3, address=cluster, intra_op_threads=1)


@pytest.mark.parametrize("executor", ["threads", "local:x", "ray:", "RAY"])
def test_unknown_executors_are_config_errors(executor):
    with pytest.raises(ConfigError, match="executor must be"):
        sparsify("zoo:mnist-lenet5", "zoo:mnist-lenet5", executor=executor)
