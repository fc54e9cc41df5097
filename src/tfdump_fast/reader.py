"""Read a tfdump-fast session root (docs/FORMAT.md) without TensorFlow.

Opening a store reads only the frame headers and record tables of its shard
files (a few bytes per tensor); the record tables are parsed natively into
numpy columns, so opening costs no Python work per tensor. A tensor's value
is read by decompressing the data block of the one frame its payload lives
in; decompressed blocks are kept in a bounded LRU cache. Payloads are
deduplicated by content hash, and the bulk operations (:meth:`Run.find`,
:meth:`Run.values`) decode each distinct payload once.

This module is the query API; the store layer below it does the work:
:mod:`tfdump_fast.store.scan` walks the shards' frames (torn tails and
corruption go to one damage reporter), :mod:`~tfdump_fast.store.index`
holds the tensor columns, :mod:`~tfdump_fast.store.blocks` the data blocks
and payloads, :mod:`~tfdump_fast.store.decode` turns them into values
(:mod:`~tfdump_fast.store.payloads` parses variant structures), and
:mod:`~tfdump_fast.store.search` and :mod:`~tfdump_fast.store.verify` do the
inf/nan search and the full check.

Typical use::

    from tfdump_fast import DumpReader
    reader = DumpReader("/tmp/dump")
    run = reader.runs[-1]
    for rec in run.find(has_inf_or_nan, exclude=["^gradients/"], first_n=1):
        print(rec.watch_key, rec.value)
"""

from __future__ import annotations

import collections
import json
import os
import re
import stat
import threading
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from tfdump_fast import _native
from tfdump_fast.dtypes import dtype_name
from tfdump_fast.creation_sites import EVENT_NAME as CREATION_SITES_EVENT, sites_from_events
from tfdump_fast.graph import GraphInfo, NodeInfo, split_tensor
from tfdump_fast.errors import (
    TfdumpClosedError,
    TfdumpFormatError,
    TfdumpIndexError,
    TfdumpIOError,
    TfdumpNotFoundError,
    TfdumpTypeError,
    TfdumpUsageError,
)
from tfdump_fast.store.blocks import BlockCache, PayloadReader
from tfdump_fast.store.decode import FLOAT_NAMES, InconvertibleTensor, ValueDecoder, VariantElement, numpy_dtype
from tfdump_fast.store.index import TensorIndex, WatchKey
from tfdump_fast.store.naming import ShardName, parse_shard_file_name
from tfdump_fast.store.scan import DamageReporter, Frame, Shard, ShardScanner, check_closed_shard
from tfdump_fast.store.search import find_inf_nan
from tfdump_fast.store.verify import verify_store
from tfdump_fast.summaries import summary_has_inf_or_nan

# The value and key types are defined with the store layer that builds them;
# they are part of this module's API.
__all__ = [
    "DumpReader", "Run", "TensorRecord", "WatchKey", "InconvertibleTensor", "VariantElement",
    "has_inf_or_nan", "numpy_dtype", "dtype_name",
]

_DEFAULT_CACHE_BYTES = 256 << 20


# --------------------------------------------------------------------------- records

class TensorRecord:
    """One arrival of a watched tensor (one execution of the watch key).

    Attributes
    ----------
    run : Run
    index : int
        Position in the run's execution order.
    seq : int
        The writer's arrival sequence number within the run.
    wall_us : int
        Arrival time, µs since the epoch.
    key : WatchKey
    dtype : int
        TF ``DataType`` enum value (``dtype_name`` for its name).
    shape : tuple of int
    flags : int
        Format flags (uninitialized / string / variant / resource).
    nbytes : int
        Payload bytes (0 for empty or uninitialized tensors).
    tensor_id : int
        The tensor's row in the reader's tensor index (package-internal:
        what :mod:`tfdump_fast.conversion` and :mod:`tfdump_fast.dumpdir`
        pass to the store layer).
    """

    __slots__ = ("run", "index", "tensor_id")

    def __init__(self, run: "Run", index: int):
        self.run = run
        self.index = index
        self.tensor_id = int(run.tensor_ids[index])

    # columns are read on demand: a run of 100k tensors builds no per-field state
    @property
    def seq(self) -> int:
        return int(self.run._index.tensors["seq"][self.tensor_id])

    @property
    def wall_us(self) -> int:
        return int(self.run._index.tensors["wall_us"][self.tensor_id])

    @property
    def key(self) -> WatchKey:
        return self.run._index.key(self.tensor_id)

    @property
    def dtype(self) -> int:
        return int(self.run._index.tensors["dtype"][self.tensor_id])

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    @property
    def flags(self) -> int:
        return int(self.run._index.tensors["flags"][self.tensor_id])

    @property
    def shape(self) -> tuple:
        return self.run._index.shape(self.tensor_id)

    @property
    def nbytes(self) -> int:
        return int(self.run._index.tensors["payload_len"][self.tensor_id])

    # tfdbg-style conveniences
    @property
    def device(self) -> str:
        return self.key.device

    @property
    def node_name(self) -> str:
        return self.key.node

    @property
    def output_slot(self) -> int:
        return self.key.output_slot

    @property
    def debug_op(self) -> str:
        return self.key.debug_op

    @property
    def tensor_name(self) -> str:
        return self.key.tensor_name

    @property
    def watch_key(self) -> str:
        return self.key.watch_key

    @property
    def content_hash(self) -> bytes:
        """The stored payload's 16-byte content hash: equal hashes (with
        equal dtype and shape) mean equal values, without decoding either."""
        return self.run._index.payload_hash(self.tensor_id)

    @property
    def value(self):
        """The tensor's value (see :meth:`Run.value`)."""
        return self.run._decoder.value(self.tensor_id)

    def get_tensor(self):
        """Same as :attr:`value` (tfdbg's ``DebugTensorDatum`` spelling)."""
        return self.value

    def __repr__(self):
        return "<TensorRecord #%d %s @%d %s%s>" % (
            self.index, self.watch_key, self.wall_us, self.dtype_name, list(self.shape))


# --------------------------------------------------------------------------- runs

