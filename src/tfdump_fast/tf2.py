"""TF2 capture: ``enable_dump_debug_info`` / ``disable_dump_debug_info``.

The TF2 counterpart of :class:`~tfdump_fast.DumpingDebugHook`, with the
semantics of ``tf.debugging.experimental.enable_dump_debug_info`` (tfdbg v2):
while enabled on a thread, every op created on that thread while a
``tf.function`` is traced (Keras ``fit``/``evaluate``/``predict`` included,
nested functions and ``tf.data`` functions too) gets a ``TfdumpCaptureV2`` op
after it, one per output (``csrc/bridge/tf2_capture.cc``), and the outputs of
every eager op executed on that thread are captured. The capture op hands the
tensor to the native engine; no Python runs per graph tensor.

What is instrumented follows tfdbg v2: op types in TF's skip list
(``Identity``, control flow, call ops) and tensors whose dtype numpy cannot
hold (resources, variants) are not; ``op_regex`` matches op *types*;
``tensor_dtypes`` is a list of dtypes or a predicate. Functions are
instrumented when they are traced: a function traced before enabling is not
(TF caches traces; tfdbg has the same rule).

Runs: one engine run per top-level execution of a ``tf.function`` (one Keras
step with ``steps_per_execution=1``). Eager ops executed between two function
executions belong to the run of the next one. A run's ``run_end`` metadata
(``Run.metadata``) has ``tf2_execution`` (0-based index, the step for
sampling), ``tf2_function`` (the executed function's name), ``tf2_context_id``
(its traced graph), ``eager_ops`` and, with :func:`keras_callback`, ``epoch``,
``batch``, ``keras_mode`` and ``global_step`` (the optimizer's iterations).

Records: key (device, op name, output slot, ``TfdumpCaptureV2.<context id>``);
eager ops are keyed (device, op type, slot, ``TfdumpCaptureV2.eager@<stack id>``),
the stack id naming the Python stack that executed the op (a ``tf2_eager_stack``
META event per distinct stack, cached by code location); in a
mode other than FULL_TENSOR the mode is appended
(``TfdumpCaptureV2.<context id>.CURT_HEALTH``) and the record is tfdbg v2's
float64 summary vector (its element 0: tfdbg v2's tensor id, numbered here
exactly as tfdbg v2 numbers graph tensors; -1 for eager ops), computed
natively off the step. ``circular_buffer_size=N`` runs the writer as a flight
recorder (``keep_last=N``) written on inf/nan and at disable / exit. Each
traced graph is described by ``tf2_graph`` META events (docs/FORMAT.md): its
name, the function name, the outer graph, and per op its type, inputs and
creation stack; source files of user code by ``tf2_source_file`` events.
"""

from __future__ import annotations

import atexit
import ctypes
import itertools
import logging
import os
import re
import sys
import threading
from typing import Any, Dict, List, Optional

from tfdump_fast import errors

log = logging.getLogger("tfdump_fast")

__all__ = ["enable_dump_debug_info", "disable_dump_debug_info", "keras_callback", "CAPTURE_OP",
           "TENSOR_DEBUG_MODES", "GRAPH_EVENT", "SOURCE_FILE_EVENT", "XLA_EVENT", "EAGER_STACK_EVENT"]

CAPTURE_OP = "TfdumpCaptureV2"
#: META event per traced graph (and again for ops a graph gained since)
GRAPH_EVENT = "tf2_graph"
#: META event per user source file (its lines), once per file
SOURCE_FILE_EVENT = "tf2_source_file"
#: META event per distinct Python stack that executed eager ops
EAGER_STACK_EVENT = "tf2_eager_stack"
#: META event per graph left uninstrumented because XLA compiles it
XLA_EVENT = "tf2_xla_not_captured"

#: tfdbg v2's TensorDebugMode values (tensorflow/core/protobuf/debug_event.proto)
TENSOR_DEBUG_MODES = {"NO_TENSOR": 1, "CURT_HEALTH": 2, "CONCISE_HEALTH": 3, "FULL_HEALTH": 4,
                      "SHAPE": 5, "FULL_NUMERICS": 6, "FULL_TENSOR": 7, "REDUCE_INF_NAN_THREE_SLOTS": 8}
