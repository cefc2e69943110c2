"""Held-out calibration samples against unseen ones: how well the budget search's judge predicts evaluation.

For each ``SPARSITY/BITS`` setting, rebuilds what the budget search of ``onnx-de optimize --budget`` builds at
that setting (DE + compensation on three quarters of the calibration split, codebooks of BITS bits) and prints
its primary metric on the search samples, the held-out quarter and the evaluation split. For classification
it also prints the teacher's confidence on both splits (logit margin: top class minus runner-up), which
shows whether the calibration samples are as hard as the evaluation ones.

    python tools/bench_holdout.py mnist-mlp 0.9/3 0.93/3 0.95/4
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="onnx-de-bench-"))

import numpy as np  # noqa: E402

import onnx_de  # noqa: E402
from onnx_de.evaluate import evaluation_data, resolve_metric  # noqa: E402
from onnx_de.optimize import OptimizeConfig  # noqa: E402
from onnx_de.runtime import create_session, run_model  # noqa: E402
from bench_env import header  # noqa: E402


def teacher_confidence(teacher, dataset) -> str:
    logits = run_model(create_session(teacher, intra_op_threads=1), dataset)[0].reshape(len(dataset), -1)
    top = np.sort(logits, axis=1)
    margin = top[:, -1] - top[:, -2]
    return f"median logit margin {np.median(margin):.2f}, share below 2: {np.mean(margin < 2):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a zoo model name")
    parser.add_argument("settings", nargs="+", help="SPARSITY/BITS, e.g. 0.9/3")
    args = parser.parse_args()
    print(header([args.model]), flush=True)
    zoo = f"zoo:{args.model}"
    config = OptimizeConfig(budget=0.99, threads=1)  # the budget only enables the search's settings
    teacher = onnx_de.open_model(zoo)
    calibration = onnx_de.load_data(zoo, teacher, split="calibration")
    evaluation = evaluation_data(None, zoo, teacher)
    spec = resolve_metric(None, teacher, zoo)
    search, held_out = calibration.hold_out(len(calibration) // 4)  # as the budget search splits
    if spec.name == "classification":
        for name, dataset in (("calibration", calibration), ("evaluation", evaluation)):
            print(f"teacher on {name} ({len(dataset)} samples): {teacher_confidence(teacher, dataset)}")
    print(f"| model | sparsity | bits | search samples ({len(search)}) | held-out ({len(held_out)}) | "
          f"evaluation ({len(evaluation)}) |")
    print("|---|---|---|---|---|---|")
    for setting in args.settings:
        level, bits = setting.split("/")
        sparse = onnx_de.sparsify(teacher, search, config=config.search(float(level)), compensate=config.compensate,
                                  metric=spec, intra_op_threads=1)
        student = onnx_de.quantize(sparse.student, search, bits=int(bits), teacher=teacher, metric=spec,
                                   intra_op_threads=1).student
        scores = [onnx_de.evaluate(teacher, student, data, metric=spec, intra_op_threads=1)[spec.primary]
                  for data in (search, held_out, evaluation)]
        print(f"| {args.model} | {level} | {bits} | " + " | ".join(f"{v:.3f}" for v in scores) + " |", flush=True)


if __name__ == "__main__":
    main()
