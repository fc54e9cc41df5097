"""Import a tfdbg v2 dump (``tf.debugging.experimental.enable_dump_debug_info``)
into a new tfdump-fast store, as :func:`tfdump_fast.enable_dump_debug_info`
would have written it.

Reads the DebugEvents files with TensorFlow's own ``DebugDataReader`` (so it
needs TensorFlow) and writes through :class:`~tfdump_fast.DumpWriter`:

* each DebuggedGraph and its ops (types, inputs, creation stacks) as
  ``tf2_graph`` events, keeping tfdbg's graph ids as context ids;
* each distinct Execution stack as a ``tf2_eager_stack`` event, and the user
  source files tfdbg recorded as ``tf2_source_file`` events;
* one run per top-level function execution (an Execution with a graph id),
  holding the eager executions before it, the graph execution traces it ran
  and its own outputs, as tfdump-fast's TF2 capture lays a run out; eager
  executions after the last function make a last run.

Only FULL_TENSOR values can be imported: a dump written in another
``tensor_debug_mode`` holds summaries, not tensors, and is refused.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional

from tfdump_fast.creation_sites import user_frame
from tfdump_fast.errors import TfdumpFormatError, TfdumpIOError, TfdumpUsageError
from tfdump_fast.tf2_reader import DEBUG_OP_PREFIX

__all__ = ["import_tfdbg2", "is_tfdbg2_dump"]

_FULL_TENSOR = 7
_NO_TENSOR = 1


def is_tfdbg2_dump(path) -> bool:
    """Whether ``path`` is a directory holding tfdbg v2's DebugEvents files."""
    path = os.fspath(path)
    return os.path.isdir(path) and any(
        name.startswith("tfdbg_events.") and name.endswith(".metadata") for name in os.listdir(path))


class _Frames:
    """Interns (file, line, function) frames into an event's files/frames lists."""

    def __init__(self):
        self.files: List[str] = []
        self.frames: List[list] = []
        self._file_idx: Dict[str, int] = {}
        self._frame_idx: Dict[tuple, int] = {}

    def index(self, frame) -> int:
        path, line, func = str(frame[0]), int(frame[1]), str(frame[2])
        key = (path, line, func)
        idx = self._frame_idx.get(key)
        if idx is None:
            fi = self._file_idx.get(path)
            if fi is None:
                fi = self._file_idx[path] = len(self.files)
                self.files.append(path)
            idx = self._frame_idx[key] = len(self.frames)
            self.frames.append([fi, line, func])
        return idx


def import_tfdbg2(src, dest, *, allow_existing: bool = False, **writer_options) -> List[str]:
    """Import a tfdbg v2 dump into a new tfdump-fast store.

    Parameters
    ----------
    src : str or os.PathLike
        The tfdbg v2 dump root (``tfdbg_events.*`` files), written with
        ``tensor_debug_mode="FULL_TENSOR"``.
    dest : str or os.PathLike
        The store to create (an empty or new directory).
    allow_existing : bool, default False
        Write into a non-empty ``dest``.
    **writer_options
        Passed to :class:`~tfdump_fast.DumpWriter` (``codec``, ...).

    Returns
    -------
    list of str
        Names of the runs written, in order.

    Raises
    ------
    TfdumpFormatError
        ``src`` holds no tfdbg v2 dump, or one written in a summary mode.
    TfdumpUsageError
        ``dest`` is not empty.
    """
    from tensorflow.python.debug.lib import debug_events_reader

    from tfdump_fast.writer import DumpWriter

    for what, path in (("src", src), ("dest", dest)):
        if not isinstance(path, (str, os.PathLike)):
            raise TfdumpUsageError(f"{what}={path!r} must be a path (str or os.PathLike)")
    src, dest = os.fspath(src), os.fspath(dest)
    if not os.path.isdir(src):
        raise TfdumpIOError(2, f"{src} is not a directory")
    if not is_tfdbg2_dump(src):
        raise TfdumpFormatError(f"{src} holds no tfdbg v2 dump (tfdbg_events.*.metadata); for a tfdbg v1 "
                                "dump (run_* directories) use tfdump_fast.import_tfdbg")
    if os.path.isdir(dest) and os.listdir(dest) and not allow_existing:
        raise TfdumpUsageError(f"{dest} is not empty: import into a new directory, or pass allow_existing=True")

    with debug_events_reader.DebugDataReader(src) as reader:
        reader.update()
        executions = reader.executions()
        traces = reader.graph_execution_traces()
        modes = {e.tensor_debug_mode for e in executions} | {t.tensor_debug_mode for t in traces}
        if modes - {_FULL_TENSOR, _NO_TENSOR}:
            raise TfdumpFormatError(
                f"{src} was written with tensor_debug_mode {sorted(modes - {_FULL_TENSOR, _NO_TENSOR})} (summaries, not "
                "tensors): only FULL_TENSOR dumps can be imported")
        writer = DumpWriter(dest, **writer_options)
        try:
            return _import(reader, executions, traces, writer)
        finally:
            writer.close()


