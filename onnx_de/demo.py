"""``onnx-de demo``: what onnx-de does today, run on the bundled ``mnist-mlp`` and its bundled data."""

from __future__ import annotations

from pathlib import Path

from .evolution import SearchConfig
from .fileio import atomic_write_json
from .sparsify import sparsify
from .zoo import open_model, zoo_path

__all__ = ["run_demo"]

DEMO_MODEL = "mnist-mlp"
DEMO_SPARSITY = 0.9


def run_demo(output: Path) -> str:
    """Inspect the demo model, sparsify it to 90% by DE, and measure it on the evaluation split.

    Writes ``inspect.json``, ``sparse.onnx`` and ``sparsify.json`` into ``output``.

    Returns:
        A short summary table for the terminal.
    """
    model = open_model(f"zoo:{DEMO_MODEL}", require_prunable=True)
    summary = model.summary()
    atomic_write_json(output / "inspect.json", summary)
    result = sparsify(model, f"zoo:{DEMO_MODEL}", config=SearchConfig(sparsity=DEMO_SPARSITY),
                      eval_data=f"zoo:{DEMO_MODEL}", output=output / "sparse.onnx")
    atomic_write_json(output / "sparsify.json", result.to_dict())
    fidelity = result.fidelity
    rows = [
        ("model", f"{DEMO_MODEL} ({zoo_path(DEMO_MODEL).stat().st_size:,} bytes)"),
        ("prunable weights", f"{summary['prunable_tensors']} tensors, {summary['prunable_parameters']:,} parameters"),
        ("sparsity", f"{result.sparsity:.3f} by Directed Evolution + compensation, {result.seconds:.1f} s"),
        ("per layer", ", ".join(f"{n} {v['sparsity']:.3f}" for n, v in result.layers.items())),
        ("top-1 agreement", f"{fidelity['top1_agreement']:.4f} with the teacher on {fidelity['samples']} unseen digits"),
        ("accuracy", f"{fidelity['accuracy']:.4f} (teacher {fidelity['teacher_accuracy']:.4f})"),
        ("written", f"{output / 'sparse.onnx'}, {output / 'sparsify.json'}, {output / 'inspect.json'}"),
    ]
    return "\n".join(f"{name:<16} {value}" for name, value in rows)
