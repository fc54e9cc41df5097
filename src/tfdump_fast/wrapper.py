"""tfdbg's ``DumpingDebugWrapperSession`` on the tfdump-fast engine.

What the wrapper records, and how it differs from tfdbg's, is described in
:mod:`tfdump_fast.hooks` (which re-exports :class:`DumpingDebugWrapperSession`);
the state it shares with the hook is a :class:`~tfdump_fast.dumper.Dumper`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any, Dict, Optional, Tuple

import tensorflow as tf

from tfdump_fast import _tf_private
from tfdump_fast.dumper import Dumper
from tfdump_fast.errors import TfdumpTypeError, TfdumpUsageError
from tfdump_fast.run_names import feed_keys_repr
from tfdump_fast.cluster import is_cluster_target, session_target
from tfdump_fast.sampling import SampleSpec, in_run_global_step_read, step_of_run
from tfdump_fast.writer import DumpWriter, check_session_root

__all__ = ["DumpingDebugWrapperSession"]

log = logging.getLogger("tfdump_fast")

class DumpingDebugWrapperSession(_tf_private.SessionInterface):
    """tfdbg's ``DumpingDebugWrapperSession`` on the tfdump-fast engine.

    Wraps a ``tf.compat.v1.Session`` (or a ``MonitoredSession``); every
    ``run()`` it debugs becomes one run in the dump under ``session_root``.

    Parameters
    ----------
    sess : tf.compat.v1.Session or tf.compat.v1.train.MonitoredSession
        The session to wrap.
    session_root, watch_fn, thread_name_filter, sample, **engine_options
        As for :class:`~tfdump_fast.hooks.DumpingDebugHook`; with ``sample=`` the step is the
        graph's global step when it has one and can be read, else the 0-based
        index of the ``run()`` call.
    pass_through_operrors : bool, optional
        As in tfdbg: by default a ``tf.errors.OpError`` raised by a debugged
        run is *returned* by ``run()`` (the run is kept, marked failed); with
        True it is raised.

    Notes
    -----
    Two dump limits: ``disk_limit_bytes=`` (an engine option) counts the
    compressed bytes on disk and drops tensors past it; the environment
    variable ``TFDBG_DISK_BYTES_LIMIT`` is honoured as tfdbg counts it,
    tensor bytes since the wrapper's first run, but runs that would pass it
    go undebugged instead of failing with ``ResourceExhaustedError`` (see
    :class:`~tfdump_fast.tfdbg_limit.TfdbgByteLimit`). ``stats()["runs_over_tfdbg_byte_limit"]``
    counts them.

    The wrapper is a ``tensorflow.python.client.session.SessionInterface``
    (as tfdbg's is), so ``tf.compat.v1.train.Saver().save(wrapped, path)``,
    ``start_queue_runners(sess=wrapped)`` and ``wrapped.as_default()`` work.
    Wrapping anything but a ``Session`` or ``MonitoredSession`` (another
    wrapper included) raises tfdbg's ``TypeError`` ("Expected type ...; got
    type ...") as :class:`~tfdump_fast.errors.TfdumpTypeError`.

    Like tfdbg: runs with empty fetches and runs on threads that do not match
    ``thread_name_filter`` are passed through undebugged; ``partial_run`` is
    not supported; ``close()`` closes the wrapped session (and here also
    flushes and closes the writer). ``make_callable`` and
    ``_make_callable_from_options`` callables are debugged too.
    """

    def __init__(self, sess, session_root, watch_fn=None, thread_name_filter=None,
                 pass_through_operrors=None, *, sample: SampleSpec = None, **engine_options):
        expected = _tf_private.WRAPPABLE_SESSION_TYPES
        if not isinstance(sess, expected):
            # tfdbg's exact message (framework._check_type): code may match on it.
            raise TfdumpTypeError("Expected type %s; got type %s" % (expected, type(sess)))
        self._sess = sess
        self._pass_through_operrors = pass_through_operrors
        check_session_root(session_root)
        if pass_through_operrors is not None and not isinstance(pass_through_operrors, bool):
            raise TfdumpUsageError(
                f"pass_through_operrors={pass_through_operrors!r} must be True, False or None")
        self._dumper = Dumper("DumpingDebugWrapperSession", session_root, watch_fn,
                              thread_name_filter, sample, engine_options)
        self._default_session_context_manager = None
        self._callables: Dict[tuple, Any] = {}
        # Every dumped run records the global step, sampled or not (one
        # extra read of ~40 us per dumped run); a malformed collection means none.
        try:
            self._global_step_tensor = tf.compat.v1.train.get_global_step(sess.graph)
        except (TypeError, ValueError):
            self._global_step_tensor = None
        # On a cluster session the global step is fetched with the debugged
        # run (see _in_run_step); decided on the first debugged run.
        self._in_run_step_decided = False
        self._in_run_step = None
        # A wrapped MonitoredSession runs its own hooks, which may add fetches
        # we cannot see; then partition graphs are requested on every run.
        hooks = _tf_private.monitored_session_hooks(sess) or ()
        self._identity_ok = all(_tf_private.fetches_constantly(h) for h in hooks)

    # -- tfdbg's SessionInterface surface

    @property
    def graph(self):
        return self._sess.graph

    @property
    def graph_def(self):
        return self._sess.graph_def

    @property
    def sess_str(self):
        return self._sess.sess_str

    @property
    def session(self):
        """The wrapped session."""
        return self._sess

    @property
    def session_root(self) -> str:
        """The dump directory."""
        return self._dumper.session_root

    @property
    def writer(self) -> DumpWriter:
        """The :class:`~tfdump_fast.writer.DumpWriter` this wrapper writes through."""
        return self._dumper.writer

    @property
    def run_call_count(self) -> int:
        """1-based count of run() calls so far (tfdbg's counter)."""
        return self._dumper.run_call_count

    def increment_run_call_count(self):
        self._dumper.count_run_call()

    def run(self, fetches, feed_dict=None, options=None, run_metadata=None, callable_runner=None,
            callable_runner_args=None, callable_options=None):
        """``Session.run`` with dumping; the signature and checks are tfdbg's."""
        if callable_runner and callable_options:
            raise ValueError(
                "callable_runner and callable_options are mutually exclusive, but are both "
                "specified in this call to BaseDebugWrapperSession.run().")
        # tfdbg tests `fetches or feed_dict`, which fails on a graph Tensor.
        given = _given(fetches) or _given(feed_dict)
        if callable_runner and given:
            raise ValueError("callable_runner and fetches/feed_dict are mutually exclusive, but "
                             "are used simultaneously.")
        if callable_options and given:
            raise ValueError("callable_options and fetches/feed_dict are mutually exclusive, but "
                             "are used simultaneously.")
        d = self._dumper
        call = d.count_run_call()
        runner_args = callable_runner_args or ()

        def plain():
            if callable_runner:
                return callable_runner(*runner_args)
            if callable_options:
                return self._plain_callable(callable_options)(*runner_args)
            return self._sess.run(fetches, feed_dict=feed_dict, options=options,
                                  run_metadata=run_metadata)

        empty = _is_empty(fetches)
        if empty:
            log.info("Due to empty fetches, the tfdump-fast wrapper session lets this Session.run "
                     "pass through without debugging.")
        if empty or not d.thread_enabled():
            return plain()
        callable_info = getattr(callable_runner, "_tfdump_callable", None)
        meta_fetches, meta_feeds = fetches, feed_dict
        sampled_at = None
        if d.sampler is not None:
            sampled_at = self._current_step(call)
            if not d.sampler.should_sample(sampled_at[0]):
                return plain()   # a run sampled out costs the step read and nothing else
        metadata: Dict[str, Any] = {
            # tfdbg stores what run() was given: None for callables.
            "fetches": repr(meta_fetches), "feed_keys": feed_keys_repr(meta_feeds),
            "session_run_call": call, "thread": threading.current_thread().name,
        }
        if callable_info is not None:
            # Before the signature: callables with different fetches must not
            # share one TFDBG_DISK_BYTES_LIMIT signature.
            metadata["callable_fetches"] = repr(callable_info[0])
        signature = (metadata["fetches"], metadata["feed_keys"], metadata.get("callable_fetches"),
                     id(callable_options) if callable_options else None)
        if not self._dumper.byte_limit.allows(signature):
            return plain()
        # On a cluster, fetched with the run (plain runs; callables have
        # fixed fetches): a separate read is a master step of its own.
        step_read = (self._in_run_step_read()
                     if sampled_at is None and not callable_runner and not callable_options else None)
        if step_read is not None:
            metadata["step"], metadata["global_step"] = None, None  # known at the run's end
        else:
            if sampled_at is None:  # no sampler: read it now (a Session.run), only for a dumped run
                sampled_at = self._current_step(call)
            metadata["step"], metadata["global_step"] = sampled_at
        spec = d.watch_spec(fetches, feed_dict)
        graph = self._sess.graph
        if callable_options:
            io_names = (list(callable_options.feed), list(callable_options.fetch),
                        list(callable_options.target))
            extra = ("callable_options", id(callable_options))
        elif callable_info is not None:
            c_fetches, c_feed_list = callable_info
            io_names = d.names.names(graph, c_fetches,
                                     {f: None for f in c_feed_list} if c_feed_list else None)
            extra = ()
        else:
            io_names = d.names.names(graph, fetches, feed_dict)
            extra = ()
        started = d.start_run(self._sess, graph, spec, metadata, io_names, key_extra=extra,
                              identity_ok=self._identity_ok)
        if started is None:
            return plain()
        pending, debug_options = started
        end_metadata = None
        run_metadata = run_metadata if run_metadata is not None else tf.compat.v1.RunMetadata()
        try:
            if callable_options:
                retvals = self._run_callable_from_options(callable_options, debug_options,
                                                          pending, runner_args, run_metadata)
            else:
                run_options = tf.compat.v1.RunOptions()
                if options is not None:
                    # A copy: tfdbg edits the caller's RunOptions in place,
                    # which piles up watches when they are reused.
                    run_options.CopyFrom(options)
                if debug_options is not None:
                    run_options.debug_options.CopyFrom(debug_options)
                    if pending.want_graphs:
                        run_options.output_partition_graphs = True
                if callable_runner:
                    retvals = callable_runner(*runner_args, options=run_options,
                                              run_metadata=run_metadata)
                elif step_read is not None:
                    retvals, step_value = self._sess.run((fetches, step_read), feed_dict=feed_dict,
                                                         options=run_options, run_metadata=run_metadata)
                    end_metadata = {"step": int(step_value), "global_step": int(step_value),
                                    "global_step_read": "in_run"}
                else:
                    retvals = self._sess.run(fetches, feed_dict=feed_dict, options=run_options,
                                             run_metadata=run_metadata)
        except tf.errors.OpError as op_error:
            d.finish_run(pending, run_metadata, error=op_error)
            self._dumper.byte_limit.record(signature, pending.run)
            if self._pass_through_operrors:
                raise
            return op_error  # tfdbg returns the error object
        except BaseException as exc:
            d.finish_run(pending, run_metadata, error=exc)
            self._dumper.byte_limit.record(signature, pending.run)
            raise
        d.finish_run(pending, run_metadata, end_metadata=end_metadata)
        self._dumper.byte_limit.record(signature, pending.run)
        return retvals

    def _run_callable_from_options(self, callable_options, debug_options, pending, runner_args,
                                   run_metadata):
        # A callable's RunOptions are fixed when it is made, so one callable
        # per (callable options, slot URL, watch set). Each is a new
        # executor; ask for its partition graphs on every call since
        # RunOptions cannot change per call (TensorFlow serialises them only
        # when asked, tfdbg does the same).
        url = pending.run.debug_urls[0] if pending.run.debug_urls else None
        # The DebugOptions object is cached per (graph version, watch spec,
        # URL), so its identity stands for the watch set; the entry keeps it
        # alive so the id cannot be reused.
        key = (id(callable_options), url, id(debug_options))
        entry = self._callables.get(key)
        if entry is None or entry[0] is not callable_options or entry[1] is not debug_options:
            decorated = type(callable_options)()  # CallableOptions has no public name
            decorated.CopyFrom(callable_options)
            if debug_options is not None:
                decorated.run_options.debug_options.CopyFrom(debug_options)
                decorated.run_options.output_partition_graphs = True
            entry = (callable_options, debug_options,
                     _tf_private.make_callable_from_options(self._sess, decorated))
            self._callables[key] = entry
        return entry[2](*runner_args, run_metadata=run_metadata)

    def _plain_callable(self, callable_options):
        # tfdbg makes a new callable (a new executor) for every undebugged
        # call; one per CallableOptions object is enough.
        entry = self._callables.get(("plain", id(callable_options)))
        if entry is None or entry[0] is not callable_options:
            entry = (callable_options, _tf_private.make_callable_from_options(self._sess, callable_options))
            self._callables[("plain", id(callable_options))] = entry
        return entry[1]

    def _current_step(self, call: int) -> Tuple[int, Optional[int]]:
        raw = None
        if self._global_step_tensor is not None:
            raw = self._sess
            if not _tf_private.is_plain_session(raw):
                raw = _tf_private.raw_session(raw)
        return step_of_run(raw, self._global_step_tensor, call)

    def _in_run_step_read(self):
        """The tensor that reads the global step inside a debugged run, or None.

        Only for a plain session on a cluster target (there a separate read
        is a master step with a round trip to the ps); added to the graph on
        the first debugged run (``sampling.in_run_global_step_read``), None
        when the graph is finalized without it: the separate read then.
        """
        if not self._in_run_step_decided:
            self._in_run_step_decided = True
            sess = self._sess
            if self._global_step_tensor is not None and _tf_private.is_plain_session(sess) \
                    and is_cluster_target(session_target(sess)):
                self._in_run_step = in_run_global_step_read(sess.graph, self._global_step_tensor)
        return self._in_run_step

    def make_callable(self, fetches, feed_list=None, accept_options=False):
        """Like ``Session.make_callable``; calls of the result are debugged."""
        del accept_options  # the runner always accepts them, as in tfdbg
        runner = self._sess.make_callable(fetches, feed_list=feed_list, accept_options=True)
        runner._tfdump_callable = (fetches, list(feed_list) if feed_list else None)

        def wrapped_runner(*runner_args, **kwargs):
            return self.run(None, feed_dict=None, options=kwargs.get("options", None),
                            run_metadata=kwargs.get("run_metadata", None),
                            callable_runner=runner, callable_runner_args=runner_args)

        return wrapped_runner

    def _make_callable_from_options(self, callable_options):
        def wrapped_runner(*feed_values, **kwargs):
            return self.run(None, run_metadata=kwargs.get("run_metadata", None),
                            callable_options=callable_options, callable_runner_args=feed_values)

        return wrapped_runner

    def partial_run_setup(self, fetches, feeds=None):
        raise NotImplementedError(
            "partial_run_setup is not implemented for debug-wrapper sessions.")

    def partial_run(self, handle, fetches, feed_dict=None):
        raise NotImplementedError("partial_run is not implemented for debug-wrapper sessions.")

    def list_devices(self, *args, **kwargs):
        return self._sess.list_devices(*args, **kwargs)

    def reset(self, *args, **kwargs):
        return self._sess.reset(*args, **kwargs)

    def run_step_fn(self, step_fn):
        return step_fn(tf.compat.v1.train.MonitoredSession.StepContext(self._sess, self.run))

    def should_stop(self):
        if hasattr(self._sess, "should_stop"):
            return self._sess.should_stop()
        raise ValueError(
            f"The wrapped session {self._sess!r} does not have a method called 'should_stop'. "
            "Do you intend to wrap a tf.MonitoredSession instead?")

    def as_default(self):
        return _tf_private.default_session(self)

    def __enter__(self):
        if self._default_session_context_manager is None:
            self._default_session_context_manager = self.as_default()
        return self._default_session_context_manager.__enter__()

    def __exit__(self, exc_type, exc_value, exc_tb):
        self._default_session_context_manager.__exit__(exc_type, exc_value, exc_tb)
        if exc_type is None and not self._dumper.writer.closed:
            # tfdbg leaves the session open here; we only make the dump
            # readable, which costs nothing when it already is.
            self._dumper.flush()

    def flush(self):
        """Return once every finished run is on disk and readable."""
        self._dumper.flush()

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

    def close(self):
        """Close the wrapped session (as tfdbg does), then flush and close the writer."""
        try:
            self._sess.close()
        finally:
            self._callables.clear()
            self._dumper.close()


def _given(x) -> bool:
    if x is None:
        return False
    if isinstance(x, (list, tuple, dict)):
        return len(x) > 0
    return True


def _is_empty(x) -> bool:
    """tfdbg's test for 'nothing to fetch' (a possibly nested empty structure)."""
    if not tf.nest.is_nested(x):
        return False
    if isinstance(x, Mapping):
        return _is_empty(list(x.values()))
    return all(_is_empty(item) for item in x)
