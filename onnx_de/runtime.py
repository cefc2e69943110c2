"""ONNX Runtime sessions for teacher and student, and batched runs over a dataset."""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort

from .data import Dataset
from .errors import DataError, ModelError, first_line
from .model import Model

__all__ = ["DEFAULT_BATCH_SIZE", "create_session", "fixed_batch", "run_model"]

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64


def create_session(model: Model, *, intra_op_threads: int | None = None, spin: bool = True,
                   optimize: bool = True, arena: bool = True) -> ort.InferenceSession:
    """Open an ONNX Runtime CPU session on ``model``.

    Args:
        model: the loaded model.
        intra_op_threads: threads per operator (ONNX Runtime's default, all cores, when ``None``).
        spin: let idle worker threads spin between runs. Turn it off where many sessions live side by side
            (the Scorer's per-layer sessions), or their idle threads steal the cores of the one running.
        optimize: let ONNX Runtime optimize the graph; off for a graph it optimized already.
        arena: keep freed activation memory in a per-session arena for the next run. Turn it off where many
            sessions live side by side, or each keeps a full set of activations (ppocr-det's per-layer
            sessions: 12.4 GB with arenas, 2.1 GB without, and no slower).

    Raises:
        ModelError: when ONNX Runtime cannot load the model (unsupported op, bad graph).
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    if not arena:
        options.enable_cpu_mem_arena = False
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(model.serialized(), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
        raise ModelError(f"{model.source}: ONNX Runtime cannot load the model: {_ort_message(e)}") from e


def run_model(
    session: ort.InferenceSession,
    dataset: Dataset,
    batch_size: int | None = None,
) -> list[np.ndarray]:
    """Run ``session`` on every sample of ``dataset``, in batches, and concatenate each output.

    The batch size is the model's fixed batch dimension where it has one, else ``batch_size``
    (default :data:`DEFAULT_BATCH_SIZE`).

    Returns:
        One array per model output, first axis = samples.
    """
    size = fixed_batch(session) or batch_size or DEFAULT_BATCH_SIZE
    names = [o.name for o in session.get_outputs()]
    chunks: list[list[np.ndarray]] = [[] for _ in names]
    for start in range(0, len(dataset), size):
        feed = {k: v[start : start + size] for k, v in dataset.inputs.items()}
        try:
            results = session.run(names, feed)
        except Exception as e:  # onnxruntime's InvalidArgument/Fail: wrong shapes the static check could not see
            raise DataError(f"{dataset.name}: ONNX Runtime rejected the data: {_ort_message(e)}") from e
        for chunk, result in zip(chunks, results):
            chunk.append(np.asarray(result))
    return [np.concatenate(chunk, axis=0) for chunk in chunks]


def fixed_batch(session: ort.InferenceSession, names: set[str] | None = None) -> int | None:
    """The model's fixed batch size (smallest fixed first dimension of the inputs ``names``), if it has one."""
    dims = [i.shape[0] for i in session.get_inputs() if i.shape and (names is None or i.name in names)]
    fixed = [d for d in dims if isinstance(d, int) and d > 0]
    return min(fixed) if fixed else None


def _ort_message(error: BaseException) -> str:
    """ONNX Runtime's message without its C++ source location prefix."""
    text = first_line(error, limit=2000)
    if "onnxruntime::" in text and ") " in text:
        text = text[text.rindex(") ") + 2 :]
    return text[:300]
