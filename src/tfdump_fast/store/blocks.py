"""Data blocks and the payloads in them.

A tensor's value is read by decompressing the data block of the one frame
its payload lives in (docs/FORMAT.md, "Frames" and "BLOB"). :class:`BlockCache`
reads, checks and decompresses blocks and keeps the decompressed ones in a
bounded LRU cache; :class:`PayloadReader` finds a payload by its writer and
hash and undoes its filter.
"""

from __future__ import annotations

import collections
import os
import threading
from typing import Iterable, List, Optional, Sequence

import zstandard

from tfdump_fast import _native
from tfdump_fast.errors import TfdumpCorruptionError, TfdumpFormatError, TfdumpIOError, TfdumpNotFoundError, \
    TfdumpTruncatedError

__all__ = ["BlockCache", "PayloadReader", "decompress"]

_PARALLEL_BYTES = 1 << 20   # stored bytes from which blocks are decompressed in parallel
_COPY_BELOW = 1 << 20       # payloads smaller than this are copied out of their block


def decompress(stored, codec: int, raw_len: int) -> bytes:
    """The ``raw_len`` bytes a block stored with ``codec`` holds.

    Raises
    ------
    TfdumpCorruptionError
        The block does not decompress to ``raw_len`` bytes.
    TfdumpFormatError
        An unknown codec.
    """
    if codec == _native.CODEC_RAW:
        if len(stored) != raw_len:
            raise TfdumpCorruptionError("raw block is %d bytes, its header says %d" % (len(stored), raw_len))
        return bytes(stored)
    if codec != _native.CODEC_ZSTD:
        raise TfdumpFormatError("unknown codec %d (written by a newer tfdump-fast?)" % codec)
    if raw_len == 0 and len(stored) == 0:
        return b""
    try:
        out = zstandard.ZstdDecompressor().decompress(stored, max_output_size=raw_len)
    except zstandard.ZstdError as exc:
        raise TfdumpCorruptionError("zstd block does not decompress: %s" % exc) from None
    if len(out) != raw_len:
        raise TfdumpCorruptionError("zstd block decompressed to %d bytes, its header says %d" % (len(out), raw_len))
    return out


_POOL = None


def _pool():
    """A small shared thread pool for decompressing frames in parallel."""
    global _POOL
    if _POOL is None:
        import concurrent.futures

        _POOL = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(2, min(4, os.cpu_count() or 2)), thread_name_prefix="tfdump-read")
    return _POOL


class BlockCache:
    """Decompressed data blocks of a store's frames, LRU-bounded.

    Parameters
    ----------
    shards, frames : list
        The reader's :class:`~tfdump_fast.store.scan.Shard` and
        :class:`~tfdump_fast.store.scan.Frame` lists (frames found by a
        later scan are appended to the same list).
    max_bytes : int
        Bound of the decompressed bytes kept (at least one block is kept).
    """

    def __init__(self, shards: list, frames: list, max_bytes: int):
        self.shards = shards
        self.frames = frames
        self.max_bytes = int(max_bytes)
        self._lock = threading.RLock()
        self._blocks: "collections.OrderedDict[int, bytes]" = collections.OrderedDict()
        self._bytes = 0

    @property
    def nbytes(self) -> int:
        """Decompressed bytes held."""
        return self._bytes

    def __len__(self) -> int:
        """Blocks held."""
        return len(self._blocks)

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self._bytes = 0

    def data(self, fi: int, use_cache: bool = True) -> bytes:
        """The decompressed data block of frame ``fi``.

        With ``use_cache=False`` the block is read and its checksum checked
        even if it was before, and it is not kept (what ``verify`` does).

        Raises
        ------
        TfdumpIOError, TfdumpTruncatedError, TfdumpCorruptionError
        """
        with self._lock:
            data = self._blocks.get(fi) if use_cache else None
            if data is not None:
                self._blocks.move_to_end(fi)
                return data
        f = self.frames[fi]
        shard = self.shards[f.shard]
        try:
            with open(shard.path, "rb") as fh:
                fh.seek(f.data_offset)
                stored = fh.read(f.data_stored)
        except OSError as exc:
            raise TfdumpIOError(exc.errno, "cannot read %s: %s" % (shard.path, exc.strerror)) from None
        if len(stored) != f.data_stored:
            raise TfdumpTruncatedError("%s: the data block of the frame at offset %d is cut short "
                                       "(the file shrank since it was opened)" % (shard.path, f.offset))
        if not f.data_checked or not use_cache:
            if _native.crc32c(stored) != f.data_crc:
                raise TfdumpCorruptionError(
                    "%s: the data block of the frame at offset %d is corrupt (checksum mismatch); "
                    "the tensors stored in it cannot be read" % (shard.path, f.offset))
            f.data_checked = True
        try:
            data = decompress(stored, f.codec, f.data_raw)
        except TfdumpCorruptionError as exc:
            raise TfdumpCorruptionError("%s: frame at offset %d: %s" % (shard.path, f.offset, exc)) from None
        if use_cache:
            with self._lock:
                self._blocks[fi] = data
                self._bytes += len(data)
                while self._bytes > self.max_bytes and len(self._blocks) > 1:
                    _, old = self._blocks.popitem(last=False)
                    self._bytes -= len(old)
        return data

    def prefetch(self, fids: Iterable[int], frames: dict) -> None:
        """Decompress the frames ``fids`` into ``frames`` (frame -> data),
        several at a time: zstd releases the GIL, so bulk reads of large
        tensors use every core."""
        todo = [fi for fi in dict.fromkeys(fids) if fi not in frames]
        if not todo:
            return
        big = sum(self.frames[fi].data_stored for fi in todo) >= _PARALLEL_BYTES
        if len(todo) < 2 or not big:
            for fi in todo:
                frames[fi] = memoryview(self.data(fi))
            return
        for fi, data in zip(todo, _pool().map(self.data, todo)):
            frames[fi] = memoryview(data)


