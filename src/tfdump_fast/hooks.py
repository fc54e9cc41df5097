"""tfdbg-compatible dumping hook and session wrapper on the tfdump-fast engine.

:class:`DumpingDebugHook` and :class:`DumpingDebugWrapperSession` are drop-in
replacements for ``tf_debug.DumpingDebugHook`` and
``tf_debug.DumpingDebugWrapperSession`` (``from tensorflow.python import debug
as tf_debug``): same arguments, same ``watch_fn`` / ``WatchOptions``
semantics, the same tensors for the same graph. The differences are where the
data goes and what it costs:

* tfdbg gives every ``Session.run`` a new ``file://`` URL, so TensorFlow
  builds a new executor for every debugged run, and writes one file per
  tensor. Here each running ``Session.run`` borrows a capture *slot* whose URL
  (``memcbk://tfdump_slot_<i>``) never changes, so TensorFlow's executor cache
  keeps working, and tensors go through the native engine into a few
  compressed, deduplicated shard files (see ``docs/FORMAT.md``).
* Partition graphs are requested from TensorFlow only when an executor is new
  (the first run of a feeds/fetches/watch-set/slot signature) and stored once;
  later runs refer to them by hash (``graph_hashes`` in their ``run_end``
  event). One exception: in a ``MonitoredSession`` whose other hooks may
  change their fetches from run to run (``LoggingTensorHook``,
  ``SummarySaverHook`` with summaries, any user hook), the hook cannot know
  beforehand which executor will run: it takes a new executor's graphs from
  what TensorFlow publishes when it builds it, and names the executor after
  the run by what really ran. Only if a run ends with neither (TensorFlow's
  publishing unavailable, or an executor it cannot name) does it ask
  ``RunMetadata`` for the graphs on every later such run (each distinct graph
  still stored once): on a Keras model that copy costs tens of ms a run.
* ``sample=`` dumps only some steps; the other runs go to TensorFlow
  untouched (see :mod:`tfdump_fast.sampling`).

What each debugged run records
------------------------------
``run_begin`` (``DumpWriter.begin_run`` metadata):

``fetches``, ``feed_keys``
    ``repr(fetches)`` and ``repr(feed_dict.keys())`` (``repr(feed_dict)``
    when it is empty or None), exactly the strings tfdbg stores.
``session_run_call``
    1-based count of ``Session.run`` calls seen by the hook / wrapper
    (tfdbg's ``run_call_count``).
``thread``
    Name of the thread that called ``Session.run``.
``watch_options``
    The normalised ``WatchOptions`` used.
``step``, ``global_step``
    The step (what the sampler sees) and, when the graph has a global step,
    its value before the run (``None`` otherwise): recorded for every dumped
    run, with or without ``sample=``. On a cluster session the hook (without
    ``sample=``) fetches the global step in the debugged run itself (a
    separate read would be a master step with a round trip to the ps per
    dumped run): both are ``None`` here and recorded at ``run_end`` with
    ``global_step_read: "in_run"`` (see the README's "Distributed").

``run_end`` (``DumpWriter.end_run`` metadata): ``status`` / ``error``,
``core_metadata`` (tfdbg's ``_tfdbg_core_metadata_``: ``global_step`` -- the
debug options' global step, as in tfdbg 0 under the hook and -1 under the
wrapper, not the training step --,
``session_run_index``, ``executor_step_index``, ``input_names``,
``output_names``, ``target_nodes``; None for a run that watched nothing, as
TensorFlow publishes none then) and ``graph_hashes`` (hex hashes of the
run's partition ``GraphDef`` attachments, stored once per writer).

The core metadata is what TensorFlow itself publishes for the run (the same
``_tfdbg_core_metadata_`` record tfdbg's dump gets): ``session_run_index``
is TensorFlow's process-wide run id, ``executor_step_index`` its count of
runs of that executor (tfdbg's is always 0: it builds a new executor for
every run), the names are those TensorFlow lists (sorted; in a
``MonitoredSession`` including what the other hooks fetch). The partition
graphs are likewise the ones TensorFlow publishes when it builds an
executor, so a run that fails on a new executor has them too. (Should the
private directory TF publishes to be unavailable, the hook falls back to its
own account: the 0-based ``Session.run`` call index, its count of debugged
runs per signature, and ``RunMetadata`` partition graphs of successful runs.)

Low-level path
--------------
Code that builds its own ``RunOptions`` with ``debug_utils.watch_graph`` uses
:class:`~tfdump_fast.writer.DumpWriter` directly. ``end_run`` must be called
after every ``Session.run`` that got the run's URLs, also when it raised: it
releases the capture slot::

    from tensorflow.python.debug.lib import debug_utils
    from tfdump_fast import DumpWriter

    writer = DumpWriter("/tmp/dump")
    run = writer.begin_run(metadata={"fetches": repr(train_op)})
    options = tf.compat.v1.RunOptions(output_partition_graphs=True)
    debug_utils.watch_graph(options, sess.graph, debug_urls=run.debug_urls)
    run_metadata = tf.compat.v1.RunMetadata()
    try:
        sess.run(train_op, options=options, run_metadata=run_metadata)
    except Exception as e:
        writer.end_run(run, status="failed", error=str(e))
        raise
    # Partition graphs are stored once per writer, however often given.
    writer.end_run(run, attachments=[g.SerializeToString(deterministic=True)
                                     for g in run_metadata.partition_graphs])
    writer.close()

Reuse ``run.debug_urls`` for one ``Session.run`` only: a URL stays bound to
its run until ``end_run``.

Errors
------
Configuration mistakes (``watch_fn`` not callable, a bad regular expression,
an unknown debug op, an unknown engine option) raise
:class:`~tfdump_fast.errors.TfdumpUsageError` (a ``ValueError``) or
``TypeError`` naming the problem. Trouble in the writer during training (disk
full, all capture slots busy) never stops training: the run goes to
TensorFlow without debugging, and the problem is logged once on the
``tfdump_fast`` logger; :meth:`flush` and :meth:`close` raise it.

Modules
-------
This module holds :class:`DumpingDebugHook`; :class:`DumpingDebugWrapperSession`
lives in :mod:`tfdump_fast.wrapper` and is re-exported here, as is
``WatchOptions``. Both drive the package-internal
:class:`~tfdump_fast.dumper.Dumper` (shared state and one run's life),
:mod:`~tfdump_fast.watches` (watch options to ``DebugOptions``),
:mod:`~tfdump_fast.run_names` (a run's feed/fetch/target names),
:mod:`~tfdump_fast.published` (what TensorFlow publishes per run) and
:mod:`~tfdump_fast._tf_private` (TensorFlow's private API, all of it).
"""

