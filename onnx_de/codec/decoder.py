"""``decode`` and ``inspect_container``: a container back into an ONNX model, and what its bytes are spent on.

Every section's checksum is verified and every field of the index validated before it is used; declared sizes
are checked against a ceiling (``max_bytes``) before anything is allocated, so a corrupt or hostile file ends in
a :class:`~onnx_de.errors.FormatError` naming the section, never in a crash, a hang or a huge allocation.
"""

from __future__ import annotations

import functools
import json
import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from ..errors import FormatError, is_int
from ..export import fold_values
from . import frames, rans
from .container import is_container, read_sections
from .encoder import constant_tensor
from .records import DTYPES, LEVEL_CODINGS, bit_view, check_record, decode_record, record_streams

__all__ = ["DEFAULT_MAX_BYTES", "decode", "decode_arrays", "inspect_container", "read_container", "Container"]

DEFAULT_MAX_BYTES = 1 << 31  # what a decoded model may occupy: ONNX's own 2 GiB protobuf limit
_RECORD_KEYS = {"name", "dtype", "shape", "mask", "values", "streams"}  # and one place: initializer or constant
_PLACES = ("initializer", "constant")


@dataclass
class Container:
    """A container's verified index and graph, and its tensor sections (verified as each is decoded)."""

    graph: onnx.ModelProto
    records: list[dict]
    sections: list
    size: int
    index_bytes: int
    graph_bytes: int
    mapping: mmap.mmap | None = None

    def tensors(self) -> Iterator[tuple[dict, np.ndarray, np.ndarray | None]]:
        """Each record with its decoded array and mask, one at a time (peak memory: one tensor's working set).

        Sequential on purpose: decoding in worker threads measured 25% faster on EfficientNet-Lite0 but spread
        the allocations over glibc's per-thread arenas, and peak memory rose from 1.8x to 2.75x the model."""
        for number, (record, section) in enumerate(zip(self.records, self.sections)):
            what = f"tensor section {number} ({record['name']!r})"
            payload = section.verified(what)
            streams, start = {}, 0
            for name in record_streams(record):
                length = record["streams"][name]
                streams[name] = payload[start : start + length]
                start += length
            try:
                array, mask = decode_record(record, streams, tuple(record["shape"]), DTYPES[record["dtype"]])
            except FormatError as e:
                raise FormatError(f"{what}: {e}") from e
            yield record, array, mask
            self._release(section)

    def _release(self, section) -> None:
        """Drop a decoded section's pages of the mapped file from memory (they are read once)."""
        if self.mapping is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        start = section.offset - section.offset % mmap.PAGESIZE
        end = section.offset + len(section.payload)
        end -= end % mmap.PAGESIZE
        if end > start:
            self.mapping.madvise(mmap.MADV_DONTNEED, start, end - start)


