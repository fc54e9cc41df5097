"""What a debugged run watches: ``watch_fn`` results, validated, as ``DebugOptions``.

Package-internal (the public name is :data:`WatchOptions`, re-exported by
:mod:`tfdump_fast.hooks`). :func:`watch_spec` turns what a ``watch_fn``
returned into a validated, hashable :class:`WatchSpec`, checking regular
expressions and debug ops before any run, as TensorFlow would only when it
builds the executor. :class:`WatchCache` turns a spec into the run's
``DebugOptions``: ``debug_utils.watch_graph`` is O(#ops) per call, so its
result is cached per graph version and spec, and per capture slot URL.
"""

from __future__ import annotations

import re
import threading
import weakref
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import tensorflow as tf
from tensorflow.python.debug.lib import debug_utils
from tensorflow.python.debug.wrappers import framework as tfdbg_framework

from tfdump_fast import _tf_private
from tfdump_fast.cluster import SERVED_URL, STEP_DEBUG_OP
from tfdump_fast.errors import TfdumpUsageError
from tfdump_fast.published import add_publish_watch
from tfdump_fast.sampling import is_internal_name
from tfdump_fast.summaries import HEALTH_MODES, native_debug_op

__all__ = ["DEFAULT_DEBUG_OPS", "DEFAULT_WATCH_SPEC", "WatchCache", "WatchOptions", "WatchSpec",
           "watch_spec"]

#: tfdbg's own ``WatchOptions`` class, so objects built from either name are
#: interchangeable.
WatchOptions = tfdbg_framework.WatchOptions


class WatchSpec(NamedTuple):
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


DEFAULT_DEBUG_OPS = ("DebugIdentity",)
#: What a run watches without a ``watch_fn``: every tensor, ``DebugIdentity``.
DEFAULT_WATCH_SPEC = WatchSpec(DEFAULT_DEBUG_OPS, None, None, None, False)
# Attributes the debug node inserter sets itself; a user may set the others.
_INSERTER_ATTRS = {"T", "device_name", "tensor_name", "debug_urls"}
_validated_specs: Dict[WatchSpec, None] = {}
_validated_lock = threading.Lock()


