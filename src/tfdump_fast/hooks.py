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
  beforehand which executor will run, so it asks on every debugged run and
  stores each distinct graph once.
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
    Only with ``sample=``: the step the sampler saw and, when the graph has
    a global step, its value before the run.

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
"""

from __future__ import annotations

import atexit
import dataclasses
import inspect
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

# TensorFlow is imported by this module, not by `import tfdump_fast`: the
# package resolves this module lazily, on first use of the hook or wrapper.
from tensorflow.core.protobuf import config_pb2
from tensorflow.core.util import event_pb2
from tensorflow.python.client import session as tf_session
from tensorflow.python.debug.lib import debug_utils
from tensorflow.python.debug.wrappers import framework as tfdbg_framework
from tensorflow.python.framework import errors as tf_errors
from tensorflow.python.framework import op_def_registry
from tensorflow.python.training import monitored_session, session_run_hook, training_util
from tensorflow.python.util import nest

from tfdump_fast import _native
from tfdump_fast.bridge import get_bridge
from tfdump_fast.errors import TfdumpError, TfdumpUsageError
from tfdump_fast.sampling import SampleSpec, StepSampler, as_sampler
from tfdump_fast.writer import DumpWriter, Run, prepare_session_root

__all__ = ["DumpingDebugHook", "DumpingDebugWrapperSession", "WatchOptions"]

log = logging.getLogger("tfdump_fast")

#: tfdbg's own ``WatchOptions`` class, so objects built from either name are
#: interchangeable.
WatchOptions = tfdbg_framework.WatchOptions


# ---------------------------------------------------------------------------
# Watch options.


class _WatchSpec(NamedTuple):
    """A validated, hashable ``WatchOptions``."""

    debug_ops: Tuple[str, ...]
    node_name_regex_allowlist: Optional[str]
    op_type_regex_allowlist: Optional[str]
    tensor_dtype_regex_allowlist: Optional[str]
    tolerate_debug_op_creation_failures: bool

    def as_dict(self) -> Dict[str, Any]:
        d = self._asdict()
        d["debug_ops"] = list(self.debug_ops)
        return d


_DEFAULT_OPS = ("DebugIdentity",)
# Attributes the debug node inserter sets itself; a user may set the others.
_INSERTER_ATTRS = {"T", "device_name", "tensor_name", "debug_urls"}
_validated_specs: Dict[_WatchSpec, None] = {}
_validated_lock = threading.Lock()


def _watch_spec(value: Any, source: str) -> _WatchSpec:
    """Normalise what ``watch_fn`` returned, as tfdbg does, and validate it.

    tfdbg accepts a ``WatchOptions`` or a tuple that is passed positionally
    to ``WatchOptions(...)`` (the legacy ``(debug_ops, node_name_regex,
    op_type_regex)`` form). Any object with the ``WatchOptions`` attributes is
    accepted too.
    """
    if value is None:
        raise TypeError(
            f"{source} returned None; it must return a WatchOptions (tf_debug.WatchOptions) "
            "or a (debug_ops, node_name_regex_allowlist, op_type_regex_allowlist) tuple")
    if isinstance(value, tuple):
        try:
            value = WatchOptions(*value)
        except TypeError as exc:
            raise TypeError(
                f"{source} returned a tuple of {len(value)} items, which is not a valid "
                f"WatchOptions argument list ({exc}); use (debug_ops, node_name_regex_allowlist, "
                "op_type_regex_allowlist[, tensor_dtype_regex_allowlist[, "
                "tolerate_debug_op_creation_failures]])") from None
    if not hasattr(value, "debug_ops"):
        raise TypeError(
            f"{source} returned a {type(value).__name__}, not a WatchOptions; return "
            "tf_debug.WatchOptions(...) or a (debug_ops, node_name_regex_allowlist, "
            "op_type_regex_allowlist) tuple")
    ops = value.debug_ops or list(_DEFAULT_OPS)  # WatchOptions() does the same
    if isinstance(ops, str):
        ops = [ops]
    try:
        ops = tuple(ops)
    except TypeError:
        raise TypeError(f"{source}: debug_ops must be a str or a list of str, got "
                        f"{type(value.debug_ops).__name__}") from None

    def regex(name):
        v = getattr(value, name, None)
        # tfdbg: `re.compile(x) if x else None`, so "" means "no filter".
        if not v:
            return None
        if not isinstance(v, str):
            raise TypeError(f"{source}: {name} must be a str (a regular expression) or None, "
                            f"got {type(v).__name__}")
        return v

    spec = _WatchSpec(
        ops, regex("node_name_regex_allowlist"), regex("op_type_regex_allowlist"),
        regex("tensor_dtype_regex_allowlist"),
        bool(getattr(value, "tolerate_debug_op_creation_failures", False)))
    if spec not in _validated_specs:
        _validate_spec(spec, source)
        with _validated_lock:
            if len(_validated_specs) > 4096:  # a watch_fn inventing regexes per step
                _validated_specs.clear()
            _validated_specs[spec] = None
    return spec


def _validate_spec(spec: _WatchSpec, source: str) -> None:
    for name in ("node_name_regex_allowlist", "op_type_regex_allowlist",
                 "tensor_dtype_regex_allowlist"):
        pattern = getattr(spec, name)
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise TfdumpUsageError(
                    f"{source}: {name}={pattern!r} is not a valid regular expression: {exc}") from None
    if not spec.debug_ops:
        raise TfdumpUsageError(f"{source}: debug_ops is empty; use e.g. ['DebugIdentity']")
    for op in spec.debug_ops:
        _validate_debug_op(op, source)


def _supported_debug_ops() -> List[str]:
    return ["DebugIdentity", "DebugNumericSummary", "DebugNanCount"]


def _validate_debug_op(debug_op: str, source: str) -> None:
    """Check a debug op string the way TensorFlow's debug node inserter parses it.

    ``Name`` or ``Name(attr=value;attr=value)``. TensorFlow would report a bad
    one only when the executor is built, as a FailedPreconditionError of the
    Session.run; checking here names the problem before any run.
    """
    if not isinstance(debug_op, str):
        raise TypeError(f"{source}: debug op {debug_op!r} is not a str")
    lpar, rpar = debug_op.find("("), debug_op.find(")")
    attrs: Dict[str, str] = {}
    if lpar < 0 and rpar < 0:
        name = debug_op
    else:
        if lpar <= 0 or rpar != len(debug_op) - 1:
            raise TfdumpUsageError(
                f"{source}: malformed debug op {debug_op!r}; the form is Name or "
                "Name(attr=value;attr=value), e.g. 'DebugNumericSummary(mute_if_healthy=true)'")
        name = debug_op[:lpar]
        for seg in debug_op[lpar + 1:rpar].split(";"):
            seg = seg.strip()
            if not seg:
                continue
            key, eq, val = seg.partition("=")
            if not eq or not key.strip() or not val.strip():
                raise TfdumpUsageError(
                    f"{source}: malformed attribute {seg!r} in debug op {debug_op!r}; "
                    "write attr=value pairs separated by ';'")
            attrs[key.strip()] = val.strip()
    op_def = op_def_registry.get(name)
    op_attrs = {a.name for a in op_def.attr} if op_def is not None else set()
    if op_def is None or not {"device_name", "tensor_name", "debug_urls"} <= op_attrs:
        raise TfdumpUsageError(
            f"{source}: unknown debug op {name!r} (in {debug_op!r}); supported debug ops: "
            f"{', '.join(_supported_debug_ops())}")
    settable = sorted(op_attrs - _INSERTER_ATTRS)
    for key in attrs:
        if key not in settable:
            raise TfdumpUsageError(
                f"{source}: debug op {name} has no attribute {key!r} (in {debug_op!r}); "
                f"its attributes are: {', '.join(settable) or '(none)'}")


# ---------------------------------------------------------------------------
# Watch sets: debug_utils.watch_graph is O(#ops) per call, so its result is
# cached per graph version and watch spec, and per slot URL.

_PLACEHOLDER_URL = "memcbk://tfdump_slot_placeholder"

# A watch of a node no graph has, with a file:// URL into a private directory
# per capture slot: no debug op is inserted for it, but TensorFlow publishes
# to every URL of the debug options what tfdbg's own dumps get -- each new
# executor's partition graphs (when it is built, so also for a run that then
# fails) and the run's core metadata (TF's own session_run_index and
# executor_step_index). The hook reads and deletes those small files after
# each run. The URL is stable per slot, so executors stay cached.
_PUBLISH_NODE = "_tfdump_fast_publish_"
_PUBLISH_MIN_FREE = 64 << 20


class _WatchCache:
    def __init__(self):
        self._lock = threading.Lock()
        self._by_graph: "weakref.WeakKeyDictionary[Any, Dict]" = weakref.WeakKeyDictionary()

    def debug_options(self, graph, spec: _WatchSpec, url: Optional[str], publish_dir: Optional[str] = None):
        """Return (DebugOptions or None, number of watches) for this run.

        ``url=None`` only counts the watches. ``publish_dir``: see
        :data:`_PUBLISH_NODE`.
        """
        version = graph.version
        with self._lock:
            per = self._by_graph.get(graph)
            if per is None or per["version"] != version:
                # The graph grew: watches computed for the old version are stale.
                per = {"version": version, "templates": {}, "by_url": {}}
                self._by_graph[graph] = per
            template = per["templates"].get(spec)
        if template is None:
            template = self._build(graph, spec)
            with self._lock:
                per["templates"][spec] = template
        opts, n = template
        if url is None or n == 0:
            return None, n
        key = (spec, url, publish_dir)
        with self._lock:
            cached = per["by_url"].get(key)
        if cached is None:
            cached = type(opts)()
            cached.CopyFrom(opts)
            for watch in cached.debug_tensor_watch_opts:
                del watch.debug_urls[:]
                watch.debug_urls.append(url)
            if publish_dir is not None:
                watch = cached.debug_tensor_watch_opts.add()
                watch.node_name, watch.output_slot = _PUBLISH_NODE, 0
                watch.debug_ops.append("DebugIdentity")
                watch.debug_urls.append("file://" + publish_dir)
            with self._lock:
                per["by_url"][key] = cached
        return cached, n

    @staticmethod
    def _build(graph, spec: _WatchSpec):
        run_options = config_pb2.RunOptions()
        debug_utils.watch_graph(
            run_options, graph,
            debug_ops=list(spec.debug_ops),
            debug_urls=[_PLACEHOLDER_URL],
            node_name_regex_allowlist=spec.node_name_regex_allowlist,
            op_type_regex_allowlist=spec.op_type_regex_allowlist,
            tensor_dtype_regex_allowlist=spec.tensor_dtype_regex_allowlist,
            tolerate_debug_op_creation_failures=spec.tolerate_debug_op_creation_failures,
            # tfdbg's hook and wrapper leave the default global step (-1).
            global_step=-1,
            # Only meaningful for file:// URLs; leave tfdbg's byte counter alone.
            reset_disk_byte_usage=False)
        opts = run_options.debug_options
        return opts, len(opts.debug_tensor_watch_opts)


# ---------------------------------------------------------------------------
# Names of a run's feeds, fetches and targets, as TensorFlow's core metadata
# lists them (sorted, like the executor's CallableOptions).


def _run_io_names(graph, fetches, feed_dict) -> Optional[Tuple[List[str], List[str], List[str]]]:
    try:
        feeds = {}
        inputs = []
        if feed_dict:
            for key, value in nest.flatten_dict_items(feed_dict).items():
                for sub, sub_value in _expand_feed(key, value):
                    tensor = graph.as_graph_element(sub, allow_tensor=True, allow_operation=False)
                    feeds[tensor.ref()] = sub_value
                    inputs.append(tensor.name)
        handler = tf_session._FetchHandler(graph, fetches, feeds)
        outputs = [x.name for x in handler.fetches()]
        targets = [op.name for op in handler.targets()]
        return sorted(set(inputs)), sorted(set(outputs)), sorted(set(targets))
    except Exception:  # noqa: BLE001 - metadata only; Session.run reports real errors
        return None


def _structure_key(obj, leaves: list):
    """A hashable key for a fetch structure; leaves are keyed by identity.

    The leaves are appended to ``leaves`` so the caller can keep them alive
    (an id stays unique only while its object lives).
    """
    if isinstance(obj, str):
        return ("s", obj)
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__,) + tuple(_structure_key(o, leaves) for o in obj)
    if isinstance(obj, Mapping):
        return ("d",) + tuple((_structure_key(k, leaves), _structure_key(v, leaves))
                              for k, v in obj.items())
    leaves.append(obj)
    return id(obj)


class _NamesCache:
    """Caches :func:`_run_io_names`: a training loop runs the same fetches and
    feed keys every step, and working the names out costs ~0.1 ms."""

    _MAX = 256

    def __init__(self):
        self._lock = threading.Lock()
        self._cache: Dict[Any, Tuple[Any, list]] = {}

    def names(self, graph, fetches, feed_dict):
        leaves: list = [graph]
        try:
            key = (id(graph), graph.version, _structure_key(fetches, leaves),
                   _structure_key(list(feed_dict) if feed_dict else None, leaves))
            hash(key)
        except (TypeError, RecursionError):
            return _run_io_names(graph, fetches, feed_dict)
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None:
            return hit[0]
        names = _run_io_names(graph, fetches, feed_dict)
        with self._lock:
            if len(self._cache) >= self._MAX:
                self._cache.clear()
            self._cache[key] = (names, leaves)  # leaves kept alive: ids stay valid
        return names


def _expand_feed(key, value):
    for tensor_type, _, feed_fn, _ in tf_session._REGISTERED_EXPANSIONS:
        if isinstance(key, tensor_type):
            return feed_fn(key, value)
    return [(key, value)]


def _feed_keys_repr(feed_dict) -> str:
    # Exactly what tfdbg's DumpingDebugWrapperSession stores.
    return repr(feed_dict.keys()) if feed_dict else repr(feed_dict)


# ---------------------------------------------------------------------------
# The shared core.


@dataclasses.dataclass
class _Executor:
    """What we know about one TensorFlow executor (one run signature)."""

    steps: int = 0
    graph_hashes: Optional[List[str]] = None


@dataclasses.dataclass
class _Pending:
    """A debugged Session.run between its start and its end."""

    run: Run
    thread_id: int
    session: Any
    graph: Any
    # (inputs, outputs, targets) as seen by the caller: the hook's view lacks
    # what other hooks add. None when they could not be worked out.
    io_names: Optional[Tuple[List[str], List[str], List[str]]]
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


_CORE_KEYS = ("global_step", "session_run_index", "executor_step_index", "input_names", "output_names",
              "target_nodes")

_live_dumpers: "weakref.WeakSet[_Dumper]" = weakref.WeakSet()


def _end_dangling_at_exit() -> None:
    # Registered after DumpWriter's own exit handler, so it runs before it
    # (atexit is LIFO): runs whose Session.run raised and whose hook never got
    # end() are closed as failed, with the error that ended the program when
    # Python knows it, before the writers are flushed and closed.
    error = getattr(sys, "last_value", None)
    for dumper in list(_live_dumpers):
        try:
            dumper.end_dangling(error=error, at_exit=True)
        except Exception as exc:  # noqa: BLE001 - exit path: report, never raise
            log.error("tfdump-fast: ending open runs at exit failed: %s", exc)
        root = dumper._publish_root  # pylint: disable=protected-access
        if root:
            shutil.rmtree(root, ignore_errors=True)


atexit.register(_end_dangling_at_exit)


def _writer_option_names() -> set:
    params = inspect.signature(DumpWriter.__init__).parameters
    return {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


class _Dumper:
    """State shared by the hook and the wrapper: writer, caches, open runs."""

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
        self.session_root = os.path.expanduser(os.fspath(session_root))
        # The session root is checked first (tfdbg's errors, at once); then
        # the TF bridge is loaded (compiled on first use), so a missing
        # compiler or a broken build is reported here with its fix, not as a
        # logged "could not start a debugged run" once training has begun,
        # and before the writer puts files into the root.
        prepare_session_root(self.session_root, bool(self.engine_options.get("allow_existing")))
        get_bridge()
        self.writer = DumpWriter(self.session_root, **self.engine_options)
        self._lock = threading.RLock()
        self._pending: Dict[int, _Pending] = {}
        self._executors: "weakref.WeakKeyDictionary[Any, Dict[tuple, _Executor]]" = \
            weakref.WeakKeyDictionary()
        self._executors_by_id: Dict[int, Dict[tuple, _Executor]] = {}
        self._watches = _WatchCache()
        self.names = _NamesCache()
        self._logged: set = set()
        self.run_call_count = 0
        self.runs_debugged = 0
        self._publish_root: Optional[str] = None
        self._publish_checked = float("-inf")
        self._publish_ok = True
        _live_dumpers.add(self)

    # -- writer lifecycle

    def reopen_if_closed(self) -> None:
        """A hook reused after end() (e.g. a second estimator.train) gets a new writer."""
        with self._lock:
            if self.writer.closed:
                opts = dict(self.engine_options, allow_existing=True)
                self.writer = DumpWriter(self.session_root, **opts)

    def flush(self) -> None:
        self.writer.flush()

    def close(self, error=None) -> None:
        self.end_dangling(error=error)
        self.writer.close()
        with self._lock:
            root, self._publish_root = self._publish_root, None
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)

    def _publish_dir(self, url: str) -> Optional[str]:
        """The directory TF publishes graphs and core metadata to for this slot URL."""
        with self._lock:
            if self._publish_root is None:
                try:
                    self._publish_root = tempfile.mkdtemp(prefix="tfdump-fast-publish-")
                except OSError as exc:
                    self._log_once("publish", "tfdump-fast: %s cannot create a temporary directory; "
                                              "runs that fail on a new executor will have no partition "
                                              "graphs: %s", self.owner, exc)
                    self._publish_root = ""
            root = self._publish_root
        return os.path.join(root, url.rsplit("/", 1)[-1]) if root else None

    def _publish_room(self) -> bool:
        """Whether TF may publish into the temporary directory for this run.

        TensorFlow fails the *run* when it cannot write what it publishes, so
        with less than ``_PUBLISH_MIN_FREE`` bytes free there (checked at most
        once a second) runs go without it: partition graphs then come from
        RunMetadata (successful runs only) and the core metadata from the
        hook's own account. Switching costs one executor build each way.
        """
        now = time.monotonic()
        with self._lock:
            if now - self._publish_checked < 1.0:
                return self._publish_ok
            self._publish_checked = now
            root = self._publish_root or tempfile.gettempdir()
        try:
            st = os.statvfs(root)
            ok = st.f_bavail * st.f_frsize >= _PUBLISH_MIN_FREE
        except OSError:
            ok = False
        if not ok:
            self._log_once("publish-room", "tfdump-fast: %s: less than %d MiB free in %s; TensorFlow's "
                                           "graphs of runs that fail on a new executor and its exact core "
                                           "metadata are not recorded until there is room (set TMPDIR to a "
                                           "roomier file system)", self.owner, _PUBLISH_MIN_FREE >> 20, root)
        with self._lock:
            self._publish_ok = ok
        return ok

    @staticmethod
    def _take_published(publish_dir: Optional[str]) -> Tuple[Optional[Dict[str, Any]], List[bytes]]:
        """(core metadata, partition graphs) TF published for the run that just ended; removes them."""
        core, graphs = None, []
        if not publish_dir or not os.path.isdir(publish_dir):
            return core, graphs
        best = -1
        for entry in sorted(os.scandir(publish_dir), key=lambda e: e.name):
            try:
                if entry.is_dir():
                    for sub in sorted(os.scandir(entry.path), key=lambda e: e.name):
                        if sub.name.startswith("_tfdbg_graph_"):
                            with open(sub.path, "rb") as f:
                                graphs.append(event_pb2.Event.FromString(f.read()).graph_def)
                        os.unlink(sub.path)
                elif entry.name.startswith("_tfdbg_core_metadata_"):
                    with open(entry.path, "rb") as f:
                        meta = json.loads(event_pb2.Event.FromString(f.read()).log_message.message)
                    os.unlink(entry.path)
                    if int(meta.get("session_run_index", -1)) > best:
                        best, core = int(meta.get("session_run_index", -1)), meta
                else:
                    os.unlink(entry.path)
            except (OSError, ValueError, TypeError, AttributeError) as exc:  # never fail the run for it
                log.debug("tfdump-fast: unreadable published file %s: %s", entry.path, exc)
        return core, graphs

    # -- per-run

    def thread_enabled(self) -> bool:
        if self.thread_pattern is None:
            return True
        name = threading.current_thread().name or ""
        return bool(self.thread_pattern.match(name))

    def count_run_call(self) -> int:
        with self._lock:
            self.run_call_count += 1
            return self.run_call_count

    def watch_spec(self, fetches, feed_dict) -> _WatchSpec:
        if self.watch_fn is None:
            return _WatchSpec(_DEFAULT_OPS, None, None, None, False)
        return _watch_spec(self.watch_fn(fetches, feed_dict), "watch_fn")

    def start_run(self, session, graph, spec: _WatchSpec, metadata: Dict[str, Any], io_names,
                  *, key_extra: tuple = (), identity_ok: bool = True,
                  core_global_step: int = -1) -> Optional[Tuple[_Pending, Any]]:
        """Begin a run.

        Returns ``(pending, DebugOptions or None)``, or None when the writer
        could not begin a run (then the Session.run goes ahead undebugged).
        """
        _, n_watches = self._watches.debug_options(graph, spec, None)
        metadata = dict(metadata)
        metadata["watch_options"] = spec.as_dict()
        try:
            run = self.writer.begin_run(metadata=metadata, capture=n_watches > 0)
        except TfdumpError as exc:
            self._log_once("begin", "tfdump-fast: %s could not start a debugged run; running "
                                    "Session.run without debugging: %s", self.owner, exc)
            return None
        thread_id = threading.get_ident()
        call_index = int(metadata.get("session_run_call", 1)) - 1
        if n_watches == 0:
            # Nothing matched: TensorFlow runs without a debugger state, so
            # there is no core metadata and no debug graph, as with tfdbg.
            pending = _Pending(run, thread_id, session, graph, io_names, (), identity_ok, False,
                               False, call_index, core_global_step)
            debug_options = None
        else:
            url = run.debug_urls[0]
            publish_dir = self._publish_dir(url) if self._publish_room() else None
            debug_options, _ = self._watches.debug_options(graph, spec, url, publish_dir)
            key_tail = (url, spec, graph.version) + tuple(key_extra)
            want = True
            if identity_ok and io_names is not None:
                executor = self._executor(session, io_names, key_tail, create=False)
                if executor is None:
                    # A new executor: TF publishes its graphs when it builds
                    # it, so RunMetadata need not carry them a second time.
                    want = publish_dir is None
                else:
                    want = executor.graph_hashes is None
            pending = _Pending(run, thread_id, session, graph, io_names, key_tail, identity_ok, True,
                               want, call_index, core_global_step, publish_dir)
        with self._lock:
            self._pending[thread_id] = pending
            self.runs_debugged += 1
        return pending, debug_options

    def stats(self) -> Dict[str, Any]:
        out = dict(self.writer.stats())
        with self._lock:
            out["session_run_calls"] = self.run_call_count
            out["runs_debugged"] = self.runs_debugged
        return out

    def _executor(self, session, io_names, key_tail, create=True) -> Optional[_Executor]:
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
                executor = per_session[key] = _Executor()
            return executor

    def finish_run(self, pending: _Pending, run_metadata=None, error: Optional[BaseException] = None,
                   error_text: Optional[str] = None, full_io_names=None,
                   core_global_step: Optional[int] = None) -> None:
        """End a run: core metadata, partition graphs, status.

        ``full_io_names``: the names of everything the Session.run really
        fed and fetched, when known after the fact (the hook reads them from
        MonitoredSession); they identify the executor exactly.
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
            published_core, published_graphs = self._take_published(pending.publish_dir)
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
            gstep = pending.core_global_step if core_global_step is None else core_global_step
            if published_core is not None:
                end_meta["core_metadata"] = {k: published_core.get(k) for k in _CORE_KEYS}
            else:  # TF published nothing (e.g. no temporary directory): our own account
                end_meta["core_metadata"] = {
                    "global_step": int(gstep),
                    "session_run_index": pending.call_index,
                    "executor_step_index": step_index,
                    "input_names": list(names[0]),
                    "output_names": list(names[1]),
                    "target_nodes": list(names[2]),
                }
            end_meta["graph_hashes"] = hashes
        status, text = "ok", None
        if error is not None or error_text is not None:
            status = "failed"
            text = error_text if error_text is not None else _describe_error(error)
        try:
            self.writer.end_run(pending.run, status=status, error=text, metadata=end_meta,
                                attachments=attachments or None)
        except TfdumpError as exc:
            self._log_once("end", "tfdump-fast: %s could not finish run %s: %s", self.owner,
                           pending.run.run_name, exc)

    def take_dangling(self, thread_id: Optional[int] = None) -> List[_Pending]:
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
                text = _describe_error(error)
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


