"""A tfdbg ``DebugDumpDir`` backed by a tfdump-fast store, without converting.

:class:`StoreDumpDir` *is* a ``tensorflow.python.debug.lib.debug_data.
DebugDumpDir`` (a subclass), filled from one run of a store instead of from
a directory of Event files, so code written against tfdbg's reader -- the
offline analyzer's ``DebugAnalyzer`` included -- works unchanged::

    from tfdump_fast.dumpdir import StoreDumpDir
    dump = StoreDumpDir("/tmp/dump", run=-1)
    dump.find(debug_data.has_inf_or_nan, first_n=1)
    dump.get_tensors("dense/MatMul", 0, "DebugIdentity")

Everything tfdbg's class offers is available (``dumped_tensor_data``,
``watch_key_to_data``, ``get_tensors``, ``find``, ``nodes``, ``node_inputs``,
``devices``, ``t0``, ``size``, ``get_rel_timestamps``,
``get_dump_sizes_bytes``, ``core_metadata``, ``run_fetches_info``, ...).
Tensor values come from the store; ``find`` with ``has_inf_or_nan`` uses the
store's vectorized search. File paths of the data are those :func:`convert`
would write (under ``<session root>/<run name>``); they do not exist unless
the run is converted. Dump sizes are the sizes those files would have.

This module imports TensorFlow (the class it extends is TensorFlow's). Being
a subclass, it overrides the base class's private loading steps and fills its
private state; the names it relies on are listed in
:data:`TFDBG_DUMP_DIR_PRIVATES` and :data:`TFDBG_TENSOR_DATUM_PRIVATES`, and
``tests/test_tf_private.py`` checks them against the installed TensorFlow.
"""

from __future__ import annotations

import collections
import os
import re
import numpy as np

from tensorflow.core.framework import graph_pb2, tensor_pb2
from tensorflow.core.util import event_pb2
from tensorflow.python.debug.lib import debug_data, debug_graphs

from tfdump_fast import _tfproto as P
from tfdump_fast.conversion import dump_file_names, run_dir_name, tensor_event, tensor_proto
from tfdump_fast.reader import (
    DumpReader, InconvertibleTensor, Run, WatchKey, has_inf_or_nan, is_inf_nan_predicate)

__all__ = ["StoreDumpDir", "StoreTensorDatum"]

# tfdbg's private members (TF 2.21) that StoreDumpDir overrides, calls or
# fills: loading steps DebugDumpDir.__init__ would run, the state its public
# methods read, and the helpers of the base class this subclass calls.
TFDBG_DUMP_DIR_PRIVATES = (
    "_load_core_metadata", "_load_all_device_dumps", "_load_partition_graphs", "_create_tensor_watch_maps",
    "_infer_device_name", "_collect_node_devices", "_find_partition_graph", "_validate_dump_with_graphs",
    "_calculate_t0", "_core_metadata", "_debug_graphs", "_debug_watches", "_device_names",
    "_dump_graph_file_paths", "_dump_root", "_dump_tensor_data", "_node_devices", "_python_graph",
    "_run_feed_keys_info", "_run_fetches_info", "_t0", "_t0s", "_watch_key_to_datum", "_watch_key_to_devices",
    "_watch_key_to_dump_size_bytes", "_watch_key_to_rel_time",
)
# The state of a DebugTensorDatum that StoreTensorDatum sets instead of
# parsing a dump file name.
TFDBG_TENSOR_DATUM_PRIVATES = (
    "_debug_op", "_device_name", "_dump_size_bytes", "_extended_timestamp", "_file_path", "_node_name",
    "_output_slot", "_timestamp",
)


