"""Where the user's code created each op of a graph (``op.traceback``).

:class:`CreationSiteRecorder` records, once per Python graph (and again
only for the ops a graph gained since), each op's innermost frame of user
code -- the first frame, from the innermost, outside TensorFlow, Keras,
tfdump-fast and Python's own library -- as an ``op_creation_sites`` META
event (docs/FORMAT.md). ``trace`` prints it ("created at FILE:LINE in FUNC").

Never fails a step: any error is logged once and the graph is skipped.
"""

from __future__ import annotations

import logging
import os
import sysconfig
import threading
import weakref
from typing import Dict, List, Optional, Tuple

log = logging.getLogger("tfdump_fast")

__all__ = ["CreationSiteRecorder", "EVENT_NAME", "sites_from_events", "user_frame"]

#: the META event type (docs/FORMAT.md, "META events")
EVENT_NAME = "op_creation_sites"

_LIB_DIRS = tuple(sorted({os.path.normpath(p) + os.sep for p in (
    sysconfig.get_paths().get("stdlib"), sysconfig.get_paths().get("platstdlib")) if p}))
_SKIP_PARTS = tuple(os.sep + p + os.sep for p in ("tensorflow", "keras", "tf_keras", "tfdump_fast",
                                                    "tensorflow_estimator"))


def _is_user_file(path: str, cache: Dict[str, bool]) -> bool:
    ok = cache.get(path)
    if ok is None:
        norm = os.path.normpath(path)
        ok = not (norm.startswith("<") or any(p in norm for p in _SKIP_PARTS)
                  or (norm.startswith(_LIB_DIRS) and "site-packages" not in norm))
        cache[path] = ok
    return ok


def user_frame(traceback, cache: Optional[Dict[str, bool]] = None) -> Optional[Tuple[str, int, str]]:
    """(file, line, function) of the innermost user frame of an op's
    ``traceback`` (outermost first, as TensorFlow gives it), or None."""
    cache = {} if cache is None else cache
    for frame in reversed(traceback or ()):
        filename, lineno, name = frame[0], frame[1], frame[2]
        if _is_user_file(filename, cache):
            return filename, int(lineno), name
    return None


class CreationSiteRecorder:
    """Records each graph's op creation sites through ``record`` (a callable
    taking the event name and its fields), once per graph and op."""

    def __init__(self):
        self._lock = threading.Lock()
        self._done: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # graph -> ops recorded
        self._failed = False

    def maybe_record(self, graph, record) -> None:
        try:
            self._record(graph, record)
        except Exception as exc:  # noqa: BLE001 - never fail the step
            if not self._failed:
                self._failed = True
                log.error("tfdump-fast: could not record where ops were created (trace will not "
                          "name them): %s", exc)

    def _record(self, graph, record) -> None:
        if graph is None:
            return
        version = graph.version   # cheap: changes only when ops are added
        with self._lock:
            seen_version, done = self._done.get(graph, (None, 0))
            if seen_version == version:
                return
            # claim them (another thread may be recording the same graph)
            self._done[graph] = (version, done)
        ops = graph.get_operations()
        if len(ops) <= done:
            return
        with self._lock:
            self._done[graph] = (version, len(ops))
        files: List[str] = []
        file_index: Dict[str, int] = {}
        sites: Dict[str, list] = {}
        cache: Dict[str, bool] = {}
        for op in ops[done:]:
            site = user_frame(op.traceback, cache)
            if site is None:
                continue
            idx = file_index.get(site[0])
            if idx is None:
                idx = file_index[site[0]] = len(files)
                files.append(site[0])
            sites[op.name] = [idx, site[1], site[2]]
        record(EVENT_NAME, graph_version=int(graph.version), first_op=int(done), ops=len(ops) - done,
               files=files, sites=sites)


def sites_from_events(events) -> Dict[str, Tuple[str, int, str]]:
    """op name -> (file, line, function) from ``op_creation_sites`` events
    (:meth:`DumpReader.events`); a later event wins."""
    out: Dict[str, Tuple[str, int, str]] = {}
    for ev in events:
        if ev.get("event") != EVENT_NAME:
            continue
        files = ev.get("files") or []
        for name, site in (ev.get("sites") or {}).items():
            try:
                out[name] = (files[site[0]], int(site[1]), str(site[2]))
            except (IndexError, TypeError, ValueError):
                continue
    return out
