"""The compact container (.ode): format in ``FORMAT.md``, lossless encoder, checked decoder, load-time session."""

from .decoder import DEFAULT_MAX_BYTES, decode, inspect_container
from .encoder import encode
from .session import InferenceSession

__all__ = ["DEFAULT_MAX_BYTES", "InferenceSession", "decode", "encode", "inspect_container"]