class _RecordList(list):
    """A run's records: a list whose out-of-range index is a TfdumpError
    (still an ``IndexError``) naming the run and its length."""

    def __init__(self, run: "Run", items):
        super().__init__(items)
        self._run_name = run.name

    def __getitem__(self, index):
        try:
            return super().__getitem__(index)
        except IndexError:
            raise TfdumpIndexError(
                f"run {self._run_name} has {len(self)} records; index {index!r} is out of range "
                f"(use 0..{len(self) - 1} or negative positions from the end; iterate the run for all)"
            ) from None
        except TypeError:
            raise TfdumpTypeError(
                f"run records are indexed by int or slice, not {type(index).__name__} ({index!r}); "
                "use Run.value(i) / Run.find(...) to look tensors up by name") from None


class Run:
    """One run (one ``Session.run``) of one writer.

    Attributes
    ----------
    writer_id : int
    run_id : int
        Writer-local run number.
    name : str
        ``run_<epoch_us>_<counter>``, the run directory name tfdbg would use.
    status : {"complete", "failed", "truncated"}
        ``truncated``: the writer never recorded the run's end (it died).
    error : str or None
        The error of a failed run.
    begin_us, end_us : int or None
    global_step : int or None
        The graph's global step before the run (recorded by the hook and the
        wrapper for every dumped run); None when the graph has none.
    fetches, feed_keys : str or None
        ``repr`` of the run's fetches and feed keys, as tfdbg stores them.
    core_metadata : dict or None
        tfdbg's core metadata (global_step, session_run_index, ...).
    metadata : dict
        All fields of the run's ``run_begin`` and ``run_end`` events.
    expected_tensors : int or None
        Tensors the writer counted for the run (``None`` if truncated).
    missing_tensors : int
        ``expected_tensors`` minus the tensors the shards hold.
    dropped_tensors, dropped_bytes : int
        Tensors the writer dropped (backpressure, disk budget, errors).
    late_dropped_tensors : int
        Of ``dropped_tensors``, those lost after the run's end was recorded
        (their frame was not written: ``drops`` events).
    muted_tensors : int
        Summaries left out on purpose because the tensor was healthy
        (``DebugNumericSummary(mute_if_healthy=true)``; ``drops`` events with
        reason ``muted``). Counted in ``expected_tensors``, not in
        ``dropped_tensors``.
    tensor_ids : numpy array of int64
        The run's tensors in execution order, as rows of the reader's tensor
        index (package-internal).
    """

    def __init__(self, reader: "DumpReader", writer_index: int, run_id: int, gidx: np.ndarray,
                 begin: Optional[dict], end: Optional[dict], drops: List[dict]):
        self._reader = reader
        self._index = reader.index
        self._decoder = reader.decoder
        self.tensor_ids = gidx
        self._records: Optional[List[TensorRecord]] = None
        self._by_key: Optional[Dict[int, np.ndarray]] = None
        w = reader.index.writers[writer_index]
        self.writer_index = writer_index
        self.writer_id = w.writer_id
        self.run_id = run_id
        begin = begin or {}
        end = end or {}
        self.metadata = {**begin, **end}
        self.metadata.pop("event", None)
        self.name = begin.get("run_name") or end.get("run_name") or "run_w%016x_%d" % (w.writer_id, run_id)
        if end:
            self.status = "complete" if end.get("status", "ok") == "ok" else "failed"
        else:
            self.status = "truncated"
        self.error = end.get("error")
        self.begin_us = begin.get("wall_us")
        self.end_us = end.get("wall_us")
        # Distributed capture (docs/DESIGN.md, "Distributed capture"): the
        # master step id joins a client's run to the runs served tasks
        # captured for the same Session.run; served runs name their task.
        self.master_step_id: Optional[int] = self.metadata.get("master_step_id")
        self.served_task: Optional[str] = self.metadata.get("served_task") if begin.get("served") else None
        if begin.get("served") and len(gidx):
            # A served run is opened ahead of its step (serve()'s pool): the
            # step began on this task with its first tensor.
            self.begin_us = int(reader.index.tensors["wall_us"][gidx].min())
        md = self.metadata
        self.core_metadata = md.get("core_metadata")
        if isinstance(self.core_metadata, str):
            try:
                self.core_metadata = json.loads(self.core_metadata)
            except ValueError:
                pass
        gs = md.get("global_step")
        # The core metadata's global_step is the debug options' (0 under our
        # hook, -1 under the wrapper: not a training step); it stands in only
        # for runs of other writers (the low-level path) that set it.
        if gs is None and "global_step" not in md and "session_run_call" not in md \
                and isinstance(self.core_metadata, dict):
            core_step = self.core_metadata.get("global_step")
            if isinstance(core_step, int) and not isinstance(core_step, bool) and core_step >= 0:
                gs = core_step
        self.global_step = gs
        self.fetches = _as_repr(md.get("fetches")) if "fetches" in md else None
        self.feed_keys = _as_repr(md.get("feed_keys")) if "feed_keys" in md else None
        # summaries left out under mute_if_healthy: not written on purpose, not lost
        muted = [d for d in drops if d.get("reason") == "muted"]
        drops = [d for d in drops if d.get("reason") != "muted"]
        self.muted_tensors = sum(int(d.get("dropped_tensors", 0) or 0) for d in muted)
        late_drops = sum(int(d.get("dropped_tensors", 0) or 0) for d in drops)
        self.expected_tensors = end.get("tensors") if end else None
        # tensors dropped after run_end was written count as drops, not as missing
        self.missing_tensors = max(0, int(self.expected_tensors) - late_drops - self.muted_tensors
                                   - len(gidx)) if self.expected_tensors is not None else 0
        self.dropped_tensors = int(end.get("dropped_tensors", 0) or 0) + late_drops
        self.late_dropped_tensors = late_drops
        self.dropped_bytes = int(end.get("dropped_bytes", 0) or 0) + sum(
            int(d.get("dropped_bytes", 0) or 0) for d in drops)
        self._graph_hashes = [bytes.fromhex(h) for h in
                              (md.get("graph_hashes") or md.get("attachment_hashes") or [])]
        if begin.get("attachment_hashes") and end.get("attachment_hashes"):
            self._graph_hashes = [bytes.fromhex(h) for h in
                                  begin["attachment_hashes"] + end["attachment_hashes"]]

    # ---- listing

    def __len__(self) -> int:
        return len(self.tensor_ids)

    def __repr__(self):
        return "<Run %s (writer w%016x run %d): %d tensors, %s>" % (
            self.name, self.writer_id, self.run_id, len(self), self.status)

    @property
    def key(self) -> Tuple[int, int]:
        """``(writer_id, run_id)``, unique within a session root."""
        return (self.writer_id, self.run_id)

    @property
    def records(self) -> List[TensorRecord]:
        """Every dumped tensor of the run, in execution order (a list; a
        position past its end raises :class:`TfdumpIndexError`)."""
        if self._records is None:
            self._records = _RecordList(self, [TensorRecord(self, i) for i in range(len(self.tensor_ids))])
        return self._records

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, index) -> TensorRecord:
        return self.records[index]

    @property
    def watch_keys(self) -> List[WatchKey]:
        """The run's watch keys in the order of their first execution."""
        keys = self._index.key_of[self.tensor_ids]
        _, first = np.unique(keys, return_index=True)
        return [self._index.keys[k] for k in keys[np.sort(first)]]

    @property
    def devices(self) -> List[str]:
        """Devices with dumped tensors, in order of first appearance."""
        seen = {}
        for k in self.watch_keys:
            seen.setdefault(k.device, None)
        return list(seen)

    @property
    def wall_us(self) -> np.ndarray:
        """Arrival times of all tensors (µs since the epoch), execution order."""
        return self._index.tensors["wall_us"][self.tensor_ids]

    @property
    def t0(self) -> Optional[int]:
        """Arrival time of the first tensor (µs), like tfdbg's ``t0``."""
        return int(self.wall_us.min()) if len(self) else None

    @property
    def payload_bytes(self) -> int:
        """Sum of the tensors' payload sizes (before dedup and compression)."""
        return int(self._index.tensors["payload_len"][self.tensor_ids].sum())

    @property
    def graphs(self) -> List[bytes]:
        """Serialized partition ``GraphDef``s stored with the run."""
        return [g for _, g in self.graph_items()]

    def graph_items(self) -> List[Tuple[bytes, bytes]]:
        """(stored hash, GraphDef bytes) of the run's partition graphs that
        could be read."""
        out = []
        for h in self._graph_hashes:
            try:
                out.append((h, bytes(self._reader.payloads.payload(self.writer_index, h))))
            except TfdumpNotFoundError:
                pass
        return out

    def graph(self) -> GraphInfo:
        """The run's partition graphs parsed: op type, device, inputs and
        consumers of every node (:class:`tfdump_fast.graph.GraphInfo`; no
        TensorFlow needed). Parsed once per distinct set of graphs."""
        return self._reader.graph_info(self.writer_index, self._graph_hashes, self.graph_items)

    def node_info(self, name: str) -> NodeInfo:
        """Op type, device, inputs and consumers of a node of the run's
        graphs (``node`` or ``node:slot``).

        Raises
        ------
        TfdumpNotFoundError
            The run's graphs have no such node (or none were stored).
        """
        graph = self.graph()
        if not len(graph):
            raise TfdumpNotFoundError("run %s stored no partition graphs" % self.name)
        return graph.node(name)

    def creation_site(self, name: str) -> Optional[Tuple[str, int, str]]:
        """``(file, line, function)`` where the user's code created the op
        ``name`` (``node`` or ``node:slot``), from the store's
        ``op_creation_sites`` events; None when not recorded (older stores,
        ops created by TensorFlow's own code, nodes TensorFlow added)."""
        return self._reader.creation_sites().get(split_tensor(name)[0])

    # ---- lookup

    def _key_rows(self) -> Dict[int, np.ndarray]:
        if self._by_key is None:
            keys = self._index.key_of[self.tensor_ids]
            order = np.argsort(keys, kind="stable")
            uniq, starts = np.unique(keys[order], return_index=True)
            bounds = list(starts[1:]) + [len(order)]
            self._by_key = {int(k): order[s:e] for k, s, e in zip(uniq, starts, bounds)}
        return self._by_key

    def select(self, node: str, output_slot: Optional[int] = None, debug_op: Optional[str] = None,
               device: Optional[str] = None) -> List[TensorRecord]:
        """All executions of the matching watch keys, in execution order.

        Parameters
        ----------
        node : str
            Node name; ``"node:slot"`` and ``"node:slot:debug_op"`` are accepted too.
        output_slot : int, optional
        debug_op : str, optional
        device : str, optional
            Needed only when the node ran on several devices.

        Raises
        ------
        TfdumpNotFoundError
            No dumped tensor matches.
        """
        node, output_slot, debug_op = _split_tensor_name(node, output_slot, debug_op)
        rows = []
        matched = []
        for kid, r in self._key_rows().items():
            k = self._index.keys[kid]
            if k.node == node and (output_slot is None or k.output_slot == output_slot) and \
                    (debug_op is None or k.debug_op == debug_op) and (device is None or k.device == device):
                rows.append(r)
                matched.append(k)
        if not rows:
            raise TfdumpNotFoundError(
                "run %s has no dumped tensor for %s%s%s%s" % (
                    self.name, node, "" if output_slot is None else ":%d" % output_slot,
                    "" if debug_op is None else ":" + debug_op,
                    "" if device is None else " on " + device) + _did_you_mean(node, self))
        if len({k.device for k in matched}) > 1 and device is None:
            raise TfdumpUsageError(
                "%s ran on several devices (%s): pass device=..." % (
                    node, ", ".join(sorted({k.device for k in matched}))))
        idx = np.sort(np.concatenate(rows))
        return [self.records[i] for i in idx]

    def get(self, node: str, output_slot: Optional[int] = None, debug_op: Optional[str] = None,
            device: Optional[str] = None) -> list:
        """Values of all executions of a watch key (e.g. every while-loop
        iteration), in execution order. Arguments as for :meth:`select`."""
        recs = self.select(node, output_slot, debug_op, device)
        return self._decoder.values(np.asarray([r.tensor_id for r in recs], dtype=np.int64))

    def value(self, index: int):
        """Value of the tensor at ``index`` in execution order.

        Numeric tensors are read-only numpy arrays bit-identical to what TF
        computed (copy them to modify); strings are object arrays of
        ``bytes``; resources, variants, uninitialized tensors and dtypes
        numpy lacks are :class:`InconvertibleTensor`.
        """
        n = len(self.tensor_ids)
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TfdumpUsageError("run %s: value(index=%r) takes an integer position in execution "
                                   "order" % (self.name, index))
        if not -n <= index < n:
            raise TfdumpNotFoundError(
                "run %s holds %d tensors, so value(%d) is out of range (valid: %s); select tensors "
                "by name with get()/select()" % (self.name, n, index,
                                                 "0..%d or -%d..-1" % (n - 1, n) if n else "none"))
        return self._decoder.value(int(self.tensor_ids[index]))

    def values(self) -> list:
        """Values of all tensors in execution order (each payload decoded once)."""
        return self._decoder.values(self.tensor_ids)

    def find(self, predicate: Optional[Callable] = None, *, first_n: int = 0,
             exclude: Union[None, str, Sequence[str]] = None, device: Optional[str] = None,
             include_scratch: bool = False, exclude_by: Sequence[str] = ("node",)) -> List[TensorRecord]:
        """Tensors for which ``predicate(record, value)`` is true, in execution order.

        Parameters
        ----------
        predicate : callable, optional
            ``predicate(record, value) -> bool`` (tfdbg's signature). Pass
            :func:`has_inf_or_nan` (or tfdbg's own) for the built-in,
            vectorized check of every floating-point tensor for inf and nan,
            which decodes each distinct payload once. ``None`` matches all.
        first_n : int, default 0
            Stop after this many matches (0: all).
        exclude : str or list of str, optional
            Regular expressions; a tensor is skipped when one matches what
            ``exclude_by`` names.
        exclude_by : sequence of {"node", "tensor", "op"}, default ("node",)
            What ``exclude`` is matched against: the node name at its start
            (``"node"``, tfdbg's ``exclude_node_names``), the ``node:slot``
            name at its start (``"tensor"``), the node's op type in full
            (``"op"``, e.g. ``FusedBatchNormV3``; from the stored graphs).
        device : str, optional
            Only tensors of this device.
        include_scratch : bool, default False
            With :func:`has_inf_or_nan`: also search outputs that hold
            scratch space rather than values (``FusedBatchNormV3:5``, oneDNN's
            workspace; see :data:`tfdump_fast.graph.SCRATCH_OUTPUTS`). They
            are skipped by default: their contents are undefined.

        Returns
        -------
        list of TensorRecord
        """
        if predicate is not None and not callable(predicate):
            raise TfdumpUsageError("find(predicate=%r): pass a function (record, value) -> bool, e.g. "
                                   "tfdump_fast.has_inf_or_nan, or None" % (predicate,))
        if not isinstance(first_n, (int, np.integer)) or isinstance(first_n, bool):
            raise TfdumpUsageError("find(first_n=%r) must be an integer (0: all matches)" % (first_n,))
        if exclude is not None and not isinstance(exclude, str) and not (
                isinstance(exclude, (list, tuple)) and all(isinstance(p, str) for p in exclude)):
            raise TfdumpUsageError("find(exclude=%r) must be a regular expression (str) or a list of "
                                   "them" % (exclude,))
        if device is not None and not isinstance(device, str):
            raise TfdumpUsageError("find(device=%r) must be a device name (str) or None" % (device,))
        if isinstance(exclude_by, str) or not set(exclude_by) <= {"node", "tensor", "op"} or not exclude_by:
            raise TfdumpUsageError("find(exclude_by=%r) must name some of 'node', 'tensor', 'op'" % (exclude_by,))
        skip_scratch = not include_scratch and predicate is not None and is_inf_nan_predicate(predicate)
        rows = self._filter_rows(exclude, device, skip_scratch, frozenset(exclude_by))
        if predicate is None:
            idx = rows if first_n <= 0 else rows[:first_n]
            return [self.records[i] for i in idx]
        if is_inf_nan_predicate(predicate):
            return [self.records[i] for i in find_inf_nan(self._index, self._reader.payloads, self.tensor_ids, rows, first_n)]
        out = []
        cache: dict = {}
        for i in rows.tolist():
            rec = self.records[i]
            if predicate(rec, self._decoder.value(rec.tensor_id, cache)):
                out.append(rec)
                if 0 < first_n <= len(out):
                    break
        return out

    def _filter_rows(self, exclude, device, skip_scratch: bool = False,
                     exclude_by: frozenset = frozenset({"node"})) -> np.ndarray:
        keys_of_rows = self._index.key_of[self.tensor_ids]
        mask = np.ones(len(self.tensor_ids), dtype=bool)
        bad = []
        if exclude:
            patterns = [exclude] if isinstance(exclude, str) else list(exclude)
            try:
                regexes = [re.compile(p) for p in patterns]
            except re.error as exc:
                raise TfdumpUsageError("bad exclude pattern %r: %s" % (exc.pattern, exc)) from None
            graph = self.graph() if "op" in exclude_by else None
            for kid in np.unique(keys_of_rows).tolist():
                k = self._index.keys[kid]
                names = [k.node] if "node" in exclude_by else []
                if "tensor" in exclude_by:
                    names.append("%s:%d" % (k.node, k.output_slot))
                op = graph.op_type(k.node) if graph is not None else None
                if any(any(r.match(n) for n in names) or (op is not None and r.fullmatch(op)) for r in regexes):
                    bad.append(kid)
        if skip_scratch:
            # scratch outputs are slots >= 3: parse the graphs only if such a key exists
            slots = [(kid, self._index.keys[kid]) for kid in np.unique(keys_of_rows).tolist()]
            if any(k.output_slot >= 3 for _, k in slots):
                graph = self.graph()
                bad += [kid for kid, k in slots if graph.is_scratch(k.node, k.output_slot)]
        if bad:
            mask &= ~np.isin(keys_of_rows, bad)
        if device is not None:
            good = [kid for kid in np.unique(keys_of_rows).tolist() if self._index.keys[kid].device == device]
            mask &= np.isin(keys_of_rows, good)
        return np.flatnonzero(mask)


