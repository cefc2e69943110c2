"""Zero masks (``FORMAT.md``, "Masks"): coded with rANS by one of two methods, the encoder keeping the smaller,
or, for containers that must decode fast, packed 8 bits a byte and zstd-compressed.

- ``order0``: every bit with one probability.
- ``lines``: every row (axis 0) and column (axis 1) gets a class, 0 for a line with no kept weight and 1-3 for
  the live lines by thirds of their density; the classes are coded first, then the bits where both lines are
  live, each with the probability of its (row class, column class) pair. Dead input pixels, dead units and
  channels, and rows or columns denser than others cost almost nothing to describe.
- ``packed``: the bits packed (first element in the highest bit of byte 0), one zstd frame.
"""

from __future__ import annotations

import json

import numpy as np

from . import frames, rans

__all__ = ["LINE_CLASSES", "encode_mask", "decode_mask", "mask_view"]

LINE_CLASSES = 4  # class 0: an empty line; 1..3: live lines, sparsest third to densest third
_LIVE = LINE_CLASSES - 1


def mask_view(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The ``(rows, columns, rest)`` view of a tensor of ``shape`` that the ``lines`` method works on."""
    rows = shape[0] if len(shape) >= 1 else 1
    columns = shape[1] if len(shape) >= 2 else 1
    return rows, columns, int(np.prod(shape[2:], dtype=np.int64))


def encode_mask(mask: np.ndarray, fast_decode: bool = False) -> tuple[dict, dict[str, bytes]]:
    """Code boolean ``mask``; returns its description for the index and its streams (``packed`` alone with
    ``fast_decode``)."""
    if fast_decode:
        return {"method": "packed"}, {"mask": frames.compress(np.packbits(mask.reshape(-1)).tobytes())}
    candidates = [_encode_order0(mask)]
    if mask.ndim >= 2 and mask.shape[0] > 1 and mask.shape[1] > 1:
        candidates.append(_encode_lines(mask))
    return min(candidates, key=lambda c: sum(len(s) for s in c[1].values()) + len(json.dumps(c[0])))


def decode_mask(description: dict, streams: dict[str, memoryview], shape: tuple[int, ...]) -> np.ndarray:
    """Rebuild the boolean mask of ``shape`` from :func:`encode_mask`'s output (already validated)."""
    count = int(np.prod(shape, dtype=np.int64))
    if description["method"] == "packed":
        packed = frames.decompress(streams["mask"], (count + 7) // 8, "mask stream", exact=(count + 7) // 8)
        return np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=count).view(bool).reshape(shape)
    if description["method"] == "order0":
        bits = rans.decode(streams["mask"], count, _binary(description["ones"]))
        return bits.astype(bool).reshape(shape)
    rows, columns, rest = mask_view(shape)
    row_class = rans.decode(streams["mask.rows"], rows, description["rows"])
    column_class = rans.decode(streams["mask.columns"], columns, description["columns"])
    model, live = _line_models(row_class, column_class, rest)
    bits = rans.decode(streams["mask"], int(live.sum()), _binary(description["ones"]), models=model[live])
    mask = np.zeros(count, dtype=bool)
    mask[live] = bits.astype(bool)
    return mask.reshape(shape)


def _encode_order0(mask: np.ndarray) -> tuple[dict, dict[str, bytes]]:
    bits = mask.reshape(-1).astype(np.int64)
    counts = np.bincount(bits, minlength=2)
    freq = rans.quantize_frequencies(counts)
    return {"method": "order0", "ones": int(freq[1])}, {"mask": rans.encode(bits, freq)}


def _encode_lines(mask: np.ndarray) -> tuple[dict, dict[str, bytes]]:
    rows, columns, rest = mask_view(mask.shape)
    cube = mask.reshape(rows, columns, rest)
    row_class = _classes(cube.mean(axis=(1, 2)))
    column_class = _classes(cube.mean(axis=(0, 2)))
    model, live = _line_models(row_class, column_class, rest)
    bits = cube.reshape(-1)[live].astype(np.int64)
    model = model[live].astype(np.int64)
    counts = np.zeros((_LIVE * _LIVE, 2), dtype=np.int64)
    np.add.at(counts, (model, bits), 1)
    freq = rans.quantize_frequencies(counts)
    description = {"method": "lines", "ones": [int(f) for f in freq[:, 1]]}
    streams = {"mask": rans.encode(bits, freq, model)}
    for key, classes in (("rows", row_class), ("columns", column_class)):
        class_freq = rans.quantize_frequencies(np.bincount(classes, minlength=LINE_CLASSES))
        description[key] = [int(f) for f in class_freq]
        streams[f"mask.{key}"] = rans.encode(classes, class_freq)
    return description, streams


def _classes(density: np.ndarray) -> np.ndarray:
    """0 for empty lines; 1..3 for live ones by the thirds of the live lines' densities."""
    classes = np.zeros(density.size, dtype=np.int64)
    live = density > 0
    if live.any():
        thresholds = np.quantile(density[live], [1 / 3, 2 / 3])
        classes[live] = 1 + np.searchsorted(thresholds, density[live], side="right").clip(max=_LIVE - 1)
    return classes


def _line_models(row_class: np.ndarray, column_class: np.ndarray, rest: int) -> tuple[np.ndarray, np.ndarray]:
    """Each element's model ``(row class - 1) * 3 + column class - 1`` and whether both its lines are live."""
    pair = ((row_class[:, None].astype(np.int8) - 1) * _LIVE + (column_class[None, :].astype(np.int8) - 1))
    live = (row_class[:, None] > 0) & (column_class[None, :] > 0)
    model = np.repeat(pair.reshape(-1), rest)
    return model, np.repeat(live.reshape(-1), rest)


def _binary(ones) -> np.ndarray:
    """Binary frequency tables ``[2**16 - ones, ones]`` (one row per model)."""
    ones = np.atleast_1d(np.asarray(ones, dtype=np.int64))
    return np.stack([rans.TOTAL - ones, ones], axis=1)
