"""One tensor's record: how its elements are coded (``FORMAT.md``, "Tensor records"), encoder and decoder.

A record optionally has a *mask* of the elements that differ (bit for bit) from a *fill* value, per tensor or
per channel, and codes the *values* of the masked-in elements (all elements without a mask) either as
*levels* (a table of the distinct values and an rANS stream of indices into it; the tables plain or, for the
thousands of levels of fine steps, zstd-coded: ``levels-zstd``) or *raw* (zstd, with the bytes of each element
split into planes for floats). The encoder tries the applicable combinations and keeps
the smallest, so any tensor round-trips bit for bit: quantized integers, codebook indices, sparse or dense
floats alike.
"""

from __future__ import annotations

import json

import numpy as np
from onnx import TensorProto

from ..errors import FormatError, is_int
from ..quantizers import broadcast_channels
from . import frames, masks, rans

__all__ = ["DTYPES", "LEVEL_CODINGS", "MAX_LEVELS", "encode_record", "decode_record", "check_record", "record_streams",
           "bit_view"]

# ONNX element types a record can hold, with their little-endian numpy types.
DTYPES: dict[int, np.dtype] = {
    TensorProto.FLOAT: np.dtype("<f4"), TensorProto.DOUBLE: np.dtype("<f8"), TensorProto.FLOAT16: np.dtype("<f2"),
    TensorProto.INT8: np.dtype("i1"), TensorProto.UINT8: np.dtype("u1"), TensorProto.INT16: np.dtype("<i2"),
    TensorProto.UINT16: np.dtype("<u2"), TensorProto.INT32: np.dtype("<i4"), TensorProto.UINT32: np.dtype("<u4"),
    TensorProto.INT64: np.dtype("<i8"), TensorProto.UINT64: np.dtype("<u8"), TensorProto.BOOL: np.dtype("?"),
}
MAX_LEVELS = 4096  # more distinct values than this are coded raw
LEVEL_CODINGS = ("levels", "levels-zstd")  # a table of levels and rANS symbols; its tables plain or zstd
_MASK_WORTH_TRYING = 0.05  # try a mask when at least this fraction of elements equals the fill value
_FAST_MASK_GAIN = 0.97  # fast decoding: a mask must save 3% of the record (scattering survivors costs time)

_STREAMS = {  # which streams a record has, by its choices
    "fill": lambda r: r["mask"] is not None,
    "mask": lambda r: r["mask"] is not None,
    "mask.rows": lambda r: r["mask"] is not None and r["mask"]["method"] == "lines",
    "mask.columns": lambda r: r["mask"] is not None and r["mask"]["method"] == "lines",
    "levels": lambda r: r["values"]["coding"] in LEVEL_CODINGS,
    "frequencies": lambda r: r["values"]["coding"] in LEVEL_CODINGS,
    "symbols": lambda r: r["values"]["coding"] in LEVEL_CODINGS,
    "raw": lambda r: r["values"]["coding"] == "raw",
}


def record_streams(record: dict) -> list[str]:
    """The names of the streams ``record`` has, in the order they are stored."""
    return [name for name, present in _STREAMS.items() if present(record)]


def encode_record(array: np.ndarray, fill: np.ndarray | None = None, axis: int | None = None,
                  fast_decode: bool = False) -> tuple[dict, dict]:
    """Code ``array`` losslessly; returns the record's coding fields and its streams, the smallest found.

    ``fill`` (one value, or one per index of ``axis``) is the value masked out; default 0. With
    ``fast_decode`` only the codings that decode at zstd's speed compete: a ``packed`` mask or none (a mask
    only where it saves 3%), values raw.
    """
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<") if array.dtype.itemsize > 1 else None)
    bits = bit_view(array)
    if fill is None:
        fill, axis = np.zeros(1, array.dtype), None
    fill_bits = bit_view(np.ascontiguousarray(fill, dtype=array.dtype)).reshape(-1)
    candidates = []
    mask = bits != broadcast_channels(fill_bits, array.ndim, axis)
    masked_out = mask.size - int(np.count_nonzero(mask))
    for use_mask in (False, True):
        if use_mask and (masked_out < _MASK_WORTH_TRYING * mask.size or array.size == 0):
            continue
        values = array.reshape(-1)[mask.reshape(-1)] if use_mask else array.reshape(-1)
        record, streams = {"mask": None}, {}
        if use_mask:
            record["mask"], mask_streams = masks.encode_mask(mask, fast_decode)
            record["fill"] = {"axis": axis}
            streams["fill"] = fill_bits.astype(fill_bits.dtype.newbyteorder("<")).tobytes()
            streams.update(mask_streams)
        for coding, value_streams in _encode_values(values, with_levels=not fast_decode):
            candidate = (dict(record, values=coding), dict(streams, **value_streams))
            candidates.append(candidate)
    if fast_decode:
        return min(candidates, key=lambda c: _cost(c) * (1 if c[0]["mask"] is None else 1 / _FAST_MASK_GAIN))
    return min(candidates, key=_cost)


