"""DumpWriter: the Python side of the capture engine.

The engine (``csrc/engine.cc``) accepts tensors from any thread and lays them
out as frames. This module owns what Python is good at and what happens once
per frame: the shard files, the worker threads (each with its own zstd
compressor; ``zstandard`` and ``os.writev`` release the GIL), the codec
back-off, the disk budget, run bookkeeping and the metadata shard.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import zstandard

from tfdump_fast import _native, dtypes, errors, flight, lifecycle
from tfdump_fast.store.payloads import encode_strings
from tfdump_fast.store import frames
from tfdump_fast.store.naming import shard_file_name, writer_name

__all__ = ["DumpWriter", "Run", "DEFAULT_DEVICE"]

log = logging.getLogger("tfdump_fast")

DEFAULT_DEVICE = "/job:localhost/replica:0/task:0/device:CPU:0"
_CODECS = ("zstd", "raw")
_POLICIES = ("block", "drop")
# Back-off ladder: when the queue stays above the high-water mark the workers
# step down to a cheaper setting, and step back up once it drains.
_FAST_ZSTD_LEVEL = -5
_HIGH_WATER = 0.5
_RAW_WATER = 0.8
_LOW_WATER = 0.25
# The ladder's last step (raw) is taken only where compression measurably
# gives little: when the fast level's data blocks shrank to at least this
# fraction of their size (raw then costs at most ~10% more bytes). Data that
# compresses well (post-ReLU activations, loop states: 0.1-0.2) stays
# compressed under load instead of silently growing 5-7x on disk.
_RAW_ONLY_ABOVE_RATIO = 0.9
# Data blocks that zstd shrinks by less than this are stored raw at any
# queue fill (conv weights and gradients: ~0.93 at level 1), the CPU is
# better spent elsewhere; every _PROBE_EVERY-th such frame is compressed
# anyway to notice when the data changes.
_INCOMPRESSIBLE_RATIO = 0.97
_PROBE_EVERY = 16
_MIN_MEASURED_BYTES = 64 << 10   # smaller data blocks say little about the ratio
_META_LEVEL = 3


@dataclass
class Run:
    """One logical run (one debugged ``Session.run``) of a :class:`DumpWriter`.

    Attributes
    ----------
    run_id : int
        Writer-local run number (1, 2, ...).
    run_name : str
        ``run_<epoch_us>_<counter>``, the name tfdbg would give the run.
    debug_urls : list of str
        The URLs to pass to ``debug_utils.watch_graph`` (empty when the run
        was begun with ``capture=False``).
    """

    run_id: int
    run_name: str
    wall_us: int
    debug_urls: List[str] = field(default_factory=list)
    slot: int = -1
    ended: bool = False
    writer: Any = field(default=None, repr=False, compare=False)
    counters: Dict[str, int] = field(default_factory=dict)
    # The writer that began the run (its writer_name): end_run and write
    # refuse another writer's run, also after the run ended.
    writer_name: str = field(default="", repr=False, compare=False)
    # Set under the writer's lock by the one end_run call that ends the run:
    # a training thread and the exit path may race to end it.
    end_claimed: bool = field(default=False, repr=False, compare=False)


# A run's tensors are written within durability_s of its end: the oldest
# unwritten ended run waits this fraction of the bound before the workers are
# made to write (so fast steps share one write-out); the rest is for the
# write-out itself, and for the one before it still running (a busy CPU).
_DURABILITY_BATCH_FRACTION = 0.25
# The flight recorder's default memory bound (DumpWriter keep_bytes).
_DEFAULT_KEEP_BYTES = 512 << 20


class DumpWriter:
    """Asynchronous, compressed, deduplicating writer of tensor dumps.

    Parameters
    ----------
    session_root : str or os.PathLike
        Directory of the dump. Created if missing. An existing file, or a
        non-empty directory without ``allow_existing=True``, is an error.
    queue_bytes : int, default 256 MiB
        Byte budget of accepted but not yet written tensors.
    policy : {"block", "drop"}, default "block"
        What a producer does when the queue is full: wait (lossless
        backpressure) or drop the tensor (counted per run, recorded).
    workers : int, default 2
        Writer threads; each writes its own shard file.
    codec : {"zstd", "raw"}, default "zstd"
        With zstd, a frame whose data measurably does not compress at its
        level (the running ratio >= 0.97, e.g. random-like weights) is stored
        raw; every 16th such frame is compressed to keep measuring.
    level : int, default 1
        zstd level (negative levels are faster).
    shuffle : bool, default True
        Byte-shuffle numeric payloads before compression.
    frame_bytes : int, default 2 MiB
        Small tensors are batched into frames of about this size.
    disk_limit_bytes : int, optional
        Stop writing tensors once this many bytes are on disk (like tfdbg's
        ``TFDBG_DISK_BYTES_LIMIT``); the run goes on, drops are recorded.
    allow_existing : bool, default False
        Append to a non-empty session root (several writers may share one).
    backoff : bool, default True
        Step down to cheaper compression while the queue stays above half
        full: zstd -5, then, above 80% full, raw, but only where the measured
        ratio says raw costs at most ~10% more bytes.
    sink : {"disk", "null"}, default "disk"
        ``"null"`` accepts and discards every tensor: the capture floor.
    zero_copy_threshold : int, default 64 KiB
        Tensors at least this large are kept by reference, smaller ones copied.
    flush_interval : float, default 0.1
        Longest time (s) a partial frame waits before it is written.
    defer_during_runs : bool, default True
        While a run is executing and the queue is under half full, the
        workers wait and write between runs, so a dumped step does not share
        the CPU with compression. Past half full, on :meth:`flush`, when a
        producer waits for room, or once three run starts in a row found work
        still waiting (back-to-back steps leave no gap to write in), they
        write regardless.
    worker_nice : int, default 19
        Scheduling niceness of the writer threads (Linux). The workers then
        use the CPU time TF leaves idle instead of competing with its
        executor threads; when the queue fills up, the producers wait and the
        workers get the CPU. 0 keeps the process's priority.
    worker_idle : bool, default True
        Also put the writer threads in Linux's ``SCHED_IDLE`` class: a TF
        thread that wakes up always preempts them at once (a nice-19 thread
        can still hold a core for a scheduler tick). Measured on the rnn loop,
        back to back steps: 1.26-1.29x the capture floor instead of
        1.29-1.32x. The same back-pressure applies: a full queue makes the
        producers wait, which frees the CPU for the workers.
    durability_s : float or None, default 2.0
        Every run that ended more than this many seconds ago has all its
        tensors written to the shard files (``os.write``, not ``fsync``: they
        survive the process being killed, not the machine losing power),
        without :meth:`flush`. Ended runs are written out together once the
        oldest of them is a quarter this old, so fast steps cost one write-out per
        interval rather than one per step. ``None`` leaves writing to the
        workers' own schedule (``defer_during_runs``, ``flush_interval``).
    handle_signals : bool, default True
        On SIGTERM and SIGINT, write queued tensors before the process dies
        (bounded), then run the handler installed before ours (see
        :mod:`tfdump_fast.lifecycle`). Installed by the first writer created
        in the main thread.
    keep_last : int, optional
        Turns on the flight recorder: the full tensors (``DebugIdentity``
        watches; other debug ops are written as usual) of the last
        ``keep_last`` ended runs, and of the runs executing, stay in memory
        and nothing of them is written unless a trigger fires (``persist_on``,
        or :meth:`persist`); then those runs and the triggering run are
        written, with a ``flight_recorder_trigger`` event. Runs of no trigger
        leave nothing in the store (not even their ``run_begin``). ``None``
        (default): every run is written. 0: only triggering runs.
    keep_bytes : int, default 512 MiB
        The flight recorder's memory bound: tensor bytes (plus ~100 B of
        bookkeeping each) held for the ring and the executing runs. The
        oldest ended runs are evicted to stay under it; a record that does
        not fit even then (the executing runs alone fill it) is dropped and
        counted (``held_overflow_tensors``, the run's ``dropped_tensors``).
        Copied small tensors share 1 MiB buffers, so up to 16 MiB more may
        stay allocated.
    persist_on : sequence of {"inf_nan", "error"}, default both
        Triggers of the flight recorder: ``"inf_nan"``, an inf or nan in a
        captured floating-point tensor (half, bfloat16, float, double,
        complex; found on TF's thread as the tensor arrives); ``"error"``, a
        run ended as failed (its ``Session.run`` raised).
    frame_sink : callable, optional
        Writes each data frame: called as ``frame_sink(fd, parts)`` from a
        writer thread, it must write the byte strings ``parts`` (frame
        header, table, data block) to the shard file descriptor ``fd`` in
        order, or raise ``OSError`` (reported like a failed write). Default
        :func:`tfdump_fast.store.frames.write_all`. For tests and benchmarks
        that need a slow or failing disk; the frame is already compressed
        and counted against ``disk_limit_bytes`` when it is called.
    """

    def __init__(
        self,
        session_root,
        *,
        queue_bytes: int = 256 << 20,
        policy: str = "block",
        workers: int = 2,
        codec: str = "zstd",
        level: int = 1,
        shuffle: bool = True,
        frame_bytes: int = 2 << 20,
        disk_limit_bytes: Optional[int] = None,
        allow_existing: bool = False,
        backoff: bool = True,
        sink: str = "disk",
        zero_copy_threshold: int = 64 << 10,
        flush_interval: float = 0.1,
        dedup_max_entries: int = 256 << 10,
        worker_nice: int = 19,
        worker_idle: bool = True,
        defer_during_runs: bool = True,
        frame_sink: Optional[Callable[[int, Sequence[bytes]], None]] = None,
        durability_s: Optional[float] = 2.0,
        handle_signals: bool = True,
        keep_last: Optional[int] = None,
        keep_bytes: int = _DEFAULT_KEEP_BYTES,
        persist_on: Sequence[str] = flight.PERSIST_ON,
    ):
        _validate_options(
            session_root=session_root, queue_bytes=queue_bytes, policy=policy, workers=workers,
            codec=codec, level=level, shuffle=shuffle, frame_bytes=frame_bytes,
            disk_limit_bytes=disk_limit_bytes, allow_existing=allow_existing, backoff=backoff,
            sink=sink, zero_copy_threshold=zero_copy_threshold, flush_interval=flush_interval,
            dedup_max_entries=dedup_max_entries, worker_nice=worker_nice, worker_idle=worker_idle,
            defer_during_runs=defer_during_runs)
        self._validate_lifecycle_options(durability_s)
        persist_on = _validate_flight_options(keep_last, keep_bytes, persist_on)
        self.session_root = os.fspath(session_root)
        self.options = {
            "queue_bytes": int(queue_bytes), "policy": policy, "workers": int(workers), "codec": codec,
            "level": int(level), "shuffle": bool(shuffle), "frame_bytes": int(frame_bytes),
            "disk_limit_bytes": disk_limit_bytes, "backoff": bool(backoff), "sink": sink,
            "zero_copy_threshold": int(zero_copy_threshold), "worker_nice": int(worker_nice),
            "worker_idle": bool(worker_idle), "defer_during_runs": bool(defer_during_runs),
        }
        if keep_last is not None:
            self.options.update(keep_last=int(keep_last), keep_bytes=int(keep_bytes),
                                persist_on=list(persist_on))
        if frame_sink is not None and not callable(frame_sink):
            raise errors.TfdumpUsageError(f"frame_sink={frame_sink!r} must be callable(fd, parts)")
        prepare_session_root(self.session_root, allow_existing)

        self.writer_id = secrets.randbits(64)
        self.writer_name = writer_name(self.writer_id)
        self._frame_sink = frame_sink if frame_sink is not None else frames.write_all
        self._closed = False
        # A forked child inherits this object but not its worker threads:
        # only the process that created the writer may close it.
        self.owner_pid = os.getpid()
        self._accepting_runs = True
        self._lock = threading.RLock()
        # end_run calls between claiming their run and writing its run_end:
        # close() waits for them, so no run_end follows writer_close.
        self._ends_in_progress = 0
        self._ends_done = threading.Condition(self._lock)
        self._meta_lock = threading.Lock()
        self._run_counter = 0
        self._open_runs: Dict[int, Run] = {}
        self._implicit_run: Optional[Run] = None
        self._error: Optional[errors.TfdumpError] = None
        self._disk_budget_hit = False
        self._bytes_written = 0
        self._bytes_lock = threading.Lock()
        self._frames_by_codec: Dict[str, int] = {}
        self._codec_state = "configured"
        self._codec_changes: List[Dict[str, Any]] = []
        self._codec_ratio = CodecRatios()
        self._frames_uncompressible = 0
        self._incompressible_seen = 0
        self._attachments_stored: set = set()
        self._flush_timeout_ms = max(1, int(flush_interval * 1000))

        self._engine = _native.NativeEngine(
            int(queue_bytes), policy, int(workers), int(frame_bytes), bool(shuffle),
            int(zero_copy_threshold), sink == "null", int(dedup_max_entries), bool(defer_during_runs),
            int(keep_last or 0), int(keep_bytes), "inf_nan" in persist_on)
        # Set by the writer's own exit paths: runs they end as failed are not
        # "error" triggers (the program did not see them raise).
        self._closing = False
        self._flight: Optional[flight.FlightRecorder] = None
        if keep_last is not None:
            self._flight = flight.FlightRecorder(self._engine, int(keep_last), persist_on,
                                                 self._write_meta, self._note_run_released,
                                                 self._note_run_ended)
        self._meta_compressor = zstandard.ZstdCompressor(level=_META_LEVEL)
        self._fds: List[int] = []
        self._shard_files: Dict[int, frames.ShardFile] = {}   # by fd
        self._root_gone = False
        self._unrecorded_error: Optional[Dict[str, Any]] = None
        created_us = time.time_ns() // 1000
        try:
            for k in range(workers):
                self._fds.append(self._open_shard(k, created_us))
            self._meta_fd = self._open_shard(_native.META_SHARD_INDEX, created_us)
        except OSError as exc:
            for fd in self._fds:
                os.close(fd)
            raise errors.TfdumpIOError(
                exc.errno, f"cannot create dump files in {self.session_root!r}: {exc.strerror}. "
                "Check that the directory is writable and the disk has space.") from exc

        self._write_meta({
            "event": "writer_open", "writer_id": self.writer_name, "pid": os.getpid(),
            "host": socket.gethostname(), "format_version": _native.FORMAT_VERSION,
            "options": self.options, "tfdump_version": _package_version(), "wall_us": created_us,
        })
        self._threads = [
            threading.Thread(target=self._worker_main, args=(k,), name=f"tfdump-writer-{k}", daemon=True)
            for k in range(workers)
        ]
        for t in self._threads:
            t.start()
        self._start_durability(durability_s)
        lifecycle.register_writer(self, bool(handle_signals))

    # ------------------------------------------------------------------ setup

    def _open_shard(self, shard_index: int, created_us: int) -> int:
        fd = frames.create_shard(self.session_root, self.writer_id, shard_index, created_us)
        self._shard_files[fd] = frames.ShardFile(fd, shard_file_name(self.writer_id, shard_index))
        self._add_written(_native.FILE_HEADER_SIZE)
        return fd

    # ------------------------------------------------------------- public API

    def begin_run(self, metadata: Optional[Dict[str, Any]] = None, capture: bool = True,
                  run_name: Optional[str] = None) -> Run:
        """Open a run.

        Parameters
        ----------
        metadata : dict, optional
            JSON-serialisable fields stored in the run's ``run_begin`` event
            (fetches, feed keys, global step, ...).
        capture : bool, default True
            Bind a TF bridge slot and return its URL in ``run.debug_urls``.
            ``False`` for runs fed only through :meth:`write`.
        run_name : str, optional
            Override the tfdbg-style ``run_<epoch_us>_<counter>`` name.

        Returns
        -------
        Run

        Raises
        ------
        TfdumpUsageError
            ``metadata`` is not a dict or names a field the writer sets
            itself (``event``, ``run_id``, ``run_name``, ``wall_us``);
            ``capture`` is not a bool; ``run_name`` is not a non-empty str.
        """
        metadata = _check_metadata(metadata, "begin_run", _RUN_BEGIN_FIELDS)
        if not _is_bool(capture):
            raise errors.TfdumpUsageError(f"begin_run(capture={capture!r}): capture must be True or False")
        if run_name is not None and (not isinstance(run_name, str) or not run_name or "/" in run_name):
            raise errors.TfdumpUsageError(
                f"begin_run(run_name={run_name!r}): a run name must be a non-empty str without '/' "
                "(or None for tfdbg's run_<epoch_us>_<counter>)")
        self._check_usable()
        self._check_accepting_runs()
        with self._lock:
            self._run_counter += 1
            run_id = self._run_counter
        wall_us = time.time_ns() // 1000
        run = Run(run_id=run_id, run_name=run_name or f"run_{wall_us}_{run_id - 1}", wall_us=wall_us,
                  writer_name=self.writer_name)
        # While a run is open it keeps its writer (and so the engine the TF
        # bridge points at) alive, even if the caller drops the writer.
        run.writer = self
        self._engine.begin_run(run_id, self._flight is not None)
        if capture:
            from tfdump_fast.bridge import get_bridge  # imports TensorFlow

            try:
                slot, url = get_bridge().acquire_slot(self._engine.api_address(), run_id)
            except BaseException:
                self._engine.end_run(run_id)
                raise
            run.slot, run.debug_urls = slot, [url]
        with self._lock:
            self._open_runs[run_id] = run
        event = {"event": "run_begin", "run_id": run_id, "run_name": run.run_name, "wall_us": wall_us}
        if metadata:
            event.update(_jsonable(metadata))
        if self._flight is not None:
            self._flight.begin(run_id, event)  # written only if the run is persisted
        else:
            self._write_meta(event)
        return run

    def end_run(self, run: Run, status: str = "ok", error: Optional[str] = None,
                metadata: Optional[Dict[str, Any]] = None, attachments: Optional[Sequence[bytes]] = None
                ) -> Dict[str, int]:
        """Close a run after its ``Session.run`` returned (or raised).

        Parameters
        ----------
        run : Run
        status : {"ok", "failed"}
        error : str, optional
            The error of a failed run.
        metadata : dict, optional
            More JSON fields for the ``run_end`` event (core metadata, ...).
        attachments : sequence of bytes, optional
            Binary blobs (e.g. serialized partition GraphDefs), stored once per
            writer however often they are given; their hex hashes are listed
            in the event as ``attachment_hashes``.

        Returns
        -------
        dict
            The run's counters: tensors, bytes, dropped_tensors, dropped_bytes.
        """
        self._check_own_run(run, "end_run")
        if status not in ("ok", "failed"):
            raise errors.TfdumpUsageError(f"status={status!r} must be 'ok' or 'failed'")
        metadata = _check_metadata(metadata, "end_run", _RUN_END_FIELDS)
        if attachments is not None:
            if isinstance(attachments, (bytes, bytearray, memoryview, str)) or not all(
                    isinstance(a, (bytes, bytearray, memoryview)) for a in attachments):
                raise errors.TfdumpUsageError(
                    "end_run(attachments=...) must be a sequence of bytes objects (e.g. serialized "
                    "partition GraphDefs), not a single value or non-bytes items")
        if not self._claim_end(run):
            raise errors.TfdumpUsageError(f"run {run.run_name} was already ended")
        try:
            return self._end_claimed_run(run, status, error, metadata, attachments)
        finally:
            with self._lock:
                self._ends_in_progress -= 1
                self._ends_done.notify_all()

    def _end_claimed_run(self, run: Run, status: str, error: Optional[str], metadata, attachments
                         ) -> Dict[str, int]:
        try:
            if run.slot >= 0:
                from tfdump_fast.bridge import get_bridge

                # Waits for callbacks still in flight on this slot, then frees it.
                get_bridge().release_slot(run.slot)
                run.slot = -1
        except BaseException:
            with self._lock:
                run.end_claimed = False  # not ended: a later end_run may try again
            raise
        persist = (self._flight is not None and status == "failed" and "error" in self._flight.persist_on
                   and not self._closing)
        counters = self._engine.end_run(run.run_id, persist)
        run.ended, run.counters, run.writer = True, counters, None
        with self._lock:
            self._open_runs.pop(run.run_id, None)
        event = {"event": "run_end", "run_id": run.run_id, "run_name": run.run_name,
                 "wall_us": time.time_ns() // 1000, "status": status, **counters}
        if error is not None:
            event["error"] = str(error)
        if metadata:
            event.update(_jsonable(metadata))
        hashes = [_native.hash128(bytes(a)) for a in attachments or ()]
        if hashes:
            event["attachment_hashes"] = [h.hex() for h in hashes]
        if self._flight is not None:
            # Written (with the runs before it and the trigger) only if the
            # run is persisted; its tensors reach the writers the same way.
            self._flight.end(run.run_id, run.run_name, event, attachments or (), hashes,
                             str(error) if status == "failed" else None)
        else:
            self._write_meta(event, attachments or (), hashes)
            self._note_run_ended(run.run_id)
        self._detect_root_gone()
        self._raise_pending_error()
        return counters

    def persist(self, reason: str = "manual") -> List[str]:
        """Write the flight recorder's ring now: the last ``keep_last`` ended runs.

        A trigger from the program (e.g. a loss spike it detected), recorded
        as a ``flight_recorder_trigger`` event with ``reason="manual"`` and
        ``message=reason``. Runs executing meanwhile stay held.

        Parameters
        ----------
        reason : str
            Why (stored in the event).

        Returns
        -------
        list of str
            The names of the runs written (oldest first); empty when the
            ring was empty.

        Raises
        ------
        TfdumpUsageError
            The writer was created without ``keep_last``, or ``reason`` is
            not a str.
        """
        if self._flight is None:
            raise errors.TfdumpUsageError(
                "persist() needs the flight recorder: create the writer (or hook) with keep_last=K")
        if not isinstance(reason, str):
            raise errors.TfdumpUsageError(f"persist(reason={reason!r}): reason must be a str")
        self._check_usable()
        run_ids = self._flight.persist(reason)
        names = self._flight.run_names(run_ids)
        self._raise_pending_error()
        return names

    def _claim_end(self, run: Run) -> bool:
        """Whether this call ends ``run`` (exactly one call does, whichever
        thread gets here first: a training thread or the exit path)."""
        with self._lock:
            if run.ended or run.end_claimed:
                return False
            run.end_claimed = True
            self._ends_in_progress += 1
            return True

    def _wait_for_ends(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) for end_run calls of other threads
        to write their run_end: close() must not write writer_close first."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._ends_in_progress > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("tfdump-fast: %d run(s) of %s were still being ended at close; their "
                                "run_end may be missing", self._ends_in_progress, self.session_root)
                    return
                self._ends_done.wait(left)

    def _end_if_open(self, run: Run, **kwargs) -> None:
        """end_run, unless another thread ended ``run`` first (exit paths)."""
        if run.ended or run.end_claimed:
            return
        try:
            self.end_run(run, **kwargs)
        except errors.TfdumpUsageError:
            if not (run.ended or run.end_claimed):
                raise  # not the race: a real usage error

    def write(self, array, node_name: str, output_slot: int = 0, debug_op: str = "DebugIdentity",
              device: str = DEFAULT_DEVICE, run: Optional[Run] = None, wall_us: int = 0) -> bool:
        """Write one tensor value from Python (tests, importers, non-TF producers).

        Parameters
        ----------
        array : array_like
            Numeric arrays are stored bit-exactly; ``bytes``/``str``/object
            arrays as strings.
        node_name, output_slot, debug_op, device :
            The watch key.
        run : Run, optional
            Defaults to an implicit run that :meth:`flush` and :meth:`close` end.
        wall_us : int, optional
            Arrival time (µs since the epoch); default now.

        Returns
        -------
        bool
            False when the tensor was dropped (``policy="drop"``, disk budget).
        """
        _check_watch_key(node_name, output_slot, debug_op, device)
        if not _is_int(wall_us) or not 0 <= wall_us <= _MAX_INT64:
            raise errors.TfdumpUsageError(
                f"write(wall_us={wall_us!r}): must be a non-negative integer (microseconds since the "
                "epoch; 0 for now)")
        if run is not None:
            self._check_own_run(run, "write")
        arr = _as_array(array)
        self._check_usable()
        if run is None:
            with self._lock:
                if self._implicit_run is None:
                    self._implicit_run = self.begin_run(capture=False)
                run = self._implicit_run
        if run.ended:
            raise errors.TfdumpUsageError(f"run {run.run_name} has ended; begin a new run to write to")
        tf_dtype = dtypes.from_numpy(arr.dtype)
        flags = 0
        if tf_dtype == dtypes.DT_STRING:
            flags = _native.FLAG_STRING
            payload = encode_strings(
                (v.encode("utf-8") if isinstance(v, str) else bytes(v)) for v in arr.reshape(-1).tolist())
            elem_size = 0
        else:
            payload = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False)
            elem_size = dtypes.shuffle_lane_bytes(tf_dtype)
        key_id = self._engine.intern_key(device, node_name, int(output_slot), debug_op)
        rc = self._engine.submit(run.run_id, key_id, tf_dtype, flags, arr.shape,
                                 payload if isinstance(payload, bytes) else payload.reshape(-1).view(np.uint8),
                                 elem_size, int(wall_us))
        if rc == _native.SUBMIT_BAD_RUN:
            raise errors.TfdumpUsageError(f"run {run.run_name} is not open in this writer")
        return rc == _native.SUBMIT_OK

    def record_event(self, name: str, **fields) -> None:
        """Record an event in the store (a META event of the metadata shard).

        For what happened to a dump that is neither a tensor nor a run: a
        limit reached, a part of TensorFlow's output that could not be had.
        The event is written at once (``os.write``: it survives kill -9) as
        ``{"event": name, "wall_us": <now>, **fields}``; readers list it in
        :meth:`DumpReader.events <tfdump_fast.reader.DumpReader.events>`.
        The names tfdump-fast itself records are documented in
        docs/FORMAT.md ("META events").

        Parameters
        ----------
        name : str
            The event type: lower-case letters, digits and ``_``, starting
            with a letter, at most 64 characters; not one of the writer's own
            events (``run_begin``, ``run_end``, ...).
        **fields
            JSON-serialisable values (str, int, finite float, bool, None,
            lists and dicts of them); not ``event``, ``wall_us`` or
            ``writer_id``.

        Raises
        ------
        TfdumpUsageError
            A bad or reserved name or field name.
        TfdumpTypeError
            A field value that JSON cannot hold.
        TfdumpClosedError, TfdumpIOError
            The writer is closed, or the metadata shard cannot be written.
        """
        if not isinstance(name, str) or not _EVENT_NAME.fullmatch(name):
            raise errors.TfdumpUsageError(
                f"record_event(name={name!r}): an event name is lower-case letters, digits and '_', "
                "starting with a letter, at most 64 characters (e.g. 'lr_schedule_changed')")
        if name in _WRITER_EVENTS:
            raise errors.TfdumpUsageError(
                f"record_event(name={name!r}): {name} is an event the writer records itself; choose "
                f"another name (the writer's own: {', '.join(sorted(_WRITER_EVENTS))})")
        clash = sorted(k for k in fields if k in _EVENT_FIELDS)
        if clash:
            raise errors.TfdumpUsageError(
                f"record_event({name!r}, ...) sets {', '.join(clash)}, which the writer or the reader "
                "sets itself; rename the field(s)")
        try:
            json.dumps(fields, allow_nan=False, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise errors.TfdumpTypeError(
                f"record_event({name!r}, ...): the fields must be JSON values (str, int, finite "
                f"float, bool, None, lists and str-keyed dicts of them): {exc}") from None
        self._check_usable()
        self._write_meta({"event": name, "wall_us": time.time_ns() // 1000, **fields})

    def engine_api_address(self) -> int:
        """Address of the engine's C API (package-internal: :func:`tfdump_fast.serve`
        binds the bridge's served capture to it; valid until :meth:`close`)."""
        self._check_usable()
        return self._engine.api_address()

    def flush(self, timeout: Optional[float] = None) -> None:
        """Block until every accepted tensor of finished runs is on disk.

        Raises the first worker error (disk full, permission lost) if any.
        """
        if timeout is not None and (not isinstance(timeout, (int, float, np.integer, np.floating))
                                    or _is_bool(timeout) or not timeout >= 0):
            raise errors.TfdumpUsageError(
                f"flush(timeout={timeout!r}): must be a non-negative number of seconds or None")
        self._check_open()
        with self._lock:
            implicit, self._implicit_run = self._implicit_run, None
        if implicit is not None:
            self.end_run(implicit)
        self._drain(timeout)
        self._record_late_drops()
        self._detect_root_gone()
        self._raise_pending_error()

    def close(self) -> None:
        """Flush, stop the workers, write the closing event and close the files."""
        if self._closed:
            return
        if not lifecycle.owned(self):
            return  # inherited across fork: the parent's writer, not ours to close
        # Write what is queued with the workers in the normal scheduling
        # class: on a busy CPU, idle-class workers would leave a kill -9
        # during close() with nothing written.
        self._write_out(None)
        self._stop_durability()
        self._closing = True
        first_error = None
        self._detect_root_gone()
        try:
            with self._lock:
                implicit, self._implicit_run = self._implicit_run, None
                open_runs = [r for r in self._open_runs.values() if r is not implicit]
            if implicit is not None:
                self._end_if_open(implicit)
            for run in open_runs:  # runs the caller never ended: keep them, marked
                self._end_if_open(run, status="failed", error="writer closed before the run ended")
        except errors.TfdumpError as exc:
            first_error = exc
        self._wait_for_ends(10.0)  # runs another thread is ending: their run_end comes first
        if self._flight is not None:
            try:
                self._flight.close()  # untriggered runs stay unwritten
            except errors.TfdumpError as exc:
                first_error = first_error or exc
        try:
            self._drain(None)
        finally:
            self._engine.shutdown()
            for t in self._threads:
                t.join(timeout=60)
            self._record_late_drops()
            try:
                if not self._detect_root_gone():
                    self._record_error()
                    self._write_meta(self._close_event())
            except errors.TfdumpError as exc:
                first_error = first_error or exc
            for fd in self._fds + [self._meta_fd]:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._closed = True
            lifecycle.unregister_writer(self)
        if first_error is not None:
            raise first_error
        self._raise_pending_error()

    def _close_event(self) -> Dict[str, Any]:
        """The ``writer_close`` event; with the trailer (``shards``: where each
        shard file ends) when no worker can still append to its shard."""
        event = {"event": "writer_close", "wall_us": time.time_ns() // 1000, "stats": self.stats()}
        if not any(t.is_alive() for t in self._threads):
            event["shards"] = frames.close_trailer(self._shard_files.values())
        return event

    def stats(self) -> Dict[str, Any]:
        """Counters of the engine and the writers.

        Returns
        -------
        dict
            ``tensors_accepted``, ``bytes_accepted``, ``tensors_written``,
            ``tensors_dropped``, ``bytes_dropped``, ``bytes_written`` (on disk),
            ``payload_bytes_stored`` / ``payload_bytes_deduped``,
            ``queue_high_water``, ``queued_bytes``, ``frames_by_codec``,
            ``codec_state``, ``codec_changes``, ``codec_ratios`` (measured
            compressed/raw data-block size per zstd level),
            ``frames_uncompressible`` (frames stored raw because their data
            measurably did not compress), ``payloads_aliased`` (records stored
            as a reference to an equal payload copied just before),
            ``disk_budget_exceeded``, ``durability_late`` (durability
            write-outs that passed ``durability_s``), ``error``; the flight
            recorder's ``held_bytes`` / ``held_runs`` (in memory now),
            ``held_runs_evicted`` / ``held_tensors_evicted`` (let go unwritten,
            as asked), ``held_runs_released`` (written by a trigger),
            ``held_overflow_tensors`` (dropped: past ``keep_bytes`` with the
            ring empty) and ``nonfinite_triggers``;
            after the session root was deleted, ``tensors_written`` is 0 and
            ``tensors_lost`` counts what was written there.
        """
        s = self._engine.stats()
        s.update({
            "bytes_written": self._bytes_written,
            "frames_by_codec": dict(self._frames_by_codec),
            "codec_state": self._codec_state,
            "codec_changes": len(self._codec_changes),
            "codec_ratios": self._codec_ratio.snapshot(),
            "frames_uncompressible": self._frames_uncompressible,
            "disk_budget_exceeded": self._disk_budget_hit,
            "durability_late": self._durability_late,
            "error": str(self._error) if self._error else None,
        })
        if self._root_gone:  # deleted with the session root: nothing is written any more
            s["tensors_lost"] = s["tensors_written"]
            s["tensors_written"] = 0
            s["bytes_written"] = 0
        return s

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "DumpWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------- durability and process lifecycle
    # See docs/DESIGN.md ("Durability and process lifecycle") and lifecycle.py.

    @staticmethod
    def _validate_lifecycle_options(durability_s) -> None:
        if durability_s is None:
            return
        if isinstance(durability_s, bool) or not isinstance(durability_s, (int, float)) or \
                not 0 < durability_s < float("inf"):
            raise errors.TfdumpUsageError(
                f"durability_s={durability_s!r} must be a positive number of seconds (every run that "
                "ended longer ago is written to disk), or None to leave it to the workers' schedule")

    def _start_durability(self, durability_s: Optional[float]) -> None:
        self._durability_s = durability_s
        self._durability_cv = threading.Condition(threading.Lock())
        self._oldest_unwritten_end: Optional[float] = None  # time.monotonic() of that run's end
        # Ids of ended runs whose accepted records may not all be settled yet
        # (written, or dropped after acceptance), oldest first.
        self._ended_unsettled: List[int] = []
        self._durability_stop = False
        self._durability_late = 0  # write-outs that passed the bound (logged once)
        self._durability_thread: Optional[threading.Thread] = None
        if durability_s is None or self.options["sink"] == "null":
            return
        self._durability_thread = threading.Thread(target=self._durability_main, name="tfdump-durability",
                                                   daemon=True)
        self._durability_thread.start()

    def _note_run_ended(self, run_id: int) -> None:
        # Called by end_run: the first run to end after a write-out starts
        # the clock of the next one.
        if self._durability_thread is None:
            return
        with self._durability_cv:
            self._ended_unsettled.append(run_id)
            if self._oldest_unwritten_end is None:
                self._oldest_unwritten_end = time.monotonic()
                self._durability_cv.notify()

    def _note_run_released(self, run_id: int) -> None:
        # A run the flight recorder released (a trigger): written out at
        # once, not a quarter of the bound later, so the trigger is on disk
        # within the write-out's time.
        if self._durability_thread is None:
            self._engine.kick()
            return
        with self._durability_cv:
            self._ended_unsettled.append(run_id)
            now = time.monotonic()
            due_now = now - self._durability_s * _DURABILITY_BATCH_FRACTION
            if self._oldest_unwritten_end is None or self._oldest_unwritten_end > due_now:
                self._oldest_unwritten_end = due_now
            self._durability_cv.notify()

    def _stop_durability(self) -> None:
        thread = getattr(self, "_durability_thread", None)
        if thread is None:
            return
        with self._durability_cv:
            self._durability_stop = True
            self._durability_cv.notify()
        if thread is not threading.current_thread():
            thread.join(timeout=5)
        self._durability_thread = None

    def _durability_main(self) -> None:
        batch_s = self._durability_s * _DURABILITY_BATCH_FRACTION
        cv = self._durability_cv
        while True:
            with cv:
                while not self._durability_stop and self._oldest_unwritten_end is None:
                    cv.wait()
                if self._durability_stop:
                    return
                oldest_end = self._oldest_unwritten_end
                due = oldest_end + batch_s
                while not self._durability_stop:
                    now = time.monotonic()
                    if now >= due:
                        break
                    cv.wait(due - now)
                if self._durability_stop:
                    return
                # Runs that end from now on wait for the next write-out.
                runs, self._ended_unsettled = self._ended_unsettled, []
                self._oldest_unwritten_end = None
            try:
                self._write_out_ended_runs(runs, oldest_end + self._durability_s)
            except Exception as exc:  # noqa: BLE001 - never let this thread die silently
                log.error("tfdump-fast: writing ended runs of %s failed: %s", self.session_root, exc)

    def _write_out_ended_runs(self, run_ids: List[int], due: float) -> bool:
        """Make the workers write until every accepted record of ``run_ids``
        (runs that ended before this write-out began) is settled: written, or
        dropped after acceptance. Exact: the engine counts the settled records
        of each run, so records of a run still executing cannot stand in for
        an ended run's. Past ``due`` (time.monotonic(): the oldest run's end
        plus ``durability_s``) the write-out goes on, counted once in
        ``stats()["durability_late"]`` and logged the first time. Returns
        whether the runs were settled (False: the writer stopped first).
        """
        pending = list(run_ids)

        def settled(run_id: int) -> bool:
            progress = self._engine.run_progress(run_id)
            # None: the run's engine slot was reused 4096 runs later (its
            # records were queued long before: nothing to wait for).
            return progress is None or progress[1] >= progress[0]

        def done() -> bool:
            pending[:] = [r for r in pending if not settled(r)]
            return not pending

        if done() or self._write_out(due, done):
            return True
        if not self._durability_stop and any(t.is_alive() for t in self._threads):
            self._durability_late += 1
            if self._durability_late == 1:
                log.warning("tfdump-fast: %d ended run(s) of %s were not written within durability_s=%s s "
                            "(the disk, the compressor or the CPU share of the writer threads is short of "
                            "the dumped bytes); writing them goes on", len(pending), self.session_root,
                            self._durability_s)
            return self._write_out(None, done)
        return False

    def _write_out(self, deadline: Optional[float], done: Optional[Callable[[], bool]] = None) -> bool:
        """Have the workers write what is queued, deferral aside, until the
        queue is empty (True), ``done()`` (True), ``deadline`` or the writer
        stops (False). While ``wait_idle`` waits, the engine raises workers of
        a background scheduling class to the normal one (a busy CPU cannot
        postpone the write-out) and lets them back down once the queue is
        written (docs/DESIGN.md, "Scheduling")."""
        while True:
            # wait_idle also suspends deferral while it waits.
            if self._engine.wait_idle(50):
                return True
            if done is not None and done():
                return True
            if self._durability_stop and done is not None:
                return False
            if not any(t.is_alive() for t in self._threads):
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def _check_accepting_runs(self) -> None:
        if not self._accepting_runs:
            raise errors.TfdumpClosedError(
                f"this DumpWriter ({self.session_root}) is closing because the process is exiting; "
                "no new runs are recorded")

    def stop_accepting_runs(self) -> None:
        """Refuse new runs from now on (package-internal: interpreter exit).

        Threads still training then run undebugged, so closing the writer
        cannot be kept going by new runs.
        """
        self._accepting_runs = False

    def flush_at_signal(self, timeout: float) -> bool:
        """Write the queued tensors within ``timeout`` s (package-internal:
        the SIGTERM/SIGINT handler). Takes no lock: the interrupted thread may
        hold any. Returns whether everything queued was written."""
        if self._closed or not lifecycle.owned(self):
            return True
        return self._write_out(time.monotonic() + timeout)

    def close_at_exit(self, timeout: float) -> None:
        """Close within ``timeout`` s (package-internal: interpreter exit, fatal signals).

        Runs still open (threads still training) are ended as failed; what
        ended before is written. If the queue does not drain in time, the
        writer is left as it is (its shards read as an unfinished session)
        rather than holding up the exit.
        """
        if self._closed or not lifecycle.owned(self):
            return
        deadline = time.monotonic() + timeout
        self._accepting_runs = False
        self._stop_durability()
        self._closing = True
        with self._lock:
            implicit, self._implicit_run = self._implicit_run, None
            open_runs = [r for r in self._open_runs.values() if r is not implicit]
        for run in ([implicit] if implicit is not None else []) + open_runs:
            try:
                if run is implicit:
                    self._end_if_open(run)
                else:
                    self._end_if_open(run, status="failed",
                                      error="the process exited while this run was executing")
            except errors.TfdumpError as exc:
                log.error("tfdump-fast: ending run %s of %s at exit failed: %s", run.run_name,
                          self.session_root, exc)
        # Runs a training thread is ending right now: their run_end first,
        # within the exit's time (close() would wait up to 10 s).
        self._wait_for_ends(max(0.0, deadline - time.monotonic()))
        if not self._write_out(deadline):
            left = self._engine.stats()["records_outstanding"]
            log.error("tfdump-fast: %d tensors of %s were not written before the process exited "
                      "(the writer could not keep up); the runs holding them read as incomplete",
                      left, self.session_root)
            return
        self.close()

    # --------------------------------------------------------------- internals

    def _check_own_run(self, run, method: str) -> None:
        if not isinstance(run, Run):
            raise errors.TfdumpUsageError(
                f"{method}(run={run!r}): pass the Run that this writer's begin_run() returned")
        if not (run.ended or run.end_claimed) and self._open_runs.get(run.run_id) is not run:
            raise errors.TfdumpUsageError(
                f"{method}: run {run.run_name} does not belong to this writer ({self.session_root}); "
                "pass it to the DumpWriter whose begin_run() returned it")
        if run.ended and run.writer_name != self.writer_name:
            raise errors.TfdumpUsageError(
                f"{method}: run {run.run_name} belongs to another writer ({run.writer_name}); "
                "pass it to the DumpWriter whose begin_run() returned it")

    def _check_open(self) -> None:
        if self._closed:
            raise errors.TfdumpClosedError(f"this DumpWriter ({self.session_root}) is closed")

    def _check_usable(self) -> None:
        self._check_open()
        self._detect_root_gone(all_shards=False)
        self._raise_pending_error()

    def _detect_root_gone(self, all_shards: bool = True) -> bool:
        """True (and the writer's error set, logged once) when the shard files
        were deleted under the writer -- the session root ``rm -rf``'d: what
        was written there is gone, and what follows would be written to
        unlinked files. One ``fstat`` per shard (the metadata shard alone
        when ``all_shards`` is false: deleting the root removes it too)."""
        if self._root_gone:
            return True
        fds = list(self._shard_files) if all_shards else [self._meta_fd]
        try:
            gone = any(os.fstat(fd).st_nlink == 0 for fd in fds)
        except OSError:
            gone = True
        if not gone:
            return False
        message = (f"the dump files in {self.session_root!r} were deleted while the writer was running "
                   "(was the session root removed?): the tensors written there are lost and later ones "
                   "are dropped. Keep the session root until close(); close this writer and open a new one "
                   "to dump again")
        with self._lock:
            self._root_gone = True
            self._error = errors.TfdumpIOError(errno.ENOENT, message)
        log.error("tfdump-fast: %s", message)
        self._engine.set_error(errors.STATUS_IO)
        return True

    def _raise_pending_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _drain(self, timeout: Optional[float]) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._engine.wait_idle(200):
            if not any(t.is_alive() for t in self._threads):
                raise errors.TfdumpError("tfdump-fast writer threads stopped with tensors still queued")
            if deadline is not None and time.monotonic() > deadline:
                raise errors.TfdumpError(f"flush timed out after {timeout} s with tensors still queued")

    def _add_written(self, n: int) -> None:
        with self._bytes_lock:
            self._bytes_written += n

    def _record_late_drops(self) -> None:
        for run_id, tensors, nbytes, reason in self._engine.take_late_drops():
            self._write_meta({"event": "drops", "run_id": run_id, "dropped_tensors": tensors,
                              "dropped_bytes": nbytes, "reason": _REASONS.get(reason, "error")})

    def _set_error(self, code: int, message: str) -> None:
        if code == errors.STATUS_DISK_BUDGET:
            return
        with self._lock:
            first = self._error is None
            if first:
                self._error = errors.error_for_status(code, message)
                log.error("tfdump-fast: %s", message)
        self._engine.set_error(code)
        if first:
            self._unrecorded_error = {"event": "writer_error", "code": code, "message": message}
            self._record_error()

    def _record_error(self) -> None:
        """Write the writer_error event if it is not written yet: the
        metadata shard may be on the same full disk, so close() tries again
        (space may have been freed since)."""
        event, self._unrecorded_error = self._unrecorded_error, None
        if event is None:
            return
        try:
            self._write_meta(event, fail_quietly=True)
        except errors.TfdumpError:
            self._unrecorded_error = event

    def _write_meta(self, event: Dict[str, Any], store: Sequence[bytes] = (),
                    hashes: Sequence[bytes] = (), fail_quietly: bool = False) -> None:
        """Append one META frame. A failed write is a writer error (recorded,
        and raised here); ``fail_quietly``: only raised (the error event itself)."""
        try:
            self._append_meta(event, store, hashes)
        except OSError as exc:
            code = errors.status_for_oserror(exc)
            message = f"writing dump metadata to {self.session_root!r} failed: {exc.strerror}"
            if not fail_quietly:
                self._set_error(code, message + f" ({_REASONS.get(code, 'error')}); later tensors are "
                                "dropped and counted")
            raise errors.error_for_status(code, message) from exc

    def _append_meta(self, event, store, hashes) -> None:
        with self._meta_lock:
            new = []
            for payload, h in zip(store, hashes):
                if h not in self._attachments_stored:
                    new.append(payload)
            raw_table, raw_data, n = _native.encode_meta(json.dumps(event, sort_keys=True), new, list(hashes))
            parts = frames.encode_frame(_native.FRAME_KIND_META, raw_table, raw_data, n,
                                        self._meta_compressor, _META_LEVEL)
            # cut back to the last good frame on failure: a later event must
            # not follow half a frame (raises OSError)
            self._shard_files[self._meta_fd].append(parts)
            self._attachments_stored.update(_native.hash128(p) for p in new)
            self._add_written(sum(len(p) for p in parts))

    def _choose_codec(self):
        """(codec, level) for the next frame: the back-off ladder, bounded by
        the compression ratios measured on earlier frames (``CodecRatios``)."""
        configured = (self.options["codec"], self.options["level"] if self.options["codec"] == "zstd" else 0)
        if self.options["codec"] == "raw":
            return configured
        if not self.options["backoff"]:
            return self._skip_if_incompressible(configured)
        fill = self._engine.stats()["queued_bytes"] / self.options["queue_bytes"]
        state = self._codec_state
        fast_level = min(_FAST_ZSTD_LEVEL, configured[1])
        if fill >= _RAW_WATER and self._codec_ratio.raw_costs_little(fast_level, configured[1]):
            new_state = "raw"
        elif fill >= _HIGH_WATER and state == "configured":
            new_state = "fast"
        elif fill >= _HIGH_WATER and state == "raw" and not self._codec_ratio.raw_costs_little(
                fast_level, configured[1]):
            new_state = "fast"  # the data changed: it compresses again
        elif fill < _LOW_WATER:
            new_state = "configured"
        else:
            new_state = state
        if new_state != state:
            with self._lock:
                if self._codec_state == state:
                    self._codec_state = new_state
                    change = {"event": "codec_change", "state": new_state, "queue_fill": round(fill, 3),
                              "wall_us": time.time_ns() // 1000}
                    self._codec_changes.append(change)
                    try:
                        self._write_meta(change)
                    except errors.TfdumpError:
                        pass
        state = self._codec_state
        if state == "raw":
            return ("raw", 0)
        if state == "fast":
            return self._skip_if_incompressible(("zstd", fast_level))
        return self._skip_if_incompressible(configured)

    def _skip_if_incompressible(self, choice):
        """``choice``, or raw when zstd at its level measurably does not
        shrink the data (every ``_PROBE_EVERY``-th such frame is compressed
        anyway, to keep the measurement current)."""
        codec, level = choice
        if codec != "zstd" or not self._codec_ratio.incompressible(level):
            return choice
        with self._lock:
            self._incompressible_seen += 1
            probe = self._incompressible_seen % _PROBE_EVERY == 0
            if not probe:
                self._frames_uncompressible += 1
        return choice if probe else ("raw", 0)

    def _worker_main(self, k: int) -> None:
        # The engine owns the thread's scheduling class: it raises it from
        # native code (a producer waiting for room), so it records the id.
        engine = self._engine
        engine.enter_worker(k, self.options["worker_nice"], self.options["worker_idle"])
        try:
            fd = self._fds[k]
            compressors: Dict[int, zstandard.ZstdCompressor] = {}
            while True:
                try:
                    frame, finished = engine.next_frame(k, self._flush_timeout_ms)
                except BaseException as exc:  # noqa: BLE001 - a worker must never die silently
                    self._set_error(errors.STATUS_INTERNAL, f"writer thread {k} failed: {exc!r}")
                    return
                if frame is None:
                    if finished:
                        return
                    continue
                try:
                    self._write_frame(fd, frame, compressors)
                except BaseException as exc:  # noqa: BLE001
                    self._set_error(errors.STATUS_INTERNAL, f"writer thread {k} failed: {exc!r}")
                    engine.commit_frame(frame, errors.STATUS_INTERNAL)
        finally:
            engine.leave_worker(k)

    def _write_frame(self, fd: int, frame, compressors) -> None:
        engine = self._engine
        if engine.error != errors.STATUS_OK:
            # After a fatal error or the disk budget nothing more is written;
            # the frame's tensors are counted as dropped.
            engine.commit_frame(frame, engine.error)
            return
        codec, level = self._choose_codec()
        comp = None
        if codec == "zstd":
            comp = compressors.get(level)
            if comp is None:
                comp = compressors[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
        parts = frames.encode_frame(_native.FRAME_KIND_DATA, frame.table, frame.data, frame.n_entries, comp,
                                    level, compress_empty_data=True)
        if comp is not None:
            self._codec_ratio.record(level, len(frame.data), len(parts[2]))
        total = sum(len(p) for p in parts)
        limit = self.options["disk_limit_bytes"]
        if limit is not None:
            # Reserve the bytes before writing, so two workers cannot both
            # squeeze in under the budget.
            with self._bytes_lock:
                fits = self._bytes_written + total <= limit
                if fits:
                    self._bytes_written += total
            if not fits:
                self._hit_disk_budget(limit)
                engine.commit_frame(frame, errors.STATUS_DISK_BUDGET)
                return
        try:
            # cut back to the last good frame on failure (see ShardFile)
            self._shard_files[fd].append(parts, self._frame_sink)
        except OSError as exc:
            code = errors.status_for_oserror(exc)
            self._set_error(code, f"writing to {self.session_root!r} failed: {exc.strerror} "
                                  f"({_REASONS.get(code, 'error')}); later tensors are dropped and counted")
            engine.commit_frame(frame, code)
            return
        if limit is None:
            self._add_written(total)
        key = codec if codec == "raw" else f"zstd:{level}"
        self._frames_by_codec[key] = self._frames_by_codec.get(key, 0) + 1
        engine.commit_frame(frame, errors.STATUS_OK)

    def _hit_disk_budget(self, limit: int) -> None:
        with self._lock:
            if self._disk_budget_hit:
                return
            self._disk_budget_hit = True
        # Later tensors are dropped at once instead of queued, compressed and discarded.
        self._engine.set_error(errors.STATUS_DISK_BUDGET)
        message = (f"tfdump-fast: disk budget of {limit} bytes reached in {self.session_root}; "
                   "later tensors are not written (counted as drops). Raise disk_limit_bytes to keep more.")
        log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        try:
            self._write_meta({"event": "disk_budget_exceeded", "limit_bytes": limit,
                              "written_bytes": self._bytes_written, "wall_us": time.time_ns() // 1000})
        except errors.TfdumpError:
            pass


# Event types the writer writes itself (record_event refuses them), and the
# fields it or the reader set on a recorded event.
_WRITER_EVENTS = frozenset((flight.TRIGGER_EVENT, "writer_open", "run_begin", "run_end", "drops", "codec_change",
                            "disk_budget_exceeded", "writer_error", "writer_close"))
_EVENT_FIELDS = ("event", "wall_us", "writer_id")
_EVENT_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


class CodecRatios:
    """What zstd gives on this writer's data: per level, an exponentially
    weighted mean of compressed / raw data-block size over recent frames.

    Constants tuned on one machine and one model do not fit all data (loop
    states and post-ReLU activations shrink to 0.1-0.2, conv weights and
    gradients barely at all); the writer decides from these measurements
    whether compressing pays and whether falling back to raw under load costs
    little. Updated by the workers (a benign race: a lost update only delays
    the mean by one frame).
    """

    _WEIGHT = 0.25

    def __init__(self):
        self._ratio: Dict[int, float] = {}

    def record(self, level: int, raw_len: int, compressed_len: int) -> None:
        if raw_len < _MIN_MEASURED_BYTES:
            return
        r = compressed_len / raw_len
        old = self._ratio.get(level)
        self._ratio[level] = r if old is None else old + self._WEIGHT * (r - old)

    def ratio(self, level: int) -> Optional[float]:
        return self._ratio.get(level)

    def incompressible(self, level: int) -> bool:
        r = self._ratio.get(level)
        return r is not None and r >= _INCOMPRESSIBLE_RATIO

    def raw_costs_little(self, fast_level: int, level: int) -> bool:
        """Whether raw frames would cost at most ~10% more bytes than
        compressed ones: judged from the fast level, else the configured one;
        True while nothing is measured (the ladder as configured)."""
        r = self._ratio.get(fast_level, self._ratio.get(level))
        return r is None or r >= _RAW_ONLY_ABOVE_RATIO

    def snapshot(self) -> Dict[str, float]:
        return {f"zstd:{lvl}": round(r, 4) for lvl, r in sorted(self._ratio.items())}


# Fields of run_begin / run_end events that the writer sets itself; metadata
# may not override them (a reader would attribute the run's tensors wrongly).
_RUN_BEGIN_FIELDS = ("event", "run_id", "run_name", "wall_us")
_RUN_END_FIELDS = ("event", "run_id", "run_name", "wall_us", "status", "error", "tensors", "bytes",
                   "dropped_tensors", "dropped_bytes", "attachment_hashes")


def _check_metadata(metadata, method: str, reserved: Sequence[str]) -> Optional[Dict[str, Any]]:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise errors.TfdumpUsageError(
            f"{method}(metadata={metadata!r}): metadata must be a dict of JSON fields or None")
    clash = sorted(str(k) for k in metadata if k in reserved)
    if clash:
        raise errors.TfdumpUsageError(
            f"{method}(metadata=...) sets {', '.join(clash)}, which the writer records itself; "
            f"rename the field(s) (the writer's own fields: {', '.join(reserved)})")
    return metadata


def _check_watch_key(node_name, output_slot, debug_op, device) -> None:
    for name, value in (("node_name", node_name), ("debug_op", debug_op), ("device", device)):
        if not isinstance(value, str) or not value:
            raise errors.TfdumpUsageError(
                f"write({name}={value!r}): {name} must be a non-empty str")
    if not _is_int(output_slot) or not 0 <= output_slot < (1 << 31):
        raise errors.TfdumpUsageError(
            f"write(output_slot={output_slot!r}): the output slot must be a non-negative integer "
            "(the :N of a tensor name)")


def _as_array(array) -> np.ndarray:
    """``array`` as a numpy array of a dtype the dump can store, or TfdumpUsageError."""
    try:
        arr = np.asarray(array)
    except (TypeError, ValueError) as exc:
        raise errors.TfdumpTypeError(f"write(): the value cannot be made a numpy array: {exc}") from None
    if arr.dtype == object:
        if not all(isinstance(v, (bytes, str)) for v in arr.reshape(-1).tolist()):
            raise errors.TfdumpTypeError(
                "write(): an object array is stored as strings, so every element must be bytes or str")
        return arr
    try:
        dtypes.from_numpy(arr.dtype)
    except (TypeError, ValueError, KeyError):
        raise errors.TfdumpTypeError(
            f"write(): numpy dtype {arr.dtype} has no TensorFlow equivalent; convert the value to "
            "one that has (e.g. float64) first") from None
    return arr


# Bounds of the integer options: beyond them a value is a mistake, and the
# native engine (64-bit fields) would raise OverflowError on it.
_MAX_QUEUE_BYTES = 1 << 50
_MAX_KEEP_LAST = 1024  # well under the engine's ring of 4096 run states
_MAX_DISK_LIMIT = 1 << 62
_MAX_DEDUP_ENTRIES = 1 << 31
_MAX_INT64 = (1 << 63) - 1
_MAX_FLUSH_INTERVAL = 3600.0


def _is_int(value) -> bool:
    """An integer that is not a bool (``True`` is an int to Python, never meant as one here)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_))


def _validate_options(*, session_root, queue_bytes, policy, workers, codec, level, shuffle,
                      frame_bytes, disk_limit_bytes, allow_existing, backoff, sink,
                      zero_copy_threshold, flush_interval, dedup_max_entries, worker_nice,
                      worker_idle, defer_during_runs) -> None:
    """Check every :class:`DumpWriter` option; raise TfdumpUsageError naming the option and the fix."""
    def bad(msg):
        raise errors.TfdumpUsageError(msg)

    def check_int(name, value, low, high, what):
        if not _is_int(value) or not low <= value <= high:
            bad(f"{name}={value!r} must be {what}")

    check_session_root(session_root, "session_root")
    if policy not in _POLICIES:
        bad(f"policy={policy!r} is not one of {_POLICIES}: 'block' waits for room (lossless), "
            "'drop' drops and counts tensors when the queue is full")
    if codec not in _CODECS:
        bad(f"codec={codec!r} is not one of {_CODECS}")
    if sink not in ("disk", "null"):
        bad(f"sink={sink!r} must be 'disk' or 'null' (discard everything: the capture floor)")
    check_int("workers", workers, 1, 64, "an integer between 1 and 64")
    check_int("queue_bytes", queue_bytes, 1 << 20, _MAX_QUEUE_BYTES,
              "an integer of at least 1 MiB (1048576) and at most 1 PiB")
    check_int("frame_bytes", frame_bytes, 4096, 256 << 20, "an integer between 4 KiB and 256 MiB")
    if frame_bytes > queue_bytes:
        bad(f"frame_bytes ({frame_bytes}) must not exceed queue_bytes ({queue_bytes})")
    if codec == "zstd":
        check_int("level", level, -7, 22, "a zstd level: an integer from -7 to 22")
    elif not _is_int(level):
        bad(f"level={level!r} must be an integer")
    if disk_limit_bytes is not None:
        check_int("disk_limit_bytes", disk_limit_bytes, 1, _MAX_DISK_LIMIT,
                  "a positive integer (bytes on disk) or None for no limit")
    check_int("zero_copy_threshold", zero_copy_threshold, 0, _MAX_INT64, "a non-negative integer (bytes)")
    check_int("dedup_max_entries", dedup_max_entries, 0, _MAX_DEDUP_ENTRIES,
              f"an integer from 0 to {_MAX_DEDUP_ENTRIES} (entries of the deduplication index)")
    check_int("worker_nice", worker_nice, 0, 19, "an integer from 0 to 19")
    if (not isinstance(flush_interval, (int, float, np.integer, np.floating)) or _is_bool(flush_interval)
            or not 0 < flush_interval <= _MAX_FLUSH_INTERVAL):
        bad(f"flush_interval={flush_interval!r} must be a number of seconds, more than 0 and at most "
            f"{_MAX_FLUSH_INTERVAL:g}")
    for name, value in (("shuffle", shuffle), ("allow_existing", allow_existing), ("backoff", backoff),
                        ("worker_idle", worker_idle), ("defer_during_runs", defer_during_runs)):
        if not _is_bool(value):
            bad(f"{name}={value!r} must be True or False")


def _validate_flight_options(keep_last, keep_bytes, persist_on) -> tuple:
    """Check the flight recorder's options; returns ``persist_on`` as a tuple."""
    if keep_last is not None and (not _is_int(keep_last) or not 0 <= keep_last <= _MAX_KEEP_LAST):
        raise errors.TfdumpUsageError(
            f"keep_last={keep_last!r} must be None (no flight recorder) or an integer from 0 to "
            f"{_MAX_KEEP_LAST} (ended runs kept in memory until a trigger)")
    if not _is_int(keep_bytes) or not 1 << 20 <= keep_bytes <= _MAX_QUEUE_BYTES:
        raise errors.TfdumpUsageError(
            f"keep_bytes={keep_bytes!r} must be an integer of at least 1 MiB (1048576): the flight "
            "recorder's memory bound")
    if isinstance(persist_on, str) or not all(isinstance(p, str) for p in persist_on) or \
            any(p not in flight.PERSIST_ON for p in persist_on):
        raise errors.TfdumpUsageError(
            f"persist_on={persist_on!r} must be a sequence of triggers from {flight.PERSIST_ON} "
            "(e.g. ('inf_nan',)); DumpWriter.persist() is always available")
    return tuple(persist_on)


def check_session_root(path, what: str = "session_root") -> str:
    """Return ``path`` as a str, or raise TfdumpUsageError when it cannot name a directory.

    Package-internal (the reader, converter and importer check their paths
    the same way).
    """
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise errors.TfdumpUsageError(
            f"{what}={path!r} must be a path (str or os.PathLike), not {type(path).__name__}")
    path = os.fsdecode(os.fspath(path))
    if not path:
        raise errors.TfdumpUsageError(f"{what} is an empty string; pass the directory of the dump")
    if "\0" in path:
        raise errors.TfdumpUsageError(f"{what}={path!r} contains a NUL byte, which no path can hold")
    return path


def prepare_session_root(root: str, allow_existing: bool) -> None:
    """Create ``root`` or check that it may take a new writer's shards.

    Package-internal: the hooks call it before their writer exists, so that a
    bad root fails at construction, as tfdbg's hook does.
    """
    if os.path.isfile(root):
        raise errors.TfdumpUsageError(f"session_root path points to a file: {root}")
    if os.path.isdir(root):
        names = os.listdir(root)
        if names and not allow_existing:
            shared = ""
            if any(n.endswith(".tfds") for n in names):
                # e.g. another task of a cluster writing to a shared file system
                shared = (" It holds tfdump-fast shards: if other processes (tfdump_fast.serve() on "
                          "a ps, other workers' hooks) write to this root too, pass "
                          "allow_existing=True to every hook sharing it, or give each process a root "
                          "of its own and read them together (DumpReader([root, ...])).")
            raise errors.TfdumpUsageError(
                f"session_root path points to a non-empty directory: {root}. Use an empty or new "
                "directory, or pass allow_existing=True to add this session's shards beside the "
                f"existing ones.{shared}")
        return
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as exc:
        raise errors.TfdumpIOError(
            exc.errno, f"cannot create session_root {root!r}: {exc.strerror}") from exc


_REASONS = {
    errors.STATUS_DISK_BUDGET: "disk_budget",
    errors.STATUS_NO_SPACE: "no_space",
    errors.STATUS_PERMISSION: "permission",
    errors.STATUS_IO: "io_error",
    errors.STATUS_INTERNAL: "internal_error",
    _native.DROP_REASON_MUTED: "muted",
}


def _jsonable(obj):
    """Metadata must survive json.dumps; anything else becomes its repr."""
    try:
        json.dumps(obj)
        return obj
    except TypeError:
        if isinstance(obj, dict):
            return {str(k): _jsonable(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [_jsonable(v) for v in obj]
        return repr(obj)


def _package_version() -> str:
    from tfdump_fast import __version__

    return __version__
