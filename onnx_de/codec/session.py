"""``InferenceSession``: an ONNX Runtime session opened straight from a container."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from .decoder import DEFAULT_MAX_BYTES, decode

__all__ = ["InferenceSession"]


class InferenceSession(ort.InferenceSession):
    """An :class:`onnxruntime.InferenceSession` on the model decoded from a container (.ode).

    Args:
        source: an .ode path or the container's bytes.
        sess_options: ONNX Runtime session options.
        providers: execution providers (default: the CPU provider).
        dense: decode quantized weights to floats (see :func:`~onnx_de.decode`).
        max_bytes: the decoding limit of :func:`~onnx_de.decode`.

    Example:
        >>> session = InferenceSession("student.ode")
        >>> outputs = session.run(None, {"input": batch})
    """

    def __init__(self, source: str | Path | bytes, sess_options: ort.SessionOptions | None = None,
                 providers: list | None = None, *, dense: bool = True, max_bytes: int = DEFAULT_MAX_BYTES,
                 **kwargs) -> None:
        model = decode(source, dense=dense, max_bytes=max_bytes)
        super().__init__(model.SerializeToString(), sess_options, providers or ["CPUExecutionProvider"], **kwargs)