class StoreTensorDatum(debug_data.DebugTensorDatum):
    """A ``DebugTensorDatum`` whose value lives in a tfdump-fast store.

    ``tensor_id`` is the dump's row in the reader's tensor index.
    """

    def __init__(self, reader: DumpReader, g: int, seq_index: int, dump_root: str, device_name: str,
                 node_name: str, output_slot: int, debug_op: str, rel_path: str, timestamp: int):
        # The base constructor parses a real file path and stats the file;
        # everything it would derive is known here, so it is not called.
        self._reader = reader
        self.tensor_id = g
        self._seq_index = seq_index
        self._device_name = device_name
        self._node_name = node_name
        self._output_slot = output_slot
        self._debug_op = debug_op
        self._timestamp = timestamp
        self._extended_timestamp = rel_path.rsplit("_", 1)[-1]
        self._file_path = os.path.join(dump_root, rel_path)
        self._dump_size_bytes = None

    @property
    def dump_size_bytes(self):
        """Size of the Event file tfdbg would have written for this dump."""
        if self._dump_size_bytes is None:
            self._dump_size_bytes = len(tensor_event(self._reader, _RecordRef(self._reader, self.tensor_id)))
        return self._dump_size_bytes

    def get_tensor(self):
        """The tensor value, as tfdbg's ``load_tensor_from_event_file`` returns it."""
        return _tfdbg_value(self._reader, self.tensor_id, self._reader.decoder.value(self.tensor_id))


class _RecordRef:
    """The minimum of a TensorRecord that convert.tensor_event needs."""

    __slots__ = ("tensor_id", "key", "wall_us")

    def __init__(self, reader, g):
        self.tensor_id = g
        self.key = reader.index.key(g)
        self.wall_us = int(reader.index.tensors["wall_us"][g])


def _tfdbg_value(reader: DumpReader, g: int, value, copy: bool = True):
    """Store value -> what tfdbg returns: a writable ndarray, or an
    ``InconvertibleTensorProto`` for uninitialized, resource and variant
    tensors."""
    if isinstance(value, InconvertibleTensor):
        proto = tensor_pb2.TensorProto.FromString(tensor_proto(reader, g))
        return debug_data.InconvertibleTensorProto(proto, value.initialized)
    return np.array(value) if copy else value


