"""What a benchmark ran on, printed first by every ``tools/bench_*.py``: the machine, the package versions and a
digest of each zoo dataset it used, so that numbers from two sessions can be told comparable or not."""

from __future__ import annotations

import hashlib
import os
import platform
from importlib import metadata

import numpy as np

PACKAGES = ("onnx-de", "onnxruntime-gpu", "onnxruntime", "onnx", "numpy", "scipy", "pillow", "scikit-image",
            "matplotlib", "nncodec", "zipnn", "onnxsim", "zstandard", "onnx-ir", "torch")


def versions() -> str:
    """The installed versions of the packages a benchmark's numbers depend on."""
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def data_digest(name: str) -> str:
    """The first 12 hex digits of the SHA-256 of zoo model ``name``'s calibration and evaluation inputs."""
    import onnx_de

    model = onnx_de.open_model(f"zoo:{name}")
    digest = hashlib.sha256()
    for split in ("calibration", "evaluation"):
        data = onnx_de.load_data(f"zoo:{name}", model, split=split)
        for key in sorted(data.inputs):
            digest.update(np.ascontiguousarray(data.inputs[key]).tobytes())
    return digest.hexdigest()[:12]


def cpu() -> str:
    """The CPU's model name and widest vector extension (ONNX Runtime's kernels, and so the last bits of every
    sum, depend on it: DE's candidate ranking, and so its students, can differ between CPUs)."""
    try:
        text = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first processor's
    flags = fields.get("flags", "").split()
    vector = next((f for f in ("avx512f", "avx2", "avx", "sse4_2") if f in flags), "no AVX")
    model = fields.get("model name") or platform.processor() or platform.machine()
    return f"{model}, {vector}"


def header(names) -> str:
    """Comment lines: machine, CPU and cores, package versions, and each zoo dataset's digest."""
    names = sorted({name.partition(":")[0] for name in names})
    lines = [f"# {platform.node()}: {os.cpu_count()} cores, {platform.machine()}, {cpu()}",
             f"# {versions()}"]
    if names:
        lines.append("# zoo data sha256: " + ", ".join(f"{name} {data_digest(name)}" for name in names))
    return "\n".join(lines)
