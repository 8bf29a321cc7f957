"""Wire format of the served representation API (JSON over HTTP), shared by the
server (``sslsteal_jax.serve``) and the client (``api.remote.RemoteVictimAPI``).

An array travels in one of two JSON forms:

* **base64** (compact, exact): ``{"dtype": "uint8" | "float32", "shape": [d0, d1, ...],
  "data": "<base64 of the array's bytes, C order, little-endian>"}``;
* **list**: nested JSON lists of numbers (``[[0, 12, ...], ...]``), what any HTTP
  client can write by hand. Decoded as uint8 when every number is an integer,
  float32 otherwise.

A query is ``POST <base>/v1/embed`` with body ``{"images": <array (B, H, W, C)>}``;
the answer is ``{"embeddings": <array (B, D) float32>, ...}`` in the same form
as the request's images. The full contract (headers, idempotency keys, errors)
is in docs/serving.md. Only numpy and the standard library are used, so the
client side needs no web framework.
"""
from __future__ import annotations

import base64
import binascii

import numpy as np

#: dtypes the base64 form may carry (the API accepts uint8 and float32 images).
WIRE_DTYPES = ("uint8", "float32")
ENCODINGS = ("base64", "list")


class WireFormatError(ValueError):
    """A JSON value is not a valid array in the wire format; the message names the
    bad field and what is allowed."""


def encode_array(a: np.ndarray, encoding: str = "base64"):
    """Encode a numpy array for the wire.

    Args:
      a: uint8 or float32 array of any shape (float64 is sent as float32).
      encoding: "base64" (dict with dtype, shape, data) or "list" (nested lists).
    Returns:
      a JSON-serialisable dict or list.
    Raises:
      WireFormatError: unknown encoding, or a dtype other than uint8/float32/float64
        in the base64 form.
    """
    a = np.asarray(a)
    if a.dtype == np.float64:
        a = a.astype(np.float32)
    if encoding == "list":
        return a.tolist()
    if encoding != "base64":
        raise WireFormatError(f"unknown wire encoding {encoding!r}; allowed: {list(ENCODINGS)}")
    if a.dtype.name not in WIRE_DTYPES:
        raise WireFormatError(f"the base64 wire form carries {list(WIRE_DTYPES)}, got dtype "
                              f"{a.dtype.name}")
    data = np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes()
    return {"dtype": a.dtype.name, "shape": list(a.shape),
            "data": base64.b64encode(data).decode("ascii")}


def decode_array(obj, field: str = "images", max_elements: int | None = None) -> np.ndarray:
    """Decode a wire array (either form).

    Args:
      obj: the JSON value (dict of the base64 form, or nested lists).
      field: name used in error messages.
      max_elements: refuse arrays with more elements (None: no limit).
    Returns:
      numpy array: uint8 or float32 as sent (base64), uint8 for all-integer lists in
      [0, 255], float32 for other number lists.
    Raises:
      WireFormatError: missing/unknown fields, unknown dtype, a shape that does not
        match the data length, ragged or non-numeric lists, too many elements.
    """
    if isinstance(obj, dict):
        missing = [k for k in ("dtype", "shape", "data") if k not in obj]
        if missing:
            raise WireFormatError(f"{field}: base64 form needs fields dtype, shape, data; "
                                  f"missing {missing}")
        dtype = obj["dtype"]
        if dtype not in WIRE_DTYPES:
            raise WireFormatError(f"{field}.dtype={dtype!r}; allowed: {list(WIRE_DTYPES)}")
        shape = obj["shape"]
        if (not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                                   and d >= 0 for d in shape)):
            raise WireFormatError(f"{field}.shape={shape!r} must be a list of non-negative "
                                  f"integers")
        count = int(np.prod(shape)) if shape else 1
        if max_elements is not None and count > max_elements:
            raise WireFormatError(f"{field}: {count} elements exceed the limit of {max_elements}")
        if not isinstance(obj["data"], str):
            raise WireFormatError(f"{field}.data must be a base64 string")
        try:
            raw = base64.b64decode(obj["data"], validate=True)
        except (binascii.Error, ValueError):
            raise WireFormatError(f"{field}.data is not valid base64") from None
        want = count * np.dtype(dtype).itemsize
        if len(raw) != want:
            raise WireFormatError(f"{field}: shape {shape} of {dtype} needs {want} bytes, data "
                                  f"holds {len(raw)}")
        return np.frombuffer(raw, np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(shape)
    if isinstance(obj, list):
        try:
            a = np.asarray(obj)
        except ValueError:
            raise WireFormatError(f"{field}: nested lists are ragged (rows of different "
                                  f"lengths)") from None
        if max_elements is not None and a.size > max_elements:
            raise WireFormatError(f"{field}: {a.size} elements exceed the limit of {max_elements}")
        if a.dtype == object or a.dtype.kind not in "iuf":
            raise WireFormatError(f"{field}: nested lists must hold numbers of one nesting depth, "
                                  f"got {a.dtype.kind!r} values")
        if a.dtype.kind in "iu":
            if a.size and (a.min() < 0 or a.max() > 255):
                raise WireFormatError(f"{field}: integer pixel values must lie in [0, 255], got "
                                      f"[{a.min()}, {a.max()}]")
            return a.astype(np.uint8)
        return a.astype(np.float32)
    raise WireFormatError(f"{field} must be a base64 array object or nested lists, got "
                          f"{type(obj).__name__}")


def decode_embeddings(body) -> np.ndarray:
    """The answer vectors of an embedding endpoint's JSON response, float32 ``(B, D)``.

    Accepts ``{"embeddings": <array>}`` (this service) or a bare nested list of
    vectors (a minimal endpoint).
    Raises:
      WireFormatError: no ``embeddings`` field, or not a 2-D array.
    """
    obj = body.get("embeddings") if isinstance(body, dict) else body
    if obj is None:
        raise WireFormatError(f"response has no 'embeddings' field (fields: "
                              f"{sorted(body) if isinstance(body, dict) else type(body).__name__})")
    a = decode_array(obj, "embeddings").astype(np.float32)
    if a.ndim != 2:
        raise WireFormatError(f"embeddings must be 2-D (B, D), got shape {a.shape}")
    return a
