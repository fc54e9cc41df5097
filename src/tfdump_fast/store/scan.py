"""Walking a shard's frames (docs/FORMAT.md, "Frames"), as leveldb's
``log::Reader`` walks a log: what is wrong with a shard goes to one
:class:`DamageReporter`, in two kinds that stay apart.

* A **torn tail** -- the last frame is incomplete because its writer was
  killed or is still writing it -- is not an error: the scan stops there and
  a later scan picks up what the writer adds.
* **Corruption** -- a frame in the middle that fails its checksum, a record
  table that does not parse -- is an error (or, when the reader skips
  corruption, a problem noted while the scan resynchronises on the next
  frame header).

Opening reads only frame headers and record tables; data blocks are read
when a tensor's value is (:mod:`tfdump_fast.store.blocks`).
"""

from __future__ import annotations

import os
import struct
from typing import Dict, List, Optional, Tuple

import zstandard

from tfdump_fast import _native
from tfdump_fast.errors import TfdumpCorruptionError, TfdumpFormatError, TfdumpIOError, TfdumpTruncatedError
from tfdump_fast.store.blocks import decompress
from tfdump_fast.store.frames import chain_frame_crc

__all__ = ["DamageReporter", "Frame", "Shard", "ShardScanner", "check_closed_shard"]

_HDR = _native.FRAME_HEADER_SIZE
_MAGIC = struct.pack("<I", _native.FRAME_MAGIC)
_RESYNC_CHUNK = 1 << 20


class DamageReporter:
    """Where a scan reports what it finds wrong with a store.

    Parameters
    ----------
    session_root : str
        Named in the error raised for corruption.
    on_corruption : {"raise", "skip"}
        ``raise``: :meth:`corruption` raises; ``skip``: it notes the
        problem in :attr:`problems`.

    Attributes
    ----------
    problems : list of str
        Corruption skipped so far (``on_corruption="skip"``).
    """

    def __init__(self, session_root: str, on_corruption: str):
        self.session_root = session_root
        self.on_corruption = on_corruption
        self.problems: List[str] = []
        self.damaged: set = set()     # paths of shards with corruption reported
        self._torn: Dict[str, int] = {}

    def corruption(self, message: str, path: Optional[str] = None) -> None:
        """Report corruption (in shard ``path``, when it is one shard's):
        raise :class:`TfdumpCorruptionError`, or note it."""
        if path is not None:
            self.damaged.add(path)
        if self.on_corruption == "raise":
            raise TfdumpCorruptionError(
                message + ". Run `tfdump-fast verify %s` for a full report, or open with "
                "on_corruption='skip' to read what is intact." % self.session_root)
        if message not in self.problems:  # a refresh() finds the same damage again
            self.problems.append(message)

    def torn_tail(self, path: str, nbytes: int) -> None:
        """Report that the last ``nbytes`` of shard ``path`` are an incomplete
        frame (0: the shard now ends on a frame boundary)."""
        if nbytes:
            self._torn[path] = nbytes
        else:
            self._torn.pop(path, None)

    def torn_bytes(self, path: str) -> int:
        """Bytes of an incomplete frame last reported at the end of ``path``."""
        return self._torn.get(path, 0)


class Frame:
    """One frame found in a shard: its header fields and its parsed record
    table (``_native.parse_table``); the data block stays on disk."""

    __slots__ = ("shard", "offset", "kind", "codec", "level", "table_stored", "table_raw",
                 "data_offset", "data_stored", "data_raw", "data_crc", "n_entries", "table",
                 "data_checked", "header_crc")


class Shard:
    """One shard file and how far it has been scanned."""

    def __init__(self, path: str, writer_id: int, index: int):
        self.path = path
        self.writer_id = writer_id
        self.index = index          # shard index (_native.META_SHARD_INDEX: metadata)
        self.header: Optional[dict] = None
        self.size = 0
        self.scanned = 0            # offset up to which frames were read
        self.frames: List[int] = []


