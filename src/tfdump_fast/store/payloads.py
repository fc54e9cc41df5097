"""Payload encodings of docs/FORMAT.md that Python produces or reads.

Numeric payloads are raw tensor bytes. Here, defined once for Python:

* the string encoding (strings and serialized resource handles):
  :func:`encode_strings` / :func:`decode_strings`;
* the variant structure a VARIANT record stores as its payload, and the
  TensorList list blob it may point to: parsed by
  :func:`parse_variant_structure` / :func:`parse_list_blob` (the reader turns
  what they return into values, the converter into tfdbg's
  ``VariantTensorDataProto``s), built by the ``encode_*`` functions (the
  importer; the capture bridge writes the same layout in C++).

Parsers check every length and index, so a damaged payload raises
:class:`~tfdump_fast.errors.TfdumpCorruptionError` instead of being read past
its end.
"""

from __future__ import annotations

import struct
from typing import Dict, Iterable, List, NamedTuple, Optional

import numpy as np

from tfdump_fast import _native
from tfdump_fast.errors import TfdumpCorruptionError

__all__ = ["encode_strings", "decode_strings", "ElementTensor", "StoredVariantElement", "parse_variant_structure",
           "parse_list_blob", "encode_element_count", "encode_element_head", "encode_descriptor", "encode_blob_storage",
           "encode_inline_storage", "NO_STORAGE"]

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_DESC_HEAD = struct.Struct("<iHB")  # dtype, flags, ndims of a tensor descriptor
_HASH_BYTES = 16
_DIMS: Dict[int, struct.Struct] = {}


# --------------------------------------------------------------------------- strings

def encode_strings(values: Iterable[bytes]) -> bytes:
    """``u64 n, u64 lengths[n], bytes concatenated``."""
    items = [v if isinstance(v, bytes) else bytes(v) for v in values]
    lengths = np.fromiter((len(v) for v in items), dtype="<u8", count=len(items))
    return _U64.pack(len(items)) + lengths.tobytes() + b"".join(items)


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


# --------------------------------------------------------------------------- variants

class ElementTensor(NamedTuple):
    """One tensor descriptor of a variant structure or a list blob.

    Attributes
    ----------
    dtype : int
        TF ``DataType`` enum value as stored.
    flags : int
        Format flags (``_native.FLAG_*``).
    shape : tuple of int
    storage : int
        ``_native.STORAGE_BLOB``, ``STORAGE_INLINE`` or ``STORAGE_NONE``.
    data : int, bytes or None
        ``STORAGE_BLOB``: the index into the record's blob hashes (variant
        structure) or the payload hash itself (list blob); ``STORAGE_INLINE``:
        the payload bytes; ``STORAGE_NONE``: None.
    descriptor : bytes
        The stored ``dtype, flags, ndims, dims`` bytes: equal descriptors
        describe equal tensors but for their payload (a cache key).
    """

    dtype: int
    flags: int
    shape: tuple
    storage: int
    data: object
    descriptor: bytes


class StoredVariantElement(NamedTuple):
    """One element of a variant structure (what ``Variant::Encode`` produced).

    Attributes
    ----------
    type_name, metadata : bytes
    tensors : list of ElementTensor or None
        The element's tensors; None when they are in a list blob.
    list_blob : int or None
        For a ``TensorList`` stored with the list marker: the index into the
        record's blob hashes of its list blob (see :func:`parse_list_blob`).
    """

    type_name: bytes
    metadata: bytes
    tensors: Optional[List[ElementTensor]]
    list_blob: Optional[int]


def _dims_struct(ndims: int) -> struct.Struct:
    s = _DIMS.get(ndims)
    if s is None:
        s = _DIMS[ndims] = struct.Struct("<%dq" % ndims)
    return s


def _read_descriptor(buf: bytes, pos: int) -> tuple:
    """The tensor descriptor at ``pos`` and its storage kind: ``(dtype,
    flags, shape, descriptor bytes, storage, position after the storage
    byte)``; raises struct.error or IndexError where ``buf`` ends early."""
    start = pos
    dtype, flags, ndims = _DESC_HEAD.unpack_from(buf, pos)
    pos += _DESC_HEAD.size
    shape = _dims_struct(ndims).unpack_from(buf, pos) if ndims else ()
    pos += 8 * ndims
    return dtype, flags, shape, buf[start:pos], buf[pos], pos + 1


def _bytes(payload) -> bytes:
    return payload if isinstance(payload, bytes) else bytes(payload)