def decode_record(record: dict, streams: dict[str, memoryview], shape: tuple[int, ...],
                  dtype: np.dtype) -> tuple[np.ndarray, np.ndarray | None]:
    """Rebuild the tensor of a record that :func:`check_record` accepted; returns it and its mask (or None)."""
    count = int(np.prod(shape, dtype=np.int64))
    if record["mask"] is None:
        return _decode_values(record["values"], streams, count, dtype).reshape(shape), None
    axis = record["fill"]["axis"]
    fill = _array(streams["fill"], dtype, 1 if axis is None else shape[axis], "fill")
    mask = masks.decode_mask(record["mask"], streams, shape)
    out = np.empty(shape, dtype=dtype)
    out[...] = broadcast_channels(fill, len(shape), axis)
    kept = np.flatnonzero(mask)  # index scatter: several times faster than boolean-mask assignment
    out.reshape(-1)[kept] = _decode_values(record["values"], streams, kept.size, dtype)
    return out, mask


def check_record(record: dict, shape: tuple[int, ...]) -> None:
    """Raise :class:`FormatError` unless ``record``'s coding fields are well formed for ``shape``."""
    mask = record.get("mask", "missing")
    if mask is not None:
        _expect(isinstance(mask, dict), "mask must be null or an object")
        fill = record.get("fill")
        _expect(isinstance(fill, dict) and set(fill) == {"axis"}, "fill must be an object with one key, axis")
        axis = fill["axis"]
        _expect(axis is None or (is_int(axis) and 0 <= axis < len(shape)), f"fill axis {axis!r} out of range")
        method = mask.get("method")
        if method == "packed":
            _expect(set(mask) == {"method"}, "packed mask has unknown fields")
        elif method == "order0":
            _expect(set(mask) == {"method", "ones"}, "order0 mask has unknown or missing fields")
            _check_binary(mask["ones"])
        elif method == "lines":
            _expect(len(shape) >= 2, "a lines mask needs a tensor of rank 2 or more")
            _expect(set(mask) == {"method", "ones", "rows", "columns"}, "lines mask has unknown or missing fields")
            _expect(isinstance(mask["ones"], list) and len(mask["ones"]) == (masks.LINE_CLASSES - 1) ** 2,
                    "lines mask needs 9 probabilities")
            for ones in mask["ones"]:
                _check_binary(ones)
            for key in ("rows", "columns"):
                _check_table(mask[key], masks.LINE_CLASSES)
        else:
            raise FormatError(f"unknown mask method {method!r}")
    else:
        _expect("fill" not in record, "fill without a mask")
    values = record.get("values")
    _expect(isinstance(values, dict), "values must be an object")
    if values.get("coding") in LEVEL_CODINGS:
        _expect(set(values) == {"coding", "levels"}, "levels values have unknown or missing fields")
        _expect(is_int(values["levels"]) and 1 <= values["levels"] <= MAX_LEVELS, "levels out of range")
    elif values.get("coding") == "raw":
        _expect(set(values) == {"coding", "transform"} and values["transform"] in ("none", "bytes"),
                "raw values have unknown or missing fields")
    else:
        raise FormatError(f"unknown values coding {values.get('coding')!r}")


