"""zstd frames with their sizes checked before anything is allocated."""

from __future__ import annotations

import zstandard

from ..errors import FormatError

__all__ = ["ZSTD_LEVEL", "compress", "decompress"]

ZSTD_LEVEL = 19
_MAX_WINDOW = 1 << 27  # the decoder refuses frames that ask for a larger window (zstd's default limit)


def compress(payload: bytes | memoryview) -> bytes:
    """One zstd frame at level 19 with its content size in the header (deterministic for a given payload)."""
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True, write_checksum=False).compress(payload)


def decompress(frame: bytes | memoryview, limit: int, what: str, exact: int | None = None) -> bytes:
    """The payload of ``frame``, which must be exactly one frame declaring its size, at most ``limit`` bytes.

    ``exact``, when given, is the only size accepted. Raises :class:`FormatError` naming ``what``.
    """
    try:
        size = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as e:
        raise FormatError(f"{what}: not a zstd frame ({e})") from e
    if size < 0:
        raise FormatError(f"{what}: zstd frame does not declare its size")
    if exact is not None and size != exact:
        raise FormatError(f"{what}: zstd frame declares {size} bytes, expected {exact}")
    if size > limit:
        raise FormatError(f"{what}: zstd frame declares {size} bytes, more than the limit of {limit}")
    decompressor = zstandard.ZstdDecompressor(max_window_size=_MAX_WINDOW).decompressobj()
    try:
        payload = decompressor.decompress(frame)
    except zstandard.ZstdError as e:
        raise FormatError(f"{what}: corrupt zstd frame ({e})") from e
    if not decompressor.eof or decompressor.unused_data or len(payload) != size:
        raise FormatError(f"{what}: zstd frame is truncated or followed by stray bytes")
    return payload