_IMPLEMENTED_MODES = ("NO_TENSOR", "CURT_HEALTH", "CONCISE_HEALTH", "FULL_HEALTH", "SHAPE", "FULL_TENSOR")
#: modes recorded as DebugNumericSummaryV2 vectors (computed natively, off the step)
SUMMARY_MODES = ("CURT_HEALTH", "CONCISE_HEALTH", "FULL_HEALTH", "SHAPE")
_FUNCTION_PREFIXES = ("__inference_", "__forward_", "__backward_")
_PLACEHOLDER_TYPES = ("Const", "Placeholder", "PlaceholderWithDefault")
_MAX_SOURCE_BYTES = 4 << 20
_MAX_EAGER_STACKS = 100_000   # beyond: eager records keyed without a stack
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

_lock = threading.Lock()
_active: Optional["_Tf2Dumper"] = None


class _NativeTf2:
    """The bridge's TF2 C ABI (csrc/tf2_api.h) through ctypes: a few calls per
    function execution, none per tensor (ctypes releases the GIL)."""

    def __init__(self):
        from tfdump_fast.bridge import get_bridge

        lib = ctypes.CDLL(get_bridge().path)   # the same handle the bridge loader holds
        try:
            version = lib.tfdump_tf2_api_version()
        except AttributeError as exc:
            raise errors.TfdumpBridgeError(
                f"the TensorFlow bridge {get_bridge().path} has no TF2 capture; rebuild it with "
                "`python -m tfdump_fast.bridge --rebuild`") from exc
        if version != 2:
            raise errors.TfdumpBridgeError(
                f"the TensorFlow bridge speaks TF2 API version {version}, not 2; rebuild it with "
                "`python -m tfdump_fast.bridge --rebuild`")
        lib.tfdump_tf2_bind.argtypes = [ctypes.c_void_p]
        lib.tfdump_tf2_bind.restype = ctypes.c_int
        lib.tfdump_tf2_switch_run.argtypes = [ctypes.c_uint32]
        lib.tfdump_tf2_switch_run.restype = ctypes.c_uint32
        lib.tfdump_tf2_unbind.argtypes = []
        lib.tfdump_tf2_get_stats.argtypes = [ctypes.c_void_p]
        self.lib = lib

    def stats(self) -> Dict[str, int]:
        buf = (ctypes.c_uint64 * 4)()
        self.lib.tfdump_tf2_get_stats(ctypes.byref(buf))
        return {"tensors_submitted": buf[0], "tensors_unbound": buf[1], "tensors_failed": buf[2],
                "tensors_skipped": buf[3]}


def _check_mode(tensor_debug_mode) -> str:
    if isinstance(tensor_debug_mode, int) and not isinstance(tensor_debug_mode, bool):
        names = [k for k, v in TENSOR_DEBUG_MODES.items() if v == tensor_debug_mode]
        mode = names[0] if names else None
    else:
        mode = str(tensor_debug_mode).upper() if isinstance(tensor_debug_mode, str) else None
    if mode not in TENSOR_DEBUG_MODES:
        raise errors.TfdumpUsageError(
            f"tensor_debug_mode={tensor_debug_mode!r} is not one of tfdbg v2's modes "
            f"({', '.join(sorted(TENSOR_DEBUG_MODES))})")
    if mode not in _IMPLEMENTED_MODES:
        raise errors.TfdumpUsageError(
            f"tensor_debug_mode={mode!r} is not implemented for TF2 capture; use one of "
            f"{', '.join(_IMPLEMENTED_MODES)}")
    return mode


def _dtype_filter(tensor_dtypes):
    if tensor_dtypes is None:
        return None
    import tensorflow as tf

    if callable(tensor_dtypes):
        return tensor_dtypes
    if isinstance(tensor_dtypes, (list, tuple, set, frozenset)):
        wanted = {tf.as_dtype(d) for d in tensor_dtypes}
        return lambda dtype: dtype in wanted
    raise errors.TfdumpUsageError(
        f"tensor_dtypes={tensor_dtypes!r} must be None, a list of dtypes or a callable(dtype) -> bool")


class _GraphInfo:
    __slots__ = ("context_id", "graph_name", "outer_context_id", "ops", "first_ids", "flushed",
                 "function_name", "xla")

    def __init__(self, context_id, graph_name, outer_context_id, xla):
        self.context_id = context_id
        self.graph_name = graph_name
        self.outer_context_id = outer_context_id
        self.ops: List[list] = []   # [name, type, inputs, num_outputs, stack (frames, outermost first)]
        self.first_ids: List[int] = []   # per op: tfdbg v2's tensor id of its output 0 (0: no outputs)
        self.flushed = 0
        self.function_name = None
        self.xla = xla


