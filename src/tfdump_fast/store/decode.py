"""Stored tensors to values: numpy arrays bit-identical to what TF computed,
object arrays of ``bytes`` for strings, :class:`InconvertibleTensor` for
what numpy cannot hold (docs/FORMAT.md, "TENSOR" and "Variant structure").

:class:`ValueDecoder` reads a tensor's payload and decodes it; its bulk
:meth:`ValueDecoder.values` decodes each distinct payload once.
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional

import numpy as np

from tfdump_fast import dtypes
from tfdump_fast._native import (
    FLAG_RESOURCE, FLAG_STRING, FLAG_UNINITIALIZED, FLAG_VARIANT, STORAGE_BLOB, STORAGE_INLINE)
from tfdump_fast._tfproto import decode_resource_handle
from tfdump_fast.dtypes import dtype_name
from tfdump_fast.store.payloads import decode_strings
from tfdump_fast.errors import TfdumpCorruptionError
from tfdump_fast.store.payloads import parse_list_blob, parse_variant_structure

__all__ = ["InconvertibleTensor", "VariantElement", "StoredTensor", "ValueDecoder", "numpy_dtype",
           "NUMPY_DTYPES", "FLOATING_DTYPES", "FLOAT_NAMES"]

_BULK_CHUNK = 4096  # tensors whose frames bulk reads decompress together


def numpy_dtype(tf_dtype: int) -> Optional[np.dtype]:
    """The numpy dtype holding a TF ``DataType`` bit-exactly, or None.

    ``bfloat16`` and the float8 / int4 types come from ``ml_dtypes`` when it
    is installed (it is a TensorFlow dependency); without it they have no
    numpy dtype and such tensors are returned as :class:`InconvertibleTensor`
    with ``kind="unsupported_dtype"``. Quantized types are their underlying
    integer types.
    """
    if tf_dtype > 100:  # reference types carry the values of their base type
        tf_dtype -= 100
    return NUMPY_DTYPES.get(tf_dtype)


def _build_numpy_dtypes() -> Dict[int, np.dtype]:
    table = {}
    for dt in range(1, 40):
        try:
            table[dt] = dtypes.to_numpy(dt)
        except (TypeError, KeyError):
            pass
    if table.get(dtypes.DT_BFLOAT16) == np.dtype("<u2"):
        del table[dtypes.DT_BFLOAT16]  # raw bits are not a faithful value: mark it instead
    return table


# TF DataType -> numpy dtype, for the types numpy can hold bit-exactly
NUMPY_DTYPES = _build_numpy_dtypes()
# dtypes whose values can be inf or nan (the inf/nan search looks only at these)
FLOATING_DTYPES = frozenset(dt for dt, npd in NUMPY_DTYPES.items()
                            if npd.kind in "fc" or npd.name.startswith(("bfloat", "float")))
# numpy names of those dtypes (ml_dtypes' are not kind "f")
FLOAT_NAMES = frozenset(NUMPY_DTYPES[dt].name for dt in FLOATING_DTYPES)


class InconvertibleTensor:
    """A dumped tensor that has no numpy form.

    The counterpart of tfdbg's ``InconvertibleTensorProto``: uninitialized
    tensors, resource handles, variants (e.g. ``TensorList``) and dtypes
    numpy cannot represent.

    Attributes
    ----------
    kind : {"uninitialized", "resource", "variant", "unsupported_dtype"}
    tf_dtype : int
        TF ``DataType`` enum value.
    shape : tuple of int
    initialized : bool
        False only for ``kind == "uninitialized"``.
    value : object
        A list of dicts with the readable fields of each
        ``ResourceHandleProto`` (resource), a list of
        :class:`VariantElement` (variant; decoded on first access), else None.
    raw : list of bytes or bytes or None
        The serialized ``ResourceHandleProto``s (resource) or the tensor's
        bytes (unsupported dtype).
    """

    __slots__ = ("kind", "tf_dtype", "shape", "_value", "_thunk", "raw")

    # tfdbg-style predicates test ``np.issubdtype(tensor.dtype, np.floating)``;
    # an object dtype makes them treat this value as non-numeric.
    dtype = np.dtype(object)

    def __init__(self, kind, tf_dtype, shape, value=None, raw=None, thunk=None):
        self.kind = kind
        self.tf_dtype = tf_dtype
        self.shape = tuple(shape)
        self._value = value
        self._thunk = thunk
        self.raw = raw

    @property
    def value(self):
        if self._thunk is not None:
            # Variants are decoded when looked at: bulk loads stay cheap.
            self._value, self._thunk = self._thunk(), None
        return self._value

    @property
    def initialized(self) -> bool:
        return self.kind != "uninitialized"

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.tf_dtype)

    def __eq__(self, other):
        return (isinstance(other, InconvertibleTensor) and self.kind == other.kind
                and self.tf_dtype == other.tf_dtype and self.shape == other.shape
                and self.raw == other.raw and _values_equal(self.value, other.value))

    __hash__ = None

    def __repr__(self):
        shape = "(" + ", ".join(map(str, self.shape)) + ("," if len(self.shape) == 1 else "") + ")"
        head = "<%s tensor, dtype=%s, shape=%s" % (self.kind, self.dtype_name, shape)
        value = self.value
        if self.kind == "resource" and value:
            head += ", handles=" + ", ".join(
                "%s/%s@%s" % (h["container"], h["name"], h["device"]) for h in value[:4])
        elif self.kind == "variant" and value:
            head += ", elements=[" + ", ".join(repr(e) for e in value[:4]) + \
                (", ..." if len(value) > 4 else "") + "]"
        return head + ">"

    __str__ = __repr__


def _values_equal(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and (a.tolist() == b.tolist() if a.dtype == object
                                            else a.tobytes() == b.tobytes()))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_values_equal(x, y) for x, y in zip(a, b))
    return a == b


class VariantElement(NamedTuple):
    """One element of a variant tensor: what ``Variant::Encode`` produced.

    ``tensors`` are the element's tensors as values (numpy arrays or
    :class:`InconvertibleTensor`); for a ``TensorList`` its list items.
    """

    type_name: str
    metadata: bytes
    tensors: list

    def __repr__(self):
        return "%s(%d tensors)" % (self.type_name or "<empty>", len(self.tensors))


class StoredTensor(NamedTuple):
    """A tensor's stored form, before it is turned into a value."""

    dtype: int
    flags: int
    shape: tuple
    payload: object                 # bytes-like, or None: no payload bytes
    blob_hashes: tuple              # the record's attached blobs (variant elements)
    payload_hash: Optional[bytes] = None  # set instead of payload: a blob of the writer, read when decoded


