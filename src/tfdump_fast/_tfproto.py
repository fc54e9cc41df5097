"""The few TensorFlow protobuf messages tfdbg's dump layout needs, by hand.

tfdbg's dump files are serialized ``Event`` protos. Building them with
TensorFlow's generated classes would make :mod:`tfdump_fast.conversion` import
TensorFlow (seconds) and cost several microseconds of Python per field; the
messages involved are small and fixed, so they are encoded and decoded here
directly in the protobuf wire format, field by field, in field-number order
-- the order TensorFlow's C++ serializer uses, so the bytes are identical to
what tfdbg writes (the tests check this against real tfdbg dumps).

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
import re
import struct

import numpy as np

from .errors import TfdumpCorruptionError

# --- TensorFlow DataType enum (tensorflow/core/framework/types.proto) -------

from tfdump_fast.dtypes import (  # noqa: E402 - the enum values shared with the writer
    DT_BFLOAT16, DT_BOOL, DT_COMPLEX64, DT_COMPLEX128, DT_DOUBLE, DT_FLOAT, DT_FLOAT4_E2M1FN,
    DT_FLOAT8_E4M3B11FNUZ, DT_FLOAT8_E4M3FN, DT_FLOAT8_E4M3FNUZ, DT_FLOAT8_E5M2, DT_FLOAT8_E5M2FNUZ,
    DT_HALF, DT_INT2, DT_INT4, DT_INT8, DT_INT16, DT_INT32, DT_INT64, DT_QINT8, DT_QINT16, DT_QINT32,
    DT_QUINT8, DT_QUINT16, DT_RESOURCE, DT_STRING, DT_UINT2, DT_UINT4, DT_UINT8, DT_UINT16, DT_UINT32,
    DT_UINT64, DT_VARIANT)
from tfdump_fast.dtypes import dtype_name  # noqa: E402


# Which repeated field Tensor::AsProtoField fills for each dtype, and how
# (tensorflow/core/framework/tensor.cc, ProtoHelper<T>): (field number, kind).
# kinds: f4/f8 = packed fixed32/fixed64, varint = packed varint of the
# element's integer value, half = packed varint of the 16-bit pattern,
# bytes8 = one byte per element in a bytes field.
_FIELD_OF_DTYPE = {
    DT_FLOAT: (5, "f4"), DT_DOUBLE: (6, "f8"), DT_COMPLEX64: (9, "f4"), DT_COMPLEX128: (12, "f8"),
    DT_INT32: (7, "varint"), DT_UINT8: (7, "varint"), DT_UINT16: (7, "varint"),
    DT_INT16: (7, "varint"), DT_INT8: (7, "varint"), DT_QINT8: (7, "varint"),
    DT_QUINT8: (7, "varint"), DT_QINT16: (7, "varint"), DT_QUINT16: (7, "varint"),
    DT_QINT32: (7, "varint"), DT_INT4: (7, "varint"), DT_UINT4: (7, "varint"),
    DT_INT2: (7, "varint"), DT_UINT2: (7, "varint"),
    DT_INT64: (10, "varint"), DT_BOOL: (11, "varint"), DT_UINT32: (16, "varint"),
    DT_UINT64: (17, "varint"), DT_HALF: (13, "half"), DT_BFLOAT16: (13, "half"),
    DT_FLOAT8_E5M2: (18, "bytes8"), DT_FLOAT8_E4M3FN: (18, "bytes8"),
    DT_FLOAT8_E4M3FNUZ: (18, "bytes8"), DT_FLOAT8_E4M3B11FNUZ: (18, "bytes8"),
    DT_FLOAT8_E5M2FNUZ: (18, "bytes8"), DT_FLOAT4_E2M1FN: (18, "bytes8"),
}

# The integer numpy type each "varint"/"half" dtype's elements are stored as.
_STORAGE_INT = {
    DT_INT32: "<i4", DT_UINT8: "u1", DT_UINT16: "<u2", DT_INT16: "<i2", DT_INT8: "i1",
    DT_QINT8: "i1", DT_QUINT8: "u1", DT_QINT16: "<i2", DT_QUINT16: "<u2", DT_QINT32: "<i4",
    DT_INT4: "i1", DT_UINT4: "u1", DT_INT2: "i1", DT_UINT2: "u1", DT_INT64: "<i8",
    DT_BOOL: "u1", DT_UINT32: "<u4", DT_UINT64: "<u8", DT_HALF: "<u2", DT_BFLOAT16: "<u2",
}


# --- wire-format primitives --------------------------------------------------

def varint(value: int) -> bytes:
    """Encode an integer as a protobuf varint (negative values as 10 bytes)."""
    value &= 0xFFFFFFFFFFFFFFFF
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _ld(tag: int, payload: bytes) -> bytes:
    """A length-delimited field: tag byte(s), length, payload."""
    return varint(tag) + varint(len(payload)) + payload


def varints_encode(values: np.ndarray) -> bytes:
    """Encode an integer array as concatenated varints, vectorized."""
    v = np.asarray(values).astype(np.int64, copy=False).view(np.uint64)
    if v.size == 0:
        return b""
    groups = np.empty((v.size, 10), dtype=np.uint8)
    rest = v.copy()
    for i in range(10):
        groups[:, i] = (rest & np.uint64(0x7F)).astype(np.uint8)
        rest >>= np.uint64(7)
    # number of bytes: index of the highest non-zero group, at least 1
    nonzero = groups != 0
    nbytes = np.where(nonzero.any(axis=1), 10 - np.argmax(nonzero[:, ::-1], axis=1), 1)
    keep = np.arange(10)[None, :] < nbytes[:, None]
    cont = np.arange(10)[None, :] < (nbytes - 1)[:, None]
    groups |= (cont.astype(np.uint8) << 7)
    return groups[keep].tobytes()


def varints_decode(data: bytes) -> np.ndarray:
    """Decode concatenated varints into a uint64 array, vectorized."""
    b = np.frombuffer(data, dtype=np.uint8)
    if b.size == 0:
        return np.zeros(0, dtype=np.uint64)
    ends = np.flatnonzero(b < 0x80)
    if ends.size == 0 or ends[-1] != b.size - 1:
        raise TfdumpCorruptionError("packed varint field ends inside a value")
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    group = np.repeat(np.arange(ends.size), ends - starts + 1)
    pos = np.arange(b.size) - starts[group]
    if pos.max() > 9:
        raise TfdumpCorruptionError("varint longer than 10 bytes")
    parts = (b & 0x7F).astype(np.uint64) << (pos.astype(np.uint64) * np.uint64(7))
    return np.add.reduceat(parts, starts)


def read_varint(buf, pos: int):
    """Decode one varint at ``pos``; return (value, new position)."""
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise TfdumpCorruptionError("protobuf message ends inside a varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise TfdumpCorruptionError("varint longer than 10 bytes")


def iter_fields(buf):
    """Yield ``(field_number, wire_type, value)`` of a serialized message.

    ``value`` is an int for varint / fixed fields and a memoryview slice for
    length-delimited ones.
    """
    buf = memoryview(buf)
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire == 1:
            if pos + 8 > end:
                raise TfdumpCorruptionError("protobuf message ends inside a fixed64 field")
            value = bytes(buf[pos:pos + 8])
            pos += 8
        elif wire == 2:
            n, pos = read_varint(buf, pos)
            if pos + n > end:
                raise TfdumpCorruptionError("protobuf field %d runs past the end of its message" % field)
            value = buf[pos:pos + n]
            pos += n
        elif wire == 5:
            if pos + 4 > end:
                raise TfdumpCorruptionError("protobuf message ends inside a fixed32 field")
            value = bytes(buf[pos:pos + 4])
            pos += 4
        else:
            raise TfdumpCorruptionError("unsupported protobuf wire type %d" % wire)
        yield field, wire, value


# --- TensorProto -------------------------------------------------------------

def shape_proto(dims) -> bytes:
    """TensorShapeProto: one ``dim`` per dimension (size omitted when 0)."""
    out = []
    for d in dims:
        d = int(d)
        out.append(b"\x12\x00" if d == 0 else _ld(0x12, b"\x08" + varint(d)))
    return b"".join(out)


def tensor_proto_content(dtype: int, dims, content: bytes) -> bytes:
    """TensorProto as ``Tensor::AsProtoTensorContent`` writes it."""
    out = b"\x08" + varint(dtype) + _ld(0x12, shape_proto(dims))
    if content:
        out += _ld(0x22, content)
    return out


def tensor_proto_strings(dtype: int, dims, strings) -> bytes:
    """TensorProto with ``string_val`` (``AsProtoField`` of a DT_STRING tensor)."""
    parts = [b"\x08", varint(dtype), _ld(0x12, shape_proto(dims))]
    for s in strings:
        parts.append(_ld(0x42, bytes(s)))
    return b"".join(parts)


def string_list(items) -> bytes:
    """TF's string-list encoding (``port::EncodeStringList``): varint32
    lengths of all items, then the items concatenated."""
    return b"".join(varint(len(s)) for s in items) + b"".join(items)


def parse_string_list(data, n: int) -> list:
    """Inverse of :func:`string_list` for ``n`` items."""
    data = memoryview(data)
    sizes = []
    pos = 0
    for _ in range(n):
        size, pos = read_varint(data, pos)
        sizes.append(size)
    if pos + sum(sizes) != len(data):
        raise TfdumpCorruptionError("string list sizes do not add up to its length")
    out = []
    for size in sizes:
        out.append(bytes(data[pos:pos + size]))
        pos += size
    return out


def tensor_proto_fields(dtype: int, dims, raw: bytes | None, *, strings=None,
                        messages=None) -> bytes:
    """TensorProto as ``Tensor::AsProtoField`` writes it (typed ``*_val`` fields).

    TF uses this form for the element tensors inside a variant. ``raw`` are
    the tensor's bytes for numeric dtypes; ``strings`` the elements of a
    string tensor; ``messages`` the serialized ``ResourceHandleProto`` /
    ``VariantTensorDataProto`` elements of a resource / variant tensor. All
    ``None`` means an uninitialized tensor (dtype and shape only).
    """
    out = b"\x08" + varint(dtype) + _ld(0x12, shape_proto(dims))
    if strings is not None:
        return out + b"".join(_ld(0x42, bytes(s)) for s in strings)
    if messages is not None:
        tag = 0x72 if dtype == DT_RESOURCE else 0x7A
        return out + b"".join(_ld(tag, bytes(m)) for m in messages)
    if not raw:
        return out
    field, kind = _FIELD_OF_DTYPE.get(dtype, (None, None))
    if field is None:
        raise TfdumpCorruptionError("cannot encode dtype %s as typed proto fields" % dtype_name(dtype))
    if kind in ("f4", "f8"):
        body = bytes(raw)
    elif kind == "bytes8":
        body = bytes(raw)
    else:
        values = np.frombuffer(raw, dtype=_STORAGE_INT[dtype])
        body = varints_encode(values.astype(np.int64) if values.dtype != np.uint64 else values.view(np.int64))
    return out + _ld((field << 3) | 2, body)


def decode_tensor_proto(buf) -> dict:
    """Decode a TensorProto into ``dtype``, ``dims`` and its value fields.

    Returns a dict with keys ``dtype``, ``dims`` and one of ``content``
    (tensor_content bytes), ``strings`` (string_val), ``messages``
    (resource_handle_val / variant_val), ``raw`` (typed numeric fields
    converted to the tensor's bytes, last value repeated as TF's
    FromProtoField does); ``None`` values when the field is absent.
    """
    dtype = 0
    dims: list = []
    content = None
    strings: list = []
    messages: list = []
    fixed = []      # (field, bytes) of packed fixed-width numeric fields
    varints = []    # (field, bytes) of packed varint fields
    f8 = []
    for field, wire, value in iter_fields(buf):
        if field == 1 and wire == 0:
            dtype = value
        elif field == 2 and wire == 2:
            for f2, w2, dim in iter_fields(value):
                if f2 == 2 and w2 == 2:
                    size = 0
                    for f3, w3, v3 in iter_fields(dim):
                        if f3 == 1 and w3 == 0:
                            size = v3 - (1 << 64) if v3 >= (1 << 63) else v3
                    dims.append(size)
        elif field == 4 and wire == 2:
            content = bytes(value)
        elif field == 8 and wire == 2:
            strings.append(bytes(value))
        elif field in (14, 15) and wire == 2:
            messages.append(bytes(value))
        elif field == 18 and wire == 2:
            f8.append(bytes(value))
        elif field in (5, 6, 9, 12):
            fixed.append(bytes(value))
        elif field in (7, 10, 11, 13, 16, 17):
            if wire == 0:
                varints.append(varint(value))
            else:
                varints.append(bytes(value))
    n = 1
    for d in dims:
        n *= d
    out = {"dtype": dtype, "dims": dims, "content": content, "strings": None,
           "messages": None, "raw": None}
    if strings or dtype == DT_STRING:
        out["strings"] = strings
    elif messages or dtype in (DT_RESOURCE, DT_VARIANT):
        out["messages"] = messages
    elif fixed or varints or f8:
        field, kind = _FIELD_OF_DTYPE.get(dtype, (None, None))
        if kind in ("f4", "f8"):
            width = 4 if kind == "f4" else 8
            per_elem = width * (2 if dtype in (DT_COMPLEX64, DT_COMPLEX128) else 1)
            raw = b"".join(fixed)
            have = len(raw) // per_elem
        elif kind == "bytes8":
            raw = b"".join(f8)
            per_elem, have = 1, len(raw)
        else:
            ints = varints_decode(b"".join(varints))
            storage = np.dtype(_STORAGE_INT.get(dtype, "<i4"))
            raw = ints.view(np.int64).astype(storage).tobytes()
            per_elem, have = storage.itemsize, ints.size
        if 0 < have < n:  # TF repeats the last value (FromProtoField)
            raw = raw + raw[-per_elem:] * (n - have)
        out["raw"] = raw[:n * per_elem]
    return out


# --- VariantTensorDataProto ----------------------------------------------------

def variant_data_head(type_name: bytes, metadata: bytes) -> bytes:
    """The ``type_name`` and ``metadata`` fields of a VariantTensorDataProto
    (its ``tensors`` follow, each from :func:`variant_data_tensor`)."""
    out = b""
    if type_name:
        out += _ld(0x0A, type_name)
    if metadata:
        out += _ld(0x12, metadata)
    return out


def variant_data_tensor(tensor_proto: bytes) -> bytes:
    """One ``tensors`` field of a VariantTensorDataProto (a serialized TensorProto)."""
    return _ld(0x1A, tensor_proto)


def decode_variant_data_proto(buf):
    """Return (type_name bytes, metadata bytes, [TensorProto bytes])."""
    type_name, metadata, tensors = b"", b"", []
    for field, wire, value in iter_fields(buf):
        if wire != 2:
            continue
        if field == 1:
            type_name = bytes(value)
        elif field == 2:
            metadata = bytes(value)
        elif field == 3:
            tensors.append(bytes(value))
    return type_name, metadata, tensors


def decode_resource_handle(buf) -> dict:
    """The readable fields of a ResourceHandleProto."""
    out = {"device": "", "container": "", "name": "", "hash_code": 0, "maybe_type_name": ""}
    names = {1: "device", 2: "container", 3: "name", 5: "maybe_type_name"}
    for field, wire, value in iter_fields(buf):
        if field in names and wire == 2:
            out[names[field]] = bytes(value).decode("utf-8", "replace")
        elif field == 4 and wire == 0:
            out["hash_code"] = value
    return out


# --- Event -------------------------------------------------------------------

_PLUGIN_NAME = _ld(0x0A, b"debugger")


def debugger_plugin_json(device: str, output_slot: int) -> bytes:
    """DebuggerEventMetadata as protobuf's JSON printer writes it (C++, with
    always_print_primitive_fields, one chunk)."""
    return ('{"device":%s,"outputSlot":%d,"numChunks":1,"chunkIndex":0}'
            % (json.dumps(device, ensure_ascii=False), output_slot)).encode("utf-8")


def debug_key_fields(node: str, output_slot: int, debug_op: str, device: str) -> tuple:
    """The parts of a dump Event that depend only on the watch key:
    ``(tag + node_name fields, metadata field)``."""
    node_b = node.encode("utf-8")
    head = _ld(0x0A, node_b) + _ld(0x3A, b"%s:%d:%s" % (node_b, output_slot, debug_op.encode("utf-8")))
    tail = _ld(0x4A, _ld(0x0A, _PLUGIN_NAME + _ld(0x12, debugger_plugin_json(device, output_slot))))
    return head, tail


_WALL = struct.Struct("<d")


def debug_tensor_event_parts(wall_us: int, key_head: bytes, key_tail: bytes, proto_prefix: bytes,
                             chunks=()) -> list:
    """The Event tfdbg writes for one dumped tensor, as a list of byte
    strings to be written one after the other (``os.writev``): the tensor's
    bytes (``chunks``) are not copied. ``proto_prefix + b"".join(chunks)``
    is the TensorProto; see :func:`debug_tensor_event`."""
    proto_len = len(proto_prefix) + sum(len(c) for c in chunks)
    tensor_head = b"\x42" + varint(proto_len)
    value_len = len(key_head) + len(tensor_head) + proto_len + len(key_tail)
    value_head = b"\x0A" + varint(value_len)
    head = b"".join((b"\x09", _WALL.pack(float(wall_us)), b"\x2A", varint(len(value_head) + value_len),
                     value_head, key_head, tensor_head, proto_prefix))
    return [head, *chunks, key_tail]


def debug_tensor_event(wall_us: int, node: str, output_slot: int, debug_op: str,
                       plugin_json: bytes, tensor_proto: bytes) -> bytes:
    """The Event tfdbg writes for one dumped tensor (debug_io_utils.cc,
    PrepareChunkEventProto + WrapTensorAsEvents): wall_time, and one
    summary value with tag, node_name, tensor and the debugger plugin data."""
    node_b = node.encode("utf-8")
    value = b"".join((
        _ld(0x0A, node_b),                                             # tag
        _ld(0x3A, b"%s:%d:%s" % (node_b, output_slot, debug_op.encode("utf-8"))),  # node_name
        _ld(0x42, tensor_proto),                                       # tensor
        _ld(0x4A, _ld(0x0A, _PLUGIN_NAME + _ld(0x12, plugin_json))),   # metadata.plugin_data
    ))
    return b"\x09" + _WALL.pack(float(wall_us)) + _ld(0x2A, _ld(0x0A, value))


def tensor_proto_head(dtype: int, dims, content_len: int) -> bytes:
    """``tensor_proto_content(dtype, dims, content)`` minus the content bytes."""
    out = b"\x08" + varint(dtype) + _ld(0x12, shape_proto(dims))
    if content_len:
        out += b"\x22" + varint(content_len)
    return out


def log_message_event(message: str, wall_time: float | None = None) -> bytes:
    """Event with ``log_message.message`` (and ``wall_time`` when given)."""
    out = b"" if wall_time is None else b"\x09" + struct.pack("<d", float(wall_time))
    msg = message.encode("utf-8")
    return out + _ld(0x32, _ld(0x12, msg) if msg else b"")


def graph_event(wall_time: float, graph_def: bytes) -> bytes:
    """Event with ``graph_def`` (what DebugIO::PublishGraph writes)."""
    return b"\x09" + struct.pack("<d", float(wall_time)) + (_ld(0x22, graph_def) if graph_def else b"")


def decode_event(buf) -> dict:
    """Decode the parts of an Event tfdbg uses.

    Returns a dict with ``wall_time``, ``graph_def``, ``log_message`` and,
    for a tensor dump, ``tag``, ``node_name``, ``tensor`` (TensorProto bytes)
    and ``plugin_content``.
    """
    out = {"wall_time": 0.0, "graph_def": None, "log_message": None, "tag": None,
           "node_name": None, "tensor": None, "plugin_content": None}
    for field, wire, value in iter_fields(buf):
        if field == 1 and wire == 1:
            out["wall_time"] = struct.unpack("<d", value)[0]
        elif field == 4 and wire == 2:
            out["graph_def"] = bytes(value)
        elif field == 6 and wire == 2:
            out["log_message"] = ""
            for f, w, v in iter_fields(value):
                if f == 2 and w == 2:
                    out["log_message"] = bytes(v).decode("utf-8")
        elif field == 5 and wire == 2:
            for f, w, v in iter_fields(value):
                if f != 1 or w != 2 or out["tensor"] is not None:
                    continue
                for f2, w2, v2 in iter_fields(v):
                    if w2 != 2:
                        continue
                    if f2 == 1:
                        out["tag"] = bytes(v2).decode("utf-8")
                    elif f2 == 7:
                        out["node_name"] = bytes(v2).decode("utf-8")
                    elif f2 == 8:
                        out["tensor"] = bytes(v2)
                    elif f2 == 9:
                        for f3, w3, v3 in iter_fields(v2):
                            if f3 == 1 and w3 == 2:
                                for f4, w4, v4 in iter_fields(v3):
                                    if f4 == 2 and w4 == 2:
                                        out["plugin_content"] = bytes(v4)
    return out


# --- GraphDef ------------------------------------------------------------------

def graph_device(graph_def: bytes) -> str | None:
    """Device of a partition GraphDef: that of its first node naming one
    (tfdbg's debug_graphs._infer_device_name does the same)."""
    for field, wire, node in iter_fields(graph_def):
        if field != 1 or wire != 2:
            continue
        for f, w, v in iter_fields(node):
            if f == 4 and w == 2 and len(v):
                return bytes(v).decode("utf-8")
    return None


_M64 = 0xFFFFFFFFFFFFFFFF


def tf_hash64(data: bytes, seed: int = 0xDECAFCAFFE) -> int:
    """``tensorflow::Hash64`` (a MurmurHash64A variant): tfdbg names graph
    files ``_tfdbg_graph_hash<Hash64(graph)>_<time>``."""
    m, r = 0xC6A4A7935BD1E995, 47
    n = len(data)
    h = (seed ^ (n * m)) & _M64
    nblocks = n // 8
    if nblocks:
        # The per-block mixing of k does not depend on h: vectorize it.
        k = np.frombuffer(data, dtype="<u8", count=nblocks).copy()
        with np.errstate(over="ignore"):
            k *= np.uint64(m)
            k ^= k >> np.uint64(r)
            k *= np.uint64(m)
        for kv in k.tolist():
            h = ((h ^ kv) * m) & _M64
    tail = data[nblocks * 8:]
    if tail:
        for i in range(len(tail) - 1, -1, -1):
            h ^= tail[i] << (8 * i)
        h = (h * m) & _M64
    h ^= h >> r
    h = (h * m) & _M64
    h ^= h >> r
    return h


# --- device names <-> tfdbg directory names ------------------------------------

METADATA_PREFIX = "_tfdbg_"
DEVICE_PREFIX = "_tfdbg_device_"
# The files of a tfdbg run directory besides the dumps
# (dumping_wrapper.py, debug_io_utils.cc PublishDebugMetadata / PublishGraph).
FETCHES_INFO_FILE = "_tfdbg_fetches_info_"
FEED_KEYS_INFO_FILE = "_tfdbg_feed_keys_info_"
CORE_METADATA_PREFIX = "_tfdbg_core_metadata_"
GRAPH_PREFIX = "_tfdbg_graph_"
# A run directory's name: run_<epoch_us>_<counter>.
RUN_DIR_NAME_RE = re.compile(r"^run_(\d+)_(\d+)$")


def device_name_to_path(device: str) -> str:
    """``/job:a/device:CPU:0`` -> ``_tfdbg_device_,job_a,device_CPU_0``."""
    return DEVICE_PREFIX + ",".join(item.replace(":", "_") for item in device.split("/"))


def device_path_to_name(path: str) -> str:
    """Inverse of :func:`device_name_to_path` (as tfdbg's debug_data does it)."""
    items = path[len(DEVICE_PREFIX):].split(",")
    return "/".join(item.replace("device_", "device:").replace("_", ":", 1) for item in items)


def core_metadata_json(core: dict) -> str:
    """The core-metadata JSON exactly as DebugIO::PublishDebugMetadata
    formats it (no spaces, fixed key order)."""
    def names(key):
        return "[" + ",".join(json.dumps(str(x), ensure_ascii=False) for x in core.get(key, [])) + "]"
    return ('{"global_step":%d,"session_run_index":%d,"executor_step_index":%d,'
            '"input_names":%s,"output_names":%s,"target_nodes":%s}' % (
                int(core.get("global_step", -1)), int(core.get("session_run_index", -1)),
                int(core.get("executor_step_index", -1)), names("input_names"),
                names("output_names"), names("target_nodes")))
