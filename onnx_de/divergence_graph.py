"""The Scorer's divergence as ONNX nodes appended to a student graph, so that a GPU hands back one number per
output and batch instead of the outputs themselves.

Each divergence (:func:`onnx_de.scoring.divergence_kind`) is a sum over one output's elements of a term that
reads the student's output and the teacher's side, which enters as extra graph inputs computed once on the
host (the Scorer's own teacher terms); the Scorer adds the per-batch sums and normalizes them as its host
formula does. The graph computes in float32, the host formula in float64: the two agree to float32 rounding,
not bit for bit, so a Scorer uses one or the other for all of its candidates.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["TERM_PREFIX", "append_divergence", "teacher_input_names"]

TERM_PREFIX = "onnx_de.divergence."
_TEACHER_PREFIX = "onnx_de.teacher."


def append_divergence(proto: onnx.ModelProto, outputs: list[str], kind: str, eps: float,
                      probabilities: bool = False) -> onnx.ModelProto:
    """A copy of ``proto`` whose only outputs are, for each of its ``outputs``, the sum of the divergence term
    over that output's elements (output ``TERM_PREFIX + name``, a float32 scalar).

    The teacher's side enters as float32 inputs, first axis = samples: ``kl``, the teacher's probabilities and
    log-probabilities over the flattened classes (``probabilities``: the student's outputs are probabilities
    already, not logits); ``bkl``, the teacher's map clipped to [eps, 1 - eps], its log and the log of its
    complement; ``nmse``, the teacher's output; named by :func:`teacher_input_names`.
    """
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    declared = {v.name: v for v in graph.output}
    nodes: list[onnx.NodeProto] = []
    constants = {"one": 1.0, "eps": eps, "1-eps": 1 - eps, "tiny": 1e-12}
    for key, value in constants.items():
        graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), _TEACHER_PREFIX + key))
    constant = {key: _TEACHER_PREFIX + key for key in constants}

    for name in outputs:
        inputs = teacher_input_names(kind, name)
        shape = _shape_of(declared.get(name))
        dims = ["batch", None] if kind == "kl" else shape
        graph.input.extend(helper.make_tensor_value_info(i, TensorProto.FLOAT, dims) for i in inputs)

        def node(op, *args, **attrs):
            result = f"{_TEACHER_PREFIX}{name}.{op}.{len(nodes)}"
            nodes.append(helper.make_node(op, list(args), [result], **attrs))
            return result

        if kind == "kl":
            p, log_p = inputs
            flat = node("Flatten", name, axis=1)
            log_s = node("Log", node("Max", flat, constant["tiny"])) if probabilities else node(
                "LogSoftmax", flat, axis=1)
            terms = node("Mul", p, node("Sub", log_p, log_s))
        elif kind == "bkl":
            t, log_t, log_not_t = inputs
            s = node("Min", node("Max", name, constant["eps"]), constant["1-eps"])
            inside = node("Mul", t, node("Sub", log_t, node("Log", s)))
            outside = node("Mul", node("Sub", constant["one"], t),
                           node("Sub", log_not_t, node("Log", node("Sub", constant["one"], s))))
            terms = node("Add", inside, outside)
        else:
            difference = node("Sub", name, inputs[0])
            terms = node("Mul", difference, difference)
        nodes.append(helper.make_node("ReduceSum", [terms], [TERM_PREFIX + name], keepdims=0))
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.extend(helper.make_tensor_value_info(TERM_PREFIX + name, TensorProto.FLOAT, []) for name in outputs)
    return model


def teacher_input_names(kind: str, output: str) -> list[str]:
    """The names of the teacher-side inputs of ``output``'s divergence (the same in every graph)."""
    return [f"{_TEACHER_PREFIX}{output}.{i}" for i in range({"kl": 2, "bkl": 3}.get(kind, 1))]


def _shape_of(value_info) -> list:
    """The declared dimensions of an output (symbolic ones as ``None``), or ``None`` when undeclared."""
    if value_info is None or not value_info.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]
