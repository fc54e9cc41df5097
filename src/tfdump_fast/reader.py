"""Read a tfdump-fast session root (docs/FORMAT.md) without TensorFlow.

Opening a store reads only the frame headers and record tables of its shard
files (a few bytes per tensor); the record tables are parsed natively into
numpy columns, so opening costs no Python work per tensor. A tensor's value
is read by decompressing the data block of the one frame its payload lives
in; decompressed blocks are kept in a bounded LRU cache. Payloads are
deduplicated by content hash, and the bulk operations (:meth:`Run.find`,
:meth:`Run.values`) decode each distinct payload once.

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
import struct
import threading
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import zstandard

from tfdump_fast import _native, dtypes
from tfdump_fast._tfproto import decode_resource_handle, dtype_name
from tfdump_fast.encoding import decode_strings
from tfdump_fast.errors import (
    TfdumpClosedError,
    TfdumpCorruptionError,
    TfdumpFormatError,
    TfdumpIOError,
    TfdumpNotFoundError,
    TfdumpTruncatedError,
    TfdumpUsageError,
)

__all__ = [
    "DumpReader", "Run", "TensorRecord", "WatchKey", "InconvertibleTensor", "VariantElement",
    "has_inf_or_nan", "numpy_dtype", "dtype_name",
]

FLAG_UNINITIALIZED = 1
FLAG_STRING = 2
FLAG_VARIANT = 4
FLAG_RESOURCE = 8

_SHARD_RE = re.compile(r"^w([0-9a-fA-F]{16})-(\d+|meta)\.tfds$")
_HDR = _native.FRAME_HEADER_SIZE
_FRAME_MAGIC = struct.pack("<I", 0x46444654)
_DEFAULT_CACHE_BYTES = 256 << 20


# --------------------------------------------------------------------------- values

def numpy_dtype(tf_dtype: int) -> Optional[np.dtype]:
    """The numpy dtype holding a TF ``DataType`` bit-exactly, or None.

    ``bfloat16`` and the float8 / int4 types come from ``ml_dtypes`` when it
    is installed (it is a TensorFlow dependency); without it they have no
    numpy dtype and such tensors are returned as :class:`InconvertibleTensor`
    with ``kind="unsupported_dtype"``. Quantized types are their underlying
    integer types.
    """
    if tf_dtype > 100:  # reference types carry the values of their base type
        tf_dtype -= 100
    return _NUMPY_DTYPES.get(tf_dtype)


def _build_numpy_dtypes() -> Dict[int, np.dtype]:
    table = {}
    for dt in range(1, 40):
        try:
            table[dt] = dtypes.to_numpy(dt)
        except (TypeError, KeyError):
            pass
    if table.get(dtypes.DT_BFLOAT16) == np.dtype("<u2"):
        del table[dtypes.DT_BFLOAT16]  # raw bits are not a faithful value: mark it instead
    return table


_NUMPY_DTYPES = _build_numpy_dtypes()
# dtypes whose values can be inf or nan (has_inf_or_nan looks only at these)
_FLOATING = frozenset(dt for dt, npd in _NUMPY_DTYPES.items()
                      if npd.kind in "fc" or npd.name.startswith(("bfloat", "float")))


class InconvertibleTensor:
    """A dumped tensor that has no numpy form.

    The counterpart of tfdbg's ``InconvertibleTensorProto``: uninitialized
    tensors, resource handles, variants (e.g. ``TensorList``) and dtypes
    numpy cannot represent.

    Attributes
    ----------
    kind : {"uninitialized", "resource", "variant", "unsupported_dtype"}
    tf_dtype : int
        TF ``DataType`` enum value.
    shape : tuple of int
    initialized : bool
        False only for ``kind == "uninitialized"``.
    value : object
        A list of dicts with the readable fields of each
        ``ResourceHandleProto`` (resource), a list of
        :class:`VariantElement` (variant; decoded on first access), else None.
    raw : list of bytes or bytes or None
        The serialized ``ResourceHandleProto``s (resource) or the tensor's
        bytes (unsupported dtype).
    """

    __slots__ = ("kind", "tf_dtype", "shape", "_value", "_thunk", "raw")

    # tfdbg-style predicates test ``np.issubdtype(tensor.dtype, np.floating)``;
    # an object dtype makes them treat this value as non-numeric.
    dtype = np.dtype(object)

    def __init__(self, kind, tf_dtype, shape, value=None, raw=None, thunk=None):
        self.kind = kind
        self.tf_dtype = tf_dtype
        self.shape = tuple(shape)
        self._value = value
        self._thunk = thunk
        self.raw = raw

    @property
    def value(self):
        if self._thunk is not None:
            # Variants are decoded when looked at: bulk loads stay cheap.
            self._value, self._thunk = self._thunk(), None
        return self._value

    @property
    def initialized(self) -> bool:
        return self.kind != "uninitialized"

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.tf_dtype)

    def __eq__(self, other):
        return (isinstance(other, InconvertibleTensor) and self.kind == other.kind
                and self.tf_dtype == other.tf_dtype and self.shape == other.shape
                and self.raw == other.raw and _values_equal(self.value, other.value))

    __hash__ = None

    def __repr__(self):
        shape = "(" + ", ".join(map(str, self.shape)) + ("," if len(self.shape) == 1 else "") + ")"
        head = "<%s tensor, dtype=%s, shape=%s" % (self.kind, self.dtype_name, shape)
        value = self.value
        if self.kind == "resource" and value:
            head += ", handles=" + ", ".join(
                "%s/%s@%s" % (h["container"], h["name"], h["device"]) for h in value[:4])
        elif self.kind == "variant" and value:
            head += ", elements=[" + ", ".join(repr(e) for e in value[:4]) + \
                (", ..." if len(value) > 4 else "") + "]"
        return head + ">"

    __str__ = __repr__


def _values_equal(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and (a.tolist() == b.tolist() if a.dtype == object
                                            else a.tobytes() == b.tobytes()))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_values_equal(x, y) for x, y in zip(a, b))
    return a == b


class VariantElement(NamedTuple):
    """One element of a variant tensor: what ``Variant::Encode`` produced.

    ``tensors`` are the element's tensors as values (numpy arrays or
    :class:`InconvertibleTensor`); for a ``TensorList`` its list items.
    """

    type_name: str
    metadata: bytes
    tensors: list

    def __repr__(self):
        return "%s(%d tensors)" % (self.type_name or "<empty>", len(self.tensors))


class WatchKey(NamedTuple):
    """A watched tensor: device, node, output slot and debug op."""

    device: str
    node: str
    output_slot: int
    debug_op: str

    @property
    def tensor_name(self) -> str:
        return "%s:%d" % (self.node, self.output_slot)

    @property
    def watch_key(self) -> str:
        """tfdbg's watch key string, ``node:slot:debug_op``."""
        return "%s:%d:%s" % (self.node, self.output_slot, self.debug_op)


