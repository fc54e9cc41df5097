"""Writing shard files (docs/FORMAT.md, "Shard file"): create a shard with its
file header, lay out a frame (compressed table and data block behind a
checksummed header) and append it.

The one place that writes frames: the capture writer's workers and metadata
shard, and the tfdbg importer, all go through here. What a writer decides
itself -- which codec and level, whether the frame fits a disk budget, how an
``OSError`` is reported -- stays with the writer.
"""

from __future__ import annotations

import os
import struct
from typing import Callable, Iterable, List, Optional, Sequence

import zstandard

from tfdump_fast import _native
from tfdump_fast.store.naming import shard_file_name

__all__ = ["ShardFile", "chain_frame_crc", "close_trailer", "create_shard", "encode_frame", "write_all"]

# the frame header's own checksum is its last field
_HEADER_CRC_AT = _native.FRAME_HEADER_SIZE - 4
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)


def write_all(fd: int, parts: Sequence) -> None:
    """Write ``parts`` to ``fd`` in order, every byte.

    ``os.writev`` may write less than asked; this writes the rest. Raises
    ``OSError`` as the system reports it (the caller maps it to an error).
    """
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        n = os.writev(fd, views)
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]


def create_shard(root: str, writer_id: int, shard_index: int, created_us: int) -> int:
    """Create shard ``shard_index`` of a writer in ``root`` and write its file header.

    The file must not exist yet (a shard has exactly one writing thread). Opens
    it append-only and returns the file descriptor. Raises ``OSError``.
    """
    path = os.path.join(root, shard_file_name(writer_id, shard_index))
    fd = os.open(path, _OPEN_FLAGS, 0o644)
    try:
        write_all(fd, [_native.encode_file_header(shard_index, writer_id, created_us, os.getpid())])
    except OSError:
        os.close(fd)
        raise
    return fd


def encode_frame(kind: int, raw_table: bytes, raw_data: bytes, n_entries: int,
                 compressor: Optional[zstandard.ZstdCompressor] = None, level: int = 0,
                 *, compress_empty_data: bool = False) -> List[bytes]:
    """Lay out one frame: ``[header, table, data]``, to be written in that order.

    Parameters
    ----------
    kind : int
        ``_native.FRAME_KIND_DATA`` or ``_native.FRAME_KIND_META``.
    raw_table, raw_data : bytes-like
        The record table and the data block, uncompressed.
    n_entries : int
        Entries in ``raw_table``.
    compressor : zstandard.ZstdCompressor, optional
        Compresses both blocks (codec zstd, with the content size in each zstd
        frame, as FORMAT.md requires); None stores them raw.
    level : int
        The zstd level ``compressor`` was made with (recorded in the header;
        ignored for raw frames, which record 0).
    compress_empty_data : bool, default False
        Compress an empty data block too (a zstd frame of a few bytes)
        instead of storing it empty. Both read back the same; the capture
        workers have always written the former, metadata frames and the
        importer the latter, and each keeps its bytes.
    """
    if compressor is None:
        codec, level = _native.CODEC_RAW, 0
        table, data = raw_table, raw_data
    else:
        codec = _native.CODEC_ZSTD
        table = compressor.compress(raw_table)
        data = compressor.compress(raw_data) if (len(raw_data) or compress_empty_data) else b""
    header = _native.encode_frame_header(
        kind, codec, level, len(table), len(raw_table), len(data), len(raw_data), n_entries,
        _native.crc32c(table), _native.crc32c(data))
    return [header, table, data]


def chain_frame_crc(chain: int, header_crc: int) -> int:
    """The shard trailer's ``frame_crc`` after one more frame (docs/FORMAT.md,
    ``writer_close``): crc32c of the frames' header checksums, in file order."""
    return _native.crc32c(struct.pack("<I", header_crc), chain)


class ShardFile:
    """One shard file being written: its descriptor and where its last
    completely written frame ends.

    A failed write must not leave half a frame that later frames follow (the
    reader would find a corrupt frame in the middle of the file), so
    :meth:`append` cuts the file back to its last good end on failure; when
    even that fails, the shard is *dead*: nothing more is appended to it, and
    the trailer says so.

    Parameters
    ----------
    fd : int
        Open (append-only) descriptor, the file header already written.
    name : str
        The shard's file name (the key of its trailer entry).
    """

    def __init__(self, fd: int, name: str):
        self.fd = fd
        self.name = name
        self.end = _native.FILE_HEADER_SIZE   # offset after the last good frame
        self.frames = 0
        self.frame_crc = 0
        self.dead = False                     # a failed write could not be cut off

    def append(self, parts: Sequence, sink: Callable[[int, Sequence], None] = write_all) -> None:
        """Write one frame (``encode_frame``'s ``parts``) through ``sink``.

        Raises the sink's ``OSError`` after cutting the file back to the end
        of its last good frame (or, if that fails too, marking the shard
        dead). A dead shard raises ``OSError(EIO)`` without writing.
        """
        if self.dead:
            raise OSError(5, "an earlier write to %s failed and could not be undone" % self.name)
        try:
            sink(self.fd, parts)
        except OSError:
            try:
                os.ftruncate(self.fd, self.end)
            except OSError:
                self.dead = True
            raise
        self.end += sum(len(p) for p in parts)
        self.frames += 1
        self.frame_crc = chain_frame_crc(self.frame_crc, struct.unpack_from("<I", parts[0], _HEADER_CRC_AT)[0])

    def trailer(self) -> dict:
        """This shard's entry in the ``writer_close`` event."""
        entry = {"bytes": self.end, "frames": self.frames, "frame_crc": self.frame_crc}
        if self.dead:
            entry["tail_lost"] = True
        return entry


def close_trailer(shard_files: Iterable["ShardFile"]) -> dict:
    """The ``shards`` field of a ``writer_close`` event (the clean-close
    trailer, docs/FORMAT.md): each shard's :meth:`ShardFile.trailer` by file
    name. Call it once nothing more can be appended to the data shards; the
    metadata shard's entry describes it before the ``writer_close`` frame."""
    return {sf.name: sf.trailer() for sf in shard_files}