class ShardScanner:
    """Reads the frames of shards, from where the last scan of each stopped,
    reporting damage to ``reporter``."""

    def __init__(self, reporter: DamageReporter):
        self.reporter = reporter
        self._scratch: Optional[bytearray] = None

    def scan(self, si: int, shard: Shard, frames: List[Frame]) -> None:
        """Append the frames of ``shard`` (number ``si``) found past
        ``shard.scanned`` to ``frames``, noting their positions in
        ``shard.frames``."""
        try:
            fd = os.open(shard.path, os.O_RDONLY)
        except OSError as exc:
            raise TfdumpIOError(exc.errno, "cannot open %s: %s" % (shard.path, exc.strerror)) from None
        try:
            size = os.fstat(fd).st_size
            shard.size = size
            if shard.header is None:
                head = os.pread(fd, _native.FILE_HEADER_SIZE, 0)
                if len(head) < _native.FILE_HEADER_SIZE:
                    # a writer that died before its first write, or one starting right now
                    self.reporter.torn_tail(shard.path, len(head))
                    return
                try:
                    shard.header = _native.parse_file_header(head)
                except (TfdumpFormatError, TfdumpTruncatedError) as exc:
                    if isinstance(exc, TfdumpCorruptionError):
                        raise TfdumpCorruptionError("%s: %s" % (shard.path, exc)) from None
                    raise TfdumpFormatError("%s: %s" % (shard.path, exc)) from None
                if shard.header["writer_id"] != shard.writer_id:
                    self.reporter.corruption("%s: header names writer w%016x, the file name another" %
                                             (shard.path, shard.header["writer_id"]))
                shard.scanned = _native.FILE_HEADER_SIZE
            pos = shard.scanned
            self.reporter.torn_tail(shard.path, 0)
            while pos < size:
                frame, next_pos, problem = self._read_frame(fd, si, pos, size)
                if frame is None:
                    if problem is None:          # torn tail: stop, the writer may add to it
                        self.reporter.torn_tail(shard.path, size - pos)
                        break
                    self.reporter.corruption("%s: %s" % (shard.path, problem), shard.path)
                    if next_pos is None:         # no later frame found: nothing to salvage
                        break
                    pos = next_pos
                    shard.scanned = pos
                    continue
                shard.frames.append(len(frames))
                frames.append(frame)
                pos = next_pos
                shard.scanned = pos
        finally:
            os.close(fd)

    def _read_frame(self, fd, si, pos, size) -> Tuple[Optional[Frame], Optional[int], Optional[str]]:
        """Read the frame at ``pos``. Returns (frame, next_pos, problem):
        a frame; or (None, None, None) for a torn tail; or (None, resync
        position or None, message) for corruption."""
        head = os.pread(fd, _HDR, pos)
        if len(head) < _HDR:
            return None, None, None
        try:
            h = _native.parse_frame_header(head)
        except TfdumpCorruptionError:
            nxt = _resync(fd, pos + 1, size)
            if nxt is None:
                return None, None, None  # garbage at the very end: a torn tail
            return None, nxt, "frame header at offset %d is corrupt (checksum mismatch)" % pos
        end = pos + _HDR + h["table_stored_len"] + h["data_stored_len"]
        if end > size:
            # A torn tail -- unless complete frames follow: half a frame
            # written before a failed write, then others (older writers on a
            # full disk). That is corruption; go on at the next frame.
            nxt = _resync(fd, pos + 1, size)
            if nxt is None or not _complete_frame_at(fd, nxt, size):
                return None, None, None
            return None, nxt, "the frame at offset %d is incomplete, but complete frames follow it" % pos
        table = os.pread(fd, h["table_stored_len"], pos + _HDR)
        problem = None
        if _native.crc32c(table) != h["table_crc"]:
            problem = "record table of the frame at offset %d is corrupt (checksum mismatch)" % pos
        data_checked = False
        if problem is None and end == size:
            # The last frame of a file: a crash can leave it with the right
            # length but unwritten contents, so check its data now.
            data = os.pread(fd, h["data_stored_len"], pos + _HDR + h["table_stored_len"])
            if _native.crc32c(data) != h["data_crc"]:
                return None, None, None
            data_checked = True
        if problem is not None:
            if end == size:
                return None, None, None
            return None, self._next_frame(fd, pos, end, size), problem
        try:
            raw_table = self._decompress_table(table, h["codec"], h["table_raw_len"])
            parsed = _native.parse_table(raw_table, h["n_entries"])
        except TfdumpCorruptionError as exc:
            return None, self._next_frame(fd, pos, end, size), "frame at offset %d: %s" % (pos, exc)
        f = Frame()
        f.shard = si
        f.offset = pos
        f.kind = h["kind"]
        f.codec = h["codec"]
        f.level = h["level"]
        f.table_stored = h["table_stored_len"]
        f.table_raw = h["table_raw_len"]
        f.data_offset = pos + _HDR + h["table_stored_len"]
        f.data_stored = h["data_stored_len"]
        f.data_raw = h["data_raw_len"]
        f.data_crc = h["data_crc"]
        f.n_entries = h["n_entries"]
        f.table = parsed
        f.data_checked = data_checked
        f.header_crc = struct.unpack_from("<I", head, _HDR - 4)[0]
        return f, end, None

    @staticmethod
    def _next_frame(fd, pos, end, size) -> Optional[int]:
        """Where to go on after the damaged frame at ``pos`` that its header
        says ends at ``end``: there if a frame header follows, else (half a
        frame written, then others: the lengths do not lead to the next
        frame) the next valid frame header after ``pos``."""
        if end == size:
            return None
        try:
            _native.parse_frame_header(os.pread(fd, _HDR, end))
            return end
        except (TfdumpCorruptionError, TfdumpTruncatedError):
            return _resync(fd, pos + 1, size)

    def _decompress_table(self, stored, codec, raw_len):
        """Decompress a record table into a scratch buffer reused across
        frames (parse_table copies what it keeps; fresh multi-MB buffers cost
        page faults)."""
        if codec != _native.CODEC_ZSTD or raw_len == 0:
            return decompress(stored, codec, raw_len)
        scratch = self._scratch
        if scratch is None or len(scratch) < raw_len:
            scratch = self._scratch = bytearray(max(raw_len, 1 << 20))
        view = memoryview(scratch)
        try:
            with zstandard.ZstdDecompressor().stream_reader(stored) as src:
                n = 0
                while n < raw_len:
                    got = src.readinto(view[n:raw_len])
                    if not got:
                        break
                    n += got
                extra = src.read(1)
        except zstandard.ZstdError as exc:
            raise TfdumpCorruptionError("zstd block does not decompress: %s" % exc) from None
        if n != raw_len or extra:
            raise TfdumpCorruptionError("zstd block does not decompress to the %d bytes its header says"
                                        % raw_len)
        return view[:raw_len]


