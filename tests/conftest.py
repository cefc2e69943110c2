"""Test set-up: a private cache folder (ONNX Runtime and the zoo write there) and shared fixtures."""

from __future__ import annotations

import os
import tempfile

# Before onnxruntime is imported anywhere: it writes under $XDG_CACHE_HOME.
os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="onnx-de-test-cache-"))

import pytest  # noqa: E402

import onnx_de  # noqa: E402


@pytest.fixture(scope="session")
def mlp():
    return onnx_de.open_model("zoo:mnist-mlp")


@pytest.fixture(scope="session")
def lenet():
    return onnx_de.open_model("zoo:mnist-lenet5")
