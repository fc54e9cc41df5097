"""TensorFlow ``DataType`` enum values and their numpy equivalents.

Defined here (not taken from TensorFlow) because the reader must work without
TensorFlow installed. Values are those of ``tensorflow/core/framework/types.proto``.
"""

from __future__ import annotations

import numpy as np

DT_INVALID = 0
DT_FLOAT = 1
DT_DOUBLE = 2
DT_INT32 = 3
DT_UINT8 = 4
DT_INT16 = 5
DT_INT8 = 6
DT_STRING = 7
DT_COMPLEX64 = 8
DT_INT64 = 9
DT_BOOL = 10
DT_QINT8 = 11
DT_QUINT8 = 12
DT_QINT32 = 13
DT_BFLOAT16 = 14
DT_QINT16 = 15
DT_QUINT16 = 16
DT_UINT16 = 17
DT_COMPLEX128 = 18
DT_HALF = 19
DT_RESOURCE = 20
DT_VARIANT = 21
DT_UINT32 = 22
DT_UINT64 = 23
DT_FLOAT8_E5M2 = 24
DT_FLOAT8_E4M3FN = 25
DT_FLOAT8_E4M3FNUZ = 26
DT_FLOAT8_E4M3B11FNUZ = 27
DT_FLOAT8_E5M2FNUZ = 28
DT_INT4 = 29
DT_UINT4 = 30
DT_INT2 = 31
DT_UINT2 = 32
DT_FLOAT4_E2M1FN = 33

NAMES = {
    DT_INVALID: "invalid", DT_FLOAT: "float32", DT_DOUBLE: "float64", DT_INT32: "int32",
    DT_UINT8: "uint8", DT_INT16: "int16", DT_INT8: "int8", DT_STRING: "string",
    DT_COMPLEX64: "complex64", DT_INT64: "int64", DT_BOOL: "bool", DT_QINT8: "qint8",
    DT_QUINT8: "quint8", DT_QINT32: "qint32", DT_BFLOAT16: "bfloat16", DT_QINT16: "qint16",
    DT_QUINT16: "quint16", DT_UINT16: "uint16", DT_COMPLEX128: "complex128", DT_HALF: "float16",
    DT_RESOURCE: "resource", DT_VARIANT: "variant", DT_UINT32: "uint32", DT_UINT64: "uint64",
    DT_FLOAT8_E5M2: "float8_e5m2", DT_FLOAT8_E4M3FN: "float8_e4m3fn",
    DT_FLOAT8_E4M3FNUZ: "float8_e4m3fnuz", DT_FLOAT8_E4M3B11FNUZ: "float8_e4m3b11fnuz",
    DT_FLOAT8_E5M2FNUZ: "float8_e5m2fnuz", DT_INT4: "int4", DT_UINT4: "uint4", DT_INT2: "int2",
    DT_UINT2: "uint2", DT_FLOAT4_E2M1FN: "float4_e2m1fn",
}

# The types numpy lacks, by their ml_dtypes (and NAMES) name.
_ML_DTYPES = (DT_BFLOAT16, DT_FLOAT8_E5M2, DT_FLOAT8_E4M3FN, DT_FLOAT8_E4M3FNUZ, DT_FLOAT8_E4M3B11FNUZ,
              DT_FLOAT8_E5M2FNUZ, DT_INT4, DT_UINT4, DT_INT2, DT_UINT2, DT_FLOAT4_E2M1FN)

# Plain numpy dtypes for the numeric TF types. Quantized types are stored as
# their underlying integers, exactly as TF lays them out in memory.
_NUMPY = {
    DT_FLOAT: np.dtype("<f4"), DT_DOUBLE: np.dtype("<f8"), DT_INT32: np.dtype("<i4"),
    DT_UINT8: np.dtype("u1"), DT_INT16: np.dtype("<i2"), DT_INT8: np.dtype("i1"),
    DT_COMPLEX64: np.dtype("<c8"), DT_INT64: np.dtype("<i8"), DT_BOOL: np.dtype("?"),
    DT_QINT8: np.dtype("i1"), DT_QUINT8: np.dtype("u1"), DT_QINT32: np.dtype("<i4"),
    DT_QINT16: np.dtype("<i2"), DT_QUINT16: np.dtype("<u2"), DT_UINT16: np.dtype("<u2"),
    DT_COMPLEX128: np.dtype("<c16"), DT_HALF: np.dtype("<f2"), DT_UINT32: np.dtype("<u4"),
    DT_UINT64: np.dtype("<u8"),
}

# Types numpy lacks come from ml_dtypes (a TensorFlow dependency) when present.
try:  # pragma: no cover - depends on the environment
    import ml_dtypes as _ml

    for _dt in _ML_DTYPES:
        if hasattr(_ml, NAMES[_dt]):  # older ml_dtypes lack the newest types
            _NUMPY[_dt] = np.dtype(getattr(_ml, NAMES[_dt]))
except ImportError:  # bfloat16 is then read as its raw uint16 bits
    _NUMPY[DT_BFLOAT16] = np.dtype("<u2")

_ELEM_BYTES = {DT_BFLOAT16: 2, DT_FLOAT8_E5M2: 1, DT_FLOAT8_E4M3FN: 1}

_FROM_NUMPY = {}
for _dt, _np in _NUMPY.items():
    if _dt in (DT_QINT8, DT_QUINT8, DT_QINT32, DT_QINT16, DT_QUINT16):
        continue  # numpy int8 etc. map to the plain integer types
    _FROM_NUMPY.setdefault(_np, _dt)


def to_numpy(dtype: int) -> np.dtype:
    """The numpy dtype that holds a TF numeric type bit-exactly."""
    try:
        return _NUMPY[dtype]
    except KeyError:
        raise TypeError(f"TF dtype {NAMES.get(dtype, f'dtype#{dtype}')} has no numpy equivalent") from None


def from_numpy(dtype) -> int:
    """The TF ``DataType`` for a numpy dtype (``DT_STRING`` for bytes/str/object)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "SUO":
        return DT_STRING
    try:
        return _FROM_NUMPY[dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype]
    except KeyError:
        raise TypeError(f"numpy dtype {dtype} has no TensorFlow equivalent") from None


def shuffle_lane_bytes(dtype: int) -> int:
    """Bytes per shuffle lane: the scalar width (a complex number has two lanes)."""
    if dtype in (DT_COMPLEX64, DT_COMPLEX128):
        return _NUMPY[dtype].itemsize // 2
    if dtype in _ELEM_BYTES:
        return _ELEM_BYTES[dtype]
    if dtype in _NUMPY:
        return _NUMPY[dtype].itemsize
    return 0


def dtype_name(dtype: int) -> str:
    """Readable name of a TF ``DataType`` enum value (``*_ref`` for ref types)."""
    if dtype > 100:
        return dtype_name(dtype - 100) + "_ref"
    return NAMES.get(dtype, "dtype_%d" % dtype)
