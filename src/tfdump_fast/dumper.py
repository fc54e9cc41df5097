"""The state the hook and the wrapper session share, and one debugged run's life.

Package-internal. A :class:`Dumper` holds what one ``DumpingDebugHook`` or
``DumpingDebugWrapperSession`` needs across runs: the writer, the watch and
name caches, the executors seen (to store each executor's partition graphs
once), TF's publish directory, and the runs that have begun but not ended.
The hook and the wrapper differ only in how they get at a ``Session.run``;
each debugged run goes through :meth:`Dumper.start_run` before TensorFlow runs
it and :meth:`Dumper.finish_run` after (also when it raised). Runs whose
``Session.run`` raised where the hook never hears of it are ended later as
failed (:meth:`Dumper.end_dangling`), at the latest at interpreter exit.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import re
import sys
import threading
import weakref
from typing import Any, Dict, List, Optional, Tuple

from tfdump_fast import _native, lifecycle
from tfdump_fast.bridge import get_bridge
from tfdump_fast.cluster import ClusterCoverage
from tfdump_fast.creation_sites import CreationSiteRecorder
from tfdump_fast.errors import TfdumpError, TfdumpUsageError
from tfdump_fast.tfdbg_limit import TfdbgByteLimit
from tfdump_fast.published import CORE_METADATA_KEYS, PublishDirectory
from tfdump_fast.run_names import IoNames, NamesCache
from tfdump_fast.serving import serves_into
from tfdump_fast.sampling import StepSampler, as_sampler, is_internal_name
from tfdump_fast.watches import DEFAULT_WATCH_SPEC, WatchCache, WatchSpec, watch_spec
from tfdump_fast.writer import DumpWriter, Run, prepare_session_root

__all__ = ["Dumper", "Executor", "PendingRun", "describe_error"]

log = logging.getLogger("tfdump_fast")


@dataclasses.dataclass
class Executor:
    """What we know about one TensorFlow executor (one run signature)."""

    steps: int = 0
    graph_hashes: Optional[List[str]] = None


@dataclasses.dataclass
class PendingRun:
    """A debugged Session.run between its start and its end."""

    run: Run
    thread_id: int
    session: Any
    graph: Any
    # (inputs, outputs, targets) as seen by the caller: the hook's view lacks
    # what other hooks add. None when they could not be worked out.
    io_names: Optional[IoNames]
    # The rest of the executor key: slot URL, watch spec, graph version, ...
    key_tail: tuple
    # Whether io_names + key_tail identify TensorFlow's executor; False when
    # something we cannot see (another hook) may change the fetches per run.
    identity_ok: bool
    watched: bool
    want_graphs: bool
    call_index: int
    core_global_step: int
    publish_dir: Optional[str] = None
    # The capture slot whose master step id joins this run to served runs
    # (a run on a cluster with served tasks); None otherwise.
    step_slot: Optional[int] = None


_live_dumpers: "weakref.WeakSet[Dumper]" = weakref.WeakSet()


def _end_dangling_at_exit() -> None:
    # Runs at interpreter exit after the writers stopped accepting runs and
    # before they are closed (lifecycle.py): runs whose Session.run raised and
    # whose hook never got end(), or that a thread still executes, are ended
    # as failed, with the error that ended the program when Python knows it.
    error = getattr(sys, "last_value", None)
    for dumper in list(_live_dumpers):
        if not lifecycle.owned(dumper):
            continue  # inherited across fork: the parent's runs and directory
        try:
            dumper.end_dangling(error=error, at_exit=True)
        except Exception as exc:  # noqa: BLE001 - exit path: report, never raise
            log.error("tfdump-fast: ending open runs at exit failed: %s", exc)
        dumper.published.remove()


lifecycle.on_exit(_end_dangling_at_exit)
# A forked child forgets its parent's dumpers: its exit must not end the
# parent's runs or remove the parent's publish directory.
lifecycle.on_fork_child(_live_dumpers.clear)


def _writer_option_names() -> set:
    params = inspect.signature(DumpWriter.__init__).parameters
    return {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


class Dumper:
    """State shared by the hook and the wrapper: writer, caches, open runs.

    ``owner`` names the hook or wrapper class in messages; the other
    arguments are theirs, validated here (usage errors raise at once).

    Attributes
    ----------
    writer : DumpWriter
        Replaced by a new one when a closed hook is reused (:meth:`reopen_if_closed`).
    sampler : StepSampler or None
        From ``sample=``; None dumps every run.
    names : NamesCache
        A run's feed/fetch/target names, cached per fetch structure.
    published : PublishDirectory
        Where TF publishes each run's graphs and core metadata.
    run_call_count, runs_debugged : int
        ``Session.run`` calls seen (1-based, tfdbg's counter) and runs begun.
    """

    def __init__(self, owner: str, session_root, watch_fn, thread_name_filter, sample,
                 engine_options: Dict[str, Any]):
        self.owner = owner
        if watch_fn is not None and not callable(watch_fn):
            # tfdbg's exact message first: code may match on it.
            raise TypeError(f"watch_fn is not callable (got {type(watch_fn).__name__}); pass a "
                            "function (fetches, feeds) -> WatchOptions, or None to watch everything")
        self.watch_fn = watch_fn
        if thread_name_filter is not None and not isinstance(thread_name_filter, str):
            raise TypeError(f"thread_name_filter must be a regular expression string or None, got "
                            f"{type(thread_name_filter).__name__}")
        try:
            self.thread_pattern = re.compile(thread_name_filter) if thread_name_filter else None
        except re.error as exc:
            raise TfdumpUsageError(
                f"thread_name_filter={thread_name_filter!r} is not a valid regular expression: "
                f"{exc}") from None
        self.sampler: Optional[StepSampler] = as_sampler(sample)
        unknown = sorted(set(engine_options) - _writer_option_names())
        if unknown:
            raise TfdumpUsageError(
                f"{owner}: unknown engine option(s) {', '.join(map(repr, unknown))}; engine options "
                f"are passed to DumpWriter, which accepts: {', '.join(sorted(_writer_option_names()))}")
        self.engine_options = dict(engine_options)
        self.owner_pid = os.getpid()
        self.session_root = os.path.expanduser(os.fspath(session_root))
        # The session root is checked first (tfdbg's errors, at once); then
        # the TF bridge is loaded (compiled on first use), so a missing
        # compiler or a broken build is reported here with its fix, not as a
        # logged "could not start a debugged run" once training has begun,
        # and before the writer puts files into the root.
        if serves_into(self.session_root):  # this process's serve() writes there: share the root
            self.engine_options["allow_existing"] = True
        prepare_session_root(self.session_root, bool(self.engine_options.get("allow_existing")))
        # Summary counters are process-wide; this dumper reports its own share.
        self._summary_base = _summary_counters(get_bridge())
        # Read before the writer exists: a bad TFDBG_DISK_BYTES_LIMIT leaves nothing behind.
        self.byte_limit = TfdbgByteLimit(owner, on_reached=self._record_byte_limit_reached)
        self.writer = DumpWriter(self.session_root, **self.engine_options)
        self._lock = threading.RLock()
        self._pending: Dict[int, PendingRun] = {}
        self._executors: "weakref.WeakKeyDictionary[Any, Dict[tuple, Executor]]" = \
            weakref.WeakKeyDictionary()
        self._executors_by_id: Dict[int, Dict[tuple, Executor]] = {}
        self._watches = WatchCache()
        self.creation_sites = CreationSiteRecorder()
        self.cluster = ClusterCoverage(owner)
        self.names = NamesCache()
        self._logged: set = set()
        self.run_call_count = 0
        self.runs_debugged = 0
        self.published = PublishDirectory(owner, self._log_once)
        self._degraded_recorded_in: Optional[DumpWriter] = None
        # Whether runs whose executor is known only after the fact (another
        # hook may change the fetches) ask TensorFlow for their partition
        # graphs in RunMetadata. False while TF's published graphs and the
        # after-the-fact executor key cover them; set for good by the first
        # run left without graphs (see start_run).
        self._unidentified_runs_want_graphs = False
        _live_dumpers.add(self)

    # -- writer lifecycle

    def reopen_if_closed(self) -> None:
        """A hook reused after end() (e.g. a second estimator.train) gets a new writer."""
        with self._lock:
            if self.writer.closed:
                opts = dict(self.engine_options, allow_existing=True)
                self.writer = DumpWriter(self.session_root, **opts)

    def flush(self) -> None:
        """Return once every finished run is on disk and readable."""
        self.writer.flush()

    def persist(self, reason: str) -> List[str]:
        """The flight recorder's manual trigger (``DumpWriter.persist``)."""
        return self.writer.persist(reason)

    def close(self, error=None) -> None:
        """End open runs as failed (with ``error`` when given), close the
        writer, remove the publish directory. Nothing in a forked child: the
        writer and the directory are the parent's."""
        if not lifecycle.owned(self):
            return
        self.end_dangling(error=error)
        self.writer.close()
        self.published.remove()

    # -- per-run

    def thread_enabled(self) -> bool:
        """Whether the calling thread's runs are debugged (``thread_name_filter``)."""
        if self.thread_pattern is None:
            return True
        name = threading.current_thread().name or ""
        return bool(self.thread_pattern.match(name))

    def count_run_call(self) -> int:
        """Count one ``Session.run`` call; returns the 1-based count."""
        with self._lock:
            self.run_call_count += 1
            return self.run_call_count

    def watch_spec(self, fetches, feed_dict) -> WatchSpec:
        """What this run watches: ``watch_fn``'s answer, validated, or everything."""
        if self.watch_fn is None:
            return DEFAULT_WATCH_SPEC
        return watch_spec(self.watch_fn(fetches, feed_dict), "watch_fn")

    def start_run(self, session, graph, spec: WatchSpec, metadata: Dict[str, Any], io_names,
                  *, key_extra: tuple = (), identity_ok: bool = True,
                  core_global_step: int = -1) -> Optional[Tuple[PendingRun, Any]]:
        """Begin a run.

        Returns ``(pending, DebugOptions or None)``, or None when the writer
        could not begin a run (then the Session.run goes ahead undebugged).
        """
        placement = self._placement(session, graph)
        if placement is False:  # a cluster we could not probe: watch nothing there
            n_watches = 0
        else:
            _, n_watches = self._watches.debug_options(graph, spec, None, placement=placement)
        metadata = dict(metadata)
        metadata["watch_options"] = spec.as_dict()
        if placement:
            metadata["cluster_tasks"] = dict(placement.view.tasks)
        try:
            run = self.writer.begin_run(metadata=metadata, capture=n_watches > 0)
        except TfdumpError as exc:
            self._log_once("begin", "tfdump-fast: %s could not start a debugged run; running "
                                    "Session.run without debugging: %s", self.owner, exc)
            return None
        # once per graph (and per version of it): where the user's code created each op
        self.creation_sites.maybe_record(graph, self.writer.record_event)
        thread_id = threading.get_ident()
        call_index = int(metadata.get("session_run_call", 1)) - 1
        if n_watches == 0:
            # Nothing matched: TensorFlow runs without a debugger state, so
            # there is no core metadata and no debug graph, as with tfdbg.
            pending = PendingRun(run, thread_id, session, graph, io_names, (), identity_ok, False,
                                 False, call_index, core_global_step)
            debug_options = None
        else:
            url = run.debug_urls[0]
            # TF publishes graphs and core metadata from every process of the
            # run (each worker its partitions, the master the core metadata):
            # into a ram:// directory that exists only here. Another process
            # would recurse on the missing directory until it crashes.
            publish_dir = (self.published.for_url(url)
                           if placement is None or placement.view.all_local else None)
            debug_options, _ = self._watches.debug_options(graph, spec, url, publish_dir,
                                                           placement=placement)
            key_tail = (url, spec, graph.version) + tuple(key_extra)
            # Without a key known beforehand (another hook may change the
            # fetches), a new executor's graphs still arrive through TF's
            # publishing, and finish_run keys the executor by what really
            # ran: RunMetadata's copy of every partition graph (on a Keras
            # model, TF's serializing and Python's parsing cost tens of ms a
            # run) is asked for only once a run ended without graphs that way.
            want = publish_dir is None or self._unidentified_runs_want_graphs
            if identity_ok and io_names is not None:
                executor = self._executor(session, io_names, key_tail, create=False)
                if executor is None:
                    # A new executor: TF publishes its graphs when it builds
                    # it, so RunMetadata need not carry them a second time.
                    want = publish_dir is None
                else:
                    want = executor.graph_hashes is None
            pending = PendingRun(run, thread_id, session, graph, io_names, key_tail, identity_ok, True,
                                 want, call_index, core_global_step, publish_dir)
            if placement and placement.served_nodes:
                pending.step_slot = run.slot
                get_bridge().take_slot_step(run.slot)  # forget a step of the slot's last run
        with self._lock:
            self._pending[thread_id] = pending
            self.runs_debugged += 1
        return pending, debug_options

    def _placement(self, session, graph):
        """The run's :class:`~tfdump_fast.cluster.Placement`: None for a local
        session, False when a cluster could not be probed (nothing is watched)."""
        try:
            return self.cluster.placement(session, graph)
        except Exception as exc:  # noqa: BLE001 - never fail the step; watch nothing remote
            self._log_once("cluster", "tfdump-fast: %s could not find out which cluster tasks "
                                      "can be watched; this run watches nothing: %s", self.owner, exc)
            return False

    def forget_cluster(self) -> None:
        """Probe cluster tasks again (a new session: tasks may have restarted)."""
        self.cluster.forget()

    def stats(self) -> Dict[str, Any]:
        """The writer's counters plus ``session_run_calls``, ``runs_debugged``,
        ``runs_over_tfdbg_byte_limit`` (runs left undebugged by ``TFDBG_DISK_BYTES_LIMIT``)
        and, for summary debug ops (:mod:`tfdump_fast.summaries`), ``summaries_submitted``,
        ``summaries_skipped`` (tensors a summary is not defined for: variant, resource,
        string, ...) and ``summaries_muted`` (healthy under ``mute_if_healthy``, not
        written), counted since this hook was created (by every hook of the process
        that runs at the same time)."""
        out = dict(self.writer.stats())
        with self._lock:
            out["session_run_calls"] = self.run_call_count
            out["runs_debugged"] = self.runs_debugged
        out["runs_over_tfdbg_byte_limit"] = self.byte_limit.runs_skipped
        now = _summary_counters(get_bridge())
        out.update({k: now[k] - self._summary_base[k] for k in now})
        return out

    def _executor(self, session, io_names, key_tail, create=True) -> Optional[Executor]:
        key = (tuple(io_names[0]), tuple(io_names[1]), tuple(io_names[2])) + key_tail
        with self._lock:
            try:
                per_session = self._executors.get(session)
                if per_session is None and create:
                    per_session = self._executors[session] = {}
            except TypeError:  # not weak-referenceable: key on identity
                per_session = self._executors_by_id.get(id(session))
                if per_session is None and create:
                    per_session = self._executors_by_id[id(session)] = {}
            if per_session is None:
                return None
            executor = per_session.get(key)
            if executor is None and create:
                executor = per_session[key] = Executor()
            return executor

    def finish_run(self, pending: PendingRun, run_metadata=None, error: Optional[BaseException] = None,
                   error_text: Optional[str] = None, full_io_names=None,
                   core_global_step: Optional[int] = None,
                   end_metadata: Optional[Dict[str, Any]] = None) -> None:
        """End a run: core metadata, partition graphs, status.

        ``full_io_names``: the names of everything the Session.run really
        fed and fetched, when known after the fact (the hook reads them from
        MonitoredSession); they identify the executor exactly.
        ``end_metadata``: more ``run_end`` fields (the hook's in-run global step).
        tfdump-fast's own fetches (``tfdump_fast_internal/...``) are left out
        of the recorded output names, as tfdbg's run would not have them.
        """
        with self._lock:
            if self._pending.get(pending.thread_id) is pending:
                del self._pending[pending.thread_id]
        if pending.run.ended:
            return
        end_meta: Dict[str, Any] = {"core_metadata": None}
        attachments: List[bytes] = []
        if pending.watched:
            names = full_io_names or pending.io_names or ([], [], [])
            if pending.identity_ok and pending.io_names is not None:
                executor = self._executor(pending.session, pending.io_names, pending.key_tail)
            elif full_io_names is not None:
                executor = self._executor(pending.session, full_io_names,
                                          ("exact",) + pending.key_tail)
            else:
                executor = None  # cannot tell which executor ran: never reuse graphs
            published_core, published_graphs = self.published.take(pending.publish_dir)
            with self._lock:
                step_index = executor.steps if executor is not None else 0
                if executor is not None:
                    executor.steps += 1
                hashes = executor.graph_hashes if executor is not None else None
            if published_graphs:
                # A new executor: the graphs exactly as tfdbg's dump gets them,
                # also when the run then failed (run_metadata is empty then).
                attachments = published_graphs
                hashes = [_native.hash128(b).hex() for b in attachments]
                if executor is not None:
                    with self._lock:
                        executor.graph_hashes = hashes
            elif hashes is None and run_metadata is not None and len(run_metadata.partition_graphs):
                attachments = [g.SerializeToString(deterministic=True)
                               for g in run_metadata.partition_graphs]
                hashes = [_native.hash128(b).hex() for b in attachments]
                if executor is not None:
                    with self._lock:
                        if executor.graph_hashes is None:
                            executor.graph_hashes = hashes
            if ((hashes is None or full_io_names is None) and error is None and error_text is None
                    and not (pending.identity_ok and pending.io_names is not None)):
                # A run that ended well without graphs, or whose executor
                # could not be named after the fact (the next run on it would
                # find none): from now on such runs ask for RunMetadata's
                # graphs, as they all did before.
                self._unidentified_runs_want_graphs = True
            gstep = pending.core_global_step if core_global_step is None else core_global_step
            if published_core is not None:
                core = {k: published_core.get(k) for k in CORE_METADATA_KEYS}
            else:  # TF published nothing (ram:// unusable, say): our own account
                core = {
                    "global_step": int(gstep),
                    "session_run_index": pending.call_index,
                    "executor_step_index": step_index,
                    "input_names": list(names[0]),
                    "output_names": list(names[1]),
                    "target_nodes": list(names[2]),
                }
            if isinstance(core.get("output_names"), list):
                core["output_names"] = [n for n in core["output_names"] if not is_internal_name(str(n))]
            end_meta["core_metadata"] = core
            end_meta["graph_hashes"] = hashes
            if pending.step_slot is not None:
                step_id = get_bridge().take_slot_step(pending.step_slot)
                if step_id:
                    end_meta["master_step_id"] = step_id
            if pending.publish_dir is None and self.published.unavailable is not None:
                with self._lock:
                    # Once per writer: the store says why its runs lack
                    # TensorFlow's own graphs and core metadata.
                    record = self._degraded_recorded_in is not self.writer
                    self._degraded_recorded_in = self.writer
                if record:
                    # An event of its own (DumpReader.events), and, as before,
                    # in the run_end of the first run it concerns.
                    self._record_event("tf_publish_degraded", reason=self.published.unavailable)
                    end_meta["degraded"] = {"tf_publish": self.published.unavailable}
        if end_metadata:
            end_meta.update(end_metadata)
        status, text = "ok", None
        if error is not None or error_text is not None:
            status = "failed"
            text = error_text if error_text is not None else describe_error(error)
        try:
            self.writer.end_run(pending.run, status=status, error=text, metadata=end_meta,
                                attachments=attachments or None)
        except TfdumpError as exc:
            self._log_once("end", "tfdump-fast: %s could not finish run %s: %s", self.owner,
                           pending.run.run_name, exc)

    def _record_byte_limit_reached(self, limit: int, used: int) -> None:
        self._record_event("tfdbg_byte_limit_reached", limit_bytes=int(limit), tensor_bytes=int(used))

    def _record_event(self, name: str, **fields) -> None:
        # Never fails a step: a store that cannot take the event is logged.
        try:
            self.writer.record_event(name, **fields)
        except TfdumpError as exc:
            self._log_once("event:" + name, "tfdump-fast: %s could not record %s: %s", self.owner, name, exc)

    def take_dangling(self, thread_id: Optional[int] = None) -> List[PendingRun]:
        """Remove and return the open run of ``thread_id`` (or of every thread)."""
        with self._lock:
            if thread_id is None:
                items = [p for p in self._pending.values() if p is not None]
                self._pending.clear()
            else:
                p = self._pending.pop(thread_id, None)
                items = [p] if p is not None else []
        return items

    def end_dangling(self, thread_id: Optional[int] = None, error=None, at_exit: bool = False) -> None:
        """End runs whose Session.run raised before the hook's after_run."""
        for pending in self.take_dangling(thread_id):
            if error is not None:
                text = describe_error(error)
            elif at_exit:
                text = "the process exited while this Session.run was running or after it raised"
            else:
                text = ("Session.run raised an exception (a SessionRunHook is not told which; "
                        "see the training program's error)")
            if self.writer.closed:
                continue
            self.finish_run(pending, error_text=text)

    def _log_once(self, key: str, msg: str, *args) -> None:
        if key in self._logged:
            log.debug(msg, *args)
            return
        self._logged.add(key)
        log.error(msg, *args)


def describe_error(error) -> str:
    """``'ErrorType: message'`` for a run's ``error`` field."""
    if error is None:
        return "unknown error"
    message = getattr(error, "message", None) or str(error)
    return f"{type(error).__name__}: {message}"


def _summary_counters(bridge) -> Dict[str, int]:
    s = bridge.stats()
    return {k: int(s[k]) for k in ("summaries_submitted", "summaries_skipped", "summaries_muted")}
