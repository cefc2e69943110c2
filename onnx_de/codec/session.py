"""``InferenceSession``: an ONNX Runtime session opened straight from a container."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import FormatError
from .decoder import DEFAULT_MAX_BYTES, decode_arrays

__all__ = ["InferenceSession"]


class InferenceSession(ort.InferenceSession):
    """An :class:`onnxruntime.InferenceSession` on the model decoded from a container (.ode).

    The decoded weights reach ONNX Runtime as arrays (``add_external_initializers``), not inside a serialized
    copy of the model. They are added to ``sess_options``: give each session options of its own.

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
        model, arrays = decode_arrays(source, dense=dense, max_bytes=max_bytes)
        try:
            for stub in model.graph.initializer:
                if stub.name in arrays:  # a data-less stub: declared external, the arrays below take its place
                    stub.data_location = onnx.TensorProto.EXTERNAL
                    entry = stub.external_data.add()
                    entry.key, entry.value = "location", "onnx-de-decoded-in-memory"
        except UnicodeDecodeError as e:
            raise FormatError("graph section: a name or string is not valid UTF-8") from e
        options = sess_options if sess_options is not None else ort.SessionOptions()
        names = list(arrays)
        values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arrays.pop(name))) for name in names]
        if names:  # ONNX Runtime copies them in while it loads the graph, then lets them go
            options.add_external_initializers(names, values)
        super().__init__(model.SerializeToString(), options, providers or ["CPUExecutionProvider"], **kwargs)