class _Tf2Dumper:
    def __init__(self, dump_root, mode, op_regex, dtype_filter, sampler, capture_eager, writer_options):
        from tfdump_fast import _tf_private
        from tfdump_fast.writer import DumpWriter

        self._tfp = _tf_private
        self.mode = mode
        self.mode_value = TENSOR_DEBUG_MODES[mode]
        self._summary = mode in SUMMARY_MODES
        self._symbolic_tensor_counter = 0   # tfdbg v2's graph tensor ids: 1, 2, ... per output
        self.dump_root = os.fspath(dump_root)
        self._op_regex = re.compile(op_regex) if op_regex else None
        self._dtype_filter = dtype_filter
        self._sampler = sampler
        self._capture_eager = capture_eager
        self._skip_ops = _tf_private.op_callback_skip_ops() | {CAPTURE_OP}
        self._native = _NativeTf2()
        self.writer = DumpWriter(self.dump_root, **writer_options)
        self._lock = threading.RLock()
        self._graphs: Dict[int, _GraphInfo] = {}    # id(graph) -> info (graphs kept alive below)
        self._graph_refs: List[Any] = []
        self._function_contexts: Dict[str, str] = {}
        self._context_counter = itertools.count(1)
        self._frames: Dict[tuple, int] = {}
        self._sources_done: set = set()
        self._xla_warned: set = set()
        self._eager_stacks: Dict[tuple, int] = {}
        self._eager_stack_codes: List[list] = []   # keeps the keys' code objects alive
        self.execution = 0
        self.run = None
        self._eager_ops = 0
        self.keras: Dict[str, Any] = {}
        self._closed = False
        if self._native.lib.tfdump_tf2_bind(self.writer.engine_api_address()) != 0:
            self.writer.close()
            raise errors.TfdumpUsageError(
                "another TF2 capture is bound to the TensorFlow bridge in this process; call "
                "tfdump_fast.disable_dump_debug_info() first")
        self._open_run()

    # -- runs

    def _open_run(self) -> None:
        if self._sampler is not None and not self._sampler.should_sample(self.execution):
            self.run = None
            self._native.lib.tfdump_tf2_switch_run(0)
            return
        self.run = self.writer.begin_run(metadata={"tf2_execution": self.execution}, capture=False)
        self._eager_ops = 0
        self._native.lib.tfdump_tf2_switch_run(self.run.run_id)

    def _end_run(self, function_name: Optional[str], status: str = "ok") -> None:
        run, self.run = self.run, None
        self._native.lib.tfdump_tf2_switch_run(0)   # waits for threads still submitting to it
        self._flush_graphs()
        if run is None:
            return
        md: Dict[str, Any] = {"tf2_execution": self.execution, "tf2_function": function_name,
                              "eager_ops": self._eager_ops, "tf2_tensor_debug_mode": self.mode}
        if function_name is not None:
            md["tf2_context_id"] = self._function_contexts.get(function_name)
        md.update(self.keras)
        self.keras = {}   # a Keras note describes one step
        if "global_step" not in md:
            md["global_step"] = self.execution
        self.writer.end_run(run, status=status, metadata=md)

    def function_executed(self, function_name: str) -> None:
        with self._lock:
            if self._closed:
                return
            self._end_run(function_name)
            self.execution += 1
            self._open_run()

    # -- graphs

    def _context(self, graph) -> _GraphInfo:
        info = self._graphs.get(id(graph))
        if info is None:
            outer = getattr(graph, "outer_graph", None)
            outer_id = self._context(outer).context_id if outer is not None and hasattr(
                outer, "outer_graph") else None
            info = _GraphInfo(f"g{next(self._context_counter)}", getattr(graph, "name", None), outer_id,
                              self._tfp.in_xla_context(graph))
            self._graphs[id(graph)] = info
            self._graph_refs.append(graph)
        return info

    def function_traced(self, function) -> None:
        try:
            with self._lock:
                info = self._graphs.get(id(function.graph))
                name = function.name
                name = name.decode() if isinstance(name, bytes) else str(name)
                if info is not None:
                    info.function_name = name
                    self._function_contexts[name] = info.context_id
        except Exception as exc:  # noqa: BLE001 - never fail the program
            log.warning("tfdump-fast: could not map a traced function to its graph: %s", exc)

    def _stack_of(self, graph, op_name, outputs) -> List[int]:
        op = outputs[0].op if outputs else graph.get_operation_by_name(op_name)
        frames = []
        for frame in op.traceback or ():
            key = (frame[0], int(frame[1]), frame[2])
            idx = self._frames.get(key)
            if idx is None:
                idx = self._frames[key] = len(self._frames)
            frames.append(idx)
        return frames

    def _dumpable(self, dtype) -> bool:
        """Whether the mode records a tensor of ``dtype`` (tfdbg v2's rule: the
        health modes floating point only, SHAPE also integers and bool)."""
        if not dtype.is_numpy_compatible:
            return False
        if self.mode == "SHAPE":
            return dtype.is_floating or dtype.is_integer or dtype.is_bool
        if self._summary:
            return dtype.is_floating
        return True

    def graph_op(self, op_type, inputs, outputs, op_name, graph):
        with self._lock:
            info = self._context(graph)
            if op_type in _PLACEHOLDER_TYPES and outputs:
                op_name = outputs[0].name.split(":")[0]
            n_out = len(outputs or ())
            # tfdbg v2 numbers every output of every graph op it is called for
            # (skipped ops too), in creation order, from 1: the ids in slot 0 of
            # its health vectors and in GraphOpCreation.output_tensor_ids
            first_id = self._symbolic_tensor_counter + 1 if n_out else 0
            self._symbolic_tensor_counter += n_out
            info.ops.append([op_name, op_type, [t.name for t in inputs], n_out,
                             self._stack_of(graph, op_name, outputs)])
            info.first_ids.append(first_id)
            if info.xla:
                if info.context_id not in self._xla_warned:
                    self._xla_warned.add(info.context_id)
                    log.warning("tfdump-fast: the function graph %r is compiled by XLA (jit_compile=True); "
                                "XLA cannot run the capture op, so its tensors are NOT captured (trace "
                                "it without jit_compile to debug it)", info.graph_name)
                    self.writer.record_event(XLA_EVENT, context_id=info.context_id,
                                             graph_name=info.graph_name)
                return None
        if not outputs or op_type in self._skip_ops:
            return None
        if self._op_regex is not None and not self._op_regex.match(op_type):
            return None
        for slot, tensor in enumerate(outputs):
            dtype = tensor.dtype
            if self._dtype_filter is not None and not self._dtype_filter(dtype):
                continue
            if not self._dumpable(dtype):
                continue
            if self.mode == "NO_TENSOR":
                # as tfdbg v2, which captures an empty float32 constant in this mode: the same
                # constant keeps the graph's op names (Const_N) the same as under tfdbg v2
                import tensorflow as tf

                tensor = tf.constant([], dtype=tf.float32)
            self._tfp.add_graph_op(CAPTURE_OP, f"{CAPTURE_OP}_{slot}", tensor,
                                   context_id=info.context_id, op_name=op_name, output_slot=slot,
                                   tensor_debug_mode=self.mode_value, tensor_id=first_id + slot)
        return None

    def _flush_graphs(self) -> None:
        """Record what was traced since the last flush (tf2_graph events)."""
        frames_by_idx = None
        for info in list(self._graphs.values()):
            if info.flushed == len(info.ops):
                continue
            if frames_by_idx is None:
                frames_by_idx = {i: f for f, i in self._frames.items()}
            new = info.ops[info.flushed:]
            new_first_ids = info.first_ids[info.flushed:]
            files: List[str] = []
            file_idx: Dict[str, int] = {}
            local: Dict[int, int] = {}
            frames: List[list] = []
            ops = []
            for name, op_type, inputs, n_out, stack in new:
                local_stack = []
                for gi in stack:
                    li = local.get(gi)
                    if li is None:
                        path, line, func = frames_by_idx[gi]
                        fi = file_idx.get(path)
                        if fi is None:
                            fi = file_idx[path] = len(files)
                            files.append(path)
                        li = local[gi] = len(frames)
                        frames.append([fi, line, func])
                    local_stack.append(li)
                ops.append([name, op_type, inputs, n_out, local_stack])
            self.writer.record_event(GRAPH_EVENT, context_id=info.context_id, graph_name=info.graph_name,
                                     function_name=info.function_name,
                                     outer_context_id=info.outer_context_id, first_op=info.flushed,
                                     xla=info.xla, files=files, frames=frames, ops=ops,
                                     first_tensor_ids=new_first_ids)
            info.flushed += len(new)
            for path in files:
                self._record_source(path)

    def _record_source(self, path: str) -> None:
        from tfdump_fast.creation_sites import user_frame

        if path in self._sources_done:
            return
        self._sources_done.add(path)
        if user_frame([(path, 0, "")]) is None:   # only user code, like creation sites
            return
        try:
            if os.path.getsize(path) > _MAX_SOURCE_BYTES:
                return
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            return
        self.writer.record_event(SOURCE_FILE_EVENT, path=path, lines=lines)

    # -- eager ops

    def _eager_stack_id(self) -> Optional[int]:
        """The id of the Python stack executing the current eager op; new stacks
        are recorded once (their frames outside this package, outermost first)."""
        # keyed by the code objects' ids (hashing a code object hashes its contents);
        # the code objects are kept alive below, so their ids are not reused
        key = []
        frame = sys._getframe(1)
        while frame is not None:
            key.append(id(frame.f_code))
            key.append(frame.f_lineno)
            frame = frame.f_back
        key = tuple(key)
        sid = self._eager_stacks.get(key)
        if sid is not None:
            return sid
        with self._lock:
            sid = self._eager_stacks.get(key)
            if sid is not None or len(self._eager_stacks) >= _MAX_EAGER_STACKS:
                return sid
            sid = len(self._eager_stacks)
            locations = []
            frame = sys._getframe(1)
            while frame is not None:
                locations.append((frame.f_code, frame.f_lineno))
                frame = frame.f_back
            self._eager_stack_codes.append(locations)
            files: List[str] = []
            file_idx: Dict[str, int] = {}
            frames = []
            for code, line in reversed(locations):
                path = code.co_filename
                if path.startswith(_PACKAGE_DIR):
                    continue
                fi = file_idx.get(path)
                if fi is None:
                    fi = file_idx[path] = len(files)
                    files.append(path)
                frames.append([fi, int(line or 0), code.co_name])
            self.writer.record_event(EAGER_STACK_EVENT, stack_id=sid, files=files, frames=frames)
            for path in files:
                self._record_source(path)
            self._eager_stacks[key] = sid
        return sid

    def eager_op(self, op_type, outputs) -> None:
        if op_type in self._skip_ops:
            return
        is_function = op_type.startswith(_FUNCTION_PREFIXES)
        if self.run is not None and outputs and (self._capture_eager or is_function):
            self._eager_ops += 1
            if self._op_regex is None or self._op_regex.match(op_type):   # as tfdbg v2
                sid = self._eager_stack_id()
                context_id = "eager" if sid is None else f"eager@{sid}"
                for slot, tensor in enumerate(outputs):
                    dtype = tensor.dtype
                    if not dtype.is_numpy_compatible:
                        continue
                    if self._dtype_filter is not None and not self._dtype_filter(dtype):
                        continue
                    mode = self.mode_value
                    if not self._dumpable(dtype):
                        # tfdbg v2 puts an empty TensorProto in the Execution for an
                        # output its mode cannot summarise: a NO_TENSOR record keeps its place
                        mode = TENSOR_DEBUG_MODES["NO_TENSOR"]
                    # eager tensors have no tfdbg v2 graph tensor id: -1, as tfdbg v2
                    self._tfp.run_eager_op(CAPTURE_OP, tensor, (
                        "context_id", context_id, "op_name", op_type, "output_slot", slot,
                        "tensor_debug_mode", mode, "tensor_id", -1))
        if is_function:
            self.function_executed(op_type)

    def callback(self, op_type, inputs, attrs, outputs, op_name=None, graph=None):
        del attrs
        try:
            if isinstance(op_type, bytes):
                op_type = op_type.decode()
            if graph is not None:
                return self.graph_op(op_type, inputs, outputs, op_name, graph)
            self.eager_op(op_type, outputs)
        except Exception as exc:  # noqa: BLE001 - never fail the program
            log.error("tfdump-fast: TF2 capture failed for %s %r (not captured): %s", op_type, op_name, exc)
        return None

    # -- end

    def close(self) -> Dict[str, int]:
        with self._lock:
            if self._closed:
                return {}
            self._closed = True
            try:
                self._end_run(None)
                if self.writer.options.get("keep_last") is not None:
                    # tfdbg v2 writes its circular buffer when disabled or at exit: so do we
                    try:
                        self.writer.persist("disable_dump_debug_info")
                    except errors.TfdumpError as exc:
                        log.error("tfdump-fast: could not write the last %s executions at disable: %s",
                                  self.writer.options.get("keep_last"), exc)
            finally:
                self._native.lib.tfdump_tf2_unbind()
                stats = self._native.stats()
                self._graph_refs.clear()
                self.writer.close()
        return stats


