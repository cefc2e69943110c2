"""onnx-de: make exported ONNX models many times smaller while they keep behaving like the original.

The public API: load a model and find its prunable weights, load calibration and evaluation data, run
teacher and student in ONNX Runtime and measure fidelity, sparsify by Directed Evolution, quantize the surviving
weights, encode the result into a compact container and decode it at load time, do all of it in one call
(``optimize``), and reach the zoo.
"""

from .codec import InferenceSession, decode, encode, inspect_container
from .config import OptimizeConfig, load_config
from .data import Dataset, Preprocess, load_data
from .errors import (ConfigError, DataError, ExecutorError, FormatError, ModelError, OnnxDeError,
                     UnsupportedVersionError, ZooError)
from .evaluate import evaluate
from .evolution import SearchConfig
from .metrics import MetricSpec, fidelity
from .model import Model, TensorSpec, WeightInfo, WeightSelection, load_model
from .optimize import OptimizeResult, optimize
from .quantize import QuantizeResult, quantize
from .runtime import create_session, run_model
from .sparsify import SparsifyResult, sparsify
from .zoo import fetch, open_model, zoo_entries, zoo_entry, zoo_path

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "Dataset",
    "ExecutorError",
    "FormatError",
    "InferenceSession",
    "MetricSpec",
    "Model",
    "ModelError",
    "OnnxDeError",
    "OptimizeConfig",
    "OptimizeResult",
    "Preprocess",
    "QuantizeResult",
    "SearchConfig",
    "SparsifyResult",
    "TensorSpec",
    "UnsupportedVersionError",
    "WeightInfo",
    "WeightSelection",
    "ZooError",
    "__version__",
    "create_session",
    "decode",
    "encode",
    "evaluate",
    "fetch",
    "fidelity",
    "inspect_container",
    "load_config",
    "load_data",
    "load_model",
    "open_model",
    "optimize",
    "quantize",
    "run_model",
    "sparsify",
    "zoo_entries",
    "zoo_entry",
    "zoo_path",
]
