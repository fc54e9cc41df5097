"""Reading TF2 dumps (``tfdump_fast.enable_dump_debug_info``), without TensorFlow.

A TF2 dump is an ordinary store: :class:`~tfdump_fast.DumpReader` lists its
runs (one per top-level ``tf.function`` execution, see :mod:`tfdump_fast.tf2`)
and records. :class:`Tf2Dump` adds what the ``tf2_graph`` and
``tf2_source_file`` META events say: the traced graphs, each op's type,
inputs and creation stack, and the user's source lines.

>>> from tfdump_fast import DumpReader
>>> from tfdump_fast.tf2_reader import Tf2Dump
>>> dump = Tf2Dump(DumpReader("/tmp/dump"))              # doctest: +SKIP
>>> rec = dump.first_non_finite()                        # doctest: +SKIP
>>> dump.op_of(rec).op_type, dump.creation_site(rec)     # doctest: +SKIP
('Sqrt', ('/home/me/train.py', 12, 'call'))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from tfdump_fast.creation_sites import user_frame

__all__ = ["Tf2Dump", "Tf2Graph", "Tf2Op", "EAGER_CONTEXT", "context_of_debug_op", "mode_of_debug_op",
           "eager_stack_of_debug_op"]

#: the context id of eager ops' records
EAGER_CONTEXT = "eager"
#: the debug op of every TF2 capture record starts with this (tfdump_fast.tf2)
DEBUG_OP_PREFIX = "TfdumpCaptureV2."

Frame = Tuple[str, int, str]


def context_of_debug_op(debug_op: str) -> Optional[str]:
    """The graph context id in a TF2 record's debug op (``TfdumpCaptureV2.<id>``, or
    ``TfdumpCaptureV2.<id>.<MODE>`` for other modes than FULL_TENSOR; ``eager`` for
    eager ops, whatever their stack), else None."""
    if debug_op.startswith(DEBUG_OP_PREFIX):
        return debug_op[len(DEBUG_OP_PREFIX):].partition(".")[0].split("@", 1)[0]
    return None


def eager_stack_of_debug_op(debug_op: str) -> Optional[int]:
    """The stack id in an eager record's debug op (``TfdumpCaptureV2.eager@<id>``,
    ``TfdumpCaptureV2.eager@<id>.<MODE>``), else None."""
    if debug_op.startswith(DEBUG_OP_PREFIX + EAGER_CONTEXT + "@"):
        tail = debug_op[len(DEBUG_OP_PREFIX) + len(EAGER_CONTEXT) + 1:].partition(".")[0]
        return int(tail) if tail.isdigit() else None
    return None


def mode_of_debug_op(debug_op: str) -> Optional[str]:
    """The tensor_debug_mode of a TF2 record (``"FULL_TENSOR"``, ``"CURT_HEALTH"``,
    ..., ``"NO_TENSOR"``), else None."""
    if not debug_op.startswith(DEBUG_OP_PREFIX):
        return None
    return debug_op[len(DEBUG_OP_PREFIX):].partition(".")[2] or "FULL_TENSOR"


@dataclass
class Tf2Op:
    """One op of a traced graph: its type, input tensor names, number of
    outputs and creation stack (``(file, line, function)``, outermost first)."""

    name: str
    op_type: str
    inputs: List[str]
    num_outputs: int
    stack: List[Frame]
    #: tfdbg v2's tensor id of output 0 (the others follow), as slot 0 of the
    #: health modes' vectors; None in dumps written before it was recorded
    first_tensor_id: Optional[int] = None


@dataclass
class Tf2Graph:
    """One traced graph (a tf.function, a nested function, a tf.data function)."""

    context_id: str
    name: Optional[str]
    function_name: Optional[str]
    outer_context_id: Optional[str]
    xla: bool = False
    ops: Dict[str, Tf2Op] = field(default_factory=dict)


class Tf2Dump:
    """The TF2 view of a :class:`~tfdump_fast.DumpReader`.

    Parameters
    ----------
    reader : DumpReader
    """

    def __init__(self, reader):
        self.reader = reader
        self.graphs: Dict[str, Tf2Graph] = {}
        self._sources: Dict[str, List[str]] = {}
        self._eager_stacks: Dict[int, List[Frame]] = {}
        for ev in reader.events():
            name = ev.get("event")
            if name == "tf2_graph":
                self._add_graph_event(ev)
            elif name == "tf2_source_file":
                self._sources[str(ev.get("path"))] = list(ev.get("lines") or [])
            elif name == "tf2_eager_stack":
                files = ev.get("files") or []
                self._eager_stacks[int(ev["stack_id"])] = [
                    (files[f[0]], int(f[1]), str(f[2])) for f in ev.get("frames") or []]

    def _add_graph_event(self, ev) -> None:
        cid = str(ev["context_id"])
        g = self.graphs.get(cid)
        if g is None:
            g = self.graphs[cid] = Tf2Graph(cid, ev.get("graph_name"), ev.get("function_name"),
                                           ev.get("outer_context_id"), bool(ev.get("xla")))
        if ev.get("function_name"):
            g.function_name = ev["function_name"]
        files = ev.get("files") or []
        frames = [(files[f[0]], int(f[1]), str(f[2])) for f in ev.get("frames") or []]
        ops = ev.get("ops") or []
        first_ids = ev.get("first_tensor_ids") or [None] * len(ops)
        for (name, op_type, inputs, n_out, stack), first_id in zip(ops, first_ids):
            g.ops[name] = Tf2Op(name, op_type, list(inputs), int(n_out), [frames[i] for i in stack],
                                None if first_id is None else int(first_id))

    # -- executions

    def executions(self) -> list:
        """The runs of top-level function executions (``Run.metadata['tf2_function']`` set),
        in order; runs holding only eager ops executed after the last function are left out."""
        return [r for r in self.reader.runs if r.metadata.get("tf2_function")]

    def graph_execution_traces(self) -> list:
        """Every record of a graph tensor (tfdbg v2's graph execution traces),
        in run order, then arrival order."""
        return [rec for run in self.reader.runs for rec in run if self.graph_of(rec) is not None]

    def eager_records(self) -> list:
        """Every record of an eager op's output (function executions' outputs included)."""
        return [rec for run in self.reader.runs for rec in run
                if context_of_debug_op(rec.debug_op) == EAGER_CONTEXT]

    def graph_of_run(self, run) -> Optional[Tf2Graph]:
        """The graph a run executed (its top-level function)."""
        cid = run.metadata.get("tf2_context_id")
        return self.graphs.get(cid) if cid else None

    # -- records

    def graph_of(self, record) -> Optional[Tf2Graph]:
        """The traced graph of a graph record (None for eager ops and other records)."""
        cid = context_of_debug_op(record.debug_op)
        return self.graphs.get(cid) if cid and cid != EAGER_CONTEXT else None

    def op_of(self, record) -> Optional[Tf2Op]:
        """The op that produced a graph record."""
        g = self.graph_of(record)
        return g.ops.get(record.node_name) if g is not None else None

    def eager_stack(self, record) -> List[Frame]:
        """The Python stack that executed an eager record's op, outermost first
        (empty for graph records and when unknown)."""
        sid = eager_stack_of_debug_op(record.debug_op)
        return list(self._eager_stacks.get(sid, ())) if sid is not None else []

    def eager_stacks(self) -> Dict[int, List[Frame]]:
        """Every recorded eager stack by id."""
        return {k: list(v) for k, v in self._eager_stacks.items()}

    def creation_stack(self, record) -> List[Frame]:
        """The op's creation stack, outermost first (empty when unknown); for an
        eager record the stack that executed it."""
        if context_of_debug_op(record.debug_op) == EAGER_CONTEXT:
            return self.eager_stack(record)
        op = self.op_of(record)
        return list(op.stack) if op is not None else []

    def creation_site(self, record) -> Optional[Frame]:
        """The innermost frame of user code in the op's creation stack."""
        return user_frame(self.creation_stack(record))

    def source_line(self, path: str, line: int) -> Optional[str]:
        """A line of a recorded source file (1-based), or None."""
        lines = self._sources.get(path)
        if lines is None or not 1 <= line <= len(lines):
            return None
        return lines[line - 1]

    def source_files(self) -> List[str]:
        return sorted(self._sources)

    def first_non_finite(self):
        """The first record (run order, then arrival order) holding inf or nan, or None."""
        from tfdump_fast.reader import has_inf_or_nan

        for run in self.reader.runs:
            hits = run.find(has_inf_or_nan, first_n=1)
            if hits:
                return hits[0]
        return None
