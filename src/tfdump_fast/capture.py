"""The low-level path's run: TensorFlow's graphs and core metadata for a hand-made ``Session.run``.

:func:`capture_run` is for code that drives a :class:`~tfdump_fast.writer.DumpWriter`
itself (``begin_run`` -> ``run.debug_urls`` -> ``debug_utils.watch_graph``)
instead of using the hook or the wrapper. It adds the publish watch of
:mod:`tfdump_fast.published` to the run's ``RunOptions`` and, when the block
ends, ends the run with what TensorFlow published: its core metadata and,
for a run that built a new executor, the executor's partition graphs -- also
when the run failed (``RunMetadata`` is empty then).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import threading
import weakref
from typing import Any, Dict, Iterator, List, Optional

import tensorflow as tf

from tfdump_fast import _native
from tfdump_fast.cluster import ClusterCoverage
from tfdump_fast.dumper import describe_error
from tfdump_fast.errors import TfdumpError, TfdumpUsageError
from tfdump_fast.published import CORE_METADATA_KEYS, PublishDirectory, add_publish_watch
from tfdump_fast.writer import DumpWriter, Run

__all__ = ["CapturedRun", "capture_run"]

log = logging.getLogger("tfdump_fast")


@dataclasses.dataclass
class CapturedRun:
    """What :func:`capture_run` yields; the last three are set when the block ends.

    Attributes
    ----------
    run : Run
        The writer's run.
    run_options : tf.compat.v1.RunOptions
        The options given, with the publish watch added: pass them to ``Session.run``.
    run_metadata : tf.compat.v1.RunMetadata
        Pass it to ``Session.run`` as ``run_metadata=``: where TensorFlow
        cannot publish, the partition graphs come from it instead.
    core_metadata : dict or None
        TensorFlow's ``_tfdbg_core_metadata_`` fields of the run.
    graph_hashes : list of str or None
        Hex hashes of the executor's partition graphs (stored once per writer).
    counters : dict or None
        What :meth:`DumpWriter.end_run` returned.
    """

    run: Run
    run_options: Any
    run_metadata: Any
    core_metadata: Optional[Dict[str, Any]] = None
    graph_hashes: Optional[List[str]] = None
    counters: Optional[Dict[str, int]] = None


_lock = threading.Lock()
# Which cluster tasks capture_run may watch, per session target.
_coverage = ClusterCoverage("capture_run")
_logged: set = set()
_published: Optional[PublishDirectory] = None
# Per session: executor (as TensorFlow's core metadata and the debug options
# identify it) -> the hex hashes of its partition graphs, published once
# when TensorFlow built it.
_graphs_by_session: "weakref.WeakKeyDictionary[Any, Dict[tuple, List[str]]]" = weakref.WeakKeyDictionary()
_graphs_by_session_id: Dict[int, Dict[tuple, List[str]]] = {}
# Writers whose store already says why TF could not publish.
_degraded_writers: "weakref.WeakSet[DumpWriter]" = weakref.WeakSet()


def _log_once(key: str, msg: str, *args) -> None:
    with _lock:
        first = key not in _logged
        _logged.add(key)
    (log.error if first else log.debug)(msg, *args)


def _publish_directory() -> PublishDirectory:
    global _published
    with _lock:
        if _published is None:
            _published = PublishDirectory("capture_run", _log_once)
        return _published


def _remove_at_exit() -> None:
    if _published is not None:
        _published.remove()


atexit.register(_remove_at_exit)


def _executor_graphs(session) -> Dict[tuple, List[str]]:
    with _lock:
        try:
            per = _graphs_by_session.get(session)
            if per is None:
                per = _graphs_by_session[session] = {}
        except TypeError:  # not weak-referenceable
            per = _graphs_by_session_id.setdefault(id(session), {})
        return per


@contextlib.contextmanager
def capture_run(writer: DumpWriter, run: Run, session, run_options) -> Iterator[CapturedRun]:
    """Run one hand-made debugged ``Session.run`` and end its run with TF's graphs and core metadata.

    Parameters
    ----------
    writer : DumpWriter
        The writer that began ``run``.
    run : Run
        From ``writer.begin_run()`` (with ``capture=True``, the default), not ended.
    session : tf.compat.v1.Session
        The session that runs it; the executors whose graphs are stored are its own.
    run_options : tf.compat.v1.RunOptions
        The options the watches were added to (``debug_utils.watch_graph(run_options,
        graph, debug_urls=run.debug_urls, ...)``). The publish watch is added to
        them; pass them to ``Session.run``.

    Yields
    ------
    CapturedRun
        Pass its ``run_options`` and ``run_metadata`` to ``Session.run``.

    Raises
    ------
    TfdumpUsageError
        ``run`` was begun without capture, already ended, or belongs to
        another writer; ``run_options`` is not a ``RunOptions``.

    Notes
    -----
    When the block ends, the run is ended: ``status="ok"``, or ``"failed"``
    with the error text when the block raised (the exception propagates).
    Its ``run_end`` event carries ``core_metadata`` and ``graph_hashes`` as
    the hook's do. Partition graphs are published by TensorFlow when it
    builds an executor, so a first run that fails keeps them; later runs of
    the same executor refer to them by hash. If TensorFlow's in-memory
    ``ram://`` file system is unusable, one line is logged, ``core_metadata``
    is None, the graphs come from ``run_metadata`` (``output_partition_graphs``
    is then set in ``run_options``; a failed run has none) and the run's
    ``run_end`` records why under ``degraded``.

    Examples
    --------
    >>> run = writer.begin_run()
    >>> options = tf.compat.v1.RunOptions()
    >>> debug_utils.watch_graph(options, sess.graph, debug_urls=run.debug_urls)
    >>> with tfdump_fast.capture_run(writer, run, sess, options) as captured:
    ...     sess.run(train_op, options=captured.run_options, run_metadata=captured.run_metadata)
    """
    if not isinstance(writer, DumpWriter):
        raise TfdumpUsageError(f"capture_run: writer must be a DumpWriter, got {type(writer).__name__}")
    if not isinstance(run, Run):
        raise TfdumpUsageError(f"capture_run: run must be a Run from writer.begin_run(), got "
                               f"{type(run).__name__}")
    if run.ended or run.writer is not writer:
        raise TfdumpUsageError(f"capture_run: run {run.run_name} is "
                               f"{'already ended' if run.ended else 'not a run of this writer'}; "
                               "pass an open run of this writer (writer.begin_run())")
    if not run.debug_urls:
        raise TfdumpUsageError(f"capture_run: run {run.run_name} was begun with capture=False and has no "
                               "debug URL; begin it with writer.begin_run() (capture=True)")
    if not isinstance(run_options, tf.compat.v1.RunOptions):
        raise TfdumpUsageError(f"capture_run: run_options must be a tf.compat.v1.RunOptions, got "
                               f"{type(run_options).__name__}")
    published = _publish_directory()
    publish_dir = published.for_url(run.debug_urls[0])
    if _keep_local_watches(session, run_options.debug_options):
        publish_dir = None  # other processes run partitions: ram:// is ours only
    if publish_dir is not None:
        add_publish_watch(run_options.debug_options, publish_dir)
    else:
        run_options.output_partition_graphs = True
    captured = CapturedRun(run, run_options, tf.compat.v1.RunMetadata())
    error: Optional[BaseException] = None
    try:
        yield captured
    except BaseException as exc:
        error = exc
        raise
    finally:
        end_meta, attachments = _end_metadata(writer, session, captured, publish_dir, published)
        try:
            captured.counters = writer.end_run(
                run, status="failed" if error is not None else "ok",
                error=describe_error(error) if error is not None else None,
                metadata=end_meta, attachments=attachments or None)
        except TfdumpError as exc:
            if error is None:
                raise
            log.error("tfdump-fast: capture_run could not end run %s: %s", run.run_name, exc)


def _keep_local_watches(session, debug_options) -> bool:
    """On a cluster session, drop the watches of nodes that may run in another
    process (their memcbk URL would abort it; see :mod:`tfdump_fast.cluster`).
    Returns True when the run may have partitions in other processes."""
    try:
        placement = _coverage.placement(session, session.graph, allow_served=False)
    except Exception as exc:  # noqa: BLE001 - never fail the step: watch nothing
        log.error("tfdump-fast: capture_run could not probe the cluster; this run watches nothing: %s",
                  exc)
        placement = False
    if placement is None:
        return False  # a local session: every node runs here
    keep = [w for w in debug_options.debug_tensor_watch_opts
            if placement is not False and placement.watches(w.node_name)]
    if len(keep) != len(debug_options.debug_tensor_watch_opts):
        copies = []
        for w in keep:
            c = type(w)()
            c.CopyFrom(w)
            copies.append(c)
        del debug_options.debug_tensor_watch_opts[:]
        debug_options.debug_tensor_watch_opts.extend(copies)
    return placement is False or not placement.view.all_local


def _end_metadata(writer, session, captured: CapturedRun, publish_dir, published: PublishDirectory):
    core, graphs = PublishDirectory.take(publish_dir)
    attachments: List[bytes] = []
    hashes: Optional[List[str]] = None
    if core is not None:
        core = {k: core.get(k) for k in CORE_METADATA_KEYS}
        # TF's executor key: its feeds, fetches and targets and the debug
        # watches (the URLs included), in this session.
        key = (captured.run_options.debug_options.SerializeToString(deterministic=True),
               tuple(core["input_names"] or ()), tuple(core["output_names"] or ()),
               tuple(core["target_nodes"] or ()))
        executors = _executor_graphs(session)
        if graphs:
            attachments = graphs
            hashes = [_native.hash128(b).hex() for b in graphs]
            with _lock:
                executors[key] = hashes
        else:
            with _lock:
                hashes = executors.get(key)
    if hashes is None and len(captured.run_metadata.partition_graphs):
        attachments = [g.SerializeToString(deterministic=True) for g in captured.run_metadata.partition_graphs]
        hashes = [_native.hash128(b).hex() for b in attachments]
    end_meta: Dict[str, Any] = {"core_metadata": core, "graph_hashes": hashes}
    if publish_dir is None and published.unavailable is not None:
        with _lock:
            record = writer not in _degraded_writers
            _degraded_writers.add(writer)
        if record:
            end_meta["degraded"] = {"tf_publish": published.unavailable}
    captured.core_metadata, captured.graph_hashes = core, hashes
    return end_meta, attachments