def _describe_error(error) -> str:
    if error is None:
        return "unknown error"
    message = getattr(error, "message", None) or str(error)
    return f"{type(error).__name__}: {message}"


def _read_global_step(session, tensor) -> Optional[int]:
    """The global step's value now, via a plain (undebugged) run.

    The session keeps a callable for it (``Session.make_callable`` skips most
    of ``Session.run``'s Python work: 40 us instead of 100 us measured), as
    an attribute, so it lives and dies with the session. Unsampled steps pay
    this read and nothing else.
    """
    try:
        cached = getattr(session, "_tfdump_global_step_reader", None)
        if cached is None or cached[0] is not tensor:
            try:
                cached = (tensor, session.make_callable(tensor))
                session._tfdump_global_step_reader = cached
            except (AttributeError, TypeError):
                return int(session.run(tensor))
        return int(cached[1]())
    except Exception:  # noqa: BLE001 - e.g. not initialised yet; caller falls back
        return None


# ---------------------------------------------------------------------------
# The hook.


# Hooks whose before_run requests the same fetches and feeds on every run, so
# they never change which TensorFlow executor runs. With any other hook in
# the MonitoredSession, the fetches may change from run to run in ways this
# hook cannot see beforehand (LoggingTensorHook, SummarySaverHook, user
# hooks), so partition graphs are requested on every debugged run.
_CONSTANT_FETCH_HOOKS = (
    "StopAtStepHook", "_MultiStepStopAtStepHook", "CheckpointSaverHook", "StepCounterHook",
    "NanTensorHook", "GlobalStepWaiterHook", "FinalOpsHook", "ProfilerHook",
)
_hook_list_verdicts: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()