def _encode_values(values: np.ndarray, with_levels: bool = True):
    """Every applicable coding of ``values`` with its streams (``with_levels``: the rANS-coded levels too)."""
    bits = bit_view(values)
    if values.size and with_levels:
        levels, symbols = np.unique(bits, return_inverse=True)
        if levels.size <= MAX_LEVELS:
            counts = np.bincount(symbols, minlength=levels.size)
            freq = rans.quantize_frequencies(counts)
            stored = (freq - 1).astype("<u2")
            symbol_stream = rans.encode(symbols, freq)
            yield {"coding": "levels", "levels": int(levels.size)}, {
                "levels": levels.astype(levels.dtype.newbyteorder("<")).tobytes(),
                "frequencies": stored.tobytes(),
                "symbols": symbol_stream,
            }
            if levels.size > 1:
                steps = np.diff(levels, prepend=levels.dtype.type(0))  # ascending: no step wraps around
                yield {"coding": "levels-zstd", "levels": int(levels.size)}, {
                    "levels": frames.compress(_split_bytes(steps.astype(steps.dtype.newbyteorder("<")))),
                    "frequencies": frames.compress(_split_bytes(stored)),
                    "symbols": symbol_stream,
                }
    if values.dtype.kind == "f" and values.dtype.itemsize > 1:
        yield {"coding": "raw", "transform": "bytes"}, {"raw": frames.compress(_split_bytes(values))}
    else:
        yield {"coding": "raw", "transform": "none"}, {"raw": frames.compress(values.tobytes())}


def _decode_values(values: dict, streams: dict[str, memoryview], count: int, dtype: np.dtype) -> np.ndarray:
    if values["coding"] in LEVEL_CODINGS:
        size = values["levels"]
        if values["coding"] == "levels":
            levels = _array(streams["levels"], dtype, size, "levels")
            stored = _array(streams["frequencies"], np.dtype("<u2"), size, "frequencies")
        else:
            levels = _levels_from_steps(_planes(streams["levels"], dtype, size, "levels"), dtype)
            stored = _planes(streams["frequencies"], np.dtype("<u2"), size, "frequencies")
        return levels[rans.decode(streams["symbols"], count, stored.astype(np.int64) + 1)]
    if values["transform"] == "bytes":
        return _planes(streams["raw"], dtype, count, "raw stream")
    expected = count * dtype.itemsize
    return np.frombuffer(frames.decompress(streams["raw"], expected, "raw stream", exact=expected), dtype=dtype)


def _planes(stream: memoryview, dtype: np.dtype, count: int, name: str) -> np.ndarray:
    """``count`` elements of ``dtype`` from a zstd frame of their byte planes (:func:`_split_bytes`)."""
    expected = count * dtype.itemsize
    raw = frames.decompress(stream, expected, name, exact=expected)
    return np.frombuffer(raw, dtype=np.uint8).reshape(dtype.itemsize, count).T.copy().view(dtype).reshape(-1)


def _levels_from_steps(steps: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Levels from the first level's bit pattern and the steps between ascending bit patterns."""
    steps = bit_view(steps)
    levels = np.cumsum(steps, dtype=steps.dtype)
    if np.any(levels[1:] < levels[:-1]):  # a step past the largest bit pattern wrapped around
        raise FormatError("levels stream: the steps between levels overflow the element type")
    return levels.view(dtype)


def _array(stream: memoryview, dtype: np.dtype, count: int, name: str) -> np.ndarray:
    """Stream ``name`` read as exactly ``count`` elements of ``dtype``."""
    if len(stream) != count * dtype.itemsize:
        raise FormatError(f"{name} stream holds {len(stream)} bytes, expected {count * dtype.itemsize}")
    return np.frombuffer(stream, dtype=dtype)


def _split_bytes(values: np.ndarray) -> bytes:
    """Byte ``k`` of every element, then byte ``k + 1``...: exponents and high mantissa bytes compress apart."""
    return values.view(np.uint8).reshape(-1, values.dtype.itemsize).T.tobytes()


def bit_view(array: np.ndarray) -> np.ndarray:
    """``array`` viewed as unsigned integers of its width, so that equality is bitwise (-0.0 != 0.0, NaNs)."""
    return array.view(f"<u{array.dtype.itemsize}" if array.dtype.itemsize > 1 else np.uint8)


def _cost(candidate: tuple[dict, dict]) -> int:
    record, streams = candidate
    return sum(len(s) for s in streams.values()) + len(json.dumps(record))


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise FormatError(message)


def _check_binary(ones) -> None:
    _expect(is_int(ones) and 0 <= ones <= rans.TOTAL, f"probability {ones!r} out of range")


def _check_table(frequencies, size: int) -> None:
    _expect(isinstance(frequencies, list) and len(frequencies) == size
            and all(is_int(f) and f >= 0 for f in frequencies) and sum(frequencies) == rans.TOTAL,
            f"a frequency table must be {size} counts summing to {rans.TOTAL}")