from __future__ import annotations

import logging
import sys
import threading
import weakref
from typing import Any, Dict, Optional, Tuple

# TensorFlow is imported by this module, not by `import tfdump_fast`: the
# package resolves this module lazily, on first use of the hook or wrapper.
import tensorflow as tf

from tfdump_fast import _tf_private
from tfdump_fast.cluster import is_cluster_target, session_target
from tfdump_fast.dumper import Dumper
from tfdump_fast.errors import TfdumpError
from tfdump_fast.run_names import feed_keys_repr
from tfdump_fast.sampling import SampleSpec, in_run_global_step_read, step_of_run
from tfdump_fast.watches import WatchOptions
from tfdump_fast.wrapper import DumpingDebugWrapperSession
from tfdump_fast.writer import DumpWriter, check_session_root

__all__ = ["DumpingDebugHook", "DumpingDebugWrapperSession", "WatchOptions"]

log = logging.getLogger("tfdump_fast")

# Whether the hooks of a MonitoredSession other than this one keep TF's
# executor the same from run to run, per hook list owner (_HookedSession).
_hook_list_verdicts: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()


def _other_hooks_fetch_constantly(me) -> bool:
    """Whether the other hooks of the calling MonitoredSession leave the executor alone.

    With any hook that may change its fetches from run to run in ways this
    hook cannot see beforehand (LoggingTensorHook, SummarySaverHook with
    summaries, user hooks), partition graphs are requested on every debugged
    run. Call from ``before_run``; False (the safe answer) when the hook list
    cannot be found.
    """
    owner = _tf_private.hooked_session_calling_before_run()
    if owner is None:
        return False
    hooks = _tf_private.monitored_session_hooks(owner)
    if hooks is None:
        return False
    try:
        verdict = _hook_list_verdicts.get(owner)
    except TypeError:
        verdict = None
    if verdict is None:
        verdict = all(h is me or _tf_private.fetches_constantly(h) for h in hooks)
        try:
            _hook_list_verdicts[owner] = verdict
        except TypeError:
            pass
    return verdict