def watch_spec(value: Any, source: str) -> WatchSpec:
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
    ops = value.debug_ops or list(DEFAULT_DEBUG_OPS)  # WatchOptions() does the same
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

    spec = WatchSpec(
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


def _validate_spec(spec: WatchSpec, source: str) -> None:
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
    return ["DebugIdentity", "DebugNumericSummary", "DebugNanCount", *HEALTH_MODES]


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
    if name in HEALTH_MODES:
        if lpar >= 0:
            raise TfdumpUsageError(
                f"{source}: debug op {debug_op!r}: the health mode {name} takes no attributes; "
                f"write {name!r}")
        return
    op_def = _tf_private.op_def(name)
    op_attrs = {a.name for a in op_def.attr} if op_def is not None else set()
    if op_def is None or not {"device_name", "tensor_name", "debug_urls"} <= op_attrs:
        raise TfdumpUsageError(
            f"{source}: unknown debug op {name!r} (in {debug_op!r}); supported debug ops: "
            f"{', '.join(_supported_debug_ops())}")
    settable = sorted(op_attrs - _INSERTER_ATTRS)
    attr_types = {a.name: a.type for a in op_def.attr}
    for key, value in attrs.items():
        if key not in settable:
            raise TfdumpUsageError(
                f"{source}: debug op {name} has no attribute {key!r} (in {debug_op!r}); "
                f"its attributes are: {', '.join(settable) or '(none)'}")
        expected = _attr_value_problem(attr_types[key], value)
        if expected:
            raise TfdumpUsageError(
                f"{source}: debug op {debug_op!r}: {key}={value!r} is not a valid {attr_types[key]} "
                f"value; write {expected}")


# What TensorFlow's debug-op-name parser (strings::safe_strtob / strtof /
# strto64) accepts for each attribute type.
_BOOL_VALUES = ("true", "True", "TRUE", "1", "false", "False", "FALSE", "0")


def _attr_value_problem(attr_type: str, value: str) -> str:
    """'' when TensorFlow accepts ``value`` for an attribute of ``attr_type``, else what to write."""
    if value == "":
        return "a value after '='"
    if attr_type == "bool":
        return "" if value in _BOOL_VALUES else "true or false"
    if attr_type == "int":
        try:
            int(value, 10)
        except ValueError:
            return "an integer"
        return ""
    if attr_type == "float":
        try:
            float(value)
        except ValueError:
            return "a number (e.g. 1.5, -inf)"
        return ""
    return ""


# ---------------------------------------------------------------------------
# Watch sets.

_PLACEHOLDER_URL = "memcbk://tfdump_slot_placeholder"


class WatchCache:
    """``DebugOptions`` per (graph version, watch spec) and per slot URL."""

    def __init__(self):
        self._lock = threading.Lock()
        self._by_graph: "weakref.WeakKeyDictionary[Any, Dict]" = weakref.WeakKeyDictionary()

    def debug_options(self, graph, spec: WatchSpec, url: Optional[str], publish_dir: Optional[str] = None,
                      placement=None):
        """Return (DebugOptions or None, number of watches) for this run.

        ``url=None`` only counts the watches. ``publish_dir``: where TF is
        to publish graphs and core metadata (see :mod:`tfdump_fast.published`).
        ``placement``: for a session on a cluster, the
        :class:`~tfdump_fast.cluster.Placement` whose nodes alone may be
        watched (a capture URL must never reach a process without our
        callbacks); None for a local session (every node).
        """
        version = graph.version
        with self._lock:
            per = self._by_graph.get(graph)
            if per is None or per["version"] != version:
                # The graph grew: watches computed for the old version are stale.
                per = {"version": version, "templates": {}, "by_url": {}, "placed": {}}
                self._by_graph[graph] = per
            template = per["templates"].get(spec)
        if template is None:
            template = self._build(graph, spec)
            with self._lock:
                per["templates"][spec] = template
        opts, n = template
        if placement is not None:
            with self._lock:
                narrowed = per["placed"].get((spec, placement.key))
            if narrowed is None:
                narrowed = _narrow(opts, placement)
                with self._lock:
                    per["placed"][(spec, placement.key)] = narrowed
            opts, n = narrowed
        if url is None or n == 0:
            return None, n
        key = (spec, url, publish_dir, placement.key if placement is not None else None)
        with self._lock:
            cached = per["by_url"].get(key)
        if cached is None:
            cached = type(opts)()
            cached.CopyFrom(opts)
            for watch in cached.debug_tensor_watch_opts:
                if list(watch.debug_urls) == [SERVED_URL]:
                    continue  # captured by the served process, not by our slot
                del watch.debug_urls[:]
                watch.debug_urls.append(url)
            if publish_dir is not None:
                add_publish_watch(cached, publish_dir)
            with self._lock:
                per["by_url"][key] = cached
        return cached, n

    @staticmethod
    def _build(graph, spec: WatchSpec):
        run_options = tf.compat.v1.RunOptions()
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
        # tfdump-fast's own nodes (the hook's in-run global-step read) are
        # never watched: the dump holds the tensors tfdbg's would.
        own = [w for w in opts.debug_tensor_watch_opts if is_internal_name(w.node_name)]
        if own:
            kept = [w for w in opts.debug_tensor_watch_opts if not is_internal_name(w.node_name)]
            del opts.debug_tensor_watch_opts[:]
            opts.debug_tensor_watch_opts.extend(kept)
        for watch in opts.debug_tensor_watch_opts:
            # Summaries are computed by the bridge's ops, off the step
            # (tfdump_fast.summaries); TF's kernels would compute them inside it.
            ops = [native_debug_op(op) for op in watch.debug_ops]
            if ops != list(watch.debug_ops):
                del watch.debug_ops[:]
                watch.debug_ops.extend(ops)
        return opts, len(opts.debug_tensor_watch_opts)



def _narrow(opts, placement):
    """``opts`` with only the watches ``placement`` allows; (options, count).

    Watches of nodes on served tasks use the bridge's ``TfdumpIdentity``
    with the served URL (only ``DebugIdentity`` is served); when a run has
    any, every local watch also gets ``TfdumpIdentity``, which records the
    master step id that joins this run to the served ones.
    """
    narrowed = type(opts)()
    narrowed.CopyFrom(opts)
    any_served = False
    kept = []
    for src in narrowed.debug_tensor_watch_opts:
        if not placement.watches(src.node_name):
            continue
        w = type(src)()
        w.CopyFrom(src)
        if placement.served(src.node_name):
            if "DebugIdentity" not in w.debug_ops:
                continue
            del w.debug_ops[:]
            w.debug_ops.append(STEP_DEBUG_OP)
            del w.debug_urls[:]
            w.debug_urls.append(SERVED_URL)
            any_served = True
        kept.append(w)
    if any_served:
        for w in kept:
            if list(w.debug_urls) != [SERVED_URL]:
                w.debug_ops.append(STEP_DEBUG_OP)
    del narrowed.debug_tensor_watch_opts[:]
    narrowed.debug_tensor_watch_opts.extend(kept)
    return narrowed, len(kept)