class PayloadReader:
    """Payloads by writer and hash.

    Parameters
    ----------
    index : TensorIndex
        Where each writer's payloads are (``blob_index``).
    blocks : BlockCache
    """

    def __init__(self, index, blocks: BlockCache):
        self.index = index
        self.blocks = blocks

    def payload(self, wi: int, h: bytes, frames: Optional[dict] = None):
        """The unfiltered bytes of payload ``h`` of writer ``wi``.

        ``frames`` (frame -> data), filled by :meth:`prefetch`, lets bulk
        operations skip the shared cache's lock and bookkeeping for every
        payload; payloads of 1 MiB or more read through it are views into
        their block rather than copies.

        Raises
        ------
        TfdumpNotFoundError
            No frame that could be read holds the payload.
        TfdumpCorruptionError
        """
        index = self.index.writers[wi].blob_index  # inlined blob_index(): called per payload
        loc = (index if index is not None else self.index.blob_index(wi)).get(h)
        if loc is None:
            raise TfdumpNotFoundError(
                "payload %s of writer %s is stored in no frame that could be read (its frame was "
                "lost to a crash or skipped as corrupt)" % (h.hex(), self.index.writers[wi].name))
        fi, off, ln, flt, es = loc
        if frames is None:
            data = memoryview(self.blocks.data(fi))
        else:
            data = frames.get(fi)
            if data is None:
                data = frames[fi] = memoryview(self.blocks.data(fi))
        if off + ln > len(data):
            raise TfdumpCorruptionError("payload %s lies outside its frame's data block" % h.hex())
        if flt == _native.FILTER_SHUFFLE and es > 1:
            return _native.unshuffle(data[off:off + ln], es)
        if flt not in (_native.FILTER_NONE, _native.FILTER_SHUFFLE):
            raise TfdumpCorruptionError("payload %s uses unknown filter %d" % (h.hex(), flt))
        # a small payload is copied so that its value does not pin the whole block
        return bytes(data[off:off + ln]) if ln < _COPY_BELOW or frames is None else data[off:off + ln]

    def prefetch(self, writers: Sequence[int], hashes: Sequence[bytes], frames: dict) -> None:
        """Decompress the blocks holding the payloads ``hashes[i]`` of
        writers ``writers[i]`` into ``frames`` (see
        :meth:`BlockCache.prefetch`); unknown payloads are left for
        :meth:`payload` to report."""
        indexes = [self.index.blob_index(wi) for wi in range(len(self.index.writers))]
        fids: List[int] = []
        for wi, h in zip(writers, hashes):
            loc = indexes[wi].get(h)
            if loc is not None:
                fids.append(loc[0])
        self.blocks.prefetch(fids, frames)
