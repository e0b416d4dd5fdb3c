"""What the policy server and its clients share: the openpi-client wire format (msgpack with
numpy arrays as maps) and the protocol's constants. Neither side imports the other.

An array travels as {"__ndarray__": True, "data": raw bytes, "dtype": dtype.str, "shape": [...]},
a numpy scalar as {"__npgeneric__": True, "data": value, "dtype": dtype.str}. openpi's packer
writes these keys as msgpack bin (bytes); we write them the same way and accept str keys too.

Decoding is strict because the bytes come from the network: only plain numeric/bool dtypes
(never object, void or anything that could need pickle), a shape that matches the byte
count, and no msgpack ext types."""
from __future__ import annotations

import math

import msgpack
import numpy as np

# A request {RESET_KEY: True} starts a new episode of this connection's session instead of asking
# for actions; it may also carry {SESSION_SEED_KEY: int} to re-seed the session's noise generator.
RESET_KEY = "__graphvla_reset__"
SESSION_SEED_KEY = "session_seed"
# An observation may also carry {RTC_KEY: {RTC_DELAY_KEY: d, RTC_REMAINING_KEY: [R, A] actions}} (or
# {RTC_EXECUTED_KEY: n} instead of the actions: the session's previous chunk from step n on): real-time
# chunking of the new chunk against the actions that have not run yet (runners/rtc.py). Without it a
# request is a plain openpi observation.
RTC_KEY = "__graphvla_rtc__"
RTC_DELAY_KEY = "delay"
RTC_REMAINING_KEY = "remaining_actions"
RTC_EXECUTED_KEY = "executed"
# Keys of the metadata frame the server sends on connect (openpi clients read it as a plain map).
METADATA_KEYS = ("name", "fingerprint", "action_horizon", "action_dim", "inputs", "outputs", "normalization",
                 "privileged")

# dtype kinds a client may send: bool, signed/unsigned ints, floats. Object ('O'), void ('V'),
# complex ('c'), strings ('U', 'S') and datetimes are refused.
ALLOWED_KINDS = frozenset("biuf")
MAX_NDIM = 8


class WireError(ValueError):
    """A message that is not a valid observation on the wire."""


def _pack_default(obj):
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in ALLOWED_KINDS:
            raise TypeError(f"cannot send an array of dtype {obj.dtype} (numeric and bool only)")
        arr = np.ascontiguousarray(obj).reshape(obj.shape)  # ascontiguousarray makes 0-d arrays 1-d
        return {b"__ndarray__": True, b"data": arr.tobytes(), b"dtype": arr.dtype.str, b"shape": list(arr.shape)}
    if isinstance(obj, np.generic):
        if obj.dtype.kind not in ALLOWED_KINDS:
            raise TypeError(f"cannot send a scalar of dtype {obj.dtype}")
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send a value of type {type(obj).__name__}")


def packb(obj) -> bytes:
    """Encode a (nested) dict of numpy arrays, numbers, strings and lists."""
    return msgpack.packb(obj, default=_pack_default, use_bin_type=True)


def _field(obj: dict, name: str):
    if name in obj:
        return obj[name]
    return obj.get(name.encode())


def _dtype(text) -> np.dtype:
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if not isinstance(text, str) or len(text) > 8:
        raise WireError(f"array dtype must be a short numpy dtype string like '<f4', got {text!r}")
    try:
        dt = np.dtype(text)
    except TypeError as e:
        raise WireError(f"unknown array dtype {text!r}") from e
    if dt.kind not in ALLOWED_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise WireError(f"array dtype {text!r} is not allowed (numeric or bool only)")
    return dt


def _object_hook(obj: dict):
    if _field(obj, "__ndarray__") is not None:
        dt = _dtype(_field(obj, "dtype"))
        shape = _field(obj, "shape")
        data = _field(obj, "data")
        if not isinstance(shape, (list, tuple)) or len(shape) > MAX_NDIM or \
                not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise WireError(f"array shape must be a list of at most {MAX_NDIM} non-negative ints, got {shape!r}")
        if not isinstance(data, bytes):
            raise WireError("array data must be msgpack bin bytes")
        expected = math.prod(shape) * dt.itemsize
        if len(data) != expected:
            raise WireError(f"array of dtype {dt.str} and shape {list(shape)} needs {expected} bytes, got {len(data)}")
        return np.frombuffer(data, dtype=dt).reshape(shape)
    if _field(obj, "__npgeneric__") is not None:
        dt = _dtype(_field(obj, "dtype"))
        value = _field(obj, "data")
        if isinstance(value, (bytes, str, list, dict)) or value is None:
            raise WireError(f"numpy scalar data must be a number, got {type(value).__name__}")
        return dt.type(value)
    return obj


def _ext_hook(code, data):
    raise WireError(f"msgpack extension type {code} is not accepted")


def unpackb(data: bytes):
    """Decode one message; raise WireError on anything that is not plain msgpack + arrays."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError("expected a binary msgpack frame")
    try:
        return msgpack.unpackb(data, object_hook=_object_hook, ext_hook=_ext_hook, raw=False,
                               strict_map_key=True)
    except WireError:
        raise
    except (msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError, msgpack.exceptions.StackError,
            ValueError, TypeError) as e:
        raise WireError(f"message is not valid msgpack: {e}") from e