def _fetches_constantly(hook) -> bool:
    cls = type(hook)
    if cls is session_run_hook.SessionRunHook:
        return True
    if cls.__module__.startswith("tensorflow.") and cls.__name__ in _CONSTANT_FETCH_HOOKS:
        return True
    if cls.__module__.startswith("tensorflow.") and cls.__name__ == "SummarySaverHook":
        # Fetches a summary op every N steps, unless the graph has none.
        try:
            return hook._get_summary_op() is None
        except Exception:  # noqa: BLE001
            return False
    return False


def _other_hooks_fetch_constantly(me) -> bool:
    """Whether the other hooks of the calling MonitoredSession leave the executor alone.

    Reads the hook list from the ``_HookedSession`` frame that calls
    ``before_run``; False (the safe answer) when it cannot be found.
    """
    frame = sys._getframe(2)
    for _ in range(3):
        if frame is None:
            return False
        if frame.f_code.co_name == "_call_hook_before_run":
            owner = frame.f_locals.get("self")
            hooks = getattr(owner, "_hooks", None)
            if hooks is None:
                return False
            try:
                verdict = _hook_list_verdicts.get(owner)
            except TypeError:
                verdict = None
            if verdict is None:
                verdict = all(h is me or _fetches_constantly(h) for h in hooks)
                try:
                    _hook_list_verdicts[owner] = verdict
                except TypeError:
                    pass
            return verdict
        frame = frame.f_back
    return False


