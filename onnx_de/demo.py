"""``onnx-de demo``: the whole pipeline (``optimize``) on the bundled ``mnist-mlp`` and its bundled data."""

from __future__ import annotations

from pathlib import Path

from .optimize import optimize

__all__ = ["DEMO_MODEL", "DEMO_SETTINGS", "run_demo"]

DEMO_MODEL = "mnist-mlp"
DEMO_SETTINGS = {"sparsity": 0.9, "bits": 3, "augment": 3}


def run_demo(output: Path) -> str:
    """Sparsify the demo model to 90% by DE (fitted on its calibration digits and three shifted copies of them),
    quantize its survivors to 3-bit codebooks, encode the container, decode it and measure it on digits the
    search never saw.

    Writes ``model.onnx``, ``model.ode``, ``report.json`` and ``report.html`` into ``output``.

    Returns:
        A short summary table for the terminal.
    """
    result = optimize(f"zoo:{DEMO_MODEL}", f"zoo:{DEMO_MODEL}", output, **DEMO_SETTINGS)
    return result.summary()
