"""The exceptions onnx-de raises: one root, :class:`OnnxDeError`, and a subclass per kind of input."""

from __future__ import annotations

__all__ = ["OnnxDeError", "ModelError", "DataError", "ZooError", "ConfigError", "FormatError", "UnsupportedVersionError",
           "ExecutorError", "first_line", "is_int"]


class OnnxDeError(Exception):
    """Root of every error onnx-de raises on purpose; the CLI prints its message on one line."""


class ModelError(OnnxDeError):
    """A model file that cannot be read, checked or run, or that has nothing to work on."""


class DataError(OnnxDeError):
    """Calibration or evaluation data that does not fit the model: names, shapes, dtypes, NaNs, emptiness."""


class ZooError(OnnxDeError):
    """An unknown zoo model, a failed fetch, or a file whose sha256 does not match the manifest."""


class ConfigError(OnnxDeError):
    """An option with a bad value: a pattern that matches nothing, an unknown metric, a malformed spec."""


class FormatError(OnnxDeError):
    """A container (.ode) that is not one, or is truncated, corrupt or hostile; the message names the section."""


class UnsupportedVersionError(FormatError):
    """A container written in a format version this onnx-de cannot read."""


class ExecutorError(OnnxDeError):
    """A distributed executor that cannot be reached, or that lost its workers past its retries."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an error's message (its type name when empty), cut to ``limit`` characters."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:limit]


def is_int(value) -> bool:
    """Whether ``value`` (read from a file or a config) is an integer, and not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)