def has_inf_or_nan(record, value) -> bool:
    """True if a tensor holds any inf or nan (tfdbg's predicate of that name).

    Passed to :meth:`Run.find` it selects a vectorized check that decodes
    each distinct payload once; called directly it checks one value. A
    summary record (``DebugNumericSummary``, ``DebugNanCount``, the health
    modes) is judged by its nan / inf counts, not by its own values (an empty
    tensor's summary holds min=+inf and mean=nan): see
    :func:`tfdump_fast.summaries.summary_has_inf_or_nan`.
    """
    if isinstance(value, InconvertibleTensor) or not isinstance(value, np.ndarray):
        return False
    summary = summary_has_inf_or_nan(getattr(record, "debug_op", None), value)
    if summary is not None:  # a summary record: its counts say (tfdump_fast.summaries)
        return summary
    if value.dtype.kind in "fc" or value.dtype.name in FLOAT_NAMES:
        return not bool(np.isfinite(value).all())
    return False


def is_inf_nan_predicate(predicate) -> bool:
    """True for :func:`has_inf_or_nan` and tfdbg's predicate of that name:
    the predicates the vectorized search stands in for."""
    if predicate is has_inf_or_nan:
        return True
    # tfdbg's own predicate has the same meaning; recognise it without importing TF
    return (getattr(predicate, "__name__", None) == "has_inf_or_nan"
            and getattr(predicate, "__module__", "") == "tensorflow.python.debug.lib.debug_data")