def enable_dump_debug_info(dump_root, tensor_debug_mode="FULL_TENSOR", circular_buffer_size=None,
                           op_regex=None, tensor_dtypes=None, *, sample=None, capture_eager=True,
                           **writer_options):
    """Dump the tensors of a TF2 program (tf.function, Keras, eager) into ``dump_root``.

    The counterpart of ``tf.debugging.experimental.enable_dump_debug_info``
    on tfdump-fast's engine. Applies to the calling thread (as tfdbg v2's);
    one capture per process at a time.

    Parameters
    ----------
    dump_root : str or os.PathLike
        The store's directory (a :class:`~tfdump_fast.DumpWriter` session root).
    tensor_debug_mode : str or int, default "FULL_TENSOR"
        What is recorded per instrumented tensor, as tfdbg v2:
        ``"FULL_TENSOR"`` the tensor; ``"CURT_HEALTH"``, ``"CONCISE_HEALTH"``,
        ``"FULL_HEALTH"``, ``"SHAPE"`` DebugNumericSummaryV2's float64 vector
        (element 0: tfdbg v2's tensor id of a graph tensor, -1 for eager
        ops), computed natively off the step; only floating-point tensors
        (SHAPE: also integer and bool ones) are instrumented; ``"NO_TENSOR"``
        an empty float32 tensor (that the op ran). ``FULL_NUMERICS`` and
        ``REDUCE_INF_NAN_THREE_SLOTS`` raise
        :class:`~tfdump_fast.TfdumpUsageError` (tfdbg v2 does not implement
        them either).
    circular_buffer_size : int, optional
        ``N > 0``: the flight recorder (``keep_last=N``, at most 1024; memory
        bound ``keep_bytes``, a writer option): the full tensors of the last
        N executions (runs) stay in memory and are written when a trigger
        fires (``persist_on``: an inf/nan in a captured float tensor) and at
        :func:`disable_dump_debug_info` / interpreter exit, like tfdbg v2's
        buffer. Counted in executions, not in tfdbg v2's events. ``None``
        (default) or ``<= 0``: every captured tensor is written as it comes
        (tfdbg v2's default, 1000 events, would drop all but the last
        events of a long run; tfdump-fast's writes are asynchronous and
        compressed, so writing everything is its default). Applies to
        ``"FULL_TENSOR"`` only: the summary modes' records (tens of bytes)
        are all written as they come.
    op_regex : str, optional
        Instrument only ops whose *type* matches (``re.match``), as tfdbg v2.
    tensor_dtypes : list of dtypes or callable, optional
        Instrument only tensors of these dtypes (or where ``predicate(dtype)``).
    sample : int, range, callable or StepSampler, optional
        Which top-level function executions are dumped (see
        :mod:`tfdump_fast.sampling`; the step is the 0-based execution index).
    capture_eager : bool, default True
        Capture the outputs of eager ops (not only of function executions).
    **writer_options
        Passed to :class:`~tfdump_fast.DumpWriter` (``queue_bytes``,
        ``policy``, ``codec``, ``disk_limit_bytes``, ...).

    Returns
    -------
    tfdump_fast.DumpWriter
        The writer (its ``stats()``); it is closed by :func:`disable_dump_debug_info`.

    Raises
    ------
    TfdumpUsageError
        A bad argument, TF1 graph mode, or capture already enabled with other settings.
    TfdumpBridgeError
        The TensorFlow bridge cannot be built or loaded.
    """
    global _active
    from tfdump_fast import _tf_private
    from tfdump_fast.sampling import as_sampler

    from tfdump_fast.writer import _MAX_KEEP_LAST

    mode = _check_mode(tensor_debug_mode)
    if circular_buffer_size is not None and (not isinstance(circular_buffer_size, int)
                                             or isinstance(circular_buffer_size, bool)):
        raise errors.TfdumpUsageError(f"circular_buffer_size={circular_buffer_size!r} must be an int or None")
    if circular_buffer_size is not None and circular_buffer_size > 0 and mode != "FULL_TENSOR":
        # the flight recorder holds full tensors; summaries (tens of bytes) are written as they come
        log.info("tfdump-fast: circular_buffer_size=%d applies to FULL_TENSOR only; %s records are "
                 "all written", circular_buffer_size, mode)
    elif circular_buffer_size is not None and circular_buffer_size > 0:
        if "keep_last" in writer_options:
            raise errors.TfdumpUsageError(
                f"circular_buffer_size={circular_buffer_size} and keep_last="
                f"{writer_options['keep_last']!r} both set the flight recorder's ring: pass one")
        if circular_buffer_size > _MAX_KEEP_LAST:
            log.info("tfdump-fast: circular_buffer_size=%d capped at %d executions (the flight "
                     "recorder's most); keep_bytes bounds their memory", circular_buffer_size,
                     _MAX_KEEP_LAST)
        writer_options = dict(writer_options, keep_last=min(circular_buffer_size, _MAX_KEEP_LAST))
    if not isinstance(capture_eager, bool):
        raise errors.TfdumpUsageError(f"capture_eager={capture_eager!r} must be True or False")
    if op_regex is not None and not isinstance(op_regex, str):
        raise errors.TfdumpUsageError(f"op_regex={op_regex!r} must be a str or None")
    dtype_filter = _dtype_filter(tensor_dtypes)
    sampler = as_sampler(sample) if sample is not None else None
    if not _tf_private.executing_eagerly_outside_functions():
        raise errors.TfdumpUsageError(
            "enable_dump_debug_info is for TF2 programs (eager execution); in TF1 graph mode "
            "(tf.compat.v1.disable_eager_execution) use tfdump_fast.DumpingDebugHook or "
            "DumpingDebugWrapperSession")
    with _lock:
        if _active is not None:
            if os.path.abspath(os.fspath(dump_root)) == os.path.abspath(_active.dump_root) and \
                    _active.mode == mode:
                return _active.writer
            raise errors.TfdumpUsageError(
                f"TF2 capture is already enabled (dump root {_active.dump_root}, {_active.mode}); call "
                "tfdump_fast.disable_dump_debug_info() first")
        dumper = _Tf2Dumper(dump_root, mode, op_regex, dtype_filter, sampler, capture_eager, writer_options)
        _tf_private.add_op_callback(dumper.callback)
        _tf_private.concrete_function_callbacks().append(dumper.function_traced)
        _active = dumper
    atexit.register(disable_dump_debug_info)
    return dumper.writer