def _graph_ids(reader) -> List[str]:
    """Every graph id, outer graphs before inner ones, in first-op order."""
    seen: Dict[str, None] = {}

    def add(gid):
        if not gid or gid in seen:
            return
        outer = reader.graph_by_id(gid).outer_graph_id
        add(outer)
        seen[gid] = None

    for digest in reader.graph_op_digests():
        add(digest.graph_id)
    return list(seen)


def _import(reader, executions, traces, writer) -> List[str]:
    sources_done = set()

    def record_sources(paths):
        for host_path in paths:
            if host_path in sources_done:
                continue
            sources_done.add(host_path)
            host, path = host_path
            if user_frame([(path, 0, "")]) is None:   # only user code, as tf2.py records
                continue
            try:
                lines = reader.source_lines(host, path)
            except KeyError:
                continue
            writer.record_event("tf2_source_file", path=path, lines=list(lines))

    # graphs: names, nesting, ops with their creation stacks
    function_of_graph: Dict[str, str] = {}
    for e in executions:
        if e.graph_id and e.graph_id not in function_of_graph:
            function_of_graph[e.graph_id] = e.op_type
    ops_by_graph: Dict[str, list] = {}
    for digest in reader.graph_op_digests():
        ops_by_graph.setdefault(digest.graph_id, []).append(digest)
    for gid in _graph_ids(reader):
        graph = reader.graph_by_id(gid)
        frames = _Frames()
        ops = []
        hosts = set()
        for digest in ops_by_graph.get(gid, []):
            host, stack = reader.read_graph_op_creation_stack_trace(digest)
            hosts.add(host)
            ops.append([digest.op_name, digest.op_type, list(digest.input_names or ()),
                        int(digest.num_outputs), [frames.index(f) for f in stack]])
        writer.record_event("tf2_graph", context_id=gid, graph_name=graph.name,
                            function_name=function_of_graph.get(gid), outer_context_id=graph.outer_graph_id,
                            first_op=0, xla=False, files=frames.files, frames=frames.frames, ops=ops)
        record_sources((h, p) for h in hosts for p in frames.files)

    # eager stacks, one event per distinct stack
    stack_ids: Dict[tuple, int] = {}

    def eager_debug_op(execution) -> str:
        key = tuple(execution.stack_frame_ids)
        if not key:
            return DEBUG_OP_PREFIX + "eager"
        sid = stack_ids.get(key)
        if sid is None:
            sid = stack_ids[key] = len(stack_ids)
            host, stack = reader.read_execution_stack_trace(execution)
            frames = _Frames()
            idx = [frames.index(f) for f in stack]   # outermost first, as tfdbg v2 records them
            writer.record_event("tf2_eager_stack", stack_id=sid, files=frames.files,
                                frames=[frames.frames[i] for i in idx])
            record_sources((host, p) for p in frames.files)
        return f"{DEBUG_OP_PREFIX}eager@{sid}"

    # runs: eager executions up to and including a top-level function execution
    trace_pos = 0
    names = []
    pending: list = []
    index = 0

    def write_execution(run, e):
        if e.tensor_debug_mode != _FULL_TENSOR:
            return
        values = reader.execution_to_tensor_values(e)
        debug_op = eager_debug_op(e)
        wall_us = int(e.wall_time * 1e6)
        for slot, value in enumerate(values):
            dev_ids = e.output_tensor_device_ids or ()
            device = reader.device_name_by_id(dev_ids[slot]) if slot < len(dev_ids) else None
            if value is None:
                continue
            writer.write(value, e.op_type, slot, debug_op=debug_op, run=run, wall_us=wall_us,
                         **({"device": device} if device else {}))

    for e in executions:
        pending.append(e)
        if not e.graph_id:
            continue
        run = writer.begin_run(metadata={"tf2_execution": index}, capture=False)
        for eager in pending[:-1]:
            write_execution(run, eager)
        # the traces this function ran: those written before its execution event
        while trace_pos < len(traces) and traces[trace_pos].wall_time <= e.wall_time:
            _write_trace(reader, writer, run, traces[trace_pos])
            trace_pos += 1
        write_execution(run, e)
        writer.end_run(run, metadata={"tf2_execution": index, "tf2_function": e.op_type,
                                      "tf2_context_id": e.graph_id, "eager_ops": len(pending),
                                      "global_step": index})
        names.append(run.run_name)
        pending = []
        index += 1
    if pending or trace_pos < len(traces):
        run = writer.begin_run(metadata={"tf2_execution": index}, capture=False)
        for eager in pending:
            write_execution(run, eager)
        for trace in traces[trace_pos:]:
            _write_trace(reader, writer, run, trace)
        writer.end_run(run, metadata={"tf2_execution": index, "tf2_function": None, "eager_ops": len(pending),
                                      "global_step": index})
        names.append(run.run_name)
    return names


def _write_trace(reader, writer, run, trace) -> Optional[bool]:
    if trace.tensor_debug_mode != _FULL_TENSOR:
        return None
    value = reader.graph_execution_trace_to_tensor_value(trace)
    kw = {"device": trace.device_name} if trace.device_name else {}
    return writer.write(value, trace.op_name, trace.output_slot, debug_op=DEBUG_OP_PREFIX + trace.graph_id, run=run,
                        wall_us=int(trace.wall_time * 1e6), **kw)
