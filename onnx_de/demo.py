"""``onnx-de demo``: what onnx-de does today, run on the bundled ``mnist-mlp`` and its bundled data."""

from __future__ import annotations

from pathlib import Path

from .evaluate import evaluate
from .fileio import atomic_write_json
from .zoo import open_model, zoo_path

__all__ = ["run_demo"]

DEMO_MODEL = "mnist-mlp"


def run_demo(output: Path) -> str:
    """Inspect the demo model and evaluate it on its evaluation split; write JSON into ``output``.

    Returns:
        A short summary table for the terminal.
    """
    model = open_model(f"zoo:{DEMO_MODEL}", require_prunable=True)
    summary = model.summary()
    result = evaluate(model, model, f"zoo:{DEMO_MODEL}")
    atomic_write_json(output / "inspect.json", summary)
    atomic_write_json(output / "evaluation.json", result)
    size = zoo_path(DEMO_MODEL).stat().st_size
    rows = [
        ("model", f"{DEMO_MODEL} ({size:,} bytes)"),
        ("prunable weights", f"{summary['prunable_tensors']} tensors, {summary['prunable_parameters']:,} parameters"),
        ("teacher accuracy", f"{result['teacher_accuracy']:.4f} on {result['samples']} evaluation digits"),
        ("self-agreement", f"{result['top1_agreement']:.4f} (teacher vs itself, the harness check)"),
        ("written", f"{output / 'inspect.json'}, {output / 'evaluation.json'}"),
    ]
    return "\n".join(f"{name:<18} {value}" for name, value in rows)