def _split_tensor_name(node, output_slot, debug_op):
    if not isinstance(node, str) or not node:
        raise TfdumpUsageError("node=%r must be a node or tensor name (str), e.g. 'dense/MatMul' or "
                               "'dense/MatMul:0'" % (node,))
    if output_slot is not None and (not isinstance(output_slot, (int, np.integer))
                                    or isinstance(output_slot, bool) or output_slot < 0):
        raise TfdumpUsageError("output_slot=%r must be a non-negative integer or None" % (output_slot,))
    if debug_op is not None and not isinstance(debug_op, str):
        raise TfdumpUsageError("debug_op=%r must be a debug op name (str) or None" % (debug_op,))
    parts = node.rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit() and output_slot is None and debug_op is None:
        return parts[0], int(parts[1]), parts[2]
    parts = node.rsplit(":", 1)
    if len(parts) == 2 and parts[1].isdigit() and output_slot is None:
        return parts[0], int(parts[1]), debug_op
    return node, output_slot, debug_op


def _check_regular_file(path: str) -> None:
    """Refuse a shard name that is not a regular file (a FIFO would block open(), a directory fail read())."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise TfdumpIOError(exc.errno, "cannot stat %s: %s" % (path, exc.strerror)) from None
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a device or other special file")
        raise TfdumpFormatError("%s is %s, not a shard file: tfdump-fast reads regular files only; "
                                "move it out of the session root" % (path, kind))


def _did_you_mean(node, run) -> str:
    import difflib

    names = sorted({k.node for k in run.watch_keys})
    close = difflib.get_close_matches(node, names, n=3)
    return (" (did you mean %s?)" % ", ".join(close)) if close else ""


def _as_repr(value):
    return value if isinstance(value, str) or value is None else repr(value)


# --------------------------------------------------------------------------- reader

class DumpReader:
    """Read-only view of a tfdump-fast session root.

    Parameters
    ----------
    session_root : str, os.PathLike, or a list of them
        Directory holding the ``*.tfds`` shard files of one or more writers;
        several directories (e.g. the session roots of a cluster's hosts,
        copied to one machine) are read as one store.
    cache_bytes : int, default 256 MiB
        Bound of the cache of decompressed data blocks.
    on_corruption : {"raise", "skip"}, default "raise"
        What to do with a corrupt frame in the middle of a shard: raise
        :class:`~tfdump_fast.errors.TfdumpCorruptionError`, or skip it (and
        whatever cannot be recovered after it), noting it in
        :attr:`problems`. A torn tail (the writer was killed mid-frame) is
        never an error: its bytes are reported in :attr:`torn_tails`.

    Raises
    ------
    TfdumpIOError
        ``session_root`` does not exist or cannot be read.
    TfdumpFormatError
        It holds no shard files, or a shard of a newer format version.
    TfdumpCorruptionError
        A corrupt frame (``on_corruption="raise"``).

    Attributes
    ----------
    problems : list of str
        Corruption skipped while opening (``on_corruption="skip"``).
    index : tfdump_fast.store.index.TensorIndex
        Package-internal: the columnar index of every stored tensor (rows
        are the ``tensor_id`` of records and the ``tensor_ids`` of runs).
    blocks : tfdump_fast.store.blocks.BlockCache
        Package-internal: the cache of decompressed data blocks.
    payloads : tfdump_fast.store.blocks.PayloadReader
        Package-internal: payloads by writer and hash.
    decoder : tfdump_fast.store.decode.ValueDecoder
        Package-internal: tensor values by ``tensor_id``.

    Notes
    -----
    A store whose writer is still running can be read; :meth:`refresh`
    picks up frames written since. Runs of several writers sharing the root
    are merged; a run is identified by ``(writer_id, run_id)``.
    """

    def __init__(self, session_root, *, cache_bytes: int = _DEFAULT_CACHE_BYTES,
                 on_corruption: str = "raise"):
        if on_corruption not in ("raise", "skip"):
            raise TfdumpUsageError("on_corruption=%r must be 'raise' or 'skip'" % (on_corruption,))
        roots = list(session_root) if isinstance(session_root, (list, tuple)) else [session_root]
        for root in roots:
            if not isinstance(root, (str, bytes, os.PathLike)):
                raise TfdumpUsageError("session_root=%r must be a path (str or os.PathLike) to a dump "
                                       "directory, or a list of them, not %s" % (root, type(root).__name__))
        if not roots:
            raise TfdumpUsageError("session_root=[] names no dump directory")
        if not isinstance(cache_bytes, (int, np.integer)) or isinstance(cache_bytes, bool) or cache_bytes < 0:
            raise TfdumpUsageError("cache_bytes=%r must be a non-negative integer (bytes of "
                                   "decompressed blocks kept)" % (cache_bytes,))
        #: Every directory read (one unless a list was given); ``session_root`` is the first.
        self.session_roots: List[str] = [os.fsdecode(os.fspath(r)) for r in roots]
        self.session_root = self.session_roots[0]
        self.cache_bytes = int(cache_bytes)
        self._lock = threading.RLock()
        self._closed = False
        self._shards: List[Shard] = []
        self._shard_by_path: Dict[str, int] = {}
        self._frames: List[Frame] = []
        self._reporter = DamageReporter(self.session_root, on_corruption)
        self._scanner = ShardScanner(self._reporter)
        self.problems: List[str] = self._reporter.problems
        self.index = TensorIndex(self._frames)
        self.blocks = BlockCache(self._shards, self._frames, self.cache_bytes)
        self.payloads = PayloadReader(self.index, self.blocks)
        self.decoder = ValueDecoder(self.index, self.payloads)
        self._graph_infos: Dict[tuple, GraphInfo] = {}
        self._creation_sites: Optional[Dict[str, Tuple[str, int, str]]] = None
        self._check_root()
        self.refresh()

    # ---- opening

    def _check_root(self):
        for root in self.session_roots:
            self._check_one_root(root)

    def _check_one_root(self, root):
        if not os.path.exists(root):
            raise TfdumpIOError(2, "session root %s does not exist" % root)
        if not os.path.isdir(root):
            if root.endswith(".tfds"):
                raise TfdumpUsageError("%s is a shard file; pass the directory that holds it" % root)
            raise TfdumpFormatError("%s is not a directory, so not a tfdump-fast session root" % root)

    def _list_shards(self) -> List[Tuple[str, ShardName]]:
        out: List[Tuple[str, ShardName]] = []
        where: Dict[str, str] = {}
        for root in self.session_roots:
            for path, shard in self._list_root(root):
                name = os.path.basename(path)
                if name in where:
                    raise TfdumpUsageError(
                        "shard %s is in both %s and %s: a store read from several directories must "
                        "hold each writer's shards once; pass each directory once (a gathered copy, "
                        "or the originals, not both)" % (name, where[name], root))
                where[name] = root
                out.append((path, shard))
        return out

    def _list_root(self, root: str) -> List[Tuple[str, ShardName]]:
        try:
            names = os.listdir(root)
        except OSError as exc:
            raise TfdumpIOError(exc.errno, "cannot list %s: %s" % (root, exc.strerror)) from None
        out = []
        for name in sorted(names):
            shard = parse_shard_file_name(name)
            if shard is not None:
                path = os.path.join(root, name)
                _check_regular_file(path)
                out.append((path, shard))
        if not out and not any(s.path.startswith(os.path.join(root, "")) for s in self._shards):
            hint = ""
            if any(n.startswith("run_") for n in names) or any(n.startswith("_tfdbg_") for n in names):
                hint = (" It looks like a tfdbg dump: read it with tfdbg's DebugDumpDir, or import it "
                        "with `tfdump-fast import`.")
            raise TfdumpFormatError(
                "%s is not a tfdump-fast session root: it holds no *.tfds shard files.%s"
                % (root, hint))
        return out

    def refresh(self) -> "DumpReader":
        """Read frames written since the store was opened (or last refreshed).

        Runs are rebuilt: fetch :attr:`runs` again afterwards.
        """
        self._check_open()
        with self._lock:
            for path, name in self._list_shards():
                if path not in self._shard_by_path:
                    self._shard_by_path[path] = len(self._shards)
                    self._shards.append(Shard(path, name.writer_id, name.index))
            for si, shard in enumerate(self._shards):
                self._scanner.scan(si, shard, self._frames)
            self.index.rebuild(self._shards, self._reporter)
            self._build_runs()
            self._check_trailers()
        return self

    def _check_trailers(self) -> None:
        """Each shard of a cleanly closed writer must end where its
        ``writer_close`` trailer says (docs/FORMAT.md): anything else is
        damage after the close, reported as corruption."""
        by_name = {os.path.basename(s.path): s for s in self._shards}
        for w in self.index.writers:
            trailer = (w.close or {}).get("shards")
            if not isinstance(trailer, dict):
                continue  # an older writer, an imported store, or a writer that could not close
            for name, entry in sorted(trailer.items()):
                parsed = parse_shard_file_name(name)
                if parsed is None or parsed.writer_id != w.writer_id or not isinstance(entry, dict):
                    self._reporter.corruption("writer %s: its writer_close trailer names %r" % (w.name, name))
                    continue
                check_closed_shard(by_name.get(name), name, entry, self._frames, self._reporter,
                                   metadata=parsed.index == _native.META_SHARD_INDEX)

    def _build_runs(self) -> None:
        t = self.index.tensors
        order = np.lexsort((t["seq"], t["run_id"], self.index.writer_of))
        order = self._drop_duplicates(order)
        w_sorted = self.index.writer_of[order]
        r_sorted = t["run_id"][order]
        if len(order):
            change = np.flatnonzero((np.diff(w_sorted) != 0) | (np.diff(r_sorted) != 0)) + 1
            starts = np.concatenate(([0], change))
            ends = np.concatenate((change, [len(order)]))
            groups = {(int(w_sorted[s]), int(r_sorted[s])): order[s:e] for s, e in zip(starts, ends)}
        else:
            groups = {}
        begins, endings, drops = {}, {}, collections.defaultdict(list)
        for wi, w in enumerate(self.index.writers):
            for ev in w.events:
                kind = ev.get("event")
                rid = ev.get("run_id")
                if kind == "run_begin":
                    begins[(wi, rid)] = ev
                elif kind == "run_end":
                    endings[(wi, rid)] = ev
                elif kind == "drops":
                    drops[(wi, rid)].append(ev)
                elif kind == "writer_open":
                    w.open = ev
                elif kind == "writer_close":
                    w.close = ev
        empty = np.zeros(0, dtype=np.int64)
        runs = []
        for key in set(groups) | set(begins) | set(endings):
            wi, rid = key
            if rid is None:
                continue
            if key not in groups and (begins.get(key) or {}).get("served") and \
                    (endings.get(key) is None or endings[key].get("served_unused")):
                continue  # a served process's spare run that no step took
            runs.append(Run(self, wi, rid, groups.get(key, empty), begins.get(key), endings.get(key),
                            drops.get(key, [])))

        def sort_key(r):
            start = r.begin_us if r.begin_us is not None else (
                int(t["wall_us"][r.tensor_ids].min()) if len(r) else 0)
            return (start, r.writer_id, r.run_id)

        runs.sort(key=sort_key)
        self._runs = runs
        self._run_by_key = {r.key: r for r in runs}

    def _drop_duplicates(self, order: np.ndarray) -> np.ndarray:
        """``order`` (tensor ids sorted by writer, run, seq) without the
        second and later records of one (writer, run, seq): a record is
        stored once, so a repeat is a duplicated frame -- reported as
        corruption, and returned once."""
        if len(order) < 2:
            return order
        t = self.index.tensors
        w, r, q = self.index.writer_of[order], t["run_id"][order], t["seq"][order]
        again = np.flatnonzero((w[1:] == w[:-1]) & (r[1:] == r[:-1]) & (q[1:] == q[:-1])) + 1
        if not len(again):
            return order
        first, dup = int(order[again[0] - 1]), int(order[again[0]])

        def where(g):
            frame = self._frames[int(self.index.frame_of[g])]
            return "%s at offset %d" % (self._shards[frame.shard].path, frame.offset)

        self._reporter.corruption(
            "writer %s: %d tensor record(s) are stored twice (e.g. run %d seq %d, in the frame of %s and "
            "again in the frame of %s); each is read once" % (
                self.index.writers[int(w[again[0]])].name, len(again), int(r[again[0]]), int(q[again[0]]),
                where(first), where(dup)))
        keep = np.ones(len(order), dtype=bool)
        keep[again] = False
        return order[keep]

    # ---- public API

    @property
    def runs(self) -> List[Run]:
        """All runs of all writers, ordered by start time."""
        self._check_open()
        return list(self._runs)

    def step_runs(self, run: "Run") -> List["Run"]:
        """Every run of ``run``'s Session.run across the cluster's tasks.

        ``run`` itself and the runs that processes which called
        :func:`tfdump_fast.serve` captured for the same master step (same
        ``master_step_id``), in :attr:`runs` order; just ``[run]`` for a run
        without one. Their shards must be in this session root (gather them
        from every host: README, "Distributed").
        """
        self._check_open()
        if run.master_step_id is None:
            return [run]
        return [r for r in self._runs if r is run or r.master_step_id == run.master_step_id]

    def tasks(self) -> List[str]:
        """The cluster tasks (``/job:J/replica:R/task:T``) whose tensors this store holds."""
        self._check_open()
        out = set()
        for key in self.index.keys:
            device = getattr(key, "device", "") or ""
            if device.startswith("/job:"):
                parts = device.split("/")
                out.add("/".join(parts[:4]))
        out.update(r.served_task for r in self._runs if r.served_task)
        return sorted(out)

    def run(self, which=-1) -> Run:
        """Look up one run.

        Parameters
        ----------
        which : int, str or tuple
            Index into :attr:`runs` (negative counts from the end); a run
            name (``run_<us>_<n>``, optionally prefixed ``w<writer id>/``);
            or ``(writer_id, run_id)``.

        Raises
        ------
        TfdumpNotFoundError
            No such run.
        """
        self._check_open()
        runs = self._runs
        if isinstance(which, (int, np.integer)) and not isinstance(which, bool):
            if not runs:
                raise TfdumpNotFoundError("%s holds no runs" % self.session_root)
            if -len(runs) <= which < len(runs):
                return runs[which]
            raise TfdumpNotFoundError("run index %d is out of range: %s holds %d runs (0..%d)"
                                      % (which, self.session_root, len(runs), len(runs) - 1))
        if isinstance(which, tuple) and len(which) == 2:
            if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in which):
                raise TfdumpUsageError("a run is selected by (writer_id, run_id) integers, not %r" % (which,))
            run = self._run_by_key.get((int(which[0]), int(which[1])))
            if run is None:
                raise TfdumpNotFoundError("no run %d of writer w%016x in %s" % (which[1], which[0],
                                                                              self.session_root))
            return run
        if isinstance(which, str):
            text = which.rstrip("/")
            writer = None
            if "/" in text:
                wname, text = text.split("/", 1)
                writer = wname[1:] if wname.startswith("w") else wname
            if text.isdigit() and writer is None:
                return self.run(int(text))
            matches = [r for r in runs if r.name == text and
                       (writer is None or "%016x" % r.writer_id == writer.lower().zfill(16))]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise TfdumpUsageError(
                    "run name %s is used by %d writers: write it as w<writer id>/%s (%s)" % (
                        text, len(matches), text, ", ".join("w%016x" % r.writer_id for r in matches)))
            names = [r.name for r in runs]
            import difflib

            close = difflib.get_close_matches(text, names, n=3)
            raise TfdumpNotFoundError("no run named %s in %s%s" % (
                which, self.session_root, (" (did you mean %s?)" % ", ".join(close)) if close else
                (" (it holds %d runs; list them with `tfdump-fast ls`)" % len(runs))))
        raise TfdumpUsageError("a run is selected by index, name or (writer_id, run_id), not %r" % (which,))

    def runs_at_step(self, step: int) -> List[Run]:
        """The runs whose :attr:`Run.global_step` is ``step``, in :attr:`runs`
        order (a training step may have several: evaluation, several writers)."""
        self._check_open()
        if not isinstance(step, (int, np.integer)) or isinstance(step, bool):
            raise TfdumpUsageError("runs_at_step(step=%r) takes an integer global step" % (step,))
        return [r for r in self._runs if r.global_step is not None and int(r.global_step) == step]

    def graph_info(self, writer_index: int, hashes: Sequence[bytes], load: Callable) -> GraphInfo:
        """Package-internal: the parsed graphs of a run, cached by their hashes
        (runs of one executor share them). ``load()`` returns ``(hash, bytes)`` pairs."""
        key = (writer_index, tuple(hashes))
        with self._lock:
            info = self._graph_infos.get(key)
            if info is None:
                info = self._graph_infos[key] = GraphInfo(g for _, g in load())
        return info

    def creation_sites(self) -> Dict[str, Tuple[str, int, str]]:
        """op name -> ``(file, line, function)`` of the user code that
        created it (``op_creation_sites`` events, docs/FORMAT.md); empty
        when the store recorded none. Read once."""
        with self._lock:
            if self._creation_sites is None:
                self._creation_sites = sites_from_events(self.events(CREATION_SITES_EVENT))
            return self._creation_sites

    @property
    def torn_tails(self) -> Dict[str, int]:
        """Bytes ignored at the end of each shard whose last frame is
        incomplete (writer killed, or still writing it)."""
        torn = ((s.path, self._reporter.torn_bytes(s.path)) for s in self._shards)
        return {path: n for path, n in torn if n}

    @property
    def writers(self) -> List[dict]:
        """One dict per writer: ``writer_id``, ``name``, ``shards``, and its
        ``writer_open`` / ``writer_close`` events and other META events."""
        out = []
        for w in self.index.writers:
            out.append({
                "writer_id": w.writer_id, "name": w.name,
                "shards": [self._shards[s].path for s in w.shards],
                "open": w.open, "close": w.close,
                "events": [e for e in w.events if e.get("event") not in
                           ("run_begin", "run_end", "writer_open", "writer_close")],
            })
        return out

    def events(self, name: Optional[str] = None) -> List[dict]:
        """The store's recorded events: META events other than the run and
        writer bookkeeping (``run_begin``, ``run_end``, ``writer_open``,
        ``writer_close``), in the order of their ``wall_us``.

        Parameters
        ----------
        name : str, optional
            Only events of this type (e.g. ``"tfdbg_byte_limit_reached"``,
            ``"tf_publish_degraded"``, ``"disk_budget_exceeded"``,
            ``"writer_error"``, or a name given to
            ``DumpWriter.record_event``).

        Returns
        -------
        list of dict
            Each event's fields (``event`` its type, ``wall_us`` when it
            has one), plus ``writer_id``: the writer that recorded it.
        """
        if name is not None and not isinstance(name, str):
            raise TfdumpUsageError(f"events(name={name!r}): pass an event type (str) or None for all")
        out = []
        for w in self.writers:
            for ev in w["events"]:
                if name is None or ev.get("event") == name:
                    out.append(dict(ev, writer_id=w["name"]))
        out.sort(key=lambda e: e.get("wall_us") if isinstance(e.get("wall_us"), int) else 0)
        return out

    def keys(self) -> List[WatchKey]:
        """Every watch key of the store (all runs, all writers)."""
        return list(self.index.keys)

    def close(self) -> None:
        """Drop cached data; the reader cannot be used afterwards."""
        with self._lock:
            self.blocks.clear()
            self._closed = True

    def __enter__(self) -> "DumpReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self):
        return "<DumpReader %s: %d runs, %d writers>" % (self.session_root, len(self._runs), len(self.index.writers))

    def _check_open(self):
        if self._closed:
            raise TfdumpClosedError("this DumpReader (%s) is closed" % self.session_root)

    # ---- storage statistics and verification

    def storage(self) -> dict:
        """Byte counts of the store.

        Returns
        -------
        dict
            ``files`` (bytes on disk), ``frames``; of the DATA frames:
            ``data_stored`` / ``data_raw`` (compressed / uncompressed data
            blocks, i.e. the distinct tensor payloads), ``table_stored`` /
            ``table_raw`` (record tables), ``codecs`` (frames per
            ``"zstd:<level>"`` / ``"raw"``); ``meta_stored`` / ``meta_raw``
            (META frames, graphs included); ``torn_bytes``.
        """
        out = {"files": sum(s.size for s in self._shards), "frames": len(self._frames),
               "data_stored": 0, "data_raw": 0, "table_stored": 0, "table_raw": 0,
               "meta_stored": 0, "meta_raw": 0,
               "codecs": collections.Counter(),
               "torn_bytes": sum(self._reporter.torn_bytes(s.path) for s in self._shards)}
        for f in self._frames:
            if f.kind == _native.FRAME_KIND_META:
                out["meta_stored"] += _native.FRAME_HEADER_SIZE + f.table_stored + f.data_stored
                out["meta_raw"] += _native.FRAME_HEADER_SIZE + f.table_raw + f.data_raw
                continue
            out["data_stored"] += f.data_stored
            out["data_raw"] += f.data_raw
            out["table_stored"] += f.table_stored
            out["table_raw"] += f.table_raw
            out["codecs"]["raw" if f.codec == _native.CODEC_RAW else "zstd:%d" % f.level] += 1
        out["codecs"] = dict(out["codecs"])
        return out

    def verify(self, progress: Optional[Callable[[int, int], None]] = None) -> List[str]:
        """Check every checksum of every frame, and that every payload a
        tensor refers to is present.

        Parameters
        ----------
        progress : callable, optional
            Called as ``progress(done_bytes, total_bytes)``.

        Returns
        -------
        list of str
            One line per problem (empty when the store is intact): corrupt
            or duplicated frames, shards of a cleanly closed writer that
            changed since, runs missing tensors their writer accepted,
            tensors a writer lost to an error. A torn tail alone (a writer
            killed mid-frame) is not a problem; see :attr:`torn_tails`.
        """
        if progress is not None and not callable(progress):
            raise TfdumpTypeError(
                f"verify(progress={progress!r}): progress must be a callable taking (done_bytes, "
                "total_bytes), e.g. lambda done, total: print(done, total), or None")
        return verify_store(self.index, self.blocks, self.payloads, self.decoder, self.problems, progress,
                            runs=self._runs)
