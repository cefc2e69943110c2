"""Fidelity of a student to its teacher, from their outputs: pure numpy, no sessions.

Metrics and their JSON keys (stable):

- ``classification``: ``top1_agreement``, ``accuracy`` (with labels), ``kl`` (mean KL(teacher || student), nats);
- ``segmentation``: ``mask_iou`` of the maps binarised at ``threshold``;
- ``detection``: ``detection_recall`` of the teacher's confident objects (score >= 0.8, same class, IoU >= 0.5),
  ``detection_precision`` of the student's, and their harmonic mean ``detection_f1`` (the primary: a budget on
  recall alone let a 4-bit allocation of ddddocr-det keep every object while adding 13 false ones to 27);
- every metric also reports ``rel_l2`` (worst output) and ``cosine`` (worst output), and ``per_output``.

``primary`` names the key a fidelity budget is set on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import ConfigError

__all__ = [
    "METRICS",
    "MetricSpec",
    "fidelity",
    "top1_agreement",
    "accuracy",
    "kl_divergence",
    "kl_from_log_probs",
    "log_probabilities",
    "mask_iou",
    "detection_scores",
    "rel_l2",
    "cosine",
    "decode_yolox",
    "choose_metric",
    "confident_objects",
]

METRICS = ("classification", "segmentation", "detection", "generic")
_PRIMARY = {
    "classification": "top1_agreement",
    "segmentation": "mask_iou",
    "detection": "detection_f1",
    "generic": "cosine",
}


@dataclass(frozen=True)
class MetricSpec:
    """Which metric to compute and its settings.

    Attributes:
        name: one of :data:`METRICS`.
        output: index of the output the task metric reads (``rel_l2``/``cosine`` cover every output).
        threshold: segmentation binarisation threshold.
        score_threshold: detection confidence threshold for "confident objects".
        iou_threshold: detection IoU needed for a match.
        decoder: detection output decoder (``yolox``).
        input_size: detection input height and width, which fix the decoder's anchor grid.
    """

    name: str = "generic"
    output: int = 0
    threshold: float = 0.3
    score_threshold: float = 0.8
    iou_threshold: float = 0.5
    decoder: str = "yolox"
    input_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.name not in METRICS:
            raise ConfigError(f"unknown metric {self.name!r}; choose one of {', '.join(METRICS)}")
        if self.name == "detection" and self.decoder != "yolox":
            raise ConfigError(f"unknown detection decoder {self.decoder!r}; supported: yolox")

    @property
    def primary(self) -> str:
        return _PRIMARY[self.name]

    def to_dict(self) -> dict:
        return asdict(self)


def choose_metric(output_shapes: list[tuple[int | None, ...]]) -> MetricSpec:
    """A metric for a model with no zoo entry: classification for (N, C) outputs, else generic."""
    first = output_shapes[0] if output_shapes else ()
    if len(first) == 2 and (first[1] is None or first[1] > 1):
        return MetricSpec("classification")
    return MetricSpec("generic")


def fidelity(
    teacher: list[np.ndarray],
    student: list[np.ndarray],
    spec: MetricSpec,
    labels: np.ndarray | None = None,
    output_names: list[str] | None = None,
) -> dict:
    """All fidelity numbers of ``student`` against ``teacher`` (lists of outputs, first axis = samples)."""
    if len(teacher) != len(student):
        raise ConfigError(f"teacher has {len(teacher)} outputs, student {len(student)}")
    names = output_names or [f"output_{i}" for i in range(len(teacher))]
    per_output = {}
    for name, t, s in zip(names, teacher, student):
        if t.shape != s.shape:
            raise ConfigError(f"output {name!r}: teacher shape {t.shape} differs from student shape {s.shape}")
        per_output[name] = {"rel_l2": rel_l2(t, s), "cosine": cosine(t, s)}
    result: dict = {"metric": spec.name, "primary": spec.primary, "samples": int(len(teacher[spec.output]))}
    t, s = teacher[spec.output], student[spec.output]
    if spec.name == "classification":
        result["top1_agreement"] = top1_agreement(t, s)
        if labels is not None:
            result["accuracy"] = accuracy(s, labels)
            result["teacher_accuracy"] = accuracy(t, labels)
        result["kl"] = kl_divergence(t, s)
    elif spec.name == "segmentation":
        result["mask_iou"] = mask_iou(t, s, spec.threshold)
    elif spec.name == "detection":
        recall, precision, objects = detection_scores(t, s, spec)
        f1 = 2 * recall * precision / (recall + precision) if recall + precision else 0.0
        result.update(detection_f1=f1, detection_recall=recall, detection_precision=precision, teacher_objects=objects)
    result["rel_l2"] = max(o["rel_l2"] for o in per_output.values())
    result["cosine"] = min(o["cosine"] for o in per_output.values())
    result["per_output"] = per_output
    return result


def top1_agreement(teacher: np.ndarray, student: np.ndarray) -> float:
    """Fraction of samples whose arg-max class is the same."""
    return float(np.mean(_flat_classes(teacher).argmax(1) == _flat_classes(student).argmax(1)))


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose arg-max class equals the label."""
    return float(np.mean(_flat_classes(outputs).argmax(1) == labels))