class StoreDumpDir(debug_data.DebugDumpDir):
    """tfdbg's ``DebugDumpDir`` for one run of a tfdump-fast store.

    Parameters
    ----------
    source : str, os.PathLike or DumpReader
        The session root (or an open reader).
    run : int, str or tuple, default -1
        The run, as :meth:`DumpReader.run` takes it (default: the last).
    partition_graphs : list of GraphDef, optional
        Used for devices whose partition graph the store lacks.
    validate : bool, default True
        Check the dumps against the partition graphs, as tfdbg does.
    """

    def __init__(self, source, run=-1, partition_graphs=None, validate=True):
        self._reader = source if isinstance(source, DumpReader) else DumpReader(source)
        self._run: Run = run if isinstance(run, Run) else self._reader.run(run)
        self._dump_root = os.path.join(self._reader.session_root, run_dir_name(self._run))
        self._core_metadata = []
        self._load_core_metadata()
        self._run_fetches_info = [] if self._run.fetches is None else [self._run.fetches]
        self._run_feed_keys_info = [] if self._run.feed_keys is None else [self._run.feed_keys]
        self._load_all_device_dumps(partition_graphs, validate)
        self._python_graph = None

    @property
    def reader(self) -> DumpReader:
        """The underlying :class:`~tfdump_fast.reader.DumpReader`."""
        return self._reader

    @property
    def run(self) -> Run:
        """The store run this view shows."""
        return self._run

    # ---- loading (replaces the file-system walk of the base class)

    def _load_core_metadata(self):
        md = self._run.metadata
        files = (md.get("tfdbg") or {}).get("core_metadata_files")
        texts = [f["json"] for f in files] if files else (
            [P.core_metadata_json(self._run.core_metadata)] if isinstance(self._run.core_metadata, dict) else [])
        for text in texts:
            event = event_pb2.Event()
            event.log_message.message = text
            self._core_metadata.append(debug_data.extract_core_metadata_from_event_proto(event))

    def _load_all_device_dumps(self, partition_graphs, validate):
        self._device_names = []
        self._t0s = {}
        self._dump_tensor_data = {}
        self._dump_graph_file_paths = {}
        self._debug_watches = {}
        self._watch_key_to_devices = {}
        self._watch_key_to_datum = {}
        self._watch_key_to_rel_time = {}
        self._watch_key_to_dump_size_bytes = {}
        reader, run = self._reader, self._run
        seqs = reader.index.tensors["seq"]
        per_device = collections.defaultdict(list)
        for i, (g, kid, folder, name, wall) in enumerate(dump_file_names(reader, run)):
            key = reader.index.keys[kid]
            datum = StoreTensorDatum(reader, g, i, self._dump_root, key.device, key.node, key.output_slot,
                                     key.debug_op, os.path.join(folder, name), wall)
            per_device[key.device].append((wall, int(seqs[g]), datum))
        for device in self._graph_devices() + list(per_device):
            if device not in self._device_names:
                self._device_names.append(device)
        for device in self._device_names:
            # tfdbg orders a device's dumps by timestamp; ties keep execution order
            data = [d for _, _, d in sorted(per_device.get(device, []), key=lambda x: (x[0], x[1]))]
            self._dump_tensor_data[device] = data
            watches = collections.defaultdict(lambda: collections.defaultdict(set))
            for d in data:
                watches[d.node_name][d.output_slot].add(d.debug_op)
            self._debug_watches[device] = watches
            self._t0s[device] = data[0].timestamp if data else None
        self._load_partition_graphs(partition_graphs, validate)
        self._calculate_t0()
        for device in self._device_names:
            self._create_tensor_watch_maps(device)

    def _graph_devices(self):
        out = []
        for device, _ in self._graphs():
            if device and device not in out:
                out.append(device)
        return out

    def _graphs(self):
        """(device, GraphDef bytes) of the run's partition graphs."""
        if not hasattr(self, "_graph_cache"):
            placed = {}
            for g in (self._run.metadata.get("tfdbg") or {}).get("graph_files", []):
                placed[g["hash"]] = g["device"]
            self._graph_cache = [(placed.get(h.hex()) or P.graph_device(b), b)
                                 for h, b in self._run.graph_items()]
        return self._graph_cache

    def _load_partition_graphs(self, client_partition_graphs, validate):
        self._debug_graphs = {}
        self._node_devices = {}
        graphs = []
        have = set()
        for device, blob in self._graphs():
            if device is None:
                continue
            graphs.append((graph_pb2.GraphDef.FromString(blob), device))
            have.add(device)
        for device in self._device_names:
            if device not in have:
                found = self._find_partition_graph(client_partition_graphs, device)
                if found is not None:
                    graphs.append((found, device))
        for graph, device in graphs:
            for node in graph.node:  # as tfdbg normalizes them (repeated slashes)
                node.name = re.sub(r"/+", "/", node.name)
                for i, inp in enumerate(node.input):
                    node.input[i] = re.sub(r"/+", "/", inp)
            debug_graph = debug_graphs.DebugGraph(graph, device_name=device)
            self._debug_graphs[debug_graph.device_name] = debug_graph
            self._collect_node_devices(debug_graph)
            if validate and debug_graph.device_name in self._dump_tensor_data:
                self._validate_dump_with_graphs(debug_graph.device_name)

    def _create_tensor_watch_maps(self, device_name):
        # As the base class does, except that dump sizes are computed only
        # when asked for (get_dump_sizes_bytes).
        self._watch_key_to_datum[device_name] = {}
        self._watch_key_to_rel_time[device_name] = {}
        for datum in self._dump_tensor_data[device_name]:
            self._watch_key_to_devices.setdefault(datum.watch_key, set()).add(device_name)
            self._watch_key_to_datum[device_name].setdefault(datum.watch_key, []).append(datum)
            self._watch_key_to_rel_time[device_name].setdefault(datum.watch_key, []).append(
                datum.timestamp - self._t0)

    # ---- faster versions of the data methods

    def get_dump_sizes_bytes(self, node_name, output_slot, debug_op, device_name=None):
        """Sizes (bytes) of the dump files tfdbg would have written."""
        device_name = self._infer_device_name(device_name, node_name)
        watch_key = WatchKey("", node_name, output_slot, debug_op).watch_key
        data = self._watch_key_to_datum[device_name].get(watch_key)
        if data is None:
            raise debug_data.WatchKeyDoesNotExistInDebugDumpDirError(
                "Watch key \"%s\" does not exist in the debug dump of device %s" % (watch_key, device_name))
        return [d.dump_size_bytes for d in data]

    def find(self, predicate, first_n=0, device_name=None, exclude_node_names=None):
        """tfdbg's ``find``; with ``has_inf_or_nan`` it uses the store's
        vectorized search, and any predicate sees each distinct payload
        decoded once (values passed to the predicate are read-only)."""
        devices = list(self._dump_tensor_data) if device_name is None else [device_name]
        if device_name is not None and device_name not in self._dump_tensor_data:
            raise ValueError("There is no device named '%s' consisting of debug watch keys." % device_name)
        if is_inf_nan_predicate(predicate):
            by_g = {d.tensor_id: d for dev in devices for d in self._dump_tensor_data[dev]}
            out = []
            for dev in devices:
                # tfdbg's find looks at every tensor, scratch outputs included
                hits = self._run.find(has_inf_or_nan, exclude=exclude_node_names, device=dev, include_scratch=True)
                data = sorted((by_g[r.tensor_id] for r in hits), key=lambda d: (d.timestamp, d._seq_index))
                out.extend(data)
                if first_n > 0 and len(out) >= first_n:
                    return out[:first_n]
            return out
        regex = re.compile(exclude_node_names) if exclude_node_names else None
        cache: dict = {}
        out = []
        for dev in devices:
            for datum in self._dump_tensor_data[dev]:
                if regex is not None and regex.match(datum.node_name):
                    continue
                value = _tfdbg_value(self._reader, datum.tensor_id, self._reader.decoder.value(datum.tensor_id, cache),
                                     copy=False)
                if predicate(datum, value):
                    out.append(datum)
                    if first_n > 0 and len(out) >= first_n:
                        return out
        return out

    def get_tensors(self, node_name, output_slot, debug_op, device_name=None):
        """Values of all dumps of a watch key (each payload decoded once)."""
        watch_key = WatchKey("", node_name, output_slot, debug_op).watch_key
        try:
            device_name = self._infer_device_name(device_name, node_name)
            data = self._watch_key_to_datum[device_name][watch_key]
        except (ValueError, KeyError):
            raise debug_data.WatchKeyDoesNotExistInDebugDumpDirError(
                "Watch key \"%s\" does not exist in the debug dump of device %s" % (watch_key, device_name))
        cache: dict = {}
        return [_tfdbg_value(self._reader, d.tensor_id, self._reader.decoder.value(d.tensor_id, cache)) for d in data]

    def watch_key_to_data(self, debug_watch_key, device_name=None):
        """tfdbg's ``watch_key_to_data`` (whose ``device_name`` branch reads
        a misspelled attribute in tfdbg itself)."""
        if device_name is not None:
            if device_name not in self._watch_key_to_datum:
                raise ValueError("There is no device named '%s' consisting of debug watch keys." % device_name)
            return self._watch_key_to_datum[device_name].get(debug_watch_key, [])
        return super().watch_key_to_data(debug_watch_key)

    def _infer_device_name(self, device_name, node_name):
        if device_name is None and not self._debug_graphs:
            # No partition graphs: place the node by its dumps instead of failing.
            devices = [d for d, w in self._debug_watches.items() if node_name in w]
            if len(devices) == 1:
                return devices[0]
        return super()._infer_device_name(device_name, node_name)

    def __repr__(self):
        return "<StoreDumpDir %s run %s: %d dumps on %d device(s)>" % (
            self._reader.session_root, self._run.name, self.size, len(self._device_names))