def _utf8_checked(function):
    """Turn the UnicodeDecodeError protobuf raises on first reading a crafted non-UTF-8 name into a FormatError."""

    @functools.wraps(function)
    def checked(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except UnicodeDecodeError as e:
            raise FormatError("graph section: a name or string is not valid UTF-8") from e

    return checked


@_utf8_checked
def read_container(source: str | Path | bytes | memoryview, max_bytes: int = DEFAULT_MAX_BYTES) -> Container:
    """Open a container: check its header, index and graph; tensors are decoded by :meth:`Container.tensors`."""
    data, mapping = _read_bytes(source)
    sections = read_sections(data)
    index_raw = frames.decompress(sections[0].verified("index section"), min(max_bytes, 1 << 30), "index section")
    try:
        index = json.loads(index_raw, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, RecursionError) as e:
        raise FormatError(f"index section: not valid JSON ({type(e).__name__})") from e
    graph_raw = frames.decompress(sections[1].verified("graph section"), max_bytes, "graph section")
    graph = onnx.ModelProto()
    try:
        graph.ParseFromString(graph_raw)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise FormatError("graph section: not a serialized ONNX model") from e
    records = _check_index(index, graph, len(sections) - 2, max_bytes - len(graph_raw))
    for record, section in zip(records, sections[2:]):
        if sum(record["streams"].values()) != len(section.payload):
            raise FormatError(f"index section: tensor {record['name']!r} streams do not add up to its section")
    return Container(graph, records, sections[2:], len(data), len(sections[0].payload), len(sections[1].payload),
                     mapping)


@_utf8_checked
def decode(source: str | Path | bytes | memoryview, *, dense: bool = True,
           max_bytes: int = DEFAULT_MAX_BYTES) -> onnx.ModelProto:
    """The ONNX model stored in a container.

    Args:
        source: an .ode path or the container's bytes.
        dense: fold the dequantizing nodes of a quantized export (``DequantizeLinear`` and codebook ``Gather``
            on initializers) into plain float weights; ``False`` returns the model exactly as it was encoded.
        max_bytes: the most the decoded model may occupy; larger declared sizes are refused before allocation.

    Raises:
        FormatError: not a container, or truncated, corrupt or over the limits (the message names the section).
        UnsupportedVersionError: a format version this onnx-de cannot read.

    Example:
        >>> model = decode("student.ode")
    """
    proto, arrays = decode_arrays(source, dense=dense, max_bytes=max_bytes)
    for tensor in proto.graph.initializer:
        if tensor.name in arrays:  # one tensor at a time, so the model is never held twice
            tensor.raw_data = arrays.pop(tensor.name).tobytes()
    return proto


@_utf8_checked
def decode_arrays(source: str | Path | bytes | memoryview, *, dense: bool = True,
                  max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """:func:`decode`, with the coded initializers (and folded weights) as arrays beside data-less stubs; coded
    ``Constant`` tensors are back in their nodes."""
    container = read_container(source, max_bytes)
    proto = container.graph
    arrays = {}
    for record, array, _ in container.tensors():
        if "constant" in record:  # back into its node: ONNX Runtime takes only initializers from outside
            constant_tensor(proto.graph.node[record["constant"]]).raw_data = array.tobytes()
        else:
            arrays[record["name"]] = array
    if not dense:
        return proto, arrays
    graph = proto.graph
    stubs = {t.name: t for t in graph.initializer}
    try:
        computed, unread, _ = fold_values(
            graph, set(stubs), lambda name: arrays[name] if name in arrays else numpy_helper.to_array(stubs[name]))
    except Exception as e:  # noqa: BLE001 - a crafted graph can make any of numpy/onnx's conversions fail
        raise FormatError(f"graph section: cannot fold its dequantizing nodes ({type(e).__name__})") from e
    del stubs
    for position in reversed([i for i, t in enumerate(graph.initializer) if t.name in unread]):
        arrays.pop(graph.initializer[position].name, None)
        del graph.initializer[position]
    for name, value in computed.items():
        stub = graph.initializer.add()
        stub.name, stub.data_type = name, helper.np_dtype_to_tensor_dtype(value.dtype)
        stub.dims.extend(value.shape)
        arrays[name] = value
    return proto, arrays


@_utf8_checked
def inspect_container(source: str | Path | bytes | memoryview, max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """Sizes per section and per tensor, bits per element, and the order-0 bounds of masks and symbols."""
    container = read_container(source, max_bytes)
    tensors, totals = [], {"mask": 0, "mask_bound": 0.0, "symbols": 0, "symbols_bound": 0.0, "tables": 0, "raw": 0}
    for record, array, mask in container.tensors():
        streams = record["streams"]
        elements = int(array.size)
        row = {"name": record["name"], "dtype": onnx.TensorProto.DataType.Name(record["dtype"]).lower(),
               "shape": record["shape"], "elements": elements, "bytes": sum(streams.values()),
               "mask": record["mask"]["method"] if record["mask"] else None, "values": record["values"]["coding"]}
        row["bits_per_element"] = 8 * row["bytes"] / elements if elements else 0.0
        kept = np.ones(array.shape, dtype=bool) if mask is None else mask
        row["kept"] = int(kept.sum())
        if record["mask"]:
            row["mask_bytes"] = sum(v for k, v in streams.items() if k.startswith("mask"))
            row["mask_bound_bytes"] = rans.entropy_bits([row["kept"], elements - row["kept"]]) / 8
            totals["mask"] += row["mask_bytes"]
            totals["mask_bound"] += row["mask_bound_bytes"]
        if record["values"]["coding"] in LEVEL_CODINGS:
            values = array.reshape(-1)[kept.reshape(-1)]
            _, counts = np.unique(bit_view(values), return_counts=True)
            row["levels"] = record["values"]["levels"]
            row["symbols_bytes"] = streams["symbols"]
            row["symbols_bound_bytes"] = rans.entropy_bits(counts) / 8
            row["table_bytes"] = streams["levels"] + streams["frequencies"]
            totals["symbols"] += row["symbols_bytes"]
            totals["symbols_bound"] += row["symbols_bound_bytes"]
            totals["tables"] += row["table_bytes"]
        else:
            row["raw_bytes"] = streams["raw"]
            totals["raw"] += streams["raw"]
        row["fill_bytes"] = streams.get("fill", 0)
        totals["tables"] += row["fill_bytes"]
        tensors.append(row)
    header = container.size - container.index_bytes - container.graph_bytes - sum(r["bytes"] for r in tensors)
    return {"bytes": container.size, "sections": {"header": header, "index": container.index_bytes,
                                                  "graph": container.graph_bytes,
                                                  "tensors": sum(r["bytes"] for r in tensors)},
            "totals": totals, "tensors": tensors}


def _read_bytes(source: str | Path | bytes | memoryview) -> tuple[memoryview, mmap.mmap | None]:
    """The container's bytes: a view of ``source``, or of the file mapped read-only (and the mapping)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return memoryview(source), None
    path = Path(source)
    if not path.is_file():
        raise FormatError(f"{path}: no such file")
    with path.open("rb") as handle:
        if path.stat().st_size == 0:
            raise FormatError(f"{path}: empty file, not an onnx-de container")
        if not is_container(handle.read(8)):
            raise FormatError(f"{path}: not an onnx-de container (no magic)")
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        return memoryview(mapping), mapping


def _no_duplicate_keys(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def _check_index(index, graph: onnx.ModelProto, sections: int, budget: int) -> list[dict]:
    """The index's tensor records, each checked against the graph and the size budget."""
    if not isinstance(index, dict) or set(index) != {"tensors"} or not isinstance(index["tensors"], list):
        raise FormatError("index section: expected an object with one key, tensors")
    records = index["tensors"]
    if len(records) != sections:
        raise FormatError(f"index section: {len(records)} tensor records for {sections} tensor sections")
    seen, names = set(), set()
    for number, record in enumerate(records):
        try:
            if not isinstance(record, dict):
                raise FormatError("not an object")
            keys = set(record)
            places = [p for p in _PLACES if p in keys]
            if len(places) != 1:
                raise FormatError("a record needs exactly one of the fields initializer and constant")
            place = places[0]
            expected = _RECORD_KEYS | {place} | ({"fill"} & keys)
            if keys != expected:
                raise FormatError(f"unknown or missing fields {sorted(keys ^ expected)}")
            position, dtype, shape = record[place], record["dtype"], record["shape"]
            found = _stub(graph.graph, place, position)
            if found is None or (place, position) in seen:
                raise FormatError(f"{place} position {position!r} out of range, repeated or not a tensor")
            seen.add((place, position))
            if record["name"] in names:
                raise FormatError(f"tensor name {record['name']!r} repeated")
            names.add(record["name"])
            name, stub = found
            if name != record["name"] or dtype != stub.data_type or dtype not in DTYPES:
                raise FormatError(f"name or dtype does not match the graph's {place}")
            if (not isinstance(shape, list) or not all(is_int(d) and d >= 0 for d in shape)
                    or shape != list(stub.dims)):
                raise FormatError(f"shape does not match the graph's {place}")
            size = DTYPES[dtype].itemsize
            for d in shape:
                size *= d
            budget -= size
            if budget < 0:
                raise FormatError("declared tensor sizes exceed the decoding limit (max_bytes)")
            check_record(record, tuple(shape))
            streams = record["streams"]
            if (not isinstance(streams, dict) or set(streams) != set(record_streams(record))
                    or not all(is_int(v) and v >= 0 for v in streams.values())):
                raise FormatError("streams do not match the coding")
        except FormatError as e:
            raise FormatError(f"index section: tensor record {number}: {e}") from e
        except (KeyError, TypeError, AttributeError) as e:
            raise FormatError(f"index section: tensor record {number}: malformed ({type(e).__name__})") from e
    return records


def _stub(graph: onnx.GraphProto, place: str, position) -> tuple[str, onnx.TensorProto] | None:
    """The name and data-less tensor a record at ``position`` of ``place`` fills in; None where there is none."""
    entries = graph.initializer if place == "initializer" else graph.node
    if not (is_int(position) and 0 <= position < len(entries)):
        return None
    if place == "initializer":
        return entries[position].name, entries[position]
    tensor = constant_tensor(entries[position])
    return None if tensor is None else (entries[position].output[0], tensor)