def disable_dump_debug_info() -> Optional[Dict[str, int]]:
    """Stop TF2 capture: end the current run, write the graphs traced, close the writer.

    Idempotent; a no-op when capture is not enabled. Functions traced while
    capture was enabled keep their capture ops, which then only forward
    their input (retrace to drop them).

    Returns
    -------
    dict or None
        The bridge's TF2 counters (tensors_submitted, tensors_unbound,
        tensors_failed), None when nothing was enabled.
    """
    global _active
    from tfdump_fast import _tf_private

    with _lock:
        dumper, _active = _active, None
    if dumper is None:
        return None
    _tf_private.remove_op_callback(dumper.callback)
    callbacks = _tf_private.concrete_function_callbacks()
    if dumper.function_traced in callbacks:
        callbacks.remove(dumper.function_traced)
    return dumper.close()


def keras_callback():
    """A Keras callback that records the epoch, batch and global step of each
    dumped run (``model.fit(..., callbacks=[tfdump_fast.tf2.keras_callback()])``).

    Returns
    -------
    keras.callbacks.Callback
    """
    import keras

    class _TfdumpKerasCallback(keras.callbacks.Callback):
        def _note(self, mode, batch):
            dumper = _active
            if dumper is None:
                return
            note = {"keras_mode": mode, "batch": int(batch)}
            if mode == "train":
                note["epoch"] = self._epoch
                opt = getattr(self.model, "optimizer", None)
                it = getattr(opt, "iterations", None)
                if it is not None:
                    try:
                        note["global_step"] = int(it.numpy())
                    except Exception:  # noqa: BLE001 - no step then
                        pass
            dumper.keras = note

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch = int(epoch)

        def on_train_batch_begin(self, batch, logs=None):
            self._note("train", batch)

        def on_test_batch_begin(self, batch, logs=None):
            self._note("test", batch)

        def on_predict_batch_begin(self, batch, logs=None):
            self._note("predict", batch)

    cb = _TfdumpKerasCallback()
    cb._epoch = 0
    return cb