class ValueDecoder:
    """Values of the tensors of a :class:`~tfdump_fast.store.index.TensorIndex`.

    Parameters
    ----------
    index : TensorIndex
    payloads : PayloadReader
    """

    def __init__(self, index, payloads):
        self.index = index
        self.payloads = payloads

    def stored(self, g: int) -> StoredTensor:
        """The stored form of tensor ``g``."""
        index = self.index
        t = index.tensors[g]
        plen = int(t["payload_len"])
        wi = int(index.writer_of[g])
        payload = self.payloads.payload(wi, index.payload_hash(g)) if plen else None
        if payload is not None and len(payload) != plen:
            raise TfdumpCorruptionError("a tensor's payload length disagrees with its blob")
        return StoredTensor(int(t["dtype"]), int(t["flags"]), index.shape(g), payload, index.tensor_blob_hashes(g))

    def value(self, g: int, cache: Optional[dict] = None):
        """Value of tensor ``g``; ``cache`` (a dict the caller keeps) shares
        decoded payloads between calls."""
        index = self.index
        t = index.tensors[g]
        flags = int(t["flags"])
        if flags & FLAG_VARIANT and not flags & FLAG_UNINITIALIZED:
            # Decoded when looked at (a TensorList lists every element): bulk
            # loads and searches only pay for the marker.
            wi = int(index.writer_of[g])
            return InconvertibleTensor("variant", int(t["dtype"]), index.shape(g),
                                       thunk=lambda: self.decode(self.stored(g), wi).value)
        if cache is not None and not flags & (FLAG_VARIANT | FLAG_UNINITIALIZED) and t["payload_len"]:
            ck = (int(index.writer_of[g]), index.payload_hash(g), int(t["dtype"]), flags, index.shape(g))
            v = cache.get(ck)
            if v is None:
                v = cache[ck] = self.decode(self.stored(g), int(index.writer_of[g]))
            return v
        return self.decode(self.stored(g), int(index.writer_of[g]))

    def values(self, gidx) -> list:
        """Values of many tensors; each distinct payload is decoded once and
        plain numeric tensors skip the general path."""
        gidx = np.asarray(gidx, dtype=np.int64)
        c = self.index.columns(gidx)
        flags, dts, plens, nds, doffs = c["flags"], c["dtype"], c["payload_len"], c["ndims"], c["dims_offset"]
        hashes, wis = c["hash"], c["writer"]
        dims = self.index.dims_list()
        payloads = self.payloads
        cache: dict = {}
        frames: dict = {}
        out = []
        for i, g in enumerate(gidx.tolist()):
            if i % _BULK_CHUNK == 0:  # decompress the next chunk's frames together
                frames.clear()
                payloads.prefetch(wis[i:i + _BULK_CHUNK], hashes[i:i + _BULK_CHUNK], frames)
            nd = nds[i]
            shape = tuple(dims[doffs[i]:doffs[i] + nd]) if nd else ()
            if flags[i] or not plens[i]:
                out.append(self.value(g))
                continue
            key = (wis[i], hashes[i], dts[i], shape)
            v = cache.get(key)
            if v is None:
                dt = dts[i]
                npd = NUMPY_DTYPES.get(dt - 100 if dt > 100 else dt)
                if npd is None:
                    v = self.value(g)
                else:
                    payload = payloads.payload(wis[i], hashes[i], frames)
                    if len(payload) != plens[i] or len(payload) != _prod(shape) * npd.itemsize:
                        v = self.value(g)  # raises the precise corruption error
                    else:
                        v = np.frombuffer(payload, dtype=npd).reshape(shape)
                cache[key] = v
            out.append(v)
        return out

    def decode(self, stored: StoredTensor, wi: int):
        """The value of a stored tensor of writer ``wi``."""
        dtype, flags, shape, payload = stored.dtype, stored.flags, stored.shape, stored.payload
        if stored.payload_hash is not None:
            payload = self.payloads.payload(wi, stored.payload_hash)
        if flags & FLAG_UNINITIALIZED:
            return InconvertibleTensor("uninitialized", dtype, shape)
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if flags & FLAG_RESOURCE:
            handles = decode_strings(payload) if payload is not None else []
            return InconvertibleTensor("resource", dtype, shape,
                                       [decode_resource_handle(h) for h in handles], handles)
        if flags & FLAG_STRING:
            items = decode_strings(payload) if payload is not None else []
            if len(items) != n:
                raise TfdumpCorruptionError("string tensor of shape %s holds %d strings" % (shape, len(items)))
            arr = np.empty(len(items), dtype=object)
            arr[:] = items
            return arr.reshape(shape)
        if flags & FLAG_VARIANT:
            def elements():
                parsed = self.variant_elements(payload, stored.blob_hashes, wi) if payload is not None else []
                return [VariantElement(tn, md, [self.decode(s, wi) for s in tensors])
                        for tn, md, tensors in parsed]
            return InconvertibleTensor("variant", dtype, shape, thunk=elements)
        npd = numpy_dtype(dtype)
        if npd is None:
            return InconvertibleTensor("unsupported_dtype", dtype, shape, None,
                                       bytes(payload) if payload is not None else b"")
        if payload is None:
            if n:
                raise TfdumpCorruptionError("tensor of shape %s has no payload and is not marked "
                                            "uninitialized" % (shape,))
            return np.zeros(shape, dtype=npd)
        if len(payload) != n * npd.itemsize:
            raise TfdumpCorruptionError("tensor of dtype %s and shape %s has %d payload bytes" % (
                dtype_name(dtype), shape, len(payload)))
        return np.frombuffer(payload, dtype=npd).reshape(shape)

    def variant_elements(self, payload, blob_hashes: tuple, wi: int) -> list:
        """``[(type_name, metadata, [StoredTensor])]`` of a variant structure
        whose record attaches ``blob_hashes``; list blobs are read, element
        payloads stored as blobs are left to be read when decoded."""
        out = []
        for el in parse_variant_structure(payload, len(blob_hashes)):
            if el.list_blob is not None:
                tensors = [_stored_element(t, (), t.data) for t in
                           parse_list_blob(self.payloads.payload(wi, blob_hashes[el.list_blob]))]
            else:
                tensors = [_stored_element(t, blob_hashes, blob_hashes[t.data]
                                           if t.storage == STORAGE_BLOB else None)
                           for t in el.tensors]
            out.append((el.type_name.decode("utf-8", "replace"), el.metadata, tensors))
        return out


def _stored_element(t, blob_hashes: tuple, payload_hash: Optional[bytes]) -> StoredTensor:
    payload = t.data if t.storage == STORAGE_INLINE else None
    return StoredTensor(t.dtype, t.flags, tuple(t.shape), payload, blob_hashes, payload_hash)


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