class _Raw(NamedTuple):
    """A tensor's stored form, before it is turned into a value."""

    dtype: int
    flags: int
    shape: tuple
    payload: Optional[bytes]        # None: no payload bytes
    blob_hashes: tuple              # the record's attached blobs (variant elements)


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
    """

    __slots__ = ("run", "index", "_g")

    def __init__(self, run: "Run", index: int):
        self.run = run
        self.index = index
        self._g = int(run._gidx[index])

    # columns are read on demand: a run of 100k tensors builds no per-field state
    @property
    def seq(self) -> int:
        return int(self.run._reader._t["seq"][self._g])

    @property
    def wall_us(self) -> int:
        return int(self.run._reader._t["wall_us"][self._g])

    @property
    def key(self) -> WatchKey:
        return self.run._reader._keys[self.run._reader._key_of[self._g]]

    @property
    def dtype(self) -> int:
        return int(self.run._reader._t["dtype"][self._g])

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    @property
    def flags(self) -> int:
        return int(self.run._reader._t["flags"][self._g])

    @property
    def shape(self) -> tuple:
        return self.run._reader._shape(self._g)

    @property
    def nbytes(self) -> int:
        return int(self.run._reader._t["payload_len"][self._g])

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
    def value(self):
        """The tensor's value (see :meth:`Run.value`)."""
        return self.run._reader._value(self._g)

    def get_tensor(self):
        """Same as :attr:`value` (tfdbg's ``DebugTensorDatum`` spelling)."""
        return self.value

    def __repr__(self):
        return "<TensorRecord #%d %s @%d %s%s>" % (
            self.index, self.watch_key, self.wall_us, self.dtype_name, list(self.shape))


