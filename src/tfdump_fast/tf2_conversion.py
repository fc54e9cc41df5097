"""``convert(..., layout="tfdbg2")``: a TF2 dump as tfdbg v2's DebugEvents files.

Writes what ``tf.debugging.experimental.enable_dump_debug_info`` writes
(``<dest>/tfdbg_events.<ts>.<host>.{metadata,source_files,stack_frames,graphs,
execution,graph_execution_traces}``), so that TensorFlow's
``debug_events_reader.DebugDataReader`` and TensorBoard's Debugger V2 read it:

* every user source file recorded (``tf2_source_file``) as a SourceFile, and
  every other file of a creation stack as one without lines;
* each frame of the ops' creation stacks as a StackFrameWithId;
* each traced graph (``tf2_graph``) as a DebuggedGraph, outer graphs first,
  and its ops as GraphOpCreation;
* each captured graph tensor as a GraphExecutionTrace (its tensor_debug_mode,
  with its TensorProto: the tensor, the health mode's float64 vector, or
  NO_TENSOR's empty float32 tensor), in run order then arrival order;
* each eager op's / function execution's outputs as an Execution (in
  NO_TENSOR mode without values, as tfdbg v2; in the health modes an output
  the mode cannot summarise as an empty TensorProto, as tfdbg v2).

Tensor ids are tfdbg v2's: graph tensors numbered in creation order from 1
(recorded at capture, ``first_tensor_ids`` of the ``tf2_graph`` events, and
what slot 0 of the health vectors holds); eager outputs get ids after them.

Uses TensorFlow's own DebugEventsWriter and protos, so it needs TensorFlow
(reading a tfdump-fast store does not).
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Dict, List

from tfdump_fast.errors import TfdumpUsageError
from tfdump_fast.reader import DumpReader
from tfdump_fast.tf2_reader import EAGER_CONTEXT, Tf2Dump, context_of_debug_op, mode_of_debug_op

__all__ = ["convert_tfdbg2"]

_MODES = {"NO_TENSOR": 1, "CURT_HEALTH": 2, "CONCISE_HEALTH": 3, "FULL_HEALTH": 4, "SHAPE": 5,
          "FULL_TENSOR": 7}


def _context_order(cid: str):
    return (0, int(cid[1:])) if cid[:1] == "g" and cid[1:].isdigit() else (1, cid)


def convert_tfdbg2(session_root, dest, *, overwrite: bool = False) -> List[str]:
    """Write a TF2 store as tfdbg v2's DebugEvents files in ``dest``.

    Parameters
    ----------
    session_root : str or os.PathLike
        A store written by :func:`tfdump_fast.enable_dump_debug_info`.
    dest : str or os.PathLike
        Directory to write (created; must be empty unless ``overwrite``).
    overwrite : bool, default False

    Returns
    -------
    list of str
        The files written.
    """
    from tensorflow.core.framework import graph_debug_info_pb2, tensor_pb2
    from tensorflow.core.protobuf import debug_event_pb2 as D
    from tensorflow.python.debug.lib import debug_events_writer

    from tfdump_fast.conversion import tensor_proto

    dest = os.fspath(dest)
    if os.path.isdir(dest) and os.listdir(dest) and not overwrite:
        raise TfdumpUsageError(f"{dest} already exists and is not empty: pick another destination or "
                               "pass overwrite=True")
    os.makedirs(dest, exist_ok=True)
    reader = DumpReader(os.fspath(session_root))
    dump = Tf2Dump(reader)
    if not dump.graphs and not any(context_of_debug_op(k.debug_op) for k in reader.keys()):
        raise TfdumpUsageError(f"{session_root} holds no TF2 capture (enable_dump_debug_info); "
                               "convert it with layout='tfdbg' instead")
    host = socket.gethostname()
    writer = debug_events_writer.DebugEventsWriter(dest, str(uuid.uuid4())[:8], circular_buffer_size=-1)

    # source files: user files with their lines, every other stack file without
    file_index: Dict[str, int] = {}
    stack_files = []
    for g in dump.graphs.values():
        for op in g.ops.values():
            stack_files.extend(f[0] for f in op.stack)
    for path in list(dump.source_files()) + stack_files:
        if path in file_index:
            continue
        file_index[path] = len(file_index)
        lines = dump._sources.get(path, [])   # noqa: SLF001 - same package
        writer.WriteSourceFile(D.SourceFile(file_path=path, host_name=host, lines=lines))
    frame_ids: Dict[tuple, str] = {}

    def frame_id(frame) -> str:
        fid = frame_ids.get(frame)
        if fid is None:
            fid = frame_ids[frame] = f"f{len(frame_ids)}"
            writer.WriteStackFrameWithId(D.StackFrameWithId(
                id=fid, file_line_col=graph_debug_info_pb2.GraphDebugInfo.FileLineCol(
                    file_index=file_index[frame[0]], line=frame[1], func=frame[2])))
        return fid

    recorded_ids = [op.first_tensor_id + op.num_outputs for g in dump.graphs.values()
                    for op in g.ops.values() if op.first_tensor_id]
    tensor_ids = iter(range(max(recorded_ids, default=1), 1 << 62))
    for cid in sorted(dump.graphs, key=_context_order):
        g = dump.graphs[cid]
        writer.WriteDebuggedGraph(D.DebuggedGraph(graph_id=cid, graph_name=g.name or "",
                                                  outer_context_id=g.outer_context_id or ""))
        for op in g.ops.values():
            writer.WriteGraphOpCreation(D.GraphOpCreation(
                op_type=op.op_type, op_name=op.name, graph_name=g.name or "", graph_id=cid,
                input_names=op.inputs, num_outputs=op.num_outputs,
                output_tensor_ids=(list(range(op.first_tensor_id, op.first_tensor_id + op.num_outputs))
                                   if op.first_tensor_id else
                                   [next(tensor_ids) for _ in range(op.num_outputs)]),
                code_location=D.CodeLocation(host_name=host,
                                             stack_frame_ids=[frame_id(f) for f in op.stack])))
    writer.FlushNonExecutionFiles()

    function_context = {g.function_name: cid for cid, g in dump.graphs.items() if g.function_name}
    for run in reader.runs:
        execution = None
        run_mode = _MODES.get(run.metadata.get("tf2_tensor_debug_mode"), _MODES["FULL_TENSOR"])
        for rec in run:
            cid = context_of_debug_op(rec.debug_op)
            if cid is None:
                continue
            proto = tensor_pb2.TensorProto.FromString(tensor_proto(reader, rec.tensor_id))
            if cid != EAGER_CONTEXT:
                writer.WriteGraphExecutionTrace(D.GraphExecutionTrace(
                    tfdbg_context_id=cid, op_name=rec.node_name, output_slot=rec.output_slot,
                    tensor_debug_mode=_MODES[mode_of_debug_op(rec.debug_op)], tensor_proto=proto,
                    device_name=rec.device))
                continue
            if execution is not None and (rec.output_slot == 0 or execution.op_type != rec.node_name):
                writer.WriteExecution(execution)
                execution = None
            if execution is None:
                execution = D.Execution(op_type=rec.node_name, num_outputs=0,
                                        graph_id=function_context.get(rec.node_name, ""),
                                        tensor_debug_mode=run_mode,
                                        code_location=D.CodeLocation(host_name=host))
            execution.num_outputs += 1
            execution.output_tensor_ids.append(next(tensor_ids))
            if run_mode != _MODES["NO_TENSOR"]:
                if mode_of_debug_op(rec.debug_op) == "NO_TENSOR":   # an output the mode cannot summarise
                    proto = tensor_pb2.TensorProto()
                execution.tensor_protos.append(proto)
            execution.output_tensor_device_ids.append(writer.RegisterDeviceAndGetId(rec.device))
        if execution is not None:
            writer.WriteExecution(execution)
        function = run.metadata.get("tf2_function")
        if function and (execution is None or execution.op_type != function):
            # the function's outputs were not captured (none numpy can hold): its execution still counts
            writer.WriteExecution(D.Execution(op_type=function, num_outputs=0,
                                              graph_id=function_context.get(function, ""),
                                              tensor_debug_mode=run_mode,
                                              code_location=D.CodeLocation(host_name=host)))
    writer.FlushExecutionFiles()
    writer.Close()
    reader.close()
    return sorted(os.path.join(dest, f) for f in os.listdir(dest))