def parse_variant_structure(payload, n_blobs: int) -> List[StoredVariantElement]:
    """Parse a variant structure.

    Parameters
    ----------
    payload : bytes-like
        The VARIANT record's payload (or an inline nested structure).
    n_blobs : int
        How many blob hashes the record carries: every blob index must be
        below it.

    Returns
    -------
    list of StoredVariantElement

    Raises
    ------
    TfdumpCorruptionError
        The structure ends early, has trailing bytes, names an unknown
        storage kind or a blob the record does not carry.
    """
    buf = _bytes(payload)
    end = len(buf)
    elements = []
    try:
        (n_elements,) = _U64.unpack_from(buf, 0)
        pos = 8
        for _ in range(n_elements):
            strings = []
            for _ in range(2):  # type_name, metadata
                (ln,) = _U32.unpack_from(buf, pos)
                pos += 4
                if pos + ln > end:
                    raise struct.error
                strings.append(buf[pos:pos + ln])
                pos += ln
            (n_tensors,) = _U32.unpack_from(buf, pos)
            pos += 4
            if n_tensors == _native.TENSOR_LIST_MARKER:
                (index,) = _U32.unpack_from(buf, pos)
                pos += 4
                _check_blob_index(index, n_blobs)
                elements.append(StoredVariantElement(strings[0], strings[1], None, index))
                continue
            tensors = []
            for _ in range(n_tensors):
                dtype, flags, shape, descriptor, storage, pos = _read_descriptor(buf, pos)
                if storage == _native.STORAGE_BLOB:
                    (data,) = _U32.unpack_from(buf, pos)
                    pos += 4
                    _check_blob_index(data, n_blobs)
                elif storage == _native.STORAGE_INLINE:
                    (ln,) = _U64.unpack_from(buf, pos)
                    pos += 8
                    if pos + ln > end:
                        raise struct.error
                    data = buf[pos:pos + ln]
                    pos += ln
                elif storage == _native.STORAGE_NONE:
                    data = None
                else:
                    raise TfdumpCorruptionError("unknown variant tensor storage %d" % storage)
                tensors.append(ElementTensor(dtype, flags, shape, storage, data, descriptor))
            elements.append(StoredVariantElement(strings[0], strings[1], tensors, None))
    except (struct.error, IndexError):
        raise TfdumpCorruptionError("variant structure ends early") from None
    if pos != end:
        raise TfdumpCorruptionError("variant structure has %d trailing bytes" % (end - pos))
    return elements


def _check_blob_index(index: int, n_blobs: int) -> None:
    if index >= n_blobs:
        raise TfdumpCorruptionError("variant element refers to blob %d of %d" % (index, n_blobs))


def parse_list_blob(payload) -> List[ElementTensor]:
    """Parse a TensorList list blob: the element tensors of one list state.

    Element tensors stored as blobs carry their payload hash in ``data``
    (the payload length the blob repeats is implied by the payload itself).

    Raises
    ------
    TfdumpCorruptionError
        The list blob ends early, has trailing bytes or names an unknown
        storage kind.
    """
    buf = _bytes(payload)
    end = len(buf)
    tensors = []
    try:
        (n_tensors,) = _U32.unpack_from(buf, 0)
        pos = 4
        for _ in range(n_tensors):
            dtype, flags, shape, descriptor, storage, pos = _read_descriptor(buf, pos)
            if storage == _native.STORAGE_BLOB:
                if pos + _HASH_BYTES + 8 > end:
                    raise struct.error
                data = buf[pos:pos + _HASH_BYTES]
                pos += _HASH_BYTES + 8
            elif storage == _native.STORAGE_NONE:
                data = None
            else:
                raise TfdumpCorruptionError("unknown list blob tensor storage %d" % storage)
            tensors.append(ElementTensor(dtype, flags, shape, storage, data, descriptor))
    except (struct.error, IndexError):
        raise TfdumpCorruptionError("TensorList list blob ends early") from None
    if pos != end:
        raise TfdumpCorruptionError("TensorList list blob has %d trailing bytes" % (end - pos))
    return tensors


# --------------------------------------------------------------------------- encoding
# The inline form of the variant structure, for writers that build it in
# Python (the tfdbg importer); the capture bridge writes the same layout in C++.

def encode_element_count(n_elements: int) -> bytes:
    """The structure's leading ``u64 n_elements``."""
    return _U64.pack(n_elements)


def encode_element_head(type_name: bytes, metadata: bytes, n_tensors: int) -> bytes:
    """An element's ``str type_name, str metadata, u32 n_tensors``."""
    return (_U32.pack(len(type_name)) + type_name + _U32.pack(len(metadata)) + metadata
            + _U32.pack(n_tensors))


def encode_descriptor(dtype: int, flags: int, dims) -> bytes:
    """A tensor descriptor's ``i32 dtype, u16 flags, u8 ndims, i64 dims[ndims]``."""
    return _DESC_HEAD.pack(dtype, flags, len(dims)) + _dims_struct(len(dims)).pack(*dims)


def encode_blob_storage(blob_index: int) -> bytes:
    """Storage ``STORAGE_BLOB``: the tensor's bytes are the record's blob ``blob_index``."""
    return bytes([_native.STORAGE_BLOB]) + _U32.pack(blob_index)


def encode_inline_storage(payload: bytes) -> bytes:
    """Storage ``STORAGE_INLINE``: ``u64 length`` and the bytes themselves."""
    return bytes([_native.STORAGE_INLINE]) + _U64.pack(len(payload)) + payload


NO_STORAGE = bytes([_native.STORAGE_NONE])
"""Storage ``STORAGE_NONE``: an uninitialized or empty tensor."""
