"""Graph rewrites the Scorer runs on: weights promoted to inputs, and the subgraph downstream of a layer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .errors import ModelError

__all__ = ["Downstream", "promote_weights", "downstream_of", "expose_outputs"]


def promote_weights(proto: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``proto`` whose initializers ``names`` are graph inputs instead (fed at run time)."""
    graph = gs.import_onnx(proto)
    tensors = graph.tensors()
    for name in names:
        tensor = tensors.get(name)
        if not isinstance(tensor, gs.Constant):
            raise ModelError(f"cannot promote {name!r} to an input: it is not an initializer of the main graph")
        variable = gs.Variable(name, dtype=tensor.values.dtype, shape=list(tensor.shape))
        tensor.name = f"{name}::promoted"
        for node in list(tensor.outputs):
            for position, operand in enumerate(node.inputs):
                if operand is tensor:
                    node.inputs[position] = variable
        graph.inputs.append(variable)
    graph.cleanup()  # drops the now unused constants
    promoted = gs.export_onnx(graph)
    promoted.ir_version = proto.ir_version
    return promoted


def expose_outputs(proto: onnx.ModelProto, names) -> onnx.ModelProto:
    """A copy of ``proto`` that also outputs the intermediate tensors ``names`` (types left to the runtime)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(proto)
    existing = {o.name for o in exposed.graph.output}
    for name in names:
        if name not in existing:
            exposed.graph.output.add().name = name
            existing.add(name)
    return exposed


@dataclass(frozen=True)
class Downstream:
    """The part of a graph that a change to one weight can affect.

    Attributes:
        nodes: the affected nodes, in graph order.
        frontier: tensors computed upstream that the affected nodes read (cached, not recomputed).
        inputs: graph inputs the affected nodes read (weights promoted to inputs, data).
        outputs: graph outputs the affected nodes produce (the other outputs cannot change).
    """

    nodes: list[onnx.NodeProto]
    frontier: list[str]
    inputs: list[str]
    outputs: list[str]

    def model(self, proto: onnx.ModelProto, examples: dict[str, np.ndarray]) -> onnx.ModelProto:
        """A standalone model of the downstream part; ``examples`` holds a value of each frontier tensor,
        whose dtype and per-sample shape the model declares (so ONNX Runtime optimizes as in the full graph)."""
        graph = proto.graph
        used = {name for node in self.nodes for name in node.input}
        value_infos = {v.name: v for v in graph.input}
        inputs = [
            onnx.helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(examples[name].dtype),
                ["batch", *examples[name].shape[1:]] if examples[name].ndim else [])
            for name in self.frontier
        ]
        inputs += [value_infos[name] for name in self.inputs]
        outputs = [v for v in graph.output if v.name in set(self.outputs)]
        initializers = [t for t in graph.initializer if t.name in used]
        sub = onnx.helper.make_graph(self.nodes, f"{graph.name}_downstream", inputs, outputs, initializers)
        model = onnx.helper.make_model(sub, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
        return model


def downstream_of(proto: onnx.ModelProto, tensors: list[str]) -> Downstream | None:
    """The nodes affected by ``tensors`` (graph inputs of ``proto``: one weight's tensors) and what they read;
    ``None`` where the graph has control flow (subgraphs may read outer tensors implicitly), so the whole graph
    must run."""
    graph = proto.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return None
    affected, nodes = set(tensors), []
    for node in graph.node:  # ONNX graphs are topologically sorted
        if any(name in affected for name in node.input):
            nodes.append(node)
            affected.update(name for name in node.output if name)
    produced = {name for node in nodes for name in node.output}
    initializers = {t.name for t in graph.initializer}
    graph_inputs = {v.name for v in graph.input}
    read = list(dict.fromkeys(name for node in nodes for name in node.input if name))
    external = [name for name in read if name not in produced and name not in initializers]
    return Downstream(
        nodes=nodes,
        frontier=[name for name in external if name not in graph_inputs],
        inputs=[name for name in external if name in graph_inputs],
        outputs=[v.name for v in graph.output if v.name in affected],
    )
