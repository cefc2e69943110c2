"""Data loading and validation: .npz files, image folders, zoo splits, and every kind of bad data."""

from __future__ import annotations

import numpy as np
import pytest

import onnx_de
from onnx_de import ConfigError, DataError, Dataset, Preprocess, load_data
from onnx_de.zoo import models_dir


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_npz_with_labels_loads(tmp_path, mlp):
    x = np.random.default_rng(0).random((5, 784), dtype=np.float32)
    data = load_data(write_npz(tmp_path / "d.npz", input=x, labels=np.arange(5)), mlp)
    assert len(data) == 5 and data.labels.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(data.inputs["input"], x)
    assert len(load_data(tmp_path / "d.npz", mlp, limit=2)) == 2


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"pixels": np.zeros((4, 784), np.float32)}, "missing input.*input.*unknown key.*pixels"),
        ({"input": np.zeros((4, 28, 28), np.float32)}, "samples shaped 28x28, the model wants 784"),
        ({"input": np.zeros((4, 784), np.float64)}, "dtype float64, the model wants float32"),
        ({"input": np.zeros((0, 784), np.float32)}, "empty"),
        ({"input": np.full((4, 784), np.nan, np.float32)}, "3136 NaN or infinite"),
        ({"input": np.zeros((4, 784), np.float32), "labels": np.zeros(3, np.int64)}, "one integer per sample"),
        ({"input": np.zeros((4, 784), np.float32), "groups": np.zeros(4, np.float32)}, "groups must be one integer"),
    ],
)
def test_bad_npz_data_is_rejected_with_a_reason(tmp_path, mlp, arrays, message):
    with pytest.raises(DataError, match=message):
        load_data(write_npz(tmp_path / "bad.npz", **arrays), mlp)


def test_held_out_samples_keep_their_sources_whole(tmp_path, mlp):
    x = np.random.default_rng(0).random((12, 784), dtype=np.float32)
    groups = np.array([0, 1, 2, 3] * 3)  # four sources, interleaved as the zoo's photo crops are
    data = load_data(write_npz(tmp_path / "g.npz", input=x, groups=groups), mlp)
    search, judged = data.hold_out(4)
    assert judged.groups.tolist() == [3, 3, 3] and sorted(set(search.groups)) == [0, 1, 2]
    np.testing.assert_array_equal(judged.inputs["input"], x[groups == 3])
    assert len(data.hold_out(7)[1]) == 6  # two sources (6) are closer to 7 than one (3) or three (9)
    assert set(data.hold_out(12)[0].groups) == {0}  # never every source
    assert Dataset({"input": x}, groups=groups.tolist()).hold_out(4)[1].groups.tolist() == [3, 3, 3]
    plain, last = Dataset({"input": x}).hold_out(4)  # without groups: the last samples
    np.testing.assert_array_equal(last.inputs["input"], x[8:])
    assert len(plain) == 8


def test_zoo_photo_crops_are_grouped_by_photograph():
    model = onnx_de.open_model("zoo:efficientnet-lite0")
    search, judged = load_data("zoo:efficientnet-lite0", model).hold_out(16)
    assert len(judged) == 16 and not set(judged.groups) & set(search.groups)


def test_unreadable_and_missing_data(tmp_path, mlp):
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_data(tmp_path / "junk.npz", mlp)
    with pytest.raises(DataError, match="no such file"):
        load_data(tmp_path / "nothing.npz", mlp)
    with pytest.raises(ConfigError, match="split"):
        load_data("zoo:mnist-mlp", mlp, split="train")


def test_zoo_splits_are_disjoint_and_labelled(mlp):
    calibration = load_data("zoo:mnist-mlp", mlp, split="calibration")
    evaluation = load_data("zoo:mnist-mlp", mlp, split="evaluation")
    assert (len(calibration), len(evaluation)) == (512, 1000)
    assert calibration.inputs["input"].dtype == np.float32 and evaluation.labels is not None
    seen = {row.tobytes() for row in calibration.inputs["input"]}
    assert sum(row.tobytes() in seen for row in evaluation.inputs["input"]) == 0
    with np.load(models_dir() / "mnist-split.npz") as archive:  # the digits the MNIST teachers were trained on
        trained = {(row.astype(np.float32) / 255.0).tobytes() for row in archive["train_x"]}
    assert len(trained) > 3000
    for split in (calibration, evaluation):  # searches must score on digits as new to the teacher as the test's
        assert sum(row.tobytes() in trained for row in split.inputs["input"]) == 0


def test_folds_judge_every_sample_once_and_keep_sources_whole():
    data = Dataset({"x": np.arange(10, dtype=np.float32)[:, None]})
    folds = list(data.folds(4))
    judged = np.concatenate([fold.inputs["x"].ravel() for _, fold in folds])
    assert len(folds) == 4 and sorted(judged.tolist()) == list(range(10))
    for rest, fold in folds:
        assert len(rest) + len(fold) == 10 and not set(rest.inputs["x"].ravel()) & set(fold.inputs["x"].ravel())
    grouped = Dataset({"x": np.arange(10, dtype=np.float32)[:, None]}, groups=np.repeat(np.arange(5), 2))
    folds = list(grouped.folds(8))  # at most one fold per source
    assert len(folds) == 5 and all(len(np.unique(fold.groups)) == 1 and len(fold) == 2 for _, fold in folds)
    for rest, fold in grouped.folds(2):
        assert not set(rest.groups) & set(fold.groups)


def test_image_folder_with_preprocessing_and_class_subfolders(tmp_path, lenet):
    from PIL import Image

    rng = np.random.default_rng(1)
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (40, 30), dtype=np.uint8)).save(tmp_path / label / f"{i}.png")
    spec = Preprocess.parse("size=28x28,color=gray,scale=255")
    data = load_data(tmp_path, lenet, preprocess=spec)
    assert data.inputs["input"].shape == (6, 1, 28, 28) and data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert 0.0 <= data.inputs["input"].min() and data.inputs["input"].max() <= 1.0
    with pytest.raises(DataError, match="preprocessing spec"):
        load_data(tmp_path, lenet)
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="cannot read image"):
        load_data(tmp_path, lenet, preprocess=spec)


@pytest.mark.parametrize("spec", ["color=rgb", "size=0x4", "size=8,color=cmyk", "size=8,mean", "size=8,speed=3"])
def test_bad_preprocess_specs(spec):
    with pytest.raises(ConfigError):
        Preprocess.parse(spec)
