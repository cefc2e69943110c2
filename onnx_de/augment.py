"""Calibration augmentation: copies of the calibration images shifted by a few pixels.

The student is fitted to the teacher, not to labels, so any plausible input is a calibration sample: the
teacher's outputs on it are the targets. A few hundred samples leave the least-squares refit and the search
room to fit what is particular to them; shifted copies show them more of the input distribution (mnist-lenet5
at 80% with DE and compensation: KL on the evaluation digits 0.0016 -> 0.0004 with three copies; BENCHMARKS.md).
Each copy moves every sample by its own random offset of at most ``shift`` pixels along each image axis, the
border filled by repeating the edge. Copies keep their source's group (:meth:`Dataset.hold_out` and
:meth:`Dataset.folds` never separate them from it).
"""

from __future__ import annotations

import numpy as np

from .data import Dataset
from .errors import ConfigError, is_int

__all__ = ["shifted_copies", "image_axes"]

_MAX_CHANNELS = 4  # an axis this short next to two long ones is the channel axis of an image


def image_axes(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """The two spatial axes of a batch of images shaped ``(N, C, H, W)`` or ``(N, H, W, C)``, else None."""
    if len(shape) != 4:
        return None
    if shape[1] <= _MAX_CHANNELS < min(shape[2], shape[3]):
        return 2, 3
    if shape[3] <= _MAX_CHANNELS < min(shape[1], shape[2]):
        return 1, 2
    return None


def shifted_copies(data: Dataset, copies: int, shift: int = 1, seed: int = 0) -> Dataset:
    """``data`` followed by ``copies`` shifted copies of it (inputs that are not images are repeated as they are).

    Flat inputs are shifted as the images ``data.images`` says they hold (``(C, H, W)`` per sample).
    """
    if not (is_int(copies) and is_int(shift)) or copies < 0 or shift < 1:
        raise ConfigError(f"augmentation needs an integer number of copies >= 0 and a shift of at least 1 pixel, "
                          f"got {copies!r} and {shift!r}")
    if copies == 0:
        return data
    views = {name: _image_view(name, values, (data.images or {}).get(name)) for name, values in data.inputs.items()}
    if not any(view is not None for view in views.values()):
        shapes = ", ".join(f"{name!r} {values.shape[1:]}" for name, values in data.inputs.items())
        raise ConfigError(f"augmentation shifts images, and no input is one (floats shaped (N, C, H, W) or (N, H, "
                          f"W, C) with at most {_MAX_CHANNELS} channels): {shapes}")
    rng = np.random.default_rng(seed)
    count = len(data)
    offsets = [(dy, dx) for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1) if dy or dx]
    drawn = [rng.integers(len(offsets), size=count) for _ in range(copies)]
    inputs = {}
    for name, values in data.inputs.items():
        view = views[name]
        parts = [values]
        for choice in drawn:
            if view is None:
                parts.append(values)
                continue
            images, axes = view
            parts.append(_shifted(images, axes, offsets, choice, shift).reshape(values.shape))
        inputs[name] = np.concatenate(parts)
    groups = data.groups if data.groups is not None else np.arange(count)
    labels = None if data.labels is None else np.tile(data.labels, copies + 1)
    return Dataset(inputs, labels, f"{data.name}[+{copies} shifted]", np.tile(groups, copies + 1), data.images)


def _image_view(name: str, values: np.ndarray, image: tuple[int, ...] | None):
    """The inputs as a batch of images and their spatial axes, or None where they are not images."""
    if image is not None:
        if int(np.prod(image)) != int(np.prod(values.shape[1:])):
            raise ConfigError(f"input {name!r}: samples of shape {values.shape[1:]} do not hold {image} images")
        values = values.reshape((len(values), *image))
    axes = image_axes(values.shape)
    return None if axes is None or not np.issubdtype(values.dtype, np.floating) else (values, axes)


def _shifted(images: np.ndarray, axes: tuple[int, int], offsets: list[tuple[int, int]], choice: np.ndarray,
             shift: int) -> np.ndarray:
    """Image ``i`` moved by ``offsets[choice[i]]`` = ``(dy, dx)``: content moves down/right for positive offsets,
    edges repeated."""
    pad = [(0, 0)] * images.ndim
    for axis in axes:
        pad[axis] = (shift, shift)
    padded = np.pad(images, pad, mode="edge")
    height, width = images.shape[axes[0]], images.shape[axes[1]]
    out = np.empty_like(images)
    for index in np.unique(choice):
        (dy, dx), chosen = offsets[index], np.flatnonzero(choice == index)
        window = [chosen] + [slice(None)] * (images.ndim - 1)
        window[axes[0]] = slice(shift - dy, shift - dy + height)
        window[axes[1]] = slice(shift - dx, shift - dx + width)
        out[chosen] = padded[tuple(window)]
    return out
