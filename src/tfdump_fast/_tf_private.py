"""Every use of TensorFlow's private API by the hook layer, in one place.

Package-internal. The hook and the wrapper session need a few things
TensorFlow has no public API for: how ``Session.run`` names and expands its
feeds and fetches, which fetches ``MonitoredSession`` really ran, what the
built-in hooks fetch, and a handful of methods of sessions that only have
underscored names. Each is wrapped here in a small function whose docstring
says what TensorFlow behaviour it relies on; ``tests/test_tf_private.py``
exercises every one against the installed TensorFlow, so an upgrade that
removes or changes one fails there, by name, instead of silently degrading
the dump.

Versions: every function was checked against TensorFlow 2.21 (the version the
tests run); "since" notes say how far back the relied-on code is known to go.

What the hook layer uses of TensorFlow *outside* this module is public API
(``tf.compat.v1.*``, ``tf.errors``, ``tf.nest``) or tfdbg's own modules
(``tensorflow.python.debug.lib.debug_utils.watch_graph``,
``tensorflow.python.debug.wrappers.framework.WatchOptions``), which tfdbg's
documentation tells users to call.

Importing this module imports TensorFlow.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, ContextManager, List, Optional, Sequence, Tuple

import tensorflow as tf
from tensorflow.python.client import session as tf_session
from tensorflow.python.framework import op_def_registry, stack
from tensorflow.python.util import nest

__all__ = [
    "CONSTANT_FETCH_HOOKS",
    "default_session",
    "fetch_and_target_names",
    "fetches_constantly",
    "hooked_run_args",
    "hooked_session_calling_before_run",
    "is_plain_session",
    "make_callable_from_options",
    "monitored_session_hooks",
    "on_coordinator_stop",
    "op_def",
    "raw_session",
    "session_feeds",
]

# How many frames up the stack to look for MonitoredSession's own frames; the
# hook layer calls in from one or two frames below them.
_FRAMES_SEARCHED = 5


# ---------------------------------------------------------------------------
# Session.run's view of feeds and fetches.


def session_feeds(feed_dict) -> List[Tuple[Any, Any]]:
    """The (feed key, value) pairs ``Session.run`` makes of ``feed_dict``.

    Relies on ``tensorflow.python.client.session``: ``Session._run`` flattens
    nested feed keys with ``nest.flatten_dict_items`` and expands each key
    through the feed function of the first matching entry of
    ``_REGISTERED_EXPANSIONS`` (a ``SparseTensor`` becomes its three component
    tensors, ...), a list of ``(type, fetch_fn, feed_fn, feed_fn_for_partial_run)``.
    Unlike ``Session.run`` a key of no registered type is passed through
    unchanged (the caller resolves it and reports nothing). Since TF 1.0.
    """
    pairs: List[Tuple[Any, Any]] = []
    for key, value in nest.flatten_dict_items(feed_dict).items():
        for tensor_type, _, feed_fn, _ in tf_session._REGISTERED_EXPANSIONS:  # pylint: disable=protected-access
            if isinstance(key, tensor_type):
                pairs.extend(feed_fn(key, value))
                break
        else:
            pairs.append((key, value))
    return pairs


def fetch_and_target_names(graph, fetches, feeds) -> Tuple[List[str], List[str]]:
    """(tensor names, op names) that ``Session.run(fetches)`` fetches and runs.

    ``feeds`` maps ``tensor.ref()`` to fed values, as ``Session.run`` builds it.
    Relies on ``tensorflow.python.client.session._FetchHandler(graph, fetches,
    feeds)``, the class ``Session.run`` uses to turn a fetch structure into
    the executor's fetch tensors (``.fetches()``) and target ops
    (``.targets()``); it raises on anything ``Session.run`` would reject.
    Since TF 1.0.
    """
    handler = tf_session._FetchHandler(graph, fetches, feeds)  # pylint: disable=protected-access
    return [t.name for t in handler.fetches()], [op.name for op in handler.targets()]


def op_def(name: str):
    """The registered ``OpDef`` of op type ``name``, or None.

    Relies on ``tensorflow.python.framework.op_def_registry.get`` (the
    registry of every op linked into the process, since TF 2.2; earlier TF had
    ``get_registered_ops()``).
    """
    return op_def_registry.get(name)


# ---------------------------------------------------------------------------
# Sessions.


def is_plain_session(obj) -> bool:
    """Whether ``obj`` is a ``tf.compat.v1.Session`` or ``InteractiveSession``.

    Relies on both deriving from ``tensorflow.python.client.session.BaseSession``,
    which is not exported (TF 1.0 onwards).
    """
    return isinstance(obj, tf_session.BaseSession)


# The base class of every TF client session, and so of tfdbg's wrappers:
# ``Saver.save``, ``start_queue_runners`` and ``MonitoredSession`` accept only
# its instances (``tensorflow.python.client.session``, not exported; TF 1.0
# onwards).
SessionInterface = tf_session.SessionInterface

# What tfdbg's wrapper accepts to wrap: ``_check_type(sess, (BaseSession,
# MonitoredSession))`` in ``tensorflow/python/debug/wrappers/framework.py``.
WRAPPABLE_SESSION_TYPES = (tf_session.BaseSession, tf.compat.v1.train.MonitoredSession)


def raw_session(monitored) -> Optional[Any]:
    """The ``tf.compat.v1.Session`` under a ``MonitoredSession``, or None.

    Relies on ``_MonitoredSession._tf_sess()`` (added with ``run_step_fn`` in
    TF 1.8), which returns the innermost session, or None once closed.
    """
    getter = getattr(monitored, "_tf_sess", None)
    return getter() if getter is not None else None


def make_callable_from_options(session, callable_options) -> Callable:
    """``session._make_callable_from_options(callable_options)``.

    The only way to run a ``CallableOptions`` (feeds, fetches, targets and
    ``RunOptions`` fixed when it is made) in TF 1.x graph mode; tfdbg's wrapper
    uses it too. ``BaseSession._make_callable_from_options`` since TF 1.6.
    Raises ``AttributeError`` for a session without it (a ``MonitoredSession``).
    """
    return session._make_callable_from_options(callable_options)  # pylint: disable=protected-access


def default_session(session) -> ContextManager:
    """A context manager that makes ``session`` the default session.

    What ``Session.as_default()`` and tfdbg's wrapper return:
    ``tensorflow.python.framework.stack.default_session`` (in ``ops`` before
    the stack module was split out of it, around TF 2.13).
    """
    return stack.default_session(session)


# ---------------------------------------------------------------------------
# MonitoredSession and its hooks.


def monitored_session_hooks(session) -> Optional[Sequence[Any]]:
    """The hooks a ``MonitoredSession`` (or its ``_HookedSession``) runs, or None.

    Relies on the ``_hooks`` list that ``_MonitoredSession.__init__`` and
    ``_HookedSession.__init__`` keep (TF 1.0 onwards).
    """
    return getattr(session, "_hooks", None)


def hooked_session_calling_before_run() -> Optional[Any]:
    """The ``_HookedSession`` whose ``before_run`` loop is on the caller's stack.

    Relies on ``_HookedSession._call_hook_before_run(self, ...)`` calling each
    hook's ``before_run`` directly (TF 1.0 onwards). Call it from a hook's
    ``before_run`` (or a function it calls); None anywhere else.
    """
    frame = sys._getframe(1)  # pylint: disable=protected-access
    for _ in range(_FRAMES_SEARCHED):
        if frame is None:
            return None
        if frame.f_code.co_name == "_call_hook_before_run":
            return frame.f_locals.get("self")
        frame = frame.f_back
    return None


def hooked_run_args(run_context) -> Optional[Tuple[Any, Any]]:
    """(fetches, feed_dict) that ``MonitoredSession`` really ran for ``run_context``.

    They include what every hook added (a dict keyed ``'caller'`` and by
    hook), so they identify TensorFlow's executor. Relies on
    ``_HookedSession.run`` keeping them in its locals ``actual_fetches`` and
    ``feed_dict`` (the latter replaced by the merged feeds) next to
    ``run_context``, and calling each hook's ``after_run`` directly (TF 1.0
    onwards). Call it from a hook's ``after_run``; None anywhere else.
    """
    frame = sys._getframe(1)  # pylint: disable=protected-access
    for _ in range(_FRAMES_SEARCHED):
        if frame is None:
            return None
        if frame.f_code.co_name == "run":
            local = frame.f_locals
            if local.get("run_context") is run_context and "actual_fetches" in local:
                return local["actual_fetches"], local.get("feed_dict")
        frame = frame.f_back
    return None


#: Built-in hooks whose ``before_run`` requests the same fetches and feeds on
#: every run, so they never change which TensorFlow executor runs. Read from
#: ``tensorflow/python/training/basic_session_run_hooks.py`` (TF 2.21; the
#: ``_MultiStepStopAtStepHook`` name is private). ``SummarySaverHook`` is
#: handled by :func:`fetches_constantly`; ``LoggingTensorHook`` and
#: ``FeedFnHook`` change their requests per run.
CONSTANT_FETCH_HOOKS = (
    "StopAtStepHook", "_MultiStepStopAtStepHook", "CheckpointSaverHook", "StepCounterHook",
    "NanTensorHook", "GlobalStepWaiterHook", "FinalOpsHook", "ProfilerHook",
)


def fetches_constantly(hook) -> bool:
    """Whether ``hook``'s requests never change which executor runs.

    True for a bare ``SessionRunHook``, the built-in hooks of
    :data:`CONSTANT_FETCH_HOOKS` and a ``SummarySaverHook`` whose graph has no
    summary op (it fetches one every N steps otherwise: relies on
    ``SummarySaverHook._get_summary_op()`` returning None then, TF 1.0
    onwards). False for anything else, the safe answer.
    """
    cls = type(hook)
    if cls is tf.compat.v1.train.SessionRunHook:
        return True
    if cls.__module__.startswith("tensorflow.") and cls.__name__ in CONSTANT_FETCH_HOOKS:
        return True
    if cls.__module__.startswith("tensorflow.") and cls.__name__ == "SummarySaverHook":
        try:
            return hook._get_summary_op() is None  # pylint: disable=protected-access
        except Exception:  # noqa: BLE001 - cannot tell: assume it changes the fetches
            return False
    return False


# ---------------------------------------------------------------------------
# When a MonitoredSession closes.


def on_coordinator_stop(coord, callback: Callable[[], None]) -> bool:
    """Call ``callback()`` in whichever thread calls ``coord.request_stop()``, first.

    ``MonitoredSession`` closes through ``_CoordinatedSession.close``, which
    calls ``self._coord.request_stop()`` in the closing thread -- also when
    ``__exit__`` closes it because a ``Session.run`` raised, the case in
    which it calls no hook's ``after_run`` or ``end()``. The coordinator is
    the one ``SessionRunHook.after_create_session`` receives. It has no hook
    of its own, so this instance's ``request_stop`` is wrapped (the class is
    untouched). Returns False when ``coord`` has no ``request_stop``.
    Since TF 1.x (monitored_session.py, ``_CoordinatedSession.close``).
    """
    original = getattr(coord, "request_stop", None)
    if original is None or not callable(original):
        return False

    def request_stop(*args, **kwargs):
        try:
            callback()
        except Exception:  # noqa: BLE001 - stopping must go on whatever the callback does
            pass
        return original(*args, **kwargs)

    coord.request_stop = request_stop
    return True


# TF2 capture (tfdump_fast.tf2): what tfdbg v2's dumping_callback.py uses too.

def op_callback_skip_ops() -> frozenset:
    """Op types tfdbg v2 leaves uninstrumented (``op_callbacks_common.OP_CALLBACK_SKIP_OPS``)."""
    from tensorflow.python.debug.lib import op_callbacks_common

    return frozenset(t.decode() if isinstance(t, bytes) else str(t)
                     for t in op_callbacks_common.OP_CALLBACK_SKIP_OPS)


def add_op_callback(callback) -> None:
    """Register ``callback(op_type, inputs, attrs, outputs, op_name=None, graph=None)``
    for the calling thread (``framework.op_callbacks.add_op_callback``, TF 2.0
    onwards): called after each eager op with its outputs, and for each op
    created while a graph is built (tf.function tracing), where it may add ops."""
    from tensorflow.python.framework import op_callbacks

    op_callbacks.add_op_callback(callback)


def remove_op_callback(callback) -> None:
    """Unregister a callback of :func:`add_op_callback` (no-op if absent)."""
    from tensorflow.python.framework import op_callbacks

    try:
        op_callbacks.remove_op_callback(callback)
    except KeyError:
        pass


def concrete_function_callbacks() -> list:
    """The list of callables TF calls with each new ConcreteFunction after
    tracing (``polymorphic_function.transform.CONCRETE_FUNCTION_CALLBACKS``,
    TF 2.14 onwards; tfdbg v2 maps function names to graphs through it)."""
    from tensorflow.python.eager.polymorphic_function import transform

    return transform.CONCRETE_FUNCTION_CALLBACKS


def executing_eagerly_outside_functions() -> bool:
    """False in TF1 graph mode (``tf.compat.v1.disable_eager_execution``), where
    op callbacks would instrument every graph (``ops.executing_eagerly_outside_functions``)."""
    from tensorflow.python.framework import ops

    return ops.executing_eagerly_outside_functions()


def in_xla_context(graph) -> bool:
    """Whether ``graph`` is traced for XLA (``tf.function(jit_compile=True)``):
    ``control_flow_util.GraphOrParentsInXlaContext`` (TF 2.5 onwards)."""
    from tensorflow.python.ops import control_flow_util

    return bool(control_flow_util.GraphOrParentsInXlaContext(graph))


def add_graph_op(op_type: str, name: str, input_tensor, **attrs):
    """Create an op of a type registered by a loaded library (no generated
    Python wrapper exists) in the default graph: ``op_def_library._apply_op_helper``
    (returns ``(output_structure, is_stateful, op, outputs)`` since TF 2.3)."""
    from tensorflow.python.framework import op_def_library

    result = op_def_library._apply_op_helper(op_type, name=name, input=input_tensor, **attrs)  # noqa: SLF001
    return result[2]


def run_eager_op(op_type: str, input_tensor, attrs: tuple):
    """Execute a one-input, one-output op eagerly (``execute.quick_execute``;
    attrs flattened as name, value, ...; the dtype attr ``T`` is added). Op
    callbacks are not invoked for it (``execute.execute`` is replaced by a
    version that invokes them while any is registered; ``quick_execute`` is
    not) and no gradient tape records it."""
    from tensorflow.python.eager import context, execute

    return execute.quick_execute(op_type.encode(), 1, inputs=[input_tensor],
                           attrs=("T", input_tensor.dtype.as_datatype_enum, *attrs),
                           ctx=context.context())
