"""The container's byte layout (``FORMAT.md``, "File layout"): preamble, section table, checksummed sections.

This module knows nothing of models: it writes a list of sections and reads them back, checking the magic, the
version, reserved fields, the section table's checksum, that sections tile the file exactly, and each
section's CRC-32 before its bytes are used.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from ..errors import FormatError, UnsupportedVersionError

__all__ = ["MAGIC", "VERSION", "KIND_INDEX", "KIND_GRAPH", "KIND_TENSOR", "Section", "write_sections",
           "read_sections", "is_container"]

MAGIC = b"\x89ODE\r\n\x1a\n"
VERSION = 1
KIND_INDEX, KIND_GRAPH, KIND_TENSOR = 1, 2, 3
MAX_SECTIONS = 1 << 20

_PREAMBLE = struct.Struct("<8sHHII")  # magic, version, flags, section count, table CRC-32
_ENTRY = struct.Struct("<IIQQII")  # kind, reserved, offset, length, CRC-32, reserved


@dataclass(frozen=True)
class Section:
    """One section read from a container: its kind, where it lies, and a view of its bytes."""

    kind: int
    offset: int
    crc32: int
    payload: memoryview

    def verified(self, what: str) -> memoryview:
        """The payload, after checking its CRC-32; :class:`FormatError` naming ``what`` if it differs."""
        if zlib.crc32(self.payload) != self.crc32:
            raise FormatError(f"{what}: checksum mismatch (section at byte {self.offset} is corrupt)")
        return self.payload


def write_sections(sections: list[tuple[int, bytes]]) -> bytes:
    """The container holding ``sections`` (``(kind, payload)`` pairs) in order."""
    offset = _PREAMBLE.size + _ENTRY.size * len(sections)
    table = bytearray()
    for kind, payload in sections:
        table += _ENTRY.pack(kind, 0, offset, len(payload), zlib.crc32(payload), 0)
        offset += len(payload)
    head = _PREAMBLE.pack(MAGIC, VERSION, 0, len(sections), 0)[:-4]
    crc = zlib.crc32(table, zlib.crc32(head))
    return b"".join([head, struct.pack("<I", crc), bytes(table), *(payload for _, payload in sections)])


def is_container(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes) starts with the container magic."""
    return bytes(head[: len(MAGIC)]) == MAGIC


def read_sections(data: bytes | memoryview) -> list[Section]:
    """The sections of container ``data``, after checking its preamble and section table (not the sections' CRCs).

    Raises :class:`UnsupportedVersionError` for other versions and :class:`FormatError` for anything else
    that is not a well-formed container.
    """
    data = memoryview(data)
    if len(data) < _PREAMBLE.size:
        if not is_container(data):
            raise FormatError("not an onnx-de container (no magic)")
        raise FormatError(f"header: truncated ({len(data)} bytes, the preamble alone is {_PREAMBLE.size})")
    magic, version, flags, count, crc = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise FormatError("not an onnx-de container (no magic)")
    if version != VERSION:
        raise UnsupportedVersionError(f"header: format version {version} is not supported (this onnx-de reads {VERSION})")
    if flags:
        raise FormatError(f"header: reserved flags are set ({flags:#06x})")
    if not 2 <= count <= MAX_SECTIONS:
        raise FormatError(f"header: {count} sections declared (2 to {MAX_SECTIONS} allowed)")
    table_end = _PREAMBLE.size + _ENTRY.size * count
    if len(data) < table_end:
        raise FormatError(f"header: truncated (the section table needs {table_end} bytes, the file has {len(data)})")
    if zlib.crc32(data[_PREAMBLE.size : table_end], zlib.crc32(data[: _PREAMBLE.size - 4])) != crc:
        raise FormatError("header: checksum mismatch (preamble or section table is corrupt)")
    sections, expected = [], table_end
    for number in range(count):
        kind, reserved, offset, length, section_crc, reserved2 = _ENTRY.unpack_from(data, _PREAMBLE.size + _ENTRY.size * number)
        if reserved or reserved2:
            raise FormatError(f"header: section {number} has reserved fields set")
        if offset != expected:
            raise FormatError(f"header: section {number} starts at byte {offset}, expected {expected}")
        if offset + length > len(data):
            raise FormatError(f"section {number}: truncated (ends at byte {offset + length}, the file has {len(data)})")
        sections.append(Section(kind, offset, section_crc, data[offset : offset + length]))
        expected = offset + length
    if expected != len(data):
        raise FormatError(f"trailer: {len(data) - expected} stray bytes after the last section")
    kinds = [s.kind for s in sections]
    if kinds[:2] != [KIND_INDEX, KIND_GRAPH] or any(k != KIND_TENSOR for k in kinds[2:]):
        raise FormatError("header: sections must be the index, the graph, then tensors")
    return sections
