# cython: language_level=3, boundscheck=False, wraparound=False
"""Thin Cython wrapper over csrc/format.h and csrc/engine.h.

Everything per record runs in C++ with the GIL released; Python calls in
here once per frame, per run, or per API call. No TensorFlow here: the
reader imports this module too.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t, int64_t, uintptr_t
from libc.string cimport memcpy
from libcpp cimport bool as cbool
from libcpp.memory cimport unique_ptr
from libcpp.string cimport string
from libcpp.utility cimport move
from libcpp.vector cimport vector

from tfdump_fast.engine cimport (
    Backpressure, Engine, EngineOptions, EngineStats, FlightChange, Frame, LateDrop, RunCounters,
    kDropReasonMuted,
    kBackgroundBatch, kBackgroundIdle, kBackgroundNice, kBackgroundNormal)
from tfdump_fast.engine_api cimport (
    TFDUMP_SUBMIT_BAD_RUN, TFDUMP_SUBMIT_DROPPED, TFDUMP_SUBMIT_OK, tfdump_tensor_in)
from tfdump_fast.format cimport (
    BlobEntry, Codec, Crc32c, DecodeFileHeader, DecodeFrameHeader, EncodeFileHeader,
    EncodeFrameHeader, FileHeader, Filter, FrameHeader, FrameKind, Hash128, HashBytes, KeyDefEntry,
    ParseTable, ParsedTable, Shuffle, TableWriter, TensorEntry, Unshuffle, kFileHeaderSize,
    TensorFlag, TensorStorage, kFormatVersion, kFrameHeaderSize, kFrameMagic, kMetaShardIndex, kTensorListMarker)
from tfdump_fast.status cimport (
    kBadArgument, kBadVersion, kClosed, kCorrupt, kDiskBudget, kInternal, kIO, kNoSpace, kOk, kPermission,
    kTruncated)

import numpy as np

from tfdump_fast import errors as _errors

FORMAT_VERSION = kFormatVersion
FILE_HEADER_SIZE = kFileHeaderSize
FRAME_HEADER_SIZE = kFrameHeaderSize
META_SHARD_INDEX = kMetaShardIndex
FRAME_MAGIC = kFrameMagic
TENSOR_LIST_MARKER = kTensorListMarker
STORAGE_BLOB = TensorStorage.kStorageBlob
STORAGE_INLINE = TensorStorage.kStorageInline
STORAGE_NONE = TensorStorage.kStorageNone
FILTER_NONE = Filter.kFilterNone
FILTER_SHUFFLE = Filter.kFilterShuffle
FRAME_KIND_DATA = FrameKind.kFrameData
FRAME_KIND_META = FrameKind.kFrameMeta
CODEC_RAW = Codec.kCodecRaw
CODEC_ZSTD = Codec.kCodecZstd
FLAG_UNINITIALIZED = TensorFlag.kFlagUninitialized
FLAG_STRING = TensorFlag.kFlagString
FLAG_VARIANT = TensorFlag.kFlagVariant
FLAG_RESOURCE = TensorFlag.kFlagResource
SUBMIT_OK = TFDUMP_SUBMIT_OK
SUBMIT_DROPPED = TFDUMP_SUBMIT_DROPPED
SUBMIT_BAD_RUN = TFDUMP_SUBMIT_BAD_RUN
STATUS_OK = kOk
STATUS_IO = kIO
STATUS_NO_SPACE = kNoSpace
STATUS_PERMISSION = kPermission
STATUS_CLOSED = kClosed
STATUS_BAD_ARGUMENT = kBadArgument
STATUS_DISK_BUDGET = kDiskBudget
STATUS_CORRUPT = kCorrupt
STATUS_TRUNCATED = kTruncated
STATUS_BAD_VERSION = kBadVersion
STATUS_INTERNAL = kInternal
# LateDrop reason of records an encoder left out on purpose (muted healthy summaries).
DROP_REASON_MUTED = kDropReasonMuted

# Column layouts of the parsed record table; they mirror the packed
# BlobEntry / TensorEntry structs of csrc/format.h (checked below).
BLOB_DTYPE = np.dtype([("hash", "S16"), ("raw_len", "<u8"), ("data_offset", "<u8"),
                       ("filter", "u1"), ("elem_size", "u1")])
TENSOR_DTYPE = np.dtype([("run_id", "<u4"), ("seq", "<u8"), ("wall_us", "<i8"), ("key_id", "<u4"),
                         ("dtype", "<i4"), ("flags", "<u2"), ("ndims", "u1"), ("dims_offset", "<u4"),
                         ("payload_hash", "S16"), ("payload_len", "<u8"), ("blobs_offset", "<u4"),
                         ("n_blobs", "<u4")])
assert BLOB_DTYPE.itemsize == sizeof(BlobEntry)
assert TENSOR_DTYPE.itemsize == sizeof(TensorEntry)


cdef int check_status(int code, str message) except -1:
    """The one place where a native status code becomes a Python exception.

    Every error this module raises comes through here, so each status maps to
    the class errors.py assigns it (as pyarrow's ``check_status``).
    """
    if code != kOk:
        _errors.raise_for_status(code, message)
    return 0


cdef inline bytes _hash_bytes(const Hash128& h):
    cdef char buf[16]
    memcpy(buf, &h.h1, 8)
    memcpy(buf + 8, &h.h2, 8)
    return PyBytes_FromStringAndSize(buf, 16)


cdef inline Hash128 _hash_from(bytes b) except *:
    cdef Hash128 h
    if len(b) != 16:
        check_status(kBadArgument, "a payload hash is 16 bytes, got %d" % len(b))
    memcpy(&h.h1, PyBytes_AS_STRING(b), 8)
    memcpy(&h.h2, PyBytes_AS_STRING(b) + 8, 8)
    return h


def crc32c(data, uint32_t crc=0):
    """CRC-32C of a bytes-like object (continuing from ``crc``)."""
    cdef const uint8_t[::1] view = memoryview(data).cast("B")
    cdef uint32_t out
    cdef size_t n = view.shape[0]
    if n == 0:
        return crc
    with nogil:
        out = Crc32c(&view[0], n, crc)
    return out


def hash128(data):
    """The 16-byte content hash the format uses for deduplication."""
    cdef const uint8_t[::1] view = memoryview(data).cast("B")
    cdef Hash128 h
    cdef size_t n = view.shape[0]
    if n == 0:
        h = HashBytes(NULL, 0)
    else:
        with nogil:
            h = HashBytes(&view[0], n)
    return _hash_bytes(h)


def shuffle(data, size_t elem_size):
    """Byte-shuffle ``data`` with ``elem_size`` lanes (the format's filter 1)."""
    cdef const uint8_t[::1] view = memoryview(data).cast("B")
    cdef size_t n = view.shape[0]
    out = PyBytes_FromStringAndSize(NULL, n)
    cdef uint8_t* dst = <uint8_t*>PyBytes_AS_STRING(out)
    if n:
        with nogil:
            Shuffle(&view[0], n, elem_size, dst)
    return out


def unshuffle(data, size_t elem_size):
    """Undo :func:`shuffle`."""
    cdef const uint8_t[::1] view = memoryview(data).cast("B")
    cdef size_t n = view.shape[0]
    out = PyBytes_FromStringAndSize(NULL, n)
    cdef uint8_t* dst = <uint8_t*>PyBytes_AS_STRING(out)
    if n:
        with nogil:
            Unshuffle(&view[0], n, elem_size, dst)
    return out


def encode_file_header(uint32_t shard_index, uint64_t writer_id, int64_t created_us, uint32_t pid):
    cdef FileHeader h
    h.format_version = kFormatVersion
    h.shard_index = shard_index
    h.writer_id = writer_id
    h.created_us = created_us
    h.pid = pid
    out = PyBytes_FromStringAndSize(NULL, kFileHeaderSize)
    EncodeFileHeader(h, <uint8_t*>PyBytes_AS_STRING(out))
    return out


def parse_file_header(data):
    """Decode a shard file header; raises TfdumpFormatError / TfdumpCorruptionError."""
    cdef bytes b = bytes(data)
    cdef FileHeader h
    cdef Py_ssize_t size = len(b)
    if size < <Py_ssize_t>kFileHeaderSize:
        check_status(kTruncated, "file is %d bytes long, shorter than a shard header (%d bytes)"
                     % (size, kFileHeaderSize))
    cdef int rc = DecodeFileHeader(<const uint8_t*>PyBytes_AS_STRING(b), &h)
    if rc == kBadVersion:
        check_status(rc, "shard written by format version %d, but this tfdump-fast reads up to version %d: "
                         "upgrade tfdump-fast to read it" % (h.format_version, kFormatVersion))
    elif rc != kOk:
        check_status(rc, "not a tfdump-fast shard file (bad magic or header checksum)")
    return {"format_version": h.format_version, "shard_index": h.shard_index,
            "writer_id": h.writer_id, "created_us": h.created_us, "pid": h.pid}


def encode_frame_header(int kind, int codec, int level, uint32_t table_stored_len, uint32_t table_raw_len,
                        uint64_t data_stored_len, uint64_t data_raw_len, uint32_t n_entries,
                        uint32_t table_crc, uint32_t data_crc):
    cdef FrameHeader h
    h.kind = kind
    h.codec = codec
    h.level = level
    h.table_stored_len = table_stored_len
    h.table_raw_len = table_raw_len
    h.data_stored_len = data_stored_len
    h.data_raw_len = data_raw_len
    h.n_entries = n_entries
    h.table_crc = table_crc
    h.data_crc = data_crc
    out = PyBytes_FromStringAndSize(NULL, kFrameHeaderSize)
    EncodeFrameHeader(h, <uint8_t*>PyBytes_AS_STRING(out))
    return out


def parse_frame_header(data):
    """Decode a frame header; raises TfdumpCorruptionError on a bad magic or checksum."""
    cdef bytes b = bytes(data)
    cdef FrameHeader h
    cdef Py_ssize_t size = len(b)
    if size < <Py_ssize_t>kFrameHeaderSize:
        check_status(kTruncated, "frame header cut short (%d of %d bytes)" % (size, kFrameHeaderSize))
    cdef int rc = DecodeFrameHeader(<const uint8_t*>PyBytes_AS_STRING(b), &h)
    if rc != kOk:
        check_status(rc, "bad frame header (magic or checksum mismatch)")
    return {"kind": h.kind, "codec": h.codec, "level": h.level,
            "table_stored_len": h.table_stored_len, "table_raw_len": h.table_raw_len,
            "data_stored_len": h.data_stored_len, "data_raw_len": h.data_raw_len,
            "n_entries": h.n_entries, "table_crc": h.table_crc, "data_crc": h.data_crc}


class ParsedTableResult:
    """A decoded record table in columnar form (see docs/FORMAT.md)."""

    __slots__ = ("key_defs", "blobs", "tensors", "dims", "blob_refs", "metas")


def parse_table(data, uint32_t n_entries):
    """Decode a raw (decompressed) record table of ``n_entries`` entries.

    Returns an object with ``key_defs`` (list of ``(key_id, output_slot,
    device, node, debug_op)``), ``blobs`` (numpy array of ``BLOB_DTYPE``),
    ``tensors`` (numpy array of ``TENSOR_DTYPE``), ``dims`` (int64),
    ``blob_refs`` (``S16``) and ``metas`` (list of ``(json, [hash])``).
    """
    cdef const uint8_t[::1] view = memoryview(data).cast("B")
    cdef size_t n = view.shape[0]
    cdef ParsedTable parsed
    cdef string error
    cdef int rc
    cdef const uint8_t* p = &view[0] if n else NULL
    with nogil:
        rc = ParseTable(p, n, n_entries, &parsed, &error)
    if rc != kOk:
        check_status(rc, "corrupt record table: " + error.decode("utf-8", "replace"))
    out = ParsedTableResult()
    out.key_defs = [(k.key_id, k.output_slot, k.device.decode("utf-8", "replace"),
                     k.node.decode("utf-8", "replace"), k.debug_op.decode("utf-8", "replace"))
                    for k in parsed.key_defs]
    out.blobs = _column(<const char*>parsed.blobs.data(), parsed.blobs.size(), BLOB_DTYPE)
    out.tensors = _column(<const char*>parsed.tensors.data(), parsed.tensors.size(), TENSOR_DTYPE)
    out.dims = _column(<const char*>parsed.dims.data(), parsed.dims.size(), np.dtype("<i8"))
    out.blob_refs = _column(<const char*>parsed.blob_refs.data(), parsed.blob_refs.size(), np.dtype("S16"))
    out.metas = [(m.json.decode("utf-8", "replace"), [_hash_bytes(h) for h in m.attachments])
                 for m in parsed.metas]
    return out


cdef object _column(const char* p, size_t count, object dtype):
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.frombuffer(PyBytes_FromStringAndSize(p, count * dtype.itemsize), dtype=dtype)


def encode_meta(str json_text, list store_payloads, list attachment_hashes):
    """Lay out a META frame: one META entry plus BLOB entries for new attachments.

    Returns ``(raw_table, raw_data, n_entries)``.
    """
    cdef TableWriter table
    cdef vector[Hash128] refs
    cdef bytearray data = bytearray()
    cdef Hash128 h
    for payload in store_payloads:
        payload = bytes(payload)
        h = _hash_from(hash128(payload))
        table.Blob(h, len(payload), len(data), 0, 0)
        data += payload
    for hb in attachment_hashes:
        refs.push_back(_hash_from(bytes(hb)))
    table.Meta(json_text.encode("utf-8"), refs.data(), <uint32_t>refs.size())
    raw_table = PyBytes_FromStringAndSize(<const char*>table.bytes().data(), table.bytes().size())
    return raw_table, bytes(data), table.n_entries()


cdef class TableBuilder:
    """Appends record-table entries with the engine's own encoder (format.h).

    For writers that choose every field themselves (the tfdbg importer):
    the entries are laid out by the same code as the capture engine's.
    """
    cdef TableWriter table

    def key_def(self, uint32_t key_id, int32_t output_slot, str device, str node, str debug_op):
        self.table.KeyDef(key_id, output_slot, device.encode("utf-8"), node.encode("utf-8"),
                          debug_op.encode("utf-8"))

    def blob(self, bytes hash, uint64_t raw_len, uint64_t data_offset, uint8_t filter, uint8_t elem_size):
        self.table.Blob(_hash_from(hash), raw_len, data_offset, filter, elem_size)

    def tensor(self, uint32_t run_id, uint64_t seq, int64_t wall_us, uint32_t key_id, int32_t dtype,
               uint16_t flags, dims, bytes payload_hash, uint64_t payload_len, blob_hashes):
        cdef vector[int64_t] cdims = [int(d) for d in dims]
        cdef vector[Hash128] refs
        if cdims.size() > 255:
            check_status(kBadArgument, "a tensor has at most 255 dimensions, got %d" % cdims.size())
        for hb in blob_hashes:
            refs.push_back(_hash_from(bytes(hb)))
        self.table.Tensor(run_id, seq, wall_us, key_id, dtype, flags, cdims.data(), <int>cdims.size(),
                          _hash_from(payload_hash), payload_len, refs.data(), <uint32_t>refs.size())

    @property
    def n_entries(self):
        return self.table.n_entries()

    def take(self):
        """The entries appended so far as bytes; the builder starts empty again."""
        out = PyBytes_FromStringAndSize(<const char*>self.table.bytes().data(), self.table.bytes().size())
        self.table.Clear()
        return out


cdef class NativeFrame:
    """A frame laid out by the engine, owned by one worker until committed."""
    cdef unique_ptr[Frame] frame

    @property
    def table(self):
        cdef Frame* f = self.frame.get()
        if f == NULL or f.table.bytes().size() == 0:
            return b""
        return <const uint8_t[:f.table.bytes().size()]>f.table.bytes().data()

    @property
    def data(self):
        cdef Frame* f = self.frame.get()
        if f == NULL or f.data.size() == 0:
            return b""
        return <const uint8_t[:f.data.size()]>f.data.data()

    @property
    def n_entries(self):
        return self.frame.get().table.n_entries() if self.frame.get() != NULL else 0

    @property
    def n_tensors(self):
        return self.frame.get().n_tensors if self.frame.get() != NULL else 0


# Stats name of each WorkerBackground (csrc/engine.h).
_WORKER_BACKGROUND_NAMES = {kBackgroundNormal: "normal", kBackgroundIdle: "idle", kBackgroundNice: "nice",
                            kBackgroundBatch: "batch"}


cdef class NativeEngine:
    """The capture engine (csrc/engine.h). Python owns it; the bridge borrows it."""
    cdef Engine* engine
    cdef readonly int workers

    def __cinit__(self, uint64_t queue_bytes, str policy, int workers, uint64_t frame_bytes, bint shuffle,
                  uint64_t zero_copy_threshold, bint discard, uint64_t dedup_max_entries,
                  bint defer_during_runs=True, uint32_t keep_last=0, uint64_t keep_bytes=512 << 20,
                  bint persist_on_nonfinite=True):
        cdef EngineOptions o
        o.queue_bytes = queue_bytes
        o.policy = Backpressure.kDrop if policy == "drop" else Backpressure.kBlock
        o.workers = workers
        o.frame_bytes = frame_bytes
        o.shuffle = shuffle
        o.zero_copy_threshold = zero_copy_threshold
        o.discard = discard
        o.dedup_max_entries = dedup_max_entries
        o.defer_during_runs = defer_during_runs
        o.keep_last = keep_last
        o.keep_bytes = keep_bytes
        o.persist_on_nonfinite = persist_on_nonfinite
        self.engine = new Engine(o)
        self.workers = workers

    def __dealloc__(self):
        if self.engine != NULL:
            with nogil:
                self.engine.Shutdown()
            del self.engine
            self.engine = NULL

    def api_address(self):
        """Address of the engine's ``tfdump_engine_api`` struct, for the TF bridge."""
        return <uintptr_t>self.engine.api()

    def intern_key(self, str device, str node, int32_t slot, str debug_op):
        cdef bytes d = device.encode("utf-8"), n = node.encode("utf-8"), op = debug_op.encode("utf-8")
        return self.engine.InternKey(d, len(d), n, len(n), slot, op, len(op))

    def begin_run(self, uint32_t run_id, bint hold=False):
        """Open a run; ``hold``: its full tensors stay in the flight recorder."""
        self.engine.BeginRun(run_id, hold)

    def end_run(self, uint32_t run_id, bint persist=False):
        """End a run; ``persist``: a held run is released (a trigger) with the ring before it."""
        cdef RunCounters c
        with nogil:
            c = self.engine.EndRun(run_id, persist)
        return {"tensors": c.tensors, "bytes": c.bytes,
                "dropped_tensors": c.dropped_tensors, "dropped_bytes": c.dropped_bytes}

    def persist(self):
        """Release every ended run of the flight recorder's ring; returns how many."""
        cdef size_t n
        with nogil:
            n = self.engine.Persist()
        return n

    def evict_all(self):
        """Let every ended run of the flight recorder's ring go unwritten."""
        with nogil:
            self.engine.EvictAll()

    def take_flight_changes(self):
        """``[(run_id, released, tensors, bytes, executing), ...]`` since the
        last call, in order: released (True: given to the writers) or evicted
        (False; then ``tensors`` / ``bytes`` are the held records let go);
        ``executing``: released before the run ended (the triggering run)."""
        cdef vector[FlightChange] changes = self.engine.TakeFlightChanges()
        return [(c.run_id, bool(c.released), c.tensors, c.bytes, bool(c.executing)) for c in changes]

    def nonfinite_of(self, uint32_t run_id):
        """``(key_id, seq)`` of the first inf/nan tensor found in a held run, or None."""
        cdef uint32_t key_id = 0
        cdef uint64_t seq = 0
        if not self.engine.NonfiniteOf(run_id, &key_id, &seq):
            return None
        return (key_id, seq)

    def key_name(self, uint32_t key_id):
        """``(device, node, output_slot, debug_op)`` of an interned key, or None."""
        cdef string device, node, debug_op
        cdef int32_t slot = 0
        if not self.engine.KeyName(key_id, &device, &node, &slot, &debug_op):
            return None
        return (device.decode("utf-8", "replace"), node.decode("utf-8", "replace"), slot,
                debug_op.decode("utf-8", "replace"))

    def run_progress(self, uint32_t run_id):
        """(accepted, committed) records of a run: committed ones were
        written or dropped after acceptance. None when the run's slot was
        reused (4096 runs later) and its counts are gone."""
        cdef uint64_t accepted = 0, committed = 0
        cdef cbool known
        with nogil:
            known = self.engine.RunProgress(run_id, &accepted, &committed)
        if not known:
            return None
        return (accepted, committed)

    def submit(self, uint32_t run_id, uint32_t key_id, int32_t dtype, uint32_t flags, shape, data,
               uint32_t elem_size, int64_t wall_us=0):
        """Copy ``data`` (bytes-like) into the engine as one tensor record."""
        cdef const uint8_t[::1] view = memoryview(data).cast("B")
        cdef vector[int64_t] dims
        cdef tfdump_tensor_in rec
        cdef int rc
        for d in shape:
            dims.push_back(d)
        rec.run_id = run_id
        rec.key_id = key_id
        rec.dtype = dtype
        rec.flags = flags
        rec.ndims = <int32_t>dims.size()
        rec.dims = dims.data()
        rec.elem_size = elem_size
        rec.data = &view[0] if view.shape[0] else NULL
        rec.size = view.shape[0]
        rec.encode = NULL
        rec.owner = NULL  # the engine copies before returning
        rec.release = NULL
        rec.charge_bytes = 0
        rec.wall_us = wall_us
        with nogil:
            rc = self.engine.Submit(rec)
        return rc

    def next_frame(self, int worker, int timeout_ms):
        """Wait up to ``timeout_ms`` for work. Returns ``(frame or None, finished)``."""
        cdef cbool finished = False
        cdef unique_ptr[Frame] f
        with nogil:
            f = self.engine.NextFrame(worker, timeout_ms, &finished)
        if f.get() == NULL:
            return None, bool(finished)
        frame = NativeFrame()
        frame.frame = move(f)
        return frame, False

    def commit_frame(self, NativeFrame frame, int status):
        with nogil:
            self.engine.CommitFrame(move(frame.frame), status)

    def kick(self):
        with nogil:
            self.engine.Kick()

    def wait_idle(self, int timeout_ms):
        cdef cbool ok
        with nogil:
            ok = self.engine.WaitIdle(timeout_ms)
        return bool(ok)

    def shutdown(self):
        with nogil:
            self.engine.Shutdown()

    def enter_worker(self, int worker, int background_nice, bint background_idle):
        """Called first by writer thread ``worker``, on that thread.

        Records the thread's kernel id and puts it in the background
        scheduling class (``SCHED_IDLE`` when ``background_idle``, at least
        nice ``background_nice``) when this process may undo that; the engine
        raises every writer to ``SCHED_OTHER`` while a producer waits for
        queue room, the queue is over 3/4 full, or a flush waits.
        """
        with nogil:
            self.engine.EnterWorker(worker, background_nice, background_idle)

    def leave_worker(self, int worker):
        """Called last by writer thread ``worker``: forget its kernel id."""
        with nogil:
            self.engine.LeaveWorker(worker)

    def set_error(self, int code):
        self.engine.SetError(code)

    @property
    def error(self):
        return self.engine.error()

    def stats(self):
        cdef EngineStats s = self.engine.Stats()
        return {"tensors_accepted": s.tensors_accepted, "bytes_accepted": s.bytes_accepted,
                "tensors_dropped": s.tensors_dropped, "bytes_dropped": s.bytes_dropped,
                "tensors_written": s.tensors_written, "payload_bytes_stored": s.payload_bytes_stored,
                "payload_bytes_deduped": s.payload_bytes_deduped, "frames": s.frames,
                "payloads_aliased": s.payloads_aliased,
                "queued_bytes": s.queued_bytes, "queue_high_water": s.queue_high_water,
                "records_outstanding": s.records_outstanding,
                "worker_boosts": s.worker_boosts, "workers_boosted": bool(s.workers_boosted),
                "producers_waiting": s.producers_waiting,
                "worker_background": _WORKER_BACKGROUND_NAMES.get(s.worker_background, "unset"),
                "held_bytes": s.held_bytes, "held_runs": s.held_runs,
                "held_runs_evicted": s.held_runs_evicted, "held_tensors_evicted": s.held_tensors_evicted,
                "held_runs_released": s.held_runs_released,
                "held_overflow_tensors": s.held_overflow_tensors,
                "nonfinite_triggers": s.nonfinite_triggers}

    def take_late_drops(self):
        cdef vector[LateDrop] drops = self.engine.TakeLateDrops()
        return [(d.run_id, d.tensors, d.bytes, d.reason) for d in drops]
