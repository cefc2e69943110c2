"""Test set-up: a private cache folder (ONNX Runtime and the zoo write there) and shared fixtures."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# Before onnxruntime is imported anywhere: it writes under $XDG_CACHE_HOME. A folder made here (it holds the
# zoo's wheels, ~100 MB) is removed when the run ends.
if "XDG_CACHE_HOME" not in os.environ:
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="onnx-de-test-cache-")
    atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)

import pytest  # noqa: E402

import onnx_de  # noqa: E402


@pytest.fixture(scope="session")
def mlp():
    return onnx_de.open_model("zoo:mnist-mlp")


@pytest.fixture(scope="session")
def lenet():
    return onnx_de.open_model("zoo:mnist-lenet5")