def kl_divergence(teacher: np.ndarray, student: np.ndarray) -> float:
    """Mean over samples of KL(teacher || student) in nats; outputs may be logits or probabilities."""
    return kl_from_log_probs(log_probabilities(teacher), log_probabilities(student))


def kl_from_log_probs(log_teacher: np.ndarray, log_student: np.ndarray) -> float:
    """Mean over rows of KL(teacher || student) from log-probabilities."""
    return float(np.mean(np.sum(np.exp(log_teacher) * (log_teacher - log_student), axis=1)))


def log_probabilities(outputs: np.ndarray) -> np.ndarray:
    """Per-sample log-probabilities (float64, flattened) of class logits or probabilities."""
    return _log_probs(_flat_classes(outputs))


def _flat_classes(outputs: np.ndarray) -> np.ndarray:
    return outputs.reshape(len(outputs), -1).astype(np.float64)


def are_probabilities(outputs: np.ndarray) -> bool:
    """Whether class outputs are probabilities already (non-negative rows summing to 1) rather than logits."""
    rows = _flat_classes(outputs)
    return bool(rows.min() >= 0 and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3))


def _log_probs(values: np.ndarray) -> np.ndarray:
    """Log-probabilities of rows that are already probabilities (non-negative, summing to 1) or logits."""
    if are_probabilities(values):
        return np.log(np.clip(values, 1e-12, None))
    shifted = values - values.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def mask_iou(teacher: np.ndarray, student: np.ndarray, threshold: float) -> float:
    """IoU of the teacher's and student's maps binarised at ``threshold``, pooled over all samples."""
    t, s = teacher > threshold, student > threshold
    union = np.count_nonzero(t | s)
    return 1.0 if union == 0 else float(np.count_nonzero(t & s) / union)


def rel_l2(teacher: np.ndarray, student: np.ndarray) -> float:
    """||student - teacher|| / ||teacher|| over the whole output (0 for identical outputs)."""
    t, s = teacher.astype(np.float64).ravel(), student.astype(np.float64).ravel()
    norm = np.linalg.norm(t)
    diff = np.linalg.norm(s - t)
    return float(diff / norm) if norm > 0 else float(diff)


def cosine(teacher: np.ndarray, student: np.ndarray) -> float:
    """Mean over samples of the cosine similarity of the flattened outputs (1 for identical outputs)."""
    t = teacher.reshape(len(teacher), -1).astype(np.float64)
    s = student.reshape(len(student), -1).astype(np.float64)
    norms = np.linalg.norm(t, axis=1) * np.linalg.norm(s, axis=1)
    dots = np.sum(t * s, axis=1)
    both_zero = (np.linalg.norm(t, axis=1) == 0) & (np.linalg.norm(s, axis=1) == 0)
    values = np.where(both_zero, 1.0, dots / np.where(norms > 0, norms, 1.0))
    return float(np.mean(values))


