"""Fidelity measures on hand-made outputs whose right answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_de.metrics import (
    MetricSpec, cosine, detection_scores, fidelity, kl_divergence, mask_iou, rel_l2, top1_agreement,
)


def test_classification_numbers():
    teacher = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 4.0], [5.0, 0.0, 0.0]])
    student = np.array([[2.0, 1.0, 0.0], [3.0, 0.0, 1.0], [1.0, 0.0, 4.0], [5.0, 0.0, 0.0]])
    assert top1_agreement(teacher, student) == 0.75
    assert kl_divergence(teacher, teacher) == pytest.approx(0.0, abs=1e-12)
    assert kl_divergence(teacher, student) > 0.5
    probabilities = np.exp(teacher) / np.exp(teacher).sum(1, keepdims=True)
    # the same distribution given as logits or as probabilities
    assert kl_divergence(probabilities, student) == pytest.approx(kl_divergence(teacher, student), rel=1e-6)
    result = fidelity([teacher], [student], MetricSpec("classification"), labels=np.array([0, 1, 2, 1]))
    assert (result["accuracy"], result["teacher_accuracy"], result["primary"]) == (0.5, 0.75, "top1_agreement")


def test_generic_measures():
    t = np.array([[3.0, 4.0], [1.0, 0.0]])
    assert rel_l2(t, t) == 0.0 and cosine(t, t) == pytest.approx(1.0)
    assert rel_l2(t, 2 * t) == pytest.approx(1.0)
    assert cosine(t, -t) == pytest.approx(-1.0)
    assert cosine(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0


def test_mask_iou():
    t = np.zeros((1, 1, 4, 4))
    t[..., :2, :] = 0.9
    s = np.zeros_like(t)
    s[..., :1, :] = 0.9
    s[..., 3, 3] = 0.5
    assert mask_iou(t, s, 0.3) == pytest.approx(4 / 9)
    assert mask_iou(np.zeros_like(t), np.zeros_like(t), 0.3) == 1.0


def yolox_raw(boxes: list[tuple[int, float]], size: int = 64) -> np.ndarray:
    """A YOLOX head output for a size x size input with one confident box at each (anchor, score)."""
    anchors = sum((size // s) ** 2 for s in (8, 16, 32))
    raw = np.zeros((1, anchors, 6))
    raw[..., 2:4] = np.log(2.0)  # 2 x stride wide boxes
    for anchor, score in boxes:
        raw[0, anchor, 4], raw[0, anchor, 5] = 1.0, score
    return raw


def test_detection_recall_and_precision():
    spec = MetricSpec("detection", input_size=(64, 64))
    teacher = yolox_raw([(0, 0.95), (30, 0.9), (63, 0.5)])  # two confident objects, one weak
    assert detection_scores(teacher, teacher, spec) == (1.0, 1.0, 2)
    missing_one = yolox_raw([(0, 0.95), (63, 0.85)])
    recall, precision, objects = detection_scores(teacher, missing_one, spec)
    assert (recall, precision, objects) == (0.5, 0.5, 2)


def test_detection_budgets_are_set_on_f1_so_false_objects_count():
    spec = MetricSpec("detection", input_size=(64, 64))
    teacher = yolox_raw([(0, 0.95), (30, 0.9)])
    extra = yolox_raw([(0, 0.95), (30, 0.9), (50, 0.9), (63, 0.9)])  # both objects, and two false ones
    result = fidelity([teacher], [extra], spec)
    assert (result["detection_recall"], result["detection_precision"]) == (1.0, 0.5)
    assert result["primary"] == "detection_f1" and result["detection_f1"] == pytest.approx(2 / 3)