# --------------------------------------------------------------------------- runs

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
    """

    def __init__(self, reader: "DumpReader", writer_index: int, run_id: int, gidx: np.ndarray,
                 begin: Optional[dict], end: Optional[dict], drops: List[dict]):
        self._reader = reader
        self._gidx = gidx
        self._records: Optional[List[TensorRecord]] = None
        self._by_key: Optional[Dict[int, np.ndarray]] = None
        w = reader._writers[writer_index]
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
        md = self.metadata
        self.core_metadata = md.get("core_metadata")
        if isinstance(self.core_metadata, str):
            try:
                self.core_metadata = json.loads(self.core_metadata)
            except ValueError:
                pass
        gs = md.get("global_step")
        if gs is None and isinstance(self.core_metadata, dict):
            gs = self.core_metadata.get("global_step")
        self.global_step = gs
        self.fetches = _as_repr(md.get("fetches")) if "fetches" in md else None
        self.feed_keys = _as_repr(md.get("feed_keys")) if "feed_keys" in md else None
        late_drops = sum(int(d.get("dropped_tensors", 0) or 0) for d in drops)
        self.expected_tensors = end.get("tensors") if end else None
        # tensors dropped after run_end was written count as drops, not as missing
        self.missing_tensors = max(0, int(self.expected_tensors) - late_drops - len(gidx)) \
            if self.expected_tensors is not None else 0
        self.dropped_tensors = int(end.get("dropped_tensors", 0) or 0) + late_drops
        self.dropped_bytes = int(end.get("dropped_bytes", 0) or 0) + sum(
            int(d.get("dropped_bytes", 0) or 0) for d in drops)
        self._graph_hashes = [bytes.fromhex(h) for h in
                              (md.get("graph_hashes") or md.get("attachment_hashes") or [])]
        if begin.get("attachment_hashes") and end.get("attachment_hashes"):
            self._graph_hashes = [bytes.fromhex(h) for h in
                                  begin["attachment_hashes"] + end["attachment_hashes"]]

    # ---- listing

    def __len__(self) -> int:
        return len(self._gidx)

    def __repr__(self):
        return "<Run %s (writer w%016x run %d): %d tensors, %s>" % (
            self.name, self.writer_id, self.run_id, len(self), self.status)

    @property
    def key(self) -> Tuple[int, int]:
        """``(writer_id, run_id)``, unique within a session root."""
        return (self.writer_id, self.run_id)

    @property
    def records(self) -> List[TensorRecord]:
        """Every dumped tensor of the run, in execution order."""
        if self._records is None:
            self._records = [TensorRecord(self, i) for i in range(len(self._gidx))]
        return self._records

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, index) -> TensorRecord:
        return self.records[index]

    @property
    def watch_keys(self) -> List[WatchKey]:
        """The run's watch keys in the order of their first execution."""
        keys = self._reader._key_of[self._gidx]
        _, first = np.unique(keys, return_index=True)
        return [self._reader._keys[k] for k in keys[np.sort(first)]]

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
        return self._reader._t["wall_us"][self._gidx]

    @property
    def t0(self) -> Optional[int]:
        """Arrival time of the first tensor (µs), like tfdbg's ``t0``."""
        return int(self.wall_us.min()) if len(self) else None

    @property
    def payload_bytes(self) -> int:
        """Sum of the tensors' payload sizes (before dedup and compression)."""
        return int(self._reader._t["payload_len"][self._gidx].sum())

    @property
    def graphs(self) -> List[bytes]:
        """Serialized partition ``GraphDef``s stored with the run."""
        return [g for _, g in self._graph_items()]

    def _graph_items(self) -> List[Tuple[bytes, bytes]]:
        """(stored hash, GraphDef bytes) of the run's partition graphs."""
        out = []
        for h in self._graph_hashes:
            try:
                out.append((h, bytes(self._reader._payload(self.writer_index, h))))
            except TfdumpNotFoundError:
                pass
        return out

    # ---- lookup

    def _key_rows(self) -> Dict[int, np.ndarray]:
        if self._by_key is None:
            keys = self._reader._key_of[self._gidx]
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
            k = self._reader._keys[kid]
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
        return self._reader._values_of(np.asarray([r._g for r in recs], dtype=np.int64))

    def value(self, index: int):
        """Value of the tensor at ``index`` in execution order.

        Numeric tensors are read-only numpy arrays bit-identical to what TF
        computed (copy them to modify); strings are object arrays of
        ``bytes``; resources, variants, uninitialized tensors and dtypes
        numpy lacks are :class:`InconvertibleTensor`.
        """
        return self._reader._value(int(self._gidx[index]))

    def values(self) -> list:
        """Values of all tensors in execution order (each payload decoded once)."""
        return self._reader._values_of(self._gidx)

    def find(self, predicate: Optional[Callable] = None, *, first_n: int = 0,
             exclude: Union[None, str, Sequence[str]] = None, device: Optional[str] = None
             ) -> List[TensorRecord]:
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
            Regular expressions; tensors of nodes whose name matches one (at
            its start, like tfdbg's ``exclude_node_names``) are skipped.
        device : str, optional
            Only tensors of this device.

        Returns
        -------
        list of TensorRecord
        """
        rows = self._filter_rows(exclude, device)
        if predicate is None:
            idx = rows if first_n <= 0 else rows[:first_n]
            return [self.records[i] for i in idx]
        if _is_inf_nan_predicate(predicate):
            return [self.records[i] for i in self._reader._find_inf_nan(self._gidx, rows, first_n)]
        out = []
        cache: dict = {}
        for i in rows.tolist():
            rec = self.records[i]
            if predicate(rec, self._reader._value(rec._g, cache)):
                out.append(rec)
                if 0 < first_n <= len(out):
                    break
        return out

    def _filter_rows(self, exclude, device) -> np.ndarray:
        keys_of_rows = self._reader._key_of[self._gidx]
        mask = np.ones(len(self._gidx), dtype=bool)
        if exclude:
            patterns = [exclude] if isinstance(exclude, str) else list(exclude)
            try:
                regexes = [re.compile(p) for p in patterns]
            except re.error as exc:
                raise TfdumpUsageError("bad exclude pattern %r: %s" % (exc.pattern, exc)) from None
            bad = [kid for kid in np.unique(keys_of_rows).tolist()
                   if any(r.match(self._reader._keys[kid].node) for r in regexes)]
            if bad:
                mask &= ~np.isin(keys_of_rows, bad)
        if device is not None:
            good = [kid for kid in np.unique(keys_of_rows).tolist() if self._reader._keys[kid].device == device]
            mask &= np.isin(keys_of_rows, good)
        return np.flatnonzero(mask)


def has_inf_or_nan(record, value) -> bool:
    """True if a tensor holds any inf or nan (tfdbg's predicate of that name).

    Passed to :meth:`Run.find` it selects a vectorized check that decodes
    each distinct payload once; called directly it checks one value.
    """
    del record
    if isinstance(value, InconvertibleTensor) or not isinstance(value, np.ndarray):
        return False
    if value.dtype.kind in "fc" or value.dtype.name in _FLOAT_NAMES:
        return not bool(np.isfinite(value).all())
    return False


_FLOAT_NAMES = frozenset(_NUMPY_DTYPES[dt].name for dt in _FLOATING)


def _is_inf_nan_predicate(predicate) -> bool:
    if predicate is has_inf_or_nan:
        return True
    # tfdbg's own predicate has the same meaning; recognise it without importing TF
    return (getattr(predicate, "__name__", None) == "has_inf_or_nan"
            and getattr(predicate, "__module__", "") == "tensorflow.python.debug.lib.debug_data")


def _split_tensor_name(node, output_slot, debug_op):
    parts = node.rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit() and output_slot is None and debug_op is None:
        return parts[0], int(parts[1]), parts[2]
    parts = node.rsplit(":", 1)
    if len(parts) == 2 and parts[1].isdigit() and output_slot is None:
        return parts[0], int(parts[1]), debug_op
    return node, output_slot, debug_op


def _did_you_mean(node, run) -> str:
    import difflib

    names = sorted({k.node for k in run.watch_keys})
    close = difflib.get_close_matches(node, names, n=3)
    return (" (did you mean %s?)" % ", ".join(close)) if close else ""


def _as_repr(value):
    return value if isinstance(value, str) or value is None else repr(value)


# --------------------------------------------------------------------------- shards

class _Writer:
    """What the reader knows of one writer (all shards with one writer id)."""

    def __init__(self, writer_id: int):
        self.writer_id = writer_id
        self.name = "w%016x" % writer_id
        self.shards: List[int] = []
        self.events: List[dict] = []       # META events in file order
        self.open: Optional[dict] = None   # writer_open event
        self.close: Optional[dict] = None  # writer_close event
        self.blob_frames: List[int] = []   # frames holding this writer's blobs
        self.blob_index: Optional[dict] = None
        self.blob_rows = None              # concatenated BLOB columns + frame index


class _Frame:
    __slots__ = ("shard", "offset", "kind", "codec", "level", "table_stored", "table_raw",
                 "data_offset", "data_stored", "data_raw", "data_crc", "n_entries", "table",
                 "data_checked")


class _Shard:
    def __init__(self, path, writer_id, index):
        self.path = path
        self.writer_id = writer_id
        self.index = index          # shard index (0xFFFFFFFF: metadata)
        self.header: Optional[dict] = None
        self.size = 0
        self.scanned = 0            # offset up to which frames were read
        self.torn_bytes = 0
        self.frames: List[int] = []
        self.key_map: Dict[int, int] = {}   # shard-local key id -> global key index


# --------------------------------------------------------------------------- reader

class DumpReader:
    """Read-only view of a tfdump-fast session root.

    Parameters
    ----------
    session_root : str or os.PathLike
        Directory holding the ``*.tfds`` shard files of one or more writers.
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
        self.session_root = os.fspath(session_root)
        self.cache_bytes = int(cache_bytes)
        self._on_corruption = on_corruption
        self._lock = threading.RLock()
        self._cache: "collections.OrderedDict[int, bytes]" = collections.OrderedDict()
        self._cache_size = 0
        self._closed = False
        self._shards: List[_Shard] = []
        self._shard_by_path: Dict[str, int] = {}
        self._frames: List[_Frame] = []
        self._writers: List[_Writer] = []
        self._writer_by_id: Dict[int, int] = {}
        self._keys: List[WatchKey] = []
        self._key_index: Dict[WatchKey, int] = {}
        self.problems: List[str] = []
        self._check_root()
        self.refresh()

    # ---- opening

    def _check_root(self):
        root = self.session_root
        if not os.path.exists(root):
            raise TfdumpIOError(2, "session root %s does not exist" % root)
        if not os.path.isdir(root):
            if root.endswith(".tfds"):
                raise TfdumpUsageError("%s is a shard file; pass the directory that holds it" % root)
            raise TfdumpFormatError("%s is not a directory, so not a tfdump-fast session root" % root)

    def _list_shards(self) -> List[Tuple[str, int, int]]:
        try:
            names = os.listdir(self.session_root)
        except OSError as exc:
            raise TfdumpIOError(exc.errno, "cannot list %s: %s" % (self.session_root, exc.strerror)) from None
        out = []
        for name in sorted(names):
            m = _SHARD_RE.match(name)
            if m:
                index = 0xFFFFFFFF if m.group(2) == "meta" else int(m.group(2))
                out.append((os.path.join(self.session_root, name), int(m.group(1), 16), index))
        if not out and not self._shards:
            hint = ""
            if any(n.startswith("run_") for n in names) or any(n.startswith("_tfdbg_") for n in names):
                hint = (" It looks like a tfdbg dump: read it with tfdbg's DebugDumpDir, or import it "
                        "with `tfdump-fast import`.")
            raise TfdumpFormatError(
                "%s is not a tfdump-fast session root: it holds no *.tfds shard files.%s"
                % (self.session_root, hint))
        return out

    def refresh(self) -> "DumpReader":
        """Read frames written since the store was opened (or last refreshed).

        Runs are rebuilt: fetch :attr:`runs` again afterwards.
        """
        self._check_open()
        with self._lock:
            for path, writer_id, index in self._list_shards():
                if path not in self._shard_by_path:
                    self._shard_by_path[path] = len(self._shards)
                    self._shards.append(_Shard(path, writer_id, index))
            for si, shard in enumerate(self._shards):
                self._scan_shard(si, shard)
            self._build_index()
        return self

    def _scan_shard(self, si: int, shard: _Shard) -> None:
        try:
            fd = os.open(shard.path, os.O_RDONLY)
        except OSError as exc:
            raise TfdumpIOError(exc.errno, "cannot open %s: %s" % (shard.path, exc.strerror)) from None
        try:
            size = os.fstat(fd).st_size
            shard.size = size
            if shard.header is None:
                head = os.pread(fd, _native.FILE_HEADER_SIZE, 0)
                if len(head) < _native.FILE_HEADER_SIZE:
                    # a writer that died before its first write, or one starting right now
                    shard.torn_bytes = len(head)
                    return
                try:
                    shard.header = _native.parse_file_header(head)
                except (TfdumpFormatError, TfdumpTruncatedError) as exc:
                    if isinstance(exc, TfdumpCorruptionError):
                        raise TfdumpCorruptionError("%s: %s" % (shard.path, exc)) from None
                    raise TfdumpFormatError("%s: %s" % (shard.path, exc)) from None
                if shard.header["writer_id"] != shard.writer_id:
                    self._problem(TfdumpCorruptionError(
                        "%s: header names writer w%016x, the file name another" %
                        (shard.path, shard.header["writer_id"])))
                shard.scanned = _native.FILE_HEADER_SIZE
            pos = shard.scanned
            shard.torn_bytes = 0
            while pos < size:
                frame, next_pos, problem = self._read_frame(fd, si, shard, pos, size)
                if frame is None:
                    if problem is None:          # torn tail: stop, the writer may add to it
                        shard.torn_bytes = size - pos
                        break
                    self._problem(TfdumpCorruptionError("%s: %s" % (shard.path, problem)))
                    if next_pos is None:         # no later frame found: nothing to salvage
                        break
                    pos = next_pos
                    shard.scanned = pos
                    continue
                shard.frames.append(len(self._frames))
                self._frames.append(frame)
                pos = next_pos
                shard.scanned = pos
        finally:
            os.close(fd)

    def _read_frame(self, fd, si, shard, pos, size):
        """Read the frame at ``pos``. Returns (frame, next_pos, problem):
        a frame; or (None, None, None) for a torn tail; or (None, resync
        position or None, message) for corruption."""
        head = os.pread(fd, _HDR, pos)
        if len(head) < _HDR:
            return None, None, None
        try:
            h = _native.parse_frame_header(head)
        except TfdumpCorruptionError:
            nxt = self._resync(fd, pos + 1, size)
            if nxt is None:
                return None, None, None  # garbage at the very end: a torn tail
            return None, nxt, "frame header at offset %d is corrupt (checksum mismatch)" % pos
        end = pos + _HDR + h["table_stored_len"] + h["data_stored_len"]
        if end > size:
            return None, None, None
        table = os.pread(fd, h["table_stored_len"], pos + _HDR)
        problem = None
        if _native.crc32c(table) != h["table_crc"]:
            problem = "record table of the frame at offset %d is corrupt (checksum mismatch)" % pos
        data_checked = False
        if problem is None and end == size:
            # The last frame of a file: a crash can leave it with the right
            # length but unwritten contents, so check its data now.
            data = os.pread(fd, h["data_stored_len"], pos + _HDR + h["table_stored_len"])
            if _native.crc32c(data) != h["data_crc"]:
                return None, None, None
            data_checked = True
        if problem is not None:
            if end == size:
                return None, None, None
            return None, end, problem
        try:
            raw_table = self._decompress_table(table, h["codec"], h["table_raw_len"])
            parsed = _native.parse_table(raw_table, h["n_entries"])
        except TfdumpCorruptionError as exc:
            return None, end, "frame at offset %d: %s" % (pos, exc)
        f = _Frame()
        f.shard = si
        f.offset = pos
        f.kind = h["kind"]
        f.codec = h["codec"]
        f.level = h["level"]
        f.table_stored = h["table_stored_len"]
        f.table_raw = h["table_raw_len"]
        f.data_offset = pos + _HDR + h["table_stored_len"]
        f.data_stored = h["data_stored_len"]
        f.data_raw = h["data_raw_len"]
        f.data_crc = h["data_crc"]
        f.n_entries = h["n_entries"]
        f.table = parsed
        f.data_checked = data_checked
        return f, end, None

    def _decompress_table(self, stored, codec, raw_len):
        """Decompress a record table into a scratch buffer reused across
        frames (parse_table copies what it keeps; fresh multi-MB buffers cost
        page faults)."""
        if codec != _native.CODEC_ZSTD or raw_len == 0:
            return _decompress(stored, codec, raw_len)
        scratch = getattr(self, "_scratch", None)
        if scratch is None or len(scratch) < raw_len:
            scratch = self._scratch = bytearray(max(raw_len, 1 << 20))
        view = memoryview(scratch)
        try:
            with zstandard.ZstdDecompressor().stream_reader(stored) as src:
                n = 0
                while n < raw_len:
                    got = src.readinto(view[n:raw_len])
                    if not got:
                        break
                    n += got
                extra = src.read(1)
        except zstandard.ZstdError as exc:
            raise TfdumpCorruptionError("zstd block does not decompress: %s" % exc) from None
        if n != raw_len or extra:
            raise TfdumpCorruptionError("zstd block does not decompress to the %d bytes its header says"
                                        % raw_len)
        return view[:raw_len]

    @staticmethod
    def _resync(fd, pos, size) -> Optional[int]:
        """Offset of the next valid frame header after ``pos``, or None."""
        chunk = 1 << 20
        while pos < size:
            buf = os.pread(fd, chunk + _HDR, pos)
            i = buf.find(_FRAME_MAGIC)
            while i >= 0:
                if i + _HDR <= len(buf):
                    try:
                        _native.parse_frame_header(buf[i:i + _HDR])
                        return pos + i
                    except TfdumpCorruptionError:
                        pass
                i = buf.find(_FRAME_MAGIC, i + 1)
            pos += chunk
        return None

    def _problem(self, exc: Exception) -> None:
        if self._on_corruption == "raise":
            raise type(exc)(str(exc) + ". Run `tfdump-fast verify %s` for a full report, or open with "
                            "on_corruption='skip' to read what is intact." % self.session_root)
        self.problems.append(str(exc))

    # ---- index

    def _build_index(self) -> None:
        """(Re)build the columnar tensor index and the runs from all frames."""
        self._writers = []
        self._writer_by_id = {}
        for shard in self._shards:
            if shard.header is None:
                continue
            wi = self._writer_by_id.get(shard.writer_id)
            if wi is None:
                wi = self._writer_by_id[shard.writer_id] = len(self._writers)
                self._writers.append(_Writer(shard.writer_id))
        for si, shard in enumerate(self._shards):
            shard.key_map = {}
            if shard.header is not None:
                self._writers[self._writer_by_id[shard.writer_id]].shards.append(si)
        tensors, key_of, writer_of, frame_of, dims = [], [], [], [], []
        dims_base = 0
        # Frames in the order they were found (each shard's in file order):
        # tensors found by a refresh() are appended, so the indices -- and the
        # Run / TensorRecord objects handed out before -- stay valid.
        for fi, f in enumerate(self._frames):
            shard = self._shards[f.shard]
            wi = self._writer_by_id[shard.writer_id]
            w = self._writers[wi]
            t = f.table
            for key_id, slot, device, node, op in t.key_defs:
                shard.key_map[key_id] = self._intern_key(WatchKey(device, node, slot, op))
            if len(t.blobs):
                w.blob_frames.append(fi)
            for js, attachments in t.metas:
                try:
                    ev = json.loads(js)
                except ValueError:
                    self._problem(TfdumpCorruptionError(
                        "%s: a META event at offset %d is not JSON" % (shard.path, f.offset)))
                    continue
                w.events.append(ev)
            n = len(t.tensors)
            if not n:
                continue
            kid = t.tensors["key_id"]
            try:
                lut = self._lookup_table(shard.key_map, kid)
            except KeyError as exc:
                self._problem(TfdumpCorruptionError(
                    "%s: frame at offset %d uses watch key id %s that the shard never defined"
                    % (shard.path, f.offset, exc.args[0])))
                continue
            tcols = t.tensors.copy()
            tcols["dims_offset"] += dims_base
            tensors.append(tcols)
            key_of.append(lut)
            writer_of.append(np.full(n, wi, dtype=np.int32))
            # blob refs stay in their frame's table (blobs_offset is frame-local):
            # copying them (variants list every element) would dominate opening
            frame_of.append(np.full(n, fi, dtype=np.int32))
            dims.append(t.dims)
            dims_base += len(t.dims)
        if tensors:
            self._t = np.concatenate(tensors)
            self._key_of = np.concatenate(key_of).astype(np.int32, copy=False)
            self._writer_of = np.concatenate(writer_of)
            self._frame_of = np.concatenate(frame_of)
            self._dims = np.concatenate(dims)
        else:
            self._t = np.zeros(0, dtype=_native.TENSOR_DTYPE)
            self._key_of = np.zeros(0, np.int32)
            self._writer_of = np.zeros(0, np.int32)
            self._frame_of = np.zeros(0, np.int32)
            self._dims = np.zeros(0, np.int64)
        # hashes as exact 16-byte strings (numpy's S16 would drop trailing NULs),
        # contiguous so that taking one is cheap
        self._phash = np.ascontiguousarray(self._t["payload_hash"]).view("V16") if len(self._t) \
            else np.zeros(0, "V16")
        self._build_runs()

    def _intern_key(self, key: WatchKey) -> int:
        k = self._key_index.get(key)
        if k is None:
            k = self._key_index[key] = len(self._keys)
            self._keys.append(key)
        return k

    @staticmethod
    def _lookup_table(key_map: Dict[int, int], key_ids: np.ndarray) -> np.ndarray:
        uniq, inv = np.unique(key_ids, return_inverse=True)
        mapped = np.fromiter((key_map[int(k)] for k in uniq), dtype=np.int32, count=len(uniq))
        return mapped[inv]

    def _build_runs(self) -> None:
        t = self._t
        order = np.lexsort((t["seq"], t["run_id"], self._writer_of))
        w_sorted = self._writer_of[order]
        r_sorted = t["run_id"][order]
        if len(order):
            change = np.flatnonzero((np.diff(w_sorted) != 0) | (np.diff(r_sorted) != 0)) + 1
            starts = np.concatenate(([0], change))
            ends = np.concatenate((change, [len(order)]))
            groups = {(int(w_sorted[s]), int(r_sorted[s])): order[s:e] for s, e in zip(starts, ends)}
        else:
            groups = {}
        begins, endings, drops = {}, {}, collections.defaultdict(list)
        for wi, w in enumerate(self._writers):
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
            runs.append(Run(self, wi, rid, groups.get(key, empty), begins.get(key), endings.get(key),
                            drops.get(key, [])))

        def sort_key(r):
            start = r.begin_us if r.begin_us is not None else (
                int(t["wall_us"][r._gidx].min()) if len(r) else 0)
            return (start, r.writer_id, r.run_id)

        runs.sort(key=sort_key)
        self._runs = runs
        self._run_by_key = {r.key: r for r in runs}

    # ---- public API

    @property
    def runs(self) -> List[Run]:
        """All runs of all writers, ordered by start time."""
        self._check_open()
        return list(self._runs)

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

    @property
    def torn_tails(self) -> Dict[str, int]:
        """Bytes ignored at the end of each shard whose last frame is
        incomplete (writer killed, or still writing it)."""
        return {s.path: s.torn_bytes for s in self._shards if s.torn_bytes}

    @property
    def writers(self) -> List[dict]:
        """One dict per writer: ``writer_id``, ``name``, ``shards``, and its
        ``writer_open`` / ``writer_close`` events and other META events."""
        out = []
        for w in self._writers:
            out.append({
                "writer_id": w.writer_id, "name": w.name,
                "shards": [self._shards[s].path for s in w.shards],
                "open": w.open, "close": w.close,
                "events": [e for e in w.events if e.get("event") not in
                           ("run_begin", "run_end", "writer_open", "writer_close")],
            })
        return out

    def keys(self) -> List[WatchKey]:
        """Every watch key of the store (all runs, all writers)."""
        return list(self._keys)

    def close(self) -> None:
        """Drop cached data; the reader cannot be used afterwards."""
        with self._lock:
            self._cache.clear()
            self._cache_size = 0
            self._closed = True

    def __enter__(self) -> "DumpReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self):
        return "<DumpReader %s: %d runs, %d writers>" % (self.session_root, len(self._runs), len(self._writers))

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
               "codecs": collections.Counter(), "torn_bytes": sum(s.torn_bytes for s in self._shards)}
        for f in self._frames:
            if f.kind == _native.FRAME_KIND_META:
                out["meta_stored"] += _HDR + f.table_stored + f.data_stored
                out["meta_raw"] += _HDR + f.table_raw + f.data_raw
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
            One line per problem (empty when the store is intact). Torn
            tails are not problems; see :attr:`torn_tails`.
        """
        problems = list(self.problems)
        total = sum(f.data_stored for f in self._frames) or 1
        done = 0
        for fi, f in enumerate(self._frames):
            try:
                self._frame_data(fi, use_cache=False)
            except (TfdumpCorruptionError, TfdumpTruncatedError, TfdumpIOError) as exc:
                problems.append(str(exc))
            done += f.data_stored
            if progress is not None:
                progress(done, total)
        for wi in range(len(self._writers)):
            index = self._blob_index(wi)
            mine = np.flatnonzero(self._writer_of == wi)
            need = set(self._phash[mine][self._t["payload_len"][mine] > 0].tolist())
            for fi in np.unique(self._frame_of[mine]).tolist():
                refs = self._frames[fi].table.blob_refs
                if len(refs):
                    need.update(refs.view("V16").tolist())
            # element tensors of variants; each TensorList list blob is parsed once
            lists: set = set()

            def note_list(h):
                lists.add(h)
                return b"\0\0\0\0"  # an empty list: its blob is checked below

            variants = mine[(self._t["flags"][mine] & FLAG_VARIANT) != 0]
            for g in variants.tolist():
                try:
                    raw = self._raw(int(g))
                    elements = _parse_variant(raw.payload, raw.blob_hashes, note_list) if raw.payload else []
                except (TfdumpNotFoundError, TfdumpCorruptionError) as exc:
                    problems.append("writer %s: variant tensor %s: %s" % (
                        self._writers[wi].name, self._keys[self._key_of[g]].watch_key, exc))
                    continue
                for _, _, tensors in elements:
                    need.update(bytes(t.payload) for t in tensors if isinstance(t.payload, _BlobRef))
            for h in lists:
                try:
                    tensors = _parse_list_blob(self._payload(wi, h))
                except (TfdumpNotFoundError, TfdumpCorruptionError) as exc:
                    problems.append("writer %s: TensorList list blob %s: %s" % (self._writers[wi].name, h.hex(), exc))
                    continue
                need.update(bytes(t.payload) for t in tensors if isinstance(t.payload, _BlobRef))
            missing = [h for h in need if h not in index]
            if missing:
                problems.append("writer %s: %d tensor payload(s) are referred to but stored in no "
                                "frame (e.g. %s)" % (self._writers[wi].name, len(missing), missing[0].hex()))
        return problems

    # ---- payload access

    def _frame_data(self, fi: int, use_cache: bool = True) -> bytes:
        with self._lock:
            data = self._cache.get(fi) if use_cache else None
            if data is not None:
                self._cache.move_to_end(fi)
                return data
        f = self._frames[fi]
        shard = self._shards[f.shard]
        try:
            with open(shard.path, "rb") as fh:
                fh.seek(f.data_offset)
                stored = fh.read(f.data_stored)
        except OSError as exc:
            raise TfdumpIOError(exc.errno, "cannot read %s: %s" % (shard.path, exc.strerror)) from None
        if len(stored) != f.data_stored:
            raise TfdumpTruncatedError("%s: the data block of the frame at offset %d is cut short "
                                       "(the file shrank since it was opened)" % (shard.path, f.offset))
        if not f.data_checked or not use_cache:
            if _native.crc32c(stored) != f.data_crc:
                raise TfdumpCorruptionError(
                    "%s: the data block of the frame at offset %d is corrupt (checksum mismatch); "
                    "the tensors stored in it cannot be read" % (shard.path, f.offset))
            f.data_checked = True
        try:
            data = _decompress(stored, f.codec, f.data_raw)
        except TfdumpCorruptionError as exc:
            raise TfdumpCorruptionError("%s: frame at offset %d: %s" % (shard.path, f.offset, exc)) from None
        if use_cache:
            with self._lock:
                self._cache[fi] = data
                self._cache_size += len(data)
                while self._cache_size > self.cache_bytes and len(self._cache) > 1:
                    _, old = self._cache.popitem(last=False)
                    self._cache_size -= len(old)
        return data

    def _prefetch(self, fids, frames: dict) -> None:
        """Decompress the frames ``fids`` into ``frames`` (frame -> data),
        several at a time: zstd releases the GIL, so bulk reads of large
        tensors use every core."""
        todo = [fi for fi in dict.fromkeys(fids) if fi not in frames]
        if not todo:
            return
        big = sum(self._frames[fi].data_stored for fi in todo) >= (1 << 20)
        if len(todo) < 2 or not big:
            for fi in todo:
                frames[fi] = memoryview(self._frame_data(fi))
            return
        for fi, data in zip(todo, _pool().map(self._frame_data, todo)):
            frames[fi] = memoryview(data)

    def _blob_index(self, wi: int) -> dict:
        """hash -> (frame, offset, length, filter, elem_size) for one writer."""
        w = self._writers[wi]
        if w.blob_index is None:
            index = {}
            for fi in w.blob_frames:
                b = self._frames[fi].table.blobs
                hashes = b["hash"].view("V16").tolist()
                for h, ln, off, flt, es in zip(hashes, b["raw_len"].tolist(), b["data_offset"].tolist(),
                                               b["filter"].tolist(), b["elem_size"].tolist()):
                    if h not in index:
                        index[h] = (fi, off, ln, flt, es)
            w.blob_index = index
        return w.blob_index

    def _payload(self, wi: int, h: bytes, frames: Optional[dict] = None):
        """The unfiltered bytes of payload ``h`` of writer ``wi``.

        ``frames`` (frame -> data) lets bulk operations skip the shared
        cache's lock and bookkeeping for every payload.
        """
        loc = (self._writers[wi].blob_index or self._blob_index(wi)).get(h)
        if loc is None:
            raise TfdumpNotFoundError(
                "payload %s of writer %s is stored in no frame that could be read (its frame was "
                "lost to a crash or skipped as corrupt)" % (h.hex(), self._writers[wi].name))
        fi, off, ln, flt, es = loc
        if frames is None:
            data = memoryview(self._frame_data(fi))
        else:
            data = frames.get(fi)
            if data is None:
                data = frames[fi] = memoryview(self._frame_data(fi))
        if off + ln > len(data):
            raise TfdumpCorruptionError("payload %s lies outside its frame's data block" % h.hex())
        if flt == 1 and es > 1:
            return _native.unshuffle(data[off:off + ln], es)
        if flt not in (0, 1):
            raise TfdumpCorruptionError("payload %s uses unknown filter %d" % (h.hex(), flt))
        # a small payload is copied so that its value does not pin the whole block
        return bytes(data[off:off + ln]) if ln < (1 << 20) or frames is None else data[off:off + ln]

    def _shape(self, g: int) -> tuple:
        nd = int(self._t["ndims"][g])
        off = int(self._t["dims_offset"][g])
        return tuple(self._dims[off:off + nd].tolist())

    def _raw(self, g: int) -> _Raw:
        """The stored form of global tensor ``g``."""
        t = self._t[g]
        plen = int(t["payload_len"])
        wi = int(self._writer_of[g])
        payload = self._payload(wi, self._phash[g].tobytes()) if plen else None
        if payload is not None and len(payload) != plen:
            raise TfdumpCorruptionError("a tensor's payload length disagrees with its blob")
        n = int(t["n_blobs"])
        off = int(t["blobs_offset"])
        blobs = tuple(self._frames[int(self._frame_of[g])].table.blob_refs[off:off + n].view("V16").tolist()) \
            if n else ()
        return _Raw(int(t["dtype"]), int(t["flags"]), self._shape(g), payload, blobs)

    def _value(self, g: int, cache: Optional[dict] = None):
        """Value of global tensor ``g``; ``cache`` shares decoded payloads."""
        t = self._t[g]
        flags = int(t["flags"])
        if flags & FLAG_VARIANT and not flags & FLAG_UNINITIALIZED:
            # Decoded when looked at (a TensorList lists every element): bulk
            # loads and searches only pay for the marker.
            wi = int(self._writer_of[g])
            return InconvertibleTensor("variant", int(t["dtype"]), self._shape(g),
                                       thunk=lambda: self._decode(self._raw(g), wi).value)
        if cache is not None and not flags & (FLAG_VARIANT | FLAG_UNINITIALIZED) and t["payload_len"]:
            ck = (int(self._writer_of[g]), self._phash[g].tobytes(), int(t["dtype"]), flags, self._shape(g))
            v = cache.get(ck)
            if v is None:
                v = cache[ck] = self._decode(self._raw(g), int(self._writer_of[g]))
            return v
        return self._decode(self._raw(g), int(self._writer_of[g]))

    def _columns(self, gidx: np.ndarray) -> dict:
        """Columns of the tensors ``gidx`` as Python lists, for loops that
        touch every tensor (numpy scalar access costs microseconds each)."""
        gidx = np.asarray(gidx, dtype=np.int64)
        t = self._t[gidx]
        cols = {name: t[name].tolist() for name in (
            "flags", "dtype", "payload_len", "ndims", "dims_offset", "n_blobs", "blobs_offset", "wall_us")}
        cols["hash"] = self._phash[gidx].tolist()
        cols["writer"] = self._writer_of[gidx].tolist()
        cols["frame"] = self._frame_of[gidx].tolist()
        cols["key"] = self._key_of[gidx].tolist()
        cols["g"] = gidx.tolist()
        return cols

    def _values_of(self, gidx: np.ndarray) -> list:
        """Values of many tensors; each distinct payload is decoded once and
        plain numeric tensors skip the general path."""
        gidx = np.asarray(gidx, dtype=np.int64)
        c = self._columns(gidx)
        flags, dts, plens, nds, doffs = c["flags"], c["dtype"], c["payload_len"], c["ndims"], c["dims_offset"]
        hashes, wis = c["hash"], c["writer"]
        dims = self._dims_list()
        cache: dict = {}
        frames: dict = {}
        out = []
        index = [self._writers[w].blob_index or self._blob_index(w) for w in range(len(self._writers))]
        chunk = 4096
        for i, g in enumerate(gidx.tolist()):
            if i % chunk == 0:  # decompress the next chunk's frames together
                frames.clear()
                fids = []
                for j in range(i, min(i + chunk, len(hashes))):
                    loc = index[wis[j]].get(hashes[j]) if plens[j] else None
                    if loc is not None:
                        fids.append(loc[0])
                self._prefetch(fids, frames)
            nd = nds[i]
            shape = tuple(dims[doffs[i]:doffs[i] + nd]) if nd else ()
            if flags[i] or not plens[i]:
                out.append(self._value(g))
                continue
            key = (wis[i], hashes[i], dts[i], shape)
            v = cache.get(key)
            if v is None:
                dt = dts[i]
                npd = _NUMPY_DTYPES.get(dt - 100 if dt > 100 else dt)
                if npd is None:
                    v = self._value(g)
                else:
                    payload = self._payload(wis[i], hashes[i], frames)
                    if len(payload) != plens[i] or len(payload) != _prod(shape) * npd.itemsize:
                        v = self._value(g)  # raises the precise corruption error
                    else:
                        v = np.frombuffer(payload, dtype=npd).reshape(shape)
                cache[key] = v
            out.append(v)
        return out

    def _dims_list(self) -> list:
        dl = getattr(self, "_dims_cache", None)
        if dl is None or len(dl) != len(self._dims):
            dl = self._dims_cache = self._dims.tolist()
        return dl

    def _decode(self, raw: _Raw, wi: int):
        dtype, flags, shape, payload = raw.dtype, raw.flags, raw.shape, raw.payload
        if isinstance(payload, _BlobRef):
            payload = self._payload(wi, bytes(payload))
        if flags & FLAG_UNINITIALIZED:
            return InconvertibleTensor("uninitialized", dtype, shape)
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if flags & FLAG_RESOURCE:
            handles = decode_strings(payload) if payload is not None else []
            return InconvertibleTensor("resource", dtype, shape,
                                       [decode_resource_handle(h) for h in handles], handles)
        if flags & FLAG_STRING:
            items = decode_strings(payload) if payload is not None else []
            if len(items) != n:
                raise TfdumpCorruptionError("string tensor of shape %s holds %d strings" % (shape, len(items)))
            arr = np.empty(len(items), dtype=object)
            arr[:] = items
            return arr.reshape(shape)
        if flags & FLAG_VARIANT:
            def elements():
                parsed = _parse_variant(payload, raw.blob_hashes,
                                        lambda h: self._payload(wi, h)) if payload is not None else []
                return [VariantElement(tn, md, [self._decode(r, wi) for r in tensors])
                        for tn, md, tensors in parsed]
            return InconvertibleTensor("variant", dtype, shape, thunk=elements)
        npd = numpy_dtype(dtype)
        if npd is None:
            return InconvertibleTensor("unsupported_dtype", dtype, shape, None,
                                       bytes(payload) if payload is not None else b"")
        if payload is None:
            if n:
                raise TfdumpCorruptionError("tensor of shape %s has no payload and is not marked "
                                            "uninitialized" % (shape,))
            return np.zeros(shape, dtype=npd)
        if len(payload) != n * npd.itemsize:
            raise TfdumpCorruptionError("tensor of dtype %s and shape %s has %d payload bytes" % (
                dtype_name(dtype), shape, len(payload)))
        return np.frombuffer(payload, dtype=npd).reshape(shape)

    # ---- inf / nan search

    def _find_inf_nan(self, gidx: np.ndarray, rows: np.ndarray, first_n: int) -> List[int]:
        """Rows (indices into ``gidx``) of tensors holding inf or nan."""
        t = self._t
        g = gidx[rows]
        dt = t["dtype"][g]
        dt = np.where(dt > 100, dt - 100, dt)
        cand = np.isin(dt, list(_FLOATING)) & (t["flags"][g] == 0) & (t["payload_len"][g] > 0)
        rows, g, dt = rows[cand], g[cand], dt[cand]
        found: List[int] = []
        verdict: Dict[tuple, bool] = {}
        batch = 4096
        for start in range(0, len(rows), batch):
            bg = g[start:start + batch]
            bdt = dt[start:start + batch]
            keys = [(w, h, d) for w, h, d in zip(self._writer_of[bg].tolist(),
                                                 self._phash[bg].tolist(), bdt.tolist())]
            todo = {}
            for k in keys:
                if k not in verdict and k not in todo:
                    todo[k] = None
            if todo:
                verdict.update(self._check_finite(list(todo)))
            for r, k in zip(rows[start:start + batch].tolist(), keys):
                if verdict[k]:
                    found.append(r)
                    if 0 < first_n <= len(found):
                        return found
        return found

    def _check_finite(self, keys: List[tuple]) -> Dict[tuple, bool]:
        """For (writer, hash, dtype) keys: does the payload hold inf or nan?
        Payloads of one dtype are concatenated and checked in one pass."""
        out = {}
        by_dtype = collections.defaultdict(list)
        for k in keys:
            by_dtype[k[2]].append(k)
        big = 256 << 10  # larger payloads are checked on their own (no copy)
        for dt, ks in by_dtype.items():
            npd = _NUMPY_DTYPES[dt]
            parts, owners, sizes = [], [], []
            pending = 0

            def flush():
                nonlocal parts, owners, sizes, pending
                if not parts:
                    return
                arr = np.frombuffer(b"".join(parts), dtype=npd)
                # positions of bad elements (usually none), then their payloads
                bad = np.flatnonzero(~np.isfinite(arr))
                hit = set()
                if bad.size:
                    starts = np.cumsum([0] + sizes[:-1])
                    hit = set(np.unique(np.searchsorted(starts, bad, side="right") - 1).tolist())
                for j, k in enumerate(owners):
                    out[k] = j in hit
                parts, owners, sizes, pending = [], [], [], 0

            frames: dict = {}
            for n, k in enumerate(ks):
                if n % 1024 == 0:  # decompress the frames of the next keys together
                    frames.clear()
                    locs = [(self._writers[w].blob_index or self._blob_index(w)).get(h)
                            for w, h, _ in ks[n:n + 1024]]
                    self._prefetch([loc[0] for loc in locs if loc is not None], frames)
                payload = self._payload(k[0], k[1], frames)
                n = len(payload) // npd.itemsize
                if n == 0:
                    out[k] = False
                    continue
                if len(payload) >= big:
                    out[k] = not bool(np.isfinite(np.frombuffer(payload, dtype=npd)).all())
                    continue
                parts.append(payload)
                owners.append(k)
                sizes.append(n)
                pending += len(payload)
                if pending >= big:
                    flush()
            flush()
        return out


_POOL = None


def _pool():
    """A small shared thread pool for decompressing frames in parallel."""
    global _POOL
    if _POOL is None:
        import concurrent.futures

        _POOL = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(2, min(4, os.cpu_count() or 2)), thread_name_prefix="tfdump-read")
    return _POOL


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _decompress(stored, codec: int, raw_len: int) -> bytes:
    if codec == _native.CODEC_RAW:
        if len(stored) != raw_len:
            raise TfdumpCorruptionError("raw block is %d bytes, its header says %d" % (len(stored), raw_len))
        return bytes(stored)
    if codec != _native.CODEC_ZSTD:
        raise TfdumpFormatError("unknown codec %d (written by a newer tfdump-fast?)" % codec)
    if raw_len == 0 and len(stored) == 0:
        return b""
    try:
        out = zstandard.ZstdDecompressor().decompress(stored, max_output_size=raw_len)
    except zstandard.ZstdError as exc:
        raise TfdumpCorruptionError("zstd block does not decompress: %s" % exc) from None
    if len(out) != raw_len:
        raise TfdumpCorruptionError("zstd block decompressed to %d bytes, its header says %d" % (len(out), raw_len))
    return out


# --------------------------------------------------------------------------- variants

TENSOR_LIST_MARKER = 0xFFFFFFFF


class _Cursor:
    """Bounds-checked reading of a binary structure."""

    __slots__ = ("buf", "pos", "what")

    def __init__(self, payload, what):
        self.buf = memoryview(payload).cast("B")
        self.pos = 0
        self.what = what

    def take(self, n):
        if self.pos + n > len(self.buf):
            raise TfdumpCorruptionError("%s ends early" % self.what)
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def string(self):
        return bytes(self.take(self.unpack("<I")[0]))

    def end(self):
        if self.pos != len(self.buf):
            raise TfdumpCorruptionError("%s has %d trailing bytes" % (self.what, len(self.buf) - self.pos))


def _parse_variant(payload, blob_hashes, fetch) -> list:
    """Parse the variant structure of docs/FORMAT.md.

    ``fetch(hash)`` returns a payload of the record's writer (for list
    blobs). Returns ``[(type_name, metadata, [_Raw])]``; element tensors
    stored as blobs carry their hash in ``payload`` as a ``_BlobRef``,
    resolved when decoded.
    """
    cur = _Cursor(payload, "variant structure")
    elements = []
    for _ in range(cur.unpack("<Q")[0]):
        type_name = cur.string().decode("utf-8", "replace")
        metadata = cur.string()
        (n_tensors,) = cur.unpack("<I")
        if n_tensors == TENSOR_LIST_MARKER:
            (index,) = cur.unpack("<I")
            if index >= len(blob_hashes):
                raise TfdumpCorruptionError("variant element refers to blob %d of %d" % (index, len(blob_hashes)))
            tensors = _parse_list_blob(fetch(blob_hashes[index]))
        else:
            tensors = []
            for _ in range(n_tensors):
                dtype, flags, ndims = cur.unpack("<iHB")
                shape = cur.unpack("<%dq" % ndims) if ndims else ()
                (storage,) = cur.unpack("<B")
                if storage == 0:
                    (index,) = cur.unpack("<I")
                    if index >= len(blob_hashes):
                        raise TfdumpCorruptionError("variant element refers to blob %d of %d"
                                                    % (index, len(blob_hashes)))
                    data = _BlobRef(blob_hashes[index])
                elif storage == 1:
                    data = bytes(cur.take(cur.unpack("<Q")[0]))
                elif storage == 2:
                    data = None
                else:
                    raise TfdumpCorruptionError("unknown variant tensor storage %d" % storage)
                tensors.append(_Raw(dtype, flags, tuple(shape), data, blob_hashes))
        elements.append((type_name, metadata, tensors))
    cur.end()
    return elements


def _parse_list_blob(payload) -> list:
    """The element tensors of a TensorList list blob (docs/FORMAT.md)."""
    cur = _Cursor(payload, "TensorList list blob")
    tensors = []
    for _ in range(cur.unpack("<I")[0]):
        dtype, flags, ndims = cur.unpack("<iHB")
        shape = cur.unpack("<%dq" % ndims) if ndims else ()
        (storage,) = cur.unpack("<B")
        if storage == 0:
            h = bytes(cur.take(16))
            cur.unpack("<Q")  # payload length: implied by the blob itself
            data = _BlobRef(h)
        elif storage == 2:
            data = None
        else:
            raise TfdumpCorruptionError("unknown list blob tensor storage %d" % storage)
        tensors.append(_Raw(dtype, flags, tuple(shape), data, ()))
    cur.end()
    return tensors


class _BlobRef(bytes):
    """A variant element tensor's payload that is a blob (by hash)."""
