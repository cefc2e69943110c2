"""Calibration and evaluation data: ``.npz`` files, image folders with a preprocessing spec, and zoo splits.

Every dataset is checked against the model's inputs before anything runs: names, per-sample shapes, dtypes,
emptiness and non-finite values each get a :class:`~onnx_de.errors.DataError` that says what to fix.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, DataError, first_line
from .model import Model, TensorSpec

__all__ = ["LABELS_KEY", "GROUPS_KEY", "Dataset", "Preprocess", "load_data", "validate_dataset", "read_images", "read_npz"]

#: Key of the optional integer class labels in a ``.npz`` dataset.
LABELS_KEY = "labels"
#: Key of the optional integer source groups in a ``.npz`` dataset (see :class:`Dataset`).
GROUPS_KEY = "groups"
SPLITS = ("calibration", "evaluation")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass
class Dataset:
    """Model inputs keyed by input name (first axis = samples), optional integer labels and source groups.

    ``groups`` gives each sample the integer id of the source it came from (the photo a crop was cut from, the
    font a line was set in): samples of one source are not independent, so :meth:`hold_out` keeps sources whole.
    ``images`` gives, for flat inputs that hold images, the ``(C, H, W)`` image of one sample (for augmentation).
    """

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    name: str = "<data>"
    groups: np.ndarray | None = None
    images: dict[str, tuple[int, ...]] | None = None

    def __post_init__(self) -> None:
        self.labels = None if self.labels is None else np.asarray(self.labels)
        self.groups = None if self.groups is None else np.asarray(self.groups)

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values()))) if self.inputs else 0

    def take(self, count: int) -> Dataset:
        """The first ``count`` samples."""
        return self.part(0, count)

    def part(self, start: int, stop: int | None, name: str | None = None) -> Dataset:
        """Samples ``start`` to ``stop`` (a view, not a copy)."""
        return self.select(slice(start, stop), name)

    def select(self, index: slice | np.ndarray, name: str | None = None) -> Dataset:
        """The samples at ``index``: a slice gives views, an integer array copies."""
        labels = None if self.labels is None else self.labels[index]
        groups = None if self.groups is None else self.groups[index]
        return Dataset({k: v[index] for k, v in self.inputs.items()}, labels, name or self.name, groups, self.images)

    def arrays(self) -> dict[str, np.ndarray]:
        """The inputs, labels and groups keyed as in a ``.npz`` dataset (the inverse of :func:`read_npz`)."""
        extra = {key: values for key, values in ((LABELS_KEY, self.labels), (GROUPS_KEY, self.groups))
                 if values is not None}
        return {**self.inputs, **extra}

    def hold_out(self, count: int) -> tuple[Dataset, Dataset]:
        """About ``count`` samples to judge on (named ``[held out]``) and the rest (``[search]``).

        Without groups (or with a single one) the held-out samples are the last ``count``. With groups, whole
        groups are held out, the last ids first, as many as bring the count closest to ``count`` (at least one,
        never all), so that no held-out sample shares a source with a searched one.
        """
        names = f"{self.name}[search]", f"{self.name}[held out]"
        ids = [] if self.groups is None else np.unique(self.groups)[::-1]
        if len(ids) < 2:
            split = len(self) - count
            return self.part(0, split, names[0]), self.part(split, None, names[1])
        sizes = np.cumsum([np.count_nonzero(self.groups == g) for g in ids[:-1]])
        held = ids[: int(np.argmin(np.abs(sizes - count))) + 1]
        judged = np.isin(self.groups, held)
        return self.select(np.flatnonzero(~judged), names[0]), self.select(np.flatnonzero(judged), names[1])

    def folds(self, count: int) -> Iterator[tuple[Dataset, Dataset]]:
        """``count`` splits into (the rest, one fold), each sample judged in exactly one fold.

        Without groups the folds are consecutive runs of samples; with groups, whole groups are dealt to the
        folds in turn (so at most as many folds as groups).
        """
        ids, group_index = np.unique(self.groups, return_inverse=True) if self.groups is not None else ([], None)
        if len(ids) >= 2:
            count = min(count, len(ids))
            assigned = group_index % count
        else:
            assigned = np.arange(len(self)) * count // max(len(self), 1)
        for fold in range(count):
            judged = assigned == fold
            yield (self.select(np.flatnonzero(~judged), f"{self.name}[fit {fold + 1}/{count}]"),
                   self.select(np.flatnonzero(judged), f"{self.name}[fold {fold + 1}/{count}]"))


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes one model input sample.

    The image is converted to ``color``, resized to ``height`` x ``width`` (letterboxed with ``pad``
    when ``keep_aspect``), scaled as ``(pixel / scale - mean) / std`` per channel, and laid out as ``layout``.

    Spec strings look like ``size=224x224,color=rgb,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,scale=255``.
    """

    height: int
    width: int
    color: str = "rgb"
    layout: str = "nchw"
    scale: float = 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    keep_aspect: bool = False
    pad: float = 0.0

    def __post_init__(self) -> None:
        if self.color not in ("rgb", "bgr", "gray"):
            raise ConfigError(f"preprocess color must be rgb, bgr or gray, got {self.color!r}")
        if self.layout not in ("nchw", "nhwc"):
            raise ConfigError(f"preprocess layout must be nchw or nhwc, got {self.layout!r}")
        if self.height <= 0 or self.width <= 0 or self.height * self.width > 16384 * 16384:
            raise ConfigError(f"preprocess size {self.height}x{self.width} is out of range")
        if any(s == 0 for s in self.std) or self.scale == 0:
            raise ConfigError("preprocess std and scale must be non-zero")

    @classmethod
    def parse(cls, spec: str) -> Preprocess:
        """Parse ``key=value,...``; ``size`` is ``HxW``, ``mean``/``std`` take one value or one per channel."""
        fields: dict = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"preprocess item {item!r} is not key=value")
            try:
                if key == "size":
                    height, _, width = value.lower().partition("x")
                    fields["height"], fields["width"] = int(height), int(width or height)
                elif key in ("mean", "std"):
                    fields[key] = tuple(float(v) for v in value.split("/"))
                elif key in ("scale", "pad"):
                    fields[key] = float(value)
                elif key == "keep_aspect":
                    fields[key] = value.lower() in ("1", "true", "yes")
                elif key in ("color", "layout"):
                    fields[key] = value.lower()
                else:
                    raise ConfigError(f"unknown preprocess key {key!r} (size, color, layout, scale, mean, std, keep_aspect, pad)")
            except ValueError as e:
                raise ConfigError(f"preprocess item {item!r}: {first_line(e)}") from e
        if "height" not in fields:
            raise ConfigError("preprocess spec needs size=HxW")
        return cls(**fields)

    def to_dict(self) -> dict:
        return asdict(self)

    def apply(self, image) -> np.ndarray:
        """One PIL image to a float32 sample shaped (C, H, W) or (H, W, C)."""
        from PIL import Image

        image = image.convert("L" if self.color == "gray" else "RGB")
        if self.keep_aspect:
            ratio = min(self.height / image.height, self.width / image.width)
            size = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
            canvas = Image.new(image.mode, (self.width, self.height), int(self.pad) if image.mode == "L" else (int(self.pad),) * 3)
            canvas.paste(image.resize(size, Image.BILINEAR), (0, 0))
            image = canvas
        else:
            image = image.resize((self.width, self.height), Image.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if self.color == "bgr":
            pixels = pixels[:, :, ::-1]
        pixels = (pixels / self.scale - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout == "nchw":
            pixels = pixels.transpose(2, 0, 1)
        return np.ascontiguousarray(pixels, dtype=np.float32)


def load_data(
    spec: str | Path | Dataset,
    model: Model,
    *,
    split: str = "calibration",
    preprocess: Preprocess | None = None,
    limit: int | None = None,
) -> Dataset:
    """Load a dataset for ``model`` and check that it fits.

    Args:
        spec: a ``.npz`` file (arrays keyed by input name, optional ``labels`` and ``groups``), a folder of images
            (needs ``preprocess``; images in sub-folders get the sub-folder's sorted index as label),
            ``zoo:NAME`` (that zoo model's ``split``), or a :class:`Dataset`.
        model: the model the data is for.
        split: ``calibration`` or ``evaluation``; used for ``zoo:`` data only.
        preprocess: how images become samples (image folders only).
        limit: keep at most this many samples.

    Raises:
        DataError: the data cannot be read or does not fit the model.
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if isinstance(spec, Dataset):
        dataset = spec
    elif str(spec).startswith("zoo:"):
        from .zoo import load_zoo_split

        dataset = load_zoo_split(str(spec)[4:], split)
    else:
        path = Path(spec)
        if not path.exists():
            raise DataError(f"{path}: no such file or folder")
        if path.is_dir():
            if preprocess is None:
                raise DataError(f"{path}: an image folder needs a preprocessing spec (--preprocess size=HxW,...)")
            dataset = read_images(path, preprocess, _single_input(model, path))
        else:
            dataset = read_npz(path)
    if limit is not None:
        if limit <= 0:
            raise ConfigError(f"limit must be positive, got {limit}")
        dataset = dataset.take(limit)
    validate_dataset(dataset, model)
    return dataset


def read_npz(path: Path) -> Dataset:
    """A ``.npz`` dataset: arrays keyed by input name, optional ``labels`` and ``groups`` (not yet validated)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz file: {first_line(e)}") from e
    labels = arrays.pop(LABELS_KEY, None)
    groups = arrays.pop(GROUPS_KEY, None)
    return Dataset(arrays, labels, str(path), groups)


def _single_input(model: Model, path: Path) -> TensorSpec:
    if len(model.inputs) != 1:
        names = ", ".join(s.name for s in model.inputs)
        raise DataError(f"{path}: image folders feed single-input models; this one has inputs {names}: use a .npz")
    return model.inputs[0]


def read_images(folder: Path, preprocess: Preprocess, spec: TensorSpec) -> Dataset:
    """Every image under ``folder`` (sorted), preprocessed; sub-folder names become class labels."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as e:
        raise DataError("reading image folders needs Pillow: pip install 'onnx-de[images]'") from e
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{folder}: no images ({', '.join(sorted(_IMAGE_SUFFIXES))})")
    classes = sorted({p.parent for p in files} - {folder})
    samples = []
    for file in files:
        try:
            with Image.open(file) as image:
                samples.append(preprocess.apply(image))
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
            raise DataError(f"{file}: cannot read image: {first_line(e)}") from e
    labels = None
    if classes and all(p.parent != folder for p in files):
        index = {c: i for i, c in enumerate(classes)}
        labels = np.asarray([index[p.parent] for p in files], dtype=np.int64)
    return Dataset({spec.name: np.stack(samples)}, labels, str(folder))


def validate_dataset(dataset: Dataset, model: Model) -> None:
    """Check names, sample counts, per-sample shapes, dtypes and finiteness against ``model``'s inputs.

    Raises:
        DataError: naming the input and what is wrong.
    """
    label = dataset.name
    expected = {s.name: s for s in model.inputs}
    missing = sorted(set(expected) - set(dataset.inputs))
    unknown = sorted(set(dataset.inputs) - set(expected))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown key(s) {', '.join(unknown)}")
        raise DataError(f"{label}: {'; '.join(parts)}; the model's inputs are {', '.join(expected)}")
    counts = {name: (len(a) if np.ndim(a) else 0) for name, a in dataset.inputs.items()}
    if not counts or min(counts.values()) == 0:
        raise DataError(f"{label}: the dataset is empty")
    if len(set(counts.values())) > 1:
        raise DataError(f"{label}: inputs have different sample counts {counts}")
    for name, array in dataset.inputs.items():
        spec = expected[name]
        if array.dtype.name != spec.dtype:
            raise DataError(
                f"{label}: input {name!r} has dtype {array.dtype.name}, the model wants {spec.dtype} "
                f"(convert with array.astype(np.{spec.dtype}))"
            )
        _check_shape(label, name, array.shape, spec.shape)
        if array.dtype.kind in "fc":
            bad = int(np.count_nonzero(~np.isfinite(array)))
            if bad:
                raise DataError(f"{label}: input {name!r} has {bad} NaN or infinite value(s)")
    for key, values in ((LABELS_KEY, dataset.labels), (GROUPS_KEY, dataset.groups)):
        if values is not None and (values.ndim != 1 or len(values) != len(dataset) or values.dtype.kind not in "iu"):
            raise DataError(f"{label}: {key} must be one integer per sample, got {values.dtype.name} {values.shape}")


def _check_shape(label: str, name: str, shape: tuple[int, ...], want: tuple[int | None, ...]) -> None:
    if not want:
        return  # the model does not declare a shape
    per_sample, want_sample = shape[1:], want[1:]
    mismatch = len(per_sample) != len(want_sample) or any(
        w is not None and w != s for s, w in zip(per_sample, want_sample)
    )
    if mismatch:
        shown = "x".join("?" if w is None else str(w) for w in want_sample) or "scalar"
        raise DataError(
            f"{label}: input {name!r} has samples shaped {'x'.join(map(str, per_sample)) or 'scalar'}, "
            f"the model wants {shown} (first axis = samples)"
        )
