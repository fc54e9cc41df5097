"""The flight recorder's Python side: run metadata of held runs, and triggers.

Package-internal; :class:`~tfdump_fast.writer.DumpWriter` drives it when
created with ``keep_last=K``. The engine (csrc/engine.cc, "flight recorder")
keeps the full tensors of held runs in memory -- the runs executing and the
last K ended ones, within ``keep_bytes`` -- and gives them to the writers
only when a trigger releases them: an inf/nan found in a float tensor (on
TF's thread, as the tensor arrives), a run that ends as failed
(``persist_on`` "error"), or :meth:`DumpWriter.persist`. This module keeps the
``run_begin`` / ``run_end`` events (and partition-graph attachments) of held
runs until the engine says what became of them: released runs get their
events written, in order, followed by one ``flight_recorder_trigger`` event
(a ring run that another thread's trigger released between its engine end
and its ``run_end`` here gets that ``run_end`` after the event that lists it);
evicted runs leave nothing in the store. A store written this way reads like
a full dump of exactly the persisted runs.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["FlightRecorder", "PERSIST_ON", "TRIGGER_EVENT"]

#: The triggers ``persist_on`` may name.
PERSIST_ON = ("inf_nan", "error")
#: The META event recording one trigger (docs/FORMAT.md, "META events").
TRIGGER_EVENT = "flight_recorder_trigger"


class _HeldMeta:
    """The events of one held run, written only if the run is released."""

    __slots__ = ("begin", "end", "attachments", "hashes")

    def __init__(self, begin: Dict[str, Any]):
        self.begin = begin
        self.end: Optional[Dict[str, Any]] = None
        self.attachments: Sequence[bytes] = ()
        self.hashes: Sequence[bytes] = ()


class FlightRecorder:
    """Run metadata of held runs and the bookkeeping of triggers.

    ``write_meta(event, store, hashes)`` appends one META event (the
    writer's); ``note_released(run_id)`` asks the writer's durability thread
    to write a released run's tensors now, ``note_ended(run_id)`` at its
    usual pace (an evicted run's summary records).
    """

    def __init__(self, engine, keep_last: int, persist_on: Sequence[str],
                 write_meta, note_released, note_ended):
        self.engine = engine
        self.keep_last = keep_last
        self.persist_on = tuple(persist_on)
        self._write_meta = write_meta
        self._note_released = note_released
        self._note_ended = note_ended
        self._lock = threading.Lock()
        self._held: Dict[int, _HeldMeta] = {}
        # Runs released while still executing: the triggering runs. Their
        # remaining events are written as they come; the trigger event
        # follows their run_end.
        self._live: Dict[int, List[int]] = {}
        # Ended runs released since the last trigger was recorded (the
        # window before the next triggering run).
        self._window: List[int] = []
        # Attachments (partition graphs) of evicted runs: later runs refer
        # to them by hash (each graph is given once per writer), so they go
        # with the next run that is written.
        self._orphans: Dict[bytes, bytes] = {}
        self._names: Dict[int, str] = {}  # of runs written, for persist()'s answer
        # Ring runs released after the engine ended them but before this
        # side got their run_end (another thread's trigger in between): their
        # run_begin is written, their run_end is written when it comes.
        self._released_ended: set = set()

    # -- the writer's calls

    def begin(self, run_id: int, event: Dict[str, Any]) -> None:
        """Keep (or, for a run already released, write) a held run's run_begin."""
        with self._lock:
            self._sync_locked()
            if run_id in self._live:
                self._write_meta(event)
            else:
                self._held[run_id] = _HeldMeta(event)

    def end(self, run_id: int, run_name: str, event: Dict[str, Any], attachments: Sequence[bytes],
            hashes: Sequence[bytes], error: Optional[str]) -> None:
        """Keep or write a held run's run_end (the engine ended it just
        before)."""
        with self._lock:
            self._sync_locked()
            if run_id in self._released_ended:
                self._released_ended.discard(run_id)
                self._write_run_end(event, attachments, hashes)
                self._note_released(run_id)
                return
            window = self._live.pop(run_id, None)
            if window is None:
                meta = self._held.get(run_id)
                if meta is not None:
                    meta.end, meta.attachments, meta.hashes = event, tuple(attachments), tuple(hashes)
                return
            self._write_run_end(event, attachments, hashes)
            self._note_released(run_id)
            for r in window:
                self._names.pop(r, None)
            self._record_trigger(run_id, run_name, window, error)

    def persist(self, reason: str) -> List[int]:
        """Release the ring now (``DumpWriter.persist``); returns the run ids written."""
        with self._lock:
            self.engine.persist()
            self._sync_locked()
            runs, self._window = self._window, []
            if runs:
                self._write_meta(self._trigger_event("manual", runs[-1], self._names.get(runs[-1]), runs,
                                                 message=reason))
            return runs

    def run_names(self, run_ids: Sequence[int]) -> List[str]:
        """Names of runs :meth:`persist` wrote (forgotten once asked for)."""
        with self._lock:
            return [self._names.pop(r, str(r)) for r in run_ids]

    def close(self) -> None:
        """The writer closes: the ring's runs are evicted (runs with
        summaries recorded, as at any eviction), then nothing is held."""
        with self._lock:
            self.engine.evict_all()
            self._sync_locked()
            self._held.clear()

    # -- internals

    def _sync_locked(self) -> None:
        for run_id, released, held_tensors, held_bytes, executing in self.engine.take_flight_changes():
            meta = self._held.pop(run_id, None)
            if not released:
                # Evicted: none of its full tensors reach the store. A run
                # whose other records (summaries) were written as usual is
                # recorded now, counting those only.
                if meta is not None and meta.end is not None and \
                        int(meta.end.get("tensors", 0)) > held_tensors:
                    end = dict(meta.end)
                    end["tensors"] = int(end["tensors"]) - int(held_tensors)
                    end["bytes"] = max(0, int(end.get("bytes", 0)) - int(held_bytes))
                    end["flight_recorder_evicted"] = {"tensors": int(held_tensors), "bytes": int(held_bytes)}
                    self._write_meta(meta.begin)
                    self._write_run_end(end, meta.attachments, meta.hashes)
                    # its summaries come under the durability bound from now
                    # on (the engine counts the evicted records as settled)
                    self._note_ended(run_id)
                elif meta is not None:
                    self._orphans.update(zip(meta.hashes, meta.attachments))
                continue
            if executing:
                # Released while executing: the trigger. Its run_begin now
                # (if it was kept), the rest as it comes.
                if meta is not None:
                    self._write_meta(meta.begin)
                self._live[run_id] = self._window
                self._window = []
                continue
            if meta is not None:
                self._write_meta(meta.begin)
            if meta is not None and meta.end is not None:
                self._write_run_end(meta.end, meta.attachments, meta.hashes)
                self._note_released(run_id)
            else:
                self._released_ended.add(run_id)
            self._names[run_id] = str(meta.begin.get("run_name", run_id)) if meta is not None else str(run_id)
            self._window.append(run_id)

    def _write_run_end(self, event, attachments, hashes) -> None:
        if self._orphans:
            attachments = list(attachments) + list(self._orphans.values())
            hashes = list(hashes) + list(self._orphans.keys())
            self._orphans = {}
        self._write_meta(event, attachments, hashes)

    def _record_trigger(self, run_id: int, run_name: str, window: List[int], error: Optional[str]) -> None:
        hit = self.engine.nonfinite_of(run_id)
        if hit is not None:
            reason = "inf_nan"
        elif error is not None:
            reason = "error"
        else:
            reason = "unknown"
        self._write_meta(self._trigger_event(reason, run_id, run_name, window + [run_id], hit=hit,
                                             error=error))

    def _trigger_event(self, reason: str, run_id: int, run_name: Optional[str], runs: List[int], *,
                       hit: Optional[Tuple[int, int]] = None, error: Optional[str] = None,
                       message: Optional[str] = None) -> Dict[str, Any]:
        import time

        event: Dict[str, Any] = {"event": TRIGGER_EVENT, "wall_us": time.time_ns() // 1000,
                                 "reason": reason, "run_id": int(run_id), "runs": [int(r) for r in runs],
                                 "keep_last": self.keep_last}
        if run_name is not None:
            event["run_name"] = run_name
        if hit is not None:
            key_id, seq = hit
            name = self.engine.key_name(key_id)
            tensor: Dict[str, Any] = {"seq": int(seq)}
            if name is not None:
                tensor.update(device=name[0], node=name[1], output_slot=int(name[2]), debug_op=name[3])
            event["tensor"] = tensor
        if error is not None:
            event["error"] = str(error)
        if message is not None:
            event["message"] = str(message)
        return event
