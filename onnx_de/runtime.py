"""ONNX Runtime sessions for teacher and student, and batched runs over a dataset."""

from __future__ import annotations

import ctypes
import functools
import logging
import threading

import numpy as np
import onnxruntime as ort

from .data import Dataset
from .errors import ConfigError, DataError, ModelError, first_line
from .model import Model

__all__ = ["ARENAS", "DEFAULT_BATCH_SIZE", "DEVICES", "create_session", "cuda_devices", "fixed_batch",
           "resolve_device", "run_model"]

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64
DEVICES = ("auto", "cpu", "cuda")
# Full float32 and a fixed convolution algorithm per shape: TF32 would move every output by ~1e-3, and
# an exhaustive algorithm search can pick differently from run to run (the same seed must give the same masks).
_CUDA_OPTIONS = {"device_id": "0", "use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"}
ARENAS = ("session", "shared", "off")
_shared_arena_lock = threading.Lock()
_shared_arena_registered = False


@functools.cache
def cuda_devices() -> int:
    """How many CUDA GPUs this process can use: 0 without onnxruntime-gpu's CUDA provider or an NVIDIA driver.

    Asks the driver itself (``cuDeviceGetCount``), because ONNX Runtime lists its CUDA provider wherever
    onnxruntime-gpu is installed, GPU or not, and opening a session on it without one logs errors.
    """
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return 0
    for library in ("libcuda.so.1", "nvcuda.dll"):
        try:
            driver = ctypes.CDLL(library)
            break
        except OSError:
            continue
    else:
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def resolve_device(device: str) -> str:
    """``cpu`` or ``cuda`` for a requested device: ``auto`` is the GPU where there is one, else the CPU (logged).

    Raises:
        ConfigError: an unknown device, or ``cuda`` where no CUDA GPU can be used.
    """
    if device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cpu":
        return "cpu"
    if cuda_devices():
        return "cuda"
    if device == "cuda":
        raise ConfigError("device cuda: no CUDA GPU is available (it needs onnxruntime-gpu, an NVIDIA driver and "
                          "a GPU); use --device cpu or auto")
    log.info("no CUDA GPU found: running on the CPU")
    return "cpu"


def create_session(model: Model, *, intra_op_threads: int | None = None, spin: bool = True,
                   optimize: bool = True, arena: str = "session", device: str = "cpu") -> ort.InferenceSession:
    """Open an ONNX Runtime session on ``model``, on the CPU or a CUDA GPU.

    Args:
        model: the loaded model.
        intra_op_threads: threads per operator (ONNX Runtime's default, all cores, when ``None``).
        spin: let idle worker threads spin between runs. Turn it off where many sessions live side by side
            (the Scorer's per-layer sessions), or their idle threads steal the cores of the one running.
        optimize: let ONNX Runtime optimize the graph; off for a graph it optimized already.
        arena: where a run's activation memory comes from on the CPU. ``session``: an arena of the session's
            own, kept for its next run. ``shared``: one arena for every session of the process that asks for
            it, for many sessions run one after another (the Scorer's per-layer sessions: each with its own
            arena, ppocr-det's held 12.4 GB). ``off``: none, so every run maps and faults in fresh pages
            (the Scorer's candidates/s, shared against off: 1.5x on ppocr-det and EfficientNet-Lite0, at
            about the same peak memory; BENCHMARKS.md, "Scorer throughput").
        device: ``cpu`` or ``cuda`` (a device :func:`resolve_device` returned); on ``cuda`` the operators
            the CUDA provider lacks run on the CPU.

    Raises:
        ModelError: when ONNX Runtime cannot load the model (unsupported op, bad graph).
    """
    if arena not in ARENAS:
        raise ConfigError(f"arena must be one of {', '.join(ARENAS)}, got {arena!r}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    if arena == "off":
        options.enable_cpu_mem_arena = False
    elif arena == "shared":
        _register_shared_arena()
        options.add_session_config_entry("session.use_env_allocators", "1")
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if device == "cuda":
        # onnxruntime-gpu 1.31 logs "No registered plugin EP device found for 'CUDAExecutionProvider'" on its
        # default logger for every tensor placed on the GPU (hundreds per search), though the CUDA provider
        # serves them: that logger shows errors only from the first GPU session on.
        ort.set_default_logger_severity(3)
    try:
        providers = [("CUDAExecutionProvider", _CUDA_OPTIONS)] if device == "cuda" else []
        return ort.InferenceSession(model.serialized(), options, providers=[*providers, "CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
        raise ModelError(f"{model.source}: ONNX Runtime cannot load the model: {_ort_message(e)}") from e


def _register_shared_arena() -> None:
    """Register, once per process, the CPU arena of ``arena="shared"`` sessions with ONNX Runtime's environment.

    It grows by what each request needs (not by powers of two), so it holds about the largest run's
    activations (EfficientNet-Lite0's Scorer: 4.0 GB peak, as with no arena; 5.0 GB growing by doubling), and
    keeps them until the process exits.
    """
    global _shared_arena_registered
    with _shared_arena_lock:
        if not _shared_arena_registered:
            memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            same_as_requested = 1  # OrtArenaCfg's arena_extend_strategy kSameAsRequested
            ort.create_and_register_allocator(memory, ort.OrtArenaCfg(0, same_as_requested, -1, -1))
            _shared_arena_registered = True


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
