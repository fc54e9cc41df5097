"""The nodes of a run's partition graphs, without TensorFlow.

A debugged run stores TensorFlow's partition ``GraphDef``s (one per device).
:class:`GraphInfo` parses them with :mod:`tfdump_fast._tfproto` into what the
analysis needs: each node's op type, device, data and control inputs, and the
nodes that consume it. Edges that cross devices (``_Send`` on one partition,
``_Recv`` on the other, paired by their ``tensor_name`` attribute) are
followed, so :meth:`GraphInfo.data_inputs` of a node fed through a ``_Recv``
names the tensor that was sent.

The graphs are those TensorFlow ran: the debugger's own nodes
(``__copy_<node>_<slot>`` copies, ``__dbg_...`` debug ops) are looked
through, and oneDNN's rewritten op types (``_MklMatMul``) are reported as
the op the user created (``MatMul``; :attr:`NodeInfo.kernel_op` keeps the
rewritten name).

Fed tensors are replaced in partition graphs by ``_Arg`` nodes named
``_arg_<node>_<slot>_<index>`` (TensorFlow's ``subgraph.cc``); the dump knows
them only by that name. :meth:`GraphInfo.feed_of` and
:meth:`GraphInfo.arg_nodes_of` translate in both directions.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Dict, Iterable, List, Optional, Tuple

from tfdump_fast._tfproto import iter_fields
from tfdump_fast.errors import TfdumpCorruptionError, TfdumpNotFoundError

__all__ = ["GraphInfo", "NodeInfo", "SCRATCH_OUTPUTS", "split_tensor"]

#: Outputs that hold scratch space, not values: their contents are undefined
#: and often read as nan (oneDNN's workspace in ``reserve_space_3`` of
#: ``FusedBatchNormV3``; the unused ``reserve_space_4/5`` of its gradient).
#: op type -> output slots. The inf/nan search skips them unless asked not to.
SCRATCH_OUTPUTS: Dict[str, frozenset] = {
    "FusedBatchNormV3": frozenset({5}),
    "_FusedBatchNormEx": frozenset({5}),
    "_MklFusedBatchNormV3": frozenset({5}),
    "_MklNativeFusedBatchNormV3": frozenset({5}),
    "FusedBatchNormGradV3": frozenset({3, 4}),
    "_MklFusedBatchNormGradV3": frozenset({3, 4}),
    "_MklNativeFusedBatchNormGradV3": frozenset({3, 4}),
}

_DEBUGGER_COPY = re.compile(r"^__copy_")
_DEBUGGER_OP = re.compile(r"^__dbg_")
_KERNEL_PREFIXES = ("_MklNative", "_Mkl")
_ARG_NAME = re.compile(r"^_arg_(.+)_(\d+)_(\d+)$")
_RECV_OPS = ("_Recv", "_HostRecv")
_SEND_OPS = ("_Send", "_HostSend")


def split_tensor(name: str) -> Tuple[str, int]:
    """``"node:slot"`` -> (node, slot); a bare node name is slot 0."""
    node, sep, slot = name.rpartition(":")
    if sep and slot.isdigit():
        return node, int(slot)
    return name, 0


@dataclasses.dataclass
class NodeInfo:
    """One node of a partition graph.

    Attributes
    ----------
    name, op, device : str
    inputs : list of str
        Data inputs as ``node:slot``, through the debugger's copies and
        across devices (a ``_Recv``'s input is what its ``_Send`` sent).
    control_inputs : list of str
        Nodes this one waits for (``^node`` inputs, without the ``^``).
    consumers : list of str
        Nodes that take one of this node's outputs as a data input.
    kernel_op : str
        The op type as stored (``_MklMatMul`` where ``op`` says ``MatMul``).
    """

    name: str
    op: str
    device: str
    inputs: List[str] = dataclasses.field(default_factory=list)
    control_inputs: List[str] = dataclasses.field(default_factory=list)
    consumers: List[str] = dataclasses.field(default_factory=list)
    send_tensor: Optional[str] = None   # _Send/_Recv: the rendezvous tensor_name attr
    kernel_op: str = ""

    def as_dict(self) -> dict:
        return {"name": self.name, "op": self.op, "kernel_op": self.kernel_op, "device": self.device,
                "inputs": list(self.inputs),
                "control_inputs": list(self.control_inputs), "consumers": list(self.consumers)}


class GraphInfo:
    """The nodes of one run's partition graphs.

    Parameters
    ----------
    graphs : iterable of bytes
        Serialized ``GraphDef``s (``Run.graphs``).
    """

    def __init__(self, graphs: Iterable[bytes]):
        self.nodes: Dict[str, NodeInfo] = {}
        #: stored attachments that are not GraphDefs (low-level writers may attach anything)
        self.unreadable = 0
        sends: Dict[str, str] = {}
        for g in graphs:
            try:
                parsed = [_parse_node(raw) for field, wire, raw in iter_fields(g) if field == 1 and wire == 2]
            except TfdumpCorruptionError:
                self.unreadable += 1
                continue
            for node in parsed:
                if node.name and not _DEBUGGER_OP.match(node.name):
                    self.nodes[node.name] = node
                    if node.op in _SEND_OPS and node.send_tensor and node.inputs:
                        sends[node.send_tensor] = node.inputs[0]
        self._sent = sends
        resolved = {name: self.data_inputs(name) for name in self.nodes}
        for name, node in self.nodes.items():
            if _DEBUGGER_COPY.match(name):
                continue
            node.inputs = resolved[name]
            for inp in node.inputs:
                src = self.nodes.get(split_tensor(inp)[0])
                if src is not None and node.name not in src.consumers:
                    src.consumers.append(node.name)

    def __len__(self) -> int:
        return len(self.nodes)

    def __contains__(self, name: str) -> bool:
        return name in self.nodes

    def node(self, name: str) -> NodeInfo:
        """The node called ``name`` (a ``node:slot`` name is accepted)."""
        found = self.nodes.get(name) or self.nodes.get(split_tensor(name)[0])
        if found is None:
            raise TfdumpNotFoundError("no node %s in the run's partition graphs" % name)
        return found

    def op_type(self, name: str) -> Optional[str]:
        node = self.nodes.get(name)
        return node.op if node is not None else None

    def data_inputs(self, name: str) -> List[str]:
        """Data inputs of a node as ``node:slot``; a ``_Recv``'s input is the
        tensor its ``_Send`` sent (another partition's)."""
        node = self.node(name)
        if node.op in _RECV_OPS and node.send_tensor in self._sent:
            return [self._through_copies(_with_slot(self._sent[node.send_tensor]))]
        return [self._through_copies(_with_slot(i)) for i in node.inputs]

    def _through_copies(self, tensor: str) -> str:
        """The tensor a debugger-inserted ``__copy_`` node copies."""
        for _ in range(8):
            node = self.nodes.get(split_tensor(tensor)[0])
            if node is None or not _DEBUGGER_COPY.match(node.name) or not node.inputs:
                return tensor
            tensor = _with_slot(node.inputs[0])
        return tensor

    def feed_of(self, name: str) -> Optional[str]:
        """The fed tensor (``x:0``) an ``_Arg`` node named ``_arg_x_0_1`` stands for."""
        m = _ARG_NAME.match(name)
        node = self.nodes.get(name)
        if m is None or (node is not None and node.op != "_Arg"):
            return None
        return "%s:%s" % (m.group(1), m.group(2))

    def arg_nodes_of(self, tensor: str) -> List[str]:
        """``_Arg`` nodes that stand for the fed tensor (``x`` or ``x:0``)."""
        node, slot = split_tensor(tensor)
        out = []
        for name in self.nodes:
            m = _ARG_NAME.match(name)
            if m is not None and m.group(1) == node and int(m.group(2)) == slot:
                out.append(name)
        return out

    def is_scratch(self, node: str, slot: int) -> bool:
        """True for outputs that hold scratch space (:data:`SCRATCH_OUTPUTS`)."""
        return slot in SCRATCH_OUTPUTS.get(self.op_type(node) or "", ())


def _with_slot(text: str) -> str:
    node, slot = split_tensor(text)
    return "%s:%d" % (node, slot)


def _parse_node(raw) -> NodeInfo:
    name = op = device = ""
    inputs, control, send_tensor = [], [], None
    for f, w, v in iter_fields(raw):
        if w != 2:
            continue
        if f == 1:
            name = bytes(v).decode("utf-8", "replace")
        elif f == 2:
            op = bytes(v).decode("utf-8", "replace")
        elif f == 3:
            text = bytes(v).decode("utf-8", "replace")
            (control.append(text[1:]) if text.startswith("^") else inputs.append(text))
        elif f == 4:
            device = bytes(v).decode("utf-8", "replace")
        elif f == 5:
            key, value = _attr_entry(v)
            if key == "tensor_name":
                send_tensor = value
    kernel_op = op
    for prefix in _KERNEL_PREFIXES:
        if op.startswith(prefix) and len(op) > len(prefix):
            op = op[len(prefix):]
            # oneDNN's versions of grappler's internal fused ops: _MklFusedMatMul is _FusedMatMul
            if op.startswith("Fused") and not re.match(r"^FusedBatchNorm(V2|V3|Grad|GradV2|GradV3)?$", op):
                op = "_" + op
            break
    return NodeInfo(name, op, device, inputs, control, [], send_tensor, kernel_op)


def _attr_entry(raw) -> Tuple[str, Optional[str]]:
    """(key, string value or None) of one ``map<string, AttrValue>`` entry."""
    key, value = "", None
    for f, w, v in iter_fields(raw):
        if f == 1 and w == 2:
            key = bytes(v).decode("utf-8", "replace")
        elif f == 2 and w == 2 and key == "tensor_name":
            for af, aw, av in iter_fields(v):
                if af == 2 and aw == 2:   # AttrValue.s
                    value = bytes(av).decode("utf-8", "replace")
    return key, value
