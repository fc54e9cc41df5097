"""The payload encodings of docs/FORMAT.md that Python produces or reads.

Numeric payloads are raw tensor bytes; strings (and serialized resource
handles) use the string encoding below; variants use the structure the TF
bridge writes natively (decoded by the reader).
"""

from __future__ import annotations

import struct
from typing import Iterable, List

import numpy as np

from tfdump_fast.errors import TfdumpCorruptionError


def encode_strings(values: Iterable[bytes]) -> bytes:
    """``u64 n, u64 lengths[n], bytes concatenated``."""
    items = [v if isinstance(v, bytes) else bytes(v) for v in values]
    lengths = np.fromiter((len(v) for v in items), dtype="<u8", count=len(items))
    return struct.pack("<Q", len(items)) + lengths.tobytes() + b"".join(items)


def decode_strings(payload) -> List[bytes]:
    """Inverse of :func:`encode_strings`."""
    buf = memoryview(payload).cast("B")
    if len(buf) < 8:
        raise TfdumpCorruptionError("string payload shorter than its 8-byte count")
    (n,) = struct.unpack_from("<Q", buf, 0)
    if n > (len(buf) - 8) // 8:
        raise TfdumpCorruptionError(f"string payload claims {n} elements but holds {len(buf)} bytes")
    lengths = np.frombuffer(buf, dtype="<u8", count=n, offset=8)
    start = 8 + 8 * n
    ends = start + np.cumsum(lengths, dtype=np.uint64) if n else np.zeros(0, np.uint64)
    if n and int(ends[-1]) != len(buf):
        raise TfdumpCorruptionError("string payload lengths do not add up to its size")
    out = []
    pos = start
    raw = bytes(buf)
    for end in ends.tolist():
        out.append(raw[pos:end])
        pos = end
    return out