def decode_yolox(raw: np.ndarray, input_size: tuple[int, int], strides=(8, 16, 32)) -> list[np.ndarray]:
    """Decode YOLOX head outputs (N, anchors, 5 + classes) to per-image (boxes xyxy, scores, classes) rows.

    Returns:
        Per image an array (k, 6): x1, y1, x2, y2, score (objectness x class probability), class.
    """
    grids, scales = [], []
    for stride in strides:
        h, w = input_size[0] // stride, input_size[1] // stride
        xs, ys = np.meshgrid(np.arange(w), np.arange(h))
        grids.append(np.stack((xs, ys), 2).reshape(-1, 2))
        scales.append(np.full((h * w, 1), stride))
    grid, scale = np.concatenate(grids), np.concatenate(scales)
    if raw.shape[1] != len(grid):
        raise ConfigError(f"YOLOX output has {raw.shape[1]} anchors, input size {input_size} implies {len(grid)}")
    detections = []
    for image in raw.astype(np.float64):
        centers = (image[:, :2] + grid) * scale
        sizes = np.exp(np.clip(image[:, 2:4], -20, 20)) * scale
        class_scores = image[:, 5:] * image[:, 4:5]
        classes = class_scores.argmax(1)
        scores = class_scores[np.arange(len(classes)), classes]
        boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1)
        detections.append(np.concatenate([boxes, scores[:, None], classes[:, None]], axis=1))
    return detections


def _nms(rows: np.ndarray, iou_threshold: float) -> np.ndarray:
    order = np.argsort(-rows[:, 4], kind="stable")
    keep = []
    while len(order):
        best, order = order[0], order[1:]
        keep.append(best)
        if len(order):
            same = rows[order, 5] == rows[best, 5]
            order = order[~(same & (_iou(rows[best, :4], rows[order, :4]) > iou_threshold))]
    return rows[keep]


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def confident_objects(raw: np.ndarray, spec: MetricSpec, input_size: tuple[int, int]) -> list[np.ndarray]:
    """Per image, the NMS-filtered detections scoring at least ``spec.score_threshold``."""
    objects = []
    for rows in decode_yolox(raw, input_size):
        rows = rows[rows[:, 4] >= spec.score_threshold]
        objects.append(_nms(rows, 0.45) if len(rows) else rows)
    return objects


def detection_scores(teacher: np.ndarray, student: np.ndarray, spec: MetricSpec) -> tuple[float, float, int]:
    """Recall of the teacher's confident objects among the student's, the student's precision, and the count.

    A student object matches a teacher object of the same class with IoU >= ``spec.iou_threshold``
    (greedy, one-to-one). With no teacher objects recall is 1; with no student objects precision is 1.
    """
    if spec.input_size is None:
        raise ConfigError("detection metric needs the model's input size (height, width)")
    input_size = (int(spec.input_size[0]), int(spec.input_size[1]))
    teacher_objects = confident_objects(teacher, spec, input_size)
    student_objects = confident_objects(student, spec, input_size)
    matched = total_teacher = total_student = 0
    for t_rows, s_rows in zip(teacher_objects, student_objects):
        total_teacher += len(t_rows)
        total_student += len(s_rows)
        free = np.ones(len(s_rows), dtype=bool)
        for row in t_rows:
            if not free.any():
                break
            candidates = np.flatnonzero(free & (s_rows[:, 5] == row[5]))
            if not len(candidates):
                continue
            overlaps = _iou(row[:4], s_rows[candidates, :4])
            best = int(np.argmax(overlaps))
            if overlaps[best] >= spec.iou_threshold:
                free[candidates[best]] = False
                matched += 1
    recall = matched / total_teacher if total_teacher else 1.0
    precision = matched / total_student if total_student else 1.0
    return float(recall), float(precision), int(total_teacher)