def _complete_frame_at(fd, pos, size) -> bool:
    """True if a frame with a valid header that fits the file starts at ``pos``."""
    try:
        h = _native.parse_frame_header(os.pread(fd, _HDR, pos))
    except (TfdumpCorruptionError, TfdumpTruncatedError):
        return False
    return pos + _HDR + h["table_stored_len"] + h["data_stored_len"] <= size


def _resync(fd, pos, size) -> Optional[int]:
    """Offset of the next valid frame header after ``pos``, or None."""
    while pos < size:
        buf = os.pread(fd, _RESYNC_CHUNK + _HDR, pos)
        i = buf.find(_MAGIC)
        while i >= 0:
            if i + _HDR <= len(buf):
                try:
                    _native.parse_frame_header(buf[i:i + _HDR])
                    return pos + i
                except TfdumpCorruptionError:
                    pass
            i = buf.find(_MAGIC, i + 1)
        pos += _RESYNC_CHUNK
    return None


def check_closed_shard(shard: Optional[Shard], name: str, entry: dict, frames: List[Frame],
                       reporter: DamageReporter, *, metadata: bool) -> None:
    """Compare a shard with its entry in its writer's ``writer_close``
    trailer (docs/FORMAT.md): a cleanly closed shard ends exactly there, with
    exactly those frames, so whatever differs was damaged after the close --
    corruption, not a torn tail.

    Parameters
    ----------
    shard : Shard or None
        The shard as scanned (None: the file is missing).
    name : str
        Its file name, as the trailer names it.
    entry : dict
        The trailer entry: ``bytes``, ``frames``, ``frame_crc``, optional
        ``tail_lost``.
    frames : list of Frame
        The reader's frames (``shard.frames`` indexes it).
    metadata : bool
        The writer's metadata shard, which holds the ``writer_close`` frame
        itself after the ``frames`` the entry counts.
    """
    try:
        want_end, want_frames, want_crc = int(entry["bytes"]), int(entry["frames"]), int(entry["frame_crc"])
    except (KeyError, TypeError, ValueError):
        reporter.corruption("%s: the writer_close trailer entry %r is malformed" % (name, entry))
        return
    closed = "its writer closed it cleanly at %d bytes with %d frame(s)" % (want_end, want_frames)
    if shard is None:
        reporter.corruption("shard file %s is missing; %s" % (name, closed))
        return
    found = [frames[i] for i in shard.frames]
    crc = 0
    for f in found[:want_frames]:
        crc = chain_frame_crc(crc, f.header_crc)
    if shard.path in reporter.damaged:
        return  # the scan reported it already
    problem = None
    torn = reporter.torn_bytes(shard.path)
    if len(found) < want_frames + metadata:
        last = found[-1] if found else None
        where = last.data_offset + last.data_stored if last else _native.FILE_HEADER_SIZE
        problem = "%d of its frames cannot be read (from offset %d on%s)" % (
            want_frames + metadata - len(found), where,
            ", %d byte(s) do not form a complete frame" % torn if torn else "")
    elif crc != want_crc:
        problem = "its frames are not the ones written (a frame is duplicated, missing or out of order)"
    elif metadata and found[want_frames].offset != want_end:
        problem = "the writer_close frame is not at offset %d" % want_end
    elif not metadata and not entry.get("tail_lost") and shard.size != want_end:
        problem = "it is %d bytes long" % shard.size
    elif metadata and len(found) > want_frames + 1:
        problem = "%d frame(s) follow its writer_close event" % (len(found) - want_frames - 1)
    elif metadata and torn:
        problem = "%d byte(s) follow its writer_close event" % torn
    if problem is None:
        return
    if not entry.get("tail_lost"):
        reporter.torn_tail(shard.path, 0)  # not a torn tail: damage after a clean close
    reporter.corruption("%s: %s, but %s" % (shard.path, closed, problem), shard.path)