def _hooked_run_args(run_context):
    """(fetches, feed_dict) that MonitoredSession actually ran, read from its frame.

    They include what every hook added, so they identify the executor and
    give tfdbg's core metadata names exactly. None when not found.
    """
    frame = sys._getframe(2)
    for _ in range(3):
        if frame is None:
            return None
        if frame.f_code.co_name == "run":
            local = frame.f_locals
            if local.get("run_context") is run_context and "actual_fetches" in local:
                return local["actual_fetches"], local.get("feed_dict")
        frame = frame.f_back
    return None


class DumpingDebugHook(session_run_hook.SessionRunHook):
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
        ``allow_existing``, ...).

    Notes
    -----
    ``end()`` ends open runs, flushes and closes the writer. A
    ``MonitoredSession`` does not call ``end()`` when the training loop
    raises; the data is still flushed at interpreter exit, and the run that
    raised is kept, marked failed. Tensors computed before an error are kept.
    """

    def __init__(self, session_root, watch_fn=None, thread_name_filter=None, log_usage=True, *,
                 sample: SampleSpec = None, **engine_options):
        del log_usage  # tfdbg compatibility only
        self._dumper = _Dumper("DumpingDebugHook", session_root, watch_fn, thread_name_filter,
                               sample, engine_options)
        self._global_step_tensor = None

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
            self._global_step_tensor = training_util.get_global_step()

    def after_create_session(self, session, coord):  # noqa: D401 - SessionRunHook API
        """Called when a (new) session is created; nothing to prepare."""
        del session, coord

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
            "fetches": repr(fetches), "feed_keys": _feed_keys_repr(feed_dict),
            "session_run_call": call, "thread": threading.current_thread().name,
        }
        if sampled_at is not None:
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
        options = config_pb2.RunOptions()
        if debug_options is not None:
            options.debug_options.CopyFrom(debug_options)
            options.output_partition_graphs = pending.want_graphs
        return session_run_hook.SessionRunArgs(None, feed_dict=None, options=options)

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
            actual = _hooked_run_args(run_context)
            if actual is not None:
                full = d.names.names(pending.graph, actual[0], actual[1])
        d.finish_run(pending, run_values.run_metadata, full_io_names=full, core_global_step=gstep)

    def end(self, session):
        """End open runs, flush and close the writer.

        A writer error (disk full, ...) is logged, not raised: training is
        over and the session must still close. :meth:`close` raises it.
        """
        del session
        # MonitoredSession calls end() from __exit__ also after an
        # OutOfRangeError ended the loop; that error belongs to the last run.
        exc = sys.exc_info()[1]
        if not isinstance(exc, tf_errors.OpError):
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

    def stats(self):
        """The writer's counters (see ``DumpWriter.stats``) plus
        ``session_run_calls`` (Session.run calls seen) and ``runs_debugged``."""
        return self._dumper.stats()

    def _current_step(self, session, call: int) -> Tuple[int, Optional[int]]:
        if self._global_step_tensor is not None:
            value = _read_global_step(session, self._global_step_tensor)
            if value is not None:
                return value, value
        return call - 1, None


# ---------------------------------------------------------------------------
# The session wrapper.


class DumpingDebugWrapperSession:
    """tfdbg's ``DumpingDebugWrapperSession`` on the tfdump-fast engine.

    Wraps a ``tf.compat.v1.Session`` (or a ``MonitoredSession``); every
    ``run()`` it debugs becomes one run in the dump under ``session_root``.

    Parameters
    ----------
    sess : tf.compat.v1.Session or tf.compat.v1.train.MonitoredSession
        The session to wrap.
    session_root, watch_fn, thread_name_filter, sample, **engine_options
        As for :class:`DumpingDebugHook`; with ``sample=`` the step is the
        graph's global step when it has one and can be read, else the 0-based
        index of the ``run()`` call.
    pass_through_operrors : bool, optional
        As in tfdbg: by default a ``tf.errors.OpError`` raised by a debugged
        run is *returned* by ``run()`` (the run is kept, marked failed); with
        True it is raised.

    Notes
    -----
    Like tfdbg: runs with empty fetches and runs on threads that do not match
    ``thread_name_filter`` are passed through undebugged; ``partial_run`` is
    not supported; ``close()`` closes the wrapped session (and here also
    flushes and closes the writer). ``make_callable`` and
    ``_make_callable_from_options`` callables are debugged too.
    """

    def __init__(self, sess, session_root, watch_fn=None, thread_name_filter=None,
                 pass_through_operrors=None, *, sample: SampleSpec = None, **engine_options):
        if not isinstance(sess, (tf_session.BaseSession, monitored_session.MonitoredSession)):
            raise TypeError(
                f"DumpingDebugWrapperSession wraps a tf.compat.v1.Session or a MonitoredSession, "
                f"got {type(sess).__name__}")
        self._sess = sess
        self._pass_through_operrors = pass_through_operrors
        self._dumper = _Dumper("DumpingDebugWrapperSession", session_root, watch_fn,
                               thread_name_filter, sample, engine_options)
        self._default_session_context_manager = None
        self._callables: Dict[tuple, Any] = {}
        self._global_step_tensor = None
        if self._dumper.sampler is not None:
            self._global_step_tensor = training_util.get_global_step(sess.graph)
        # A wrapped MonitoredSession runs its own hooks, which may add fetches
        # we cannot see; then partition graphs are requested on every run.
        hooks = getattr(sess, "_hooks", None) or ()
        self._identity_ok = all(_fetches_constantly(h) for h in hooks)

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
        metadata: Dict[str, Any] = {
            # tfdbg stores what run() was given: None for callables.
            "fetches": repr(meta_fetches), "feed_keys": _feed_keys_repr(meta_feeds),
            "session_run_call": call, "thread": threading.current_thread().name,
        }
        if d.sampler is not None:
            step, global_step = self._current_step(call)
            if not d.sampler.should_sample(step):
                return plain()
            metadata["step"], metadata["global_step"] = step, global_step
        spec = d.watch_spec(fetches, feed_dict)
        graph = self._sess.graph
        if callable_options:
            io_names = (list(callable_options.feed), list(callable_options.fetch),
                        list(callable_options.target))
            extra = ("callable_options", id(callable_options))
        elif callable_info is not None:
            c_fetches, c_feed_list = callable_info
            metadata["callable_fetches"] = repr(c_fetches)
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
        run_metadata = run_metadata if run_metadata is not None else config_pb2.RunMetadata()
        try:
            if callable_options:
                retvals = self._run_callable_from_options(callable_options, debug_options,
                                                          pending, runner_args, run_metadata)
            else:
                run_options = config_pb2.RunOptions()
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
                else:
                    retvals = self._sess.run(fetches, feed_dict=feed_dict, options=run_options,
                                             run_metadata=run_metadata)
        except tf_errors.OpError as op_error:
            d.finish_run(pending, run_metadata, error=op_error)
            if self._pass_through_operrors:
                raise
            return op_error  # tfdbg returns the error object
        except BaseException as exc:
            d.finish_run(pending, run_metadata, error=exc)
            raise
        d.finish_run(pending, run_metadata)
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
            decorated = config_pb2.CallableOptions()
            decorated.CopyFrom(callable_options)
            if debug_options is not None:
                decorated.run_options.debug_options.CopyFrom(debug_options)
                decorated.run_options.output_partition_graphs = True
            entry = (callable_options, debug_options,
                     self._sess._make_callable_from_options(decorated))
            self._callables[key] = entry
        return entry[2](*runner_args, run_metadata=run_metadata)

    def _plain_callable(self, callable_options):
        # tfdbg makes a new callable (a new executor) for every undebugged
        # call; one per CallableOptions object is enough.
        entry = self._callables.get(("plain", id(callable_options)))
        if entry is None or entry[0] is not callable_options:
            entry = (callable_options, self._sess._make_callable_from_options(callable_options))
            self._callables[("plain", id(callable_options))] = entry
        return entry[1]

    def _current_step(self, call: int) -> Tuple[int, Optional[int]]:
        if self._global_step_tensor is not None:
            raw = self._sess
            if not isinstance(raw, tf_session.BaseSession):
                raw = getattr(raw, "_tf_sess", lambda: None)()
            if raw is not None:
                value = _read_global_step(raw, self._global_step_tensor)
                if value is not None:
                    return value, value
        return call - 1, None

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
        return step_fn(monitored_session.MonitoredSession.StepContext(self._sess, self.run))

    def should_stop(self):
        if hasattr(self._sess, "should_stop"):
            return self._sess.should_stop()
        raise ValueError(
            f"The wrapped session {self._sess!r} does not have a method called 'should_stop'. "
            "Do you intend to wrap a tf.MonitoredSession instead?")

    def as_default(self):
        from tensorflow.python.framework import stack

        return stack.default_session(self)

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

    def stats(self):
        """The writer's counters (see ``DumpWriter.stats``) plus
        ``session_run_calls`` (Session.run calls seen) and ``runs_debugged``."""
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
    if not nest.is_nested(x):
        return False
    if isinstance(x, Mapping):
        return _is_empty(list(x.values()))
    return all(_is_empty(item) for item in x)
