"""Run a teacher and a student on the same data in ONNX Runtime and measure the student's fidelity."""

from __future__ import annotations

from pathlib import Path

from .data import Dataset, Preprocess, load_data
from .errors import ConfigError, ModelError
from .metrics import MetricSpec, choose_metric, fidelity
from .model import Model
from .runtime import create_session, run_model
from .zoo import open_model, zoo_entry, zoo_name

__all__ = ["evaluate", "resolve_metric", "evaluation_data", "check_same_interface"]


def resolve_metric(metric: str | MetricSpec | None, teacher: Model, *specs) -> MetricSpec:
    """The metric to use: the one given, else the zoo entry's (from a ``zoo:`` spec), else by output shape."""
    if isinstance(metric, MetricSpec):
        chosen = metric
    else:
        name = zoo_name(*specs)
        base = zoo_entry(name).metric_spec() if name else choose_metric([o.shape for o in teacher.outputs])
        chosen = base if metric is None else (base if base.name == metric else MetricSpec(metric))
    if chosen.name == "detection" and chosen.input_size is None:
        shape = teacher.inputs[0].shape
        if len(shape) != 4 or shape[2] is None or shape[3] is None:
            raise ConfigError("detection needs a model with a fixed N x C x H x W input")
        chosen = MetricSpec(**{**chosen.to_dict(), "input_size": (shape[2], shape[3])})
    return chosen


def evaluate(
    teacher: str | Path | Model,
    student: str | Path | Model,
    data: str | Path | Dataset,
    *,
    metric: str | MetricSpec | None = None,
    split: str = "evaluation",
    preprocess: Preprocess | None = None,
    limit: int | None = None,
    intra_op_threads: int | None = None,
) -> dict:
    """Fidelity of ``student`` to ``teacher`` on ``data``.

    Args:
        teacher, student: paths, loaded models or ``zoo:NAME``.
        data: see :func:`onnx_de.data.load_data`; ``zoo:NAME`` uses that model's ``split``.
        metric: a metric name or spec; by default the zoo entry's, else chosen from the output shape.
        split: which split of ``zoo:`` data (``evaluation`` unless you say otherwise).
        preprocess: for image folders.
        limit: evaluate on at most this many samples.
        intra_op_threads: ONNX Runtime threads per operator.

    Returns:
        The :func:`onnx_de.metrics.fidelity` dictionary, plus ``split`` and ``data``.

    Example:
        >>> evaluate("zoo:mnist-mlp", "student.onnx", "zoo:mnist-mlp")["top1_agreement"]
        0.979
    """
    teacher_model, student_model = open_model(teacher), open_model(student)
    check_same_interface(teacher_model, student_model)
    dataset = load_data(data, teacher_model, split=split, preprocess=preprocess, limit=limit)
    spec = resolve_metric(metric, teacher_model, data, teacher)
    outputs = []
    for model in (teacher_model, student_model):
        outputs.append(run_model(create_session(model, intra_op_threads=intra_op_threads), dataset))
    result = fidelity(outputs[0], outputs[1], spec, dataset.labels, [o.name for o in teacher_model.outputs])
    return {**result, "split": split, "data": dataset.name}


def evaluation_data(eval_data, calibration_data, model: Model) -> Dataset | None:
    """The data a compression step reports fidelity on, loaded (and checked) before the work starts: ``eval_data``,
    else the evaluation split of ``zoo:NAME`` calibration data, else none."""
    if eval_data is None and not str(calibration_data).startswith("zoo:"):
        return None
    return load_data(eval_data if eval_data is not None else calibration_data, model, split="evaluation")


def check_same_interface(teacher: Model, student: Model) -> None:
    """Raise :class:`ModelError` unless ``student`` has the teacher's inputs and outputs (names, dtypes, ranks)."""
    for kind in ("inputs", "outputs"):
        ours, theirs = getattr(teacher, kind), getattr(student, kind)
        if [_signature(s) for s in ours] != [_signature(s) for s in theirs]:
            shown = lambda specs: ", ".join(f"{s.name} {s.dtype}{list(s.shape)}" for s in specs)  # noqa: E731
            raise ModelError(f"{student.source}: its {kind} ({shown(theirs)}) differ from the teacher's ({shown(ours)})")


def _signature(spec) -> tuple:
    """Name, dtype and rank; dynamic dimensions compare equal to anything, so only ranks are compared."""
    return spec.name, spec.dtype, len(spec.shape)
