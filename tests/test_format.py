"""The format's primitives match docs/FORMAT.md: checksums, content hash,
shuffle filter, headers and record tables."""

import struct

import numpy as np
import pytest

from tfdump_fast import _native, errors

M64 = (1 << 64) - 1
K = [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
     0xA0761D6478BD642F, 0xE7037ED1A0B428DB, 0x8EBC6AF09C88C6E3, 0x589965CC75374CC3]


def _mum(a, b):
    r = (a & M64) * (b & M64)
    return (r & M64) ^ (r >> 64)


def _fmix(k):
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & M64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & M64
    return k ^ (k >> 33)


def reference_hash128(data: bytes) -> bytes:
    """hash128 exactly as docs/FORMAT.md writes it down, in plain Python."""
    n = len(data)
    s = [K[4] ^ n, K[5], K[6], K[7] ^ ((n * K[0]) & M64)]

    def rnd(block):
        for i in range(4):
            lo, hi = struct.unpack_from("<QQ", block, 16 * i)
            s[i] = _mum(lo ^ K[i], hi ^ s[i])

    full = n - n % 64
    for off in range(0, full, 64):
        rnd(data[off:off + 64])
    rnd(data[full:] + bytes(64 - (n - full)))
    a = _mum(s[0] ^ K[1], s[1] ^ K[2]) ^ _mum(s[2] ^ K[3], s[3] ^ n)
    b = _mum(s[1] ^ K[5], s[2] ^ K[6]) ^ _mum(s[3] ^ K[7], s[0] ^ K[4])
    return struct.pack("<QQ", _fmix(a ^ (b >> 29)), _fmix(b ^ a))


@pytest.mark.parametrize("length", [0, 1, 15, 16, 63, 64, 65, 127, 128, 1000, 4099])
def test_hash128_is_what_format_md_specifies(length):
    data = np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8).tobytes()
    assert _native.hash128(data) == reference_hash128(data)


def test_hash128_golden_values_never_change():
    # Stored payloads are found by these hashes: changing the function breaks
    # deduplication against existing dumps, so it needs a format version bump.
    assert _native.hash128(b"").hex() == "5053a9bc38ec7119594c7f7b7f159a2e"
    assert _native.hash128(b"tfdump-fast").hex() == "4b491789592491dadb8d8f461476fd0e"


def test_hash128_separates_near_identical_payloads():
    base = np.zeros(4096, dtype=np.uint8)
    seen = {_native.hash128(base.tobytes())}
    for i in range(0, base.size * 8, 7):  # single-bit flips across the buffer
        b = base.copy()
        b[i // 8] ^= 1 << (i % 8)
        seen.add(_native.hash128(b.tobytes()))
    for n in range(200):  # zero buffers of every length
        seen.add(_native.hash128(bytes(n)))
    assert len(seen) == 1 + len(range(0, base.size * 8, 7)) + 200  # no two of them collide


def test_crc32c_check_value():
    assert _native.crc32c(b"123456789") == 0xE3069283  # the CRC-32C catalogue check value
    assert _native.crc32c(b"6789", _native.crc32c(b"12345")) == 0xE3069283


@pytest.mark.parametrize("elem_size", [1, 2, 4, 8, 3])
def test_shuffle_round_trip_and_layout(elem_size):
    data = np.arange(1000 * elem_size + 3, dtype=np.uint32).astype(np.uint8).tobytes()
    shuffled = _native.shuffle(data, elem_size)
    assert _native.unshuffle(shuffled, elem_size) == data
    n = len(data) // elem_size
    if elem_size > 1:
        assert shuffled[:n] == data[0:n * elem_size:elem_size]  # lane 0 of every element first
    assert shuffled[n * elem_size:] == data[n * elem_size:]      # the tail stays as is


def test_file_header_round_trip_and_errors():
    raw = _native.encode_file_header(3, 0x1234, 1_700_000_000_000_000, 42)
    assert len(raw) == _native.FILE_HEADER_SIZE == 48 and raw[:8] == b"TFDSHARD"
    assert _native.parse_file_header(raw) == {"format_version": 1, "shard_index": 3, "writer_id": 0x1234,
                                              "created_us": 1_700_000_000_000_000, "pid": 42}
    corrupt = bytearray(raw)
    corrupt[20] ^= 1
    with pytest.raises(errors.TfdumpCorruptionError, match="header checksum"):
        _native.parse_file_header(bytes(corrupt))
    newer = bytearray(raw)
    newer[8:12] = struct.pack("<I", 99)
    newer[44:48] = struct.pack("<I", _native.crc32c(bytes(newer[:44])))
    with pytest.raises(errors.TfdumpFormatError, match="format version 99.*up to version 1"):
        _native.parse_file_header(bytes(newer))
    with pytest.raises(errors.TfdumpTruncatedError):
        _native.parse_file_header(raw[:20])


def test_frame_header_round_trip():
    raw = _native.encode_frame_header(_native.FRAME_KIND_DATA, _native.CODEC_ZSTD, -5, 10, 20, 30, 40, 7, 11, 12)
    h = _native.parse_frame_header(raw)
    assert (h["kind"], h["codec"], h["level"], h["table_stored_len"], h["table_raw_len"], h["data_stored_len"],
            h["data_raw_len"], h["n_entries"], h["table_crc"], h["data_crc"]) == (1, 1, -5, 10, 20, 30, 40, 7, 11, 12)
    assert raw[:4] == b"TFDF"
    with pytest.raises(errors.TfdumpCorruptionError):
        _native.parse_frame_header(b"X" + raw[1:])


def test_meta_table_round_trip_and_corrupt_tables():
    table, data, n = _native.encode_meta('{"event": "x"}', [b"attachment"], [_native.hash128(b"attachment")])
    parsed = _native.parse_table(table, n)
    assert parsed.metas == [('{"event": "x"}', [_native.hash128(b"attachment")])]
    assert parsed.blobs["hash"][0] == _native.hash128(b"attachment") and data == b"attachment"
    with pytest.raises(errors.TfdumpCorruptionError, match="corrupt record table: META entry 1 lists more"):
        _native.parse_table(table[:-3], n)
    with pytest.raises(errors.TfdumpCorruptionError, match="ends inside entry 0"):
        _native.parse_table(table[:30], n)
    with pytest.raises(errors.TfdumpCorruptionError, match="unknown record table entry type 9"):
        _native.parse_table(b"\x09" + table[1:], n)
    with pytest.raises(errors.TfdumpCorruptionError, match="after its last entry"):
        _native.parse_table(table + b"\x00", n)


def test_golden_stores_hold_payloads_under_their_content_hash():
    """Every payload of the committed v1 golden stores is stored under hash128 of its bytes."""
    import os

    from conftest import scan_shard

    root = os.path.join(os.path.dirname(__file__), "data", "golden_v1")
    checked = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".tfds"):
                continue
            _, frames, torn = scan_shard(os.path.join(dirpath, name))
            assert torn == 0
            for _, table, data in frames:
                for b in table.blobs:
                    raw = data[int(b["data_offset"]):int(b["data_offset"]) + int(b["raw_len"])]
                    if b["filter"] == 1:
                        raw = _native.unshuffle(raw, int(b["elem_size"]))
                    assert _native.hash128(raw) == bytes(b["hash"])
                    checked += 1
    assert checked > 50