class DumpingDebugHook(tf.compat.v1.train.SessionRunHook):
    """tfdbg's ``DumpingDebugHook`` on the tfdump-fast engine.

    A ``tf.compat.v1.train.SessionRunHook`` for ``MonitoredSession``,
    ``MonitoredTrainingSession`` and ``SingularMonitoredSession``, alone or
    with other hooks.
    Every ``Session.run`` that it debugs becomes one run in the dump under
    ``session_root``.

    Parameters
    ----------
    session_root : str or os.PathLike
        Dump directory. Created if missing. An existing file raises
        ``ValueError`` ("session_root path points to a file"); a non-empty
        directory raises ``ValueError`` ("... points to a non-empty
        directory") unless ``allow_existing=True`` is given.
    watch_fn : callable, optional
        ``watch_fn(fetches, feeds)`` returning a ``tf_debug.WatchOptions``
        (or the legacy ``(debug_ops, node_name_regex_allowlist,
        op_type_regex_allowlist)`` tuple), called for each debugged run; it
        may be stateful. Default: ``DebugIdentity`` on every tensor. A
        non-callable raises ``TypeError`` ("watch_fn is not callable").
    thread_name_filter : str, optional
        Regular expression matched (``re.match``) against the calling
        thread's name; runs on other threads are not debugged at all (tfdbg's
        session wrapper does this; its hook forgets to).
    log_usage : bool, default True
        Accepted for compatibility with older tfdbg; ignored.
    sample : int, range, callable or StepSampler, optional
        Dump only some steps (see :mod:`tfdump_fast.sampling`). The step is
        the graph's global step when it has one (read with a small extra
        ``Session.run`` before each run; the runs that are not dumped carry no
        debug ops), else the 0-based index of the ``Session.run`` call.
    **engine_options
        Passed to :class:`~tfdump_fast.writer.DumpWriter` (``queue_bytes``,
        ``policy``, ``workers``, ``codec``, ``level``, ``disk_limit_bytes``,
        ``allow_existing``, ...), among them the flight recorder's
        ``keep_last=K``, ``keep_bytes`` and ``persist_on=("inf_nan",
        "error")``: full tensors of the last K debugged runs stay in memory
        and are written only when a trigger fires (see :meth:`persist` and
        the README's "Flight recorder").

    Notes
    -----
    Two dump limits: ``disk_limit_bytes=`` counts the compressed bytes on
    disk (the engine drops tensors past it, the run goes on);
    ``TFDBG_DISK_BYTES_LIMIT`` (environment, read here) counts tensor bytes
    since the hook's first run, as tfdbg does, but a run that would pass it
    is left undebugged instead of failing with ``ResourceExhaustedError``
    (details: :class:`tfdump_fast.tfdbg_limit.TfdbgByteLimit`);
    ``stats()["runs_over_tfdbg_byte_limit"]`` counts those runs. A value
    that is not a byte count raises :class:`~tfdump_fast.errors.TfdumpUsageError`.

    ``end()`` ends open runs, flushes and closes the writer. A
    ``MonitoredSession`` does not call ``end()`` when the training loop
    raises; the data is still flushed at interpreter exit, and the run that
    raised is kept, marked failed. Tensors computed before an error are kept.
    """

    def __init__(self, session_root, watch_fn=None, thread_name_filter=None, log_usage=True, *,
                 sample: SampleSpec = None, **engine_options):
        del log_usage  # tfdbg compatibility only
        check_session_root(session_root)
        self._dumper = Dumper("DumpingDebugHook", session_root, watch_fn, thread_name_filter,
                              sample, engine_options)
        # The TFDBG_DISK_BYTES_LIMIT signature of each thread's debugged run.
        self._signatures = threading.local()
        self._global_step_tensor = None
        # On a cluster session: a node of our own that reads the global step
        # inside the debugged run (sampling.in_run_global_step_read); None
        # where it could not be added (graph finalized before begin()).
        self._in_run_step = None

    @property
    def session_root(self) -> str:
        """The dump directory."""
        return self._dumper.session_root

    @property
    def writer(self) -> DumpWriter:
        """The :class:`~tfdump_fast.writer.DumpWriter` this hook writes through."""
        return self._dumper.writer

    def begin(self):
        """Called by MonitoredSession before the graph is finalized."""
        self._dumper.reopen_if_closed()
        if self._dumper.sampler is not None:
            self._dumper.sampler.reset()
        # Every dumped run records the global step, sampled or not (one
        # extra read of ~40 us per dumped run); a malformed collection means none.
        try:
            self._global_step_tensor = tf.compat.v1.train.get_global_step()
        except (TypeError, ValueError):
            self._global_step_tensor = None
        # begin() may add ops (the graph is finalized after it): the in-run
        # read a cluster session uses instead of a master step of its own.
        self._in_run_step = in_run_global_step_read(tf.compat.v1.get_default_graph(),
                                                    self._global_step_tensor)

    def after_create_session(self, session, coord):  # noqa: D401 - SessionRunHook API
        """Called when a (new) session is created: cluster tasks are probed again
        on its first debugged run (they may have restarted). With the flight
        recorder, a run left open by a raising ``Session.run`` is also ended
        (as failed: the "error" trigger) when the session closes, rather
        than at the thread's next run or at exit."""
        del session
        self._dumper.forget_cluster()
        if coord is not None and self._dumper.writer.options.get("keep_last") is not None:
            dumper = self._dumper
            # The closing thread is not inside Session.run: a run it left
            # open is one that raised.
            _tf_private.on_coordinator_stop(coord, lambda: dumper.end_dangling(threading.get_ident()))

    def before_run(self, run_context):
        """Decide whether this run is debugged and add its watch options."""
        d = self._dumper
        # A run of this thread that raised never reached after_run: close it.
        d.end_dangling(threading.get_ident())
        call = d.count_run_call()
        if not d.thread_enabled():
            return None
        session = run_context.session
        sampled_at = None
        if d.sampler is not None:
            # Decided first: an unsampled run costs the step read and nothing else.
            sampled_at = self._current_step(session, call)
            if not d.sampler.should_sample(sampled_at[0]):
                return None
        args = run_context.original_args
        fetches, feed_dict = args.fetches, args.feed_dict
        metadata: Dict[str, Any] = {
            "fetches": repr(fetches), "feed_keys": feed_keys_repr(feed_dict),
            "session_run_call": call, "thread": threading.current_thread().name,
        }
        signature = (metadata["fetches"], metadata["feed_keys"])
        if not self._dumper.byte_limit.allows(signature):
            return None
        in_run = sampled_at is None and self._reads_step_in_run(session)
        if in_run:
            # Known at the run's end (after_run): None until then, also for
            # a run that raises (its global step is unknown).
            metadata["step"], metadata["global_step"] = None, None
        else:
            if sampled_at is None:  # no sampler: read it now (a Session.run), only for a dumped run
                sampled_at = self._current_step(session, call)
            metadata["step"], metadata["global_step"] = sampled_at
        spec = d.watch_spec(fetches, feed_dict)
        graph = session.graph
        # MonitoredSession merges only the watches of a hook's RunOptions, so
        # TensorFlow sees the caller's global step (0 unless set), as with
        # tfdbg's hook; after_run reads the merged value.
        started = d.start_run(session, graph, spec, metadata, d.names.names(graph, fetches, feed_dict),
                              identity_ok=_other_hooks_fetch_constantly(self), core_global_step=0)
        if started is None:
            return None
        pending, debug_options = started
        self._signatures.value = signature
        options = tf.compat.v1.RunOptions()
        if debug_options is not None:
            options.debug_options.CopyFrom(debug_options)
            options.output_partition_graphs = pending.want_graphs
        return tf.compat.v1.train.SessionRunArgs(self._in_run_step if in_run else None,
                                                 feed_dict=None, options=options)

    def after_run(self, run_context, run_values):
        """Finish the run: record graphs (new executors) and core metadata."""
        d = self._dumper
        pending = None
        for p in d.take_dangling(threading.get_ident()):
            pending = p
        if pending is None:
            return
        options = run_values.options
        gstep = options.debug_options.global_step if options is not None else None
        full = None
        if pending.watched:
            actual = _tf_private.hooked_run_args(run_context)
            if actual is not None:
                full = d.names.names(pending.graph, actual[0], actual[1])
        end_metadata = None
        # This hook's results are the in-run read when before_run fetched it
        # (its only fetch), else None.
        if run_values.results is not None:
            try:
                value = int(run_values.results)
            except (TypeError, ValueError):
                value = None
            # global_step_read: how the value was read ("in_run": fetched by
            # the run itself; absent: a separate read just before the run).
            end_metadata = {"step": value, "global_step": value, "global_step_read": "in_run"}
        d.finish_run(pending, run_values.run_metadata, full_io_names=full, core_global_step=gstep,
                     end_metadata=end_metadata)
        self._dumper.byte_limit.record(getattr(self._signatures, "value", None), pending.run)

    def end(self, session):
        """End open runs, flush and close the writer.

        A writer error (disk full, ...) is logged, not raised: training is
        over and the session must still close. :meth:`close` raises it.
        """
        del session
        # MonitoredSession calls end() from __exit__ also after an
        # OutOfRangeError ended the loop; that error belongs to the last run.
        exc = sys.exc_info()[1]
        if not isinstance(exc, tf.errors.OpError):
            exc = None  # e.g. the caller's StopIteration: not a Session.run error
        try:
            self._dumper.close(error=exc)
        except TfdumpError as err:
            log.error("tfdump-fast: DumpingDebugHook.end(): the dump in %s is incomplete: %s",
                      self._dumper.session_root, err)

    def flush(self):
        """Return once every finished run is on disk and readable."""
        self._dumper.flush()

    def close(self):
        """End open runs (as failed), flush and close the writer. Idempotent."""
        self._dumper.close()

    def persist(self, reason="manual"):
        """Flight recorder (``keep_last=K``): write the last K ended runs now.

        A trigger of the program's own (e.g. a loss spike), recorded with
        ``reason`` in a ``flight_recorder_trigger`` event. Returns the names of
        the runs written. Raises ``TfdumpUsageError`` without ``keep_last``.
        """
        return self._dumper.persist(reason)

    def stats(self):
        """The writer's counters (see ``DumpWriter.stats``) plus
        ``session_run_calls`` (Session.run calls seen), ``runs_debugged`` and
        ``runs_over_tfdbg_byte_limit`` (runs left undebugged by ``TFDBG_DISK_BYTES_LIMIT``)."""
        return self._dumper.stats()

    def _current_step(self, session, call: int) -> Tuple[int, Optional[int]]:
        return step_of_run(session, self._global_step_tensor, call)

    def _reads_step_in_run(self, session) -> bool:
        """Whether this run fetches the global step itself instead of a separate read.

        Only on a cluster session: there a separate read is a master step
        of its own, with a round trip to the task that holds the variable
        (a parameter server), before every dumped step; in one process it
        costs ~40 us and gives the value before the run whatever the run
        does. With ``sample=`` the sampler reads it before the run anyway.
        """
        read = self._in_run_step
        return (read is not None and session is not None and read.graph is session.graph
                and is_cluster_target(session_target(session)))
