"""onnx-de: make exported ONNX models many times smaller while they keep behaving like the original.

The public API: load a model and find its prunable weights, load calibration and evaluation data, run
teacher and student in ONNX Runtime and measure fidelity, sparsify by Directed Evolution, quantize the surviving
weights, and reach the zoo.
"""

from .data import Dataset, Preprocess, load_data
from .errors import ConfigError, DataError, ModelError, OnnxDeError, ZooError
from .evaluate import evaluate
from .evolution import SearchConfig
from .metrics import MetricSpec, fidelity
from .model import Model, TensorSpec, WeightInfo, WeightSelection, load_model
from .quantize import QuantizeResult, quantize
from .runtime import create_session, run_model
from .sparsify import SparsifyResult, sparsify
from .zoo import fetch, open_model, zoo_entries, zoo_entry, zoo_path

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "Dataset",
    "MetricSpec",
    "Model",
    "ModelError",
    "OnnxDeError",
    "Preprocess",
    "QuantizeResult",
    "SearchConfig",
    "SparsifyResult",
    "TensorSpec",
    "WeightInfo",
    "WeightSelection",
    "ZooError",
    "__version__",
    "create_session",
    "evaluate",
    "fetch",
    "fidelity",
    "load_data",
    "load_model",
    "open_model",
    "quantize",
    "run_model",
    "sparsify",
    "zoo_entries",
    "zoo_entry",
    "zoo_path",
]
