"""Convert between a tfdump-fast store and tfdbg's on-disk dump layout.

:func:`convert` writes, for each run, exactly the directory tfdbg's
``file://`` debug URLs produce (``tensorflow/core/debug/debug_io_utils.cc``
and ``tensorflow/python/debug/wrappers/dumping_wrapper.py``)::

    <dest>/run_<epoch_us>_<n>/
        _tfdbg_fetches_info_                 Event(log_message = repr(fetches))
        _tfdbg_feed_keys_info_               Event(log_message = repr(feed keys))
        _tfdbg_core_metadata_sessionrun<14 digits>_<us>   Event(log_message = JSON, step = global step)
        _tfdbg_device_,job_localhost,...,device_CPU_0/
            _tfdbg_graph_hash<Hash64>_<us>   Event(graph_def = partition GraphDef)
            <node path>_<slot>_<debug op>_<wall us>[-<k>]   one Event per dump

so that ``tensorflow.python.debug.lib.debug_data.DebugDumpDir`` and the
offline analyzer read it. A distributed store (``tfdump_fast.serve``) is
written as tfdbg's distributed dumps are: one directory per master step,
holding the tensors of every task that ran the step (the client's run and
the served runs of the same ``master_step_id``), one ``_tfdbg_device_*``
folder per device. The core metadata's ``global_step`` stays what
TensorFlow recorded (the debug options' value, as in tfdbg); the training
global step the hook recorded goes into that Event's ``step`` field, which
tfdbg leaves unset (runs imported from tfdbg keep their files as they were). Each dump file holds, byte for byte, the Event
tfdbg writes: ``tensor_content`` for numeric, resource and variant tensors
(``Tensor::AsProtoTensorContent``), ``string_val`` for strings.

:func:`tfdump_fast.importer.import_tfdbg` reads such a layout (written by tfdbg
or by :func:`convert`) into a new tfdump-fast store; converting that store back
reproduces the same files.

Neither function imports TensorFlow.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from tfdump_fast import _tfproto as P
from tfdump_fast.store.payloads import decode_strings
from tfdump_fast.errors import (
    TfdumpIOError,
    TfdumpUsageError,
)
from tfdump_fast._native import (
    FLAG_RESOURCE, FLAG_STRING, FLAG_UNINITIALIZED, FLAG_VARIANT, STORAGE_BLOB, STORAGE_INLINE)
from tfdump_fast.progress import progress_reporter, reported
from tfdump_fast.reader import DumpReader, Run
from tfdump_fast.store.payloads import parse_list_blob, parse_variant_structure

__all__ = ["convert", "tensor_event", "tensor_proto", "run_dir_name", "dump_file_names"]



# --------------------------------------------------------------------------- export

def convert(session_root, dest, runs=None, progress: Union[bool, Callable[[int, int], None]] = False,
            *, overwrite: bool = False, layout: str = "tfdbg",
            tensor_debug_mode: str = "FULL_TENSOR") -> List[str]:
    """Write runs of a tfdump-fast store in tfdbg's dump layout.

    ``layout="tfdbg2"`` writes a TF2 store (:func:`tfdump_fast.enable_dump_debug_info`)
    as tfdbg v2's DebugEvents files instead, for TensorFlow's ``DebugDataReader``
    and TensorBoard's Debugger V2 (:func:`tfdump_fast.tf2_conversion.convert_tfdbg2`;
    needs TensorFlow; all runs, ``runs`` and ``progress`` must be left out; returns the
    files written; ``tensor_debug_mode`` picks FULL_TENSOR or one of tfdbg v2's
    summary modes, which TensorBoard's Debugger V2 needs).

    Parameters
    ----------
    session_root : str, os.PathLike or DumpReader
        The store to read.
    dest : str or os.PathLike
        Directory that receives one ``run_<us>_<n>`` directory per run
        (tfdbg's session-root layout); created if missing.
    runs : sequence, optional
        The runs to convert: :class:`~tfdump_fast.reader.Run` objects or
        anything :meth:`DumpReader.run` accepts (index, name,
        ``(writer_id, run_id)``). Default: all runs.
    progress : bool or callable, default False
        ``True`` shows a tqdm progress bar; a callable is called as
        ``progress(tensors_done, tensors_total)``.
    overwrite : bool, default False
        Replace files of run directories that already exist.

    Returns
    -------
    list of str
        The run directories written, in run order. Each can be opened with
        ``debug_data.DebugDumpDir(path)``.

    Raises
    ------
    TfdumpUsageError
        A run directory already exists (and ``overwrite`` is false).
    """
    if layout == "tfdbg2":
        if runs is not None or progress is not False:
            raise TfdumpUsageError("convert(layout='tfdbg2') converts the whole store: leave runs and "
                                   "progress out")
        from tfdump_fast.tf2_conversion import convert_tfdbg2

        root = session_root.session_root if isinstance(session_root, DumpReader) else session_root
        return convert_tfdbg2(root, dest, overwrite=overwrite, tensor_debug_mode=tensor_debug_mode)
    if tensor_debug_mode != "FULL_TENSOR":
        raise TfdumpUsageError(f"convert(tensor_debug_mode={tensor_debug_mode!r}) is for layout='tfdbg2'; "
                               "tfdbg's layout holds full tensors")
    if layout != "tfdbg":
        raise TfdumpUsageError(f"convert(layout={layout!r}): the layouts are 'tfdbg' (tfdbg's "
                               "per-run directories) and 'tfdbg2' (tfdbg v2's DebugEvents files)")
    reader = session_root if isinstance(session_root, DumpReader) else DumpReader(session_root)
    selected = reader.runs if runs is None else [r if isinstance(r, Run) else reader.run(r) for r in
                                                 ([runs] if isinstance(runs, (str, int, tuple)) else runs)]
    if not isinstance(dest, (str, bytes, os.PathLike)):
        raise TfdumpUsageError("dest=%r must be a path (str or os.PathLike) of the directory to "
                               "write tfdbg's run directories into" % (dest,))
    dest = os.fsdecode(os.fspath(dest))
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise TfdumpUsageError("dest=%r is a file, not a directory: pass the directory to write "
                               "tfdbg's run directories into (created if missing)" % dest)
    units = _step_units(reader, selected)
    names = _unique_run_dir_names([primary for primary, _ in units])
    for name in names:
        path = os.path.join(dest, name)
        if os.path.exists(path) and os.listdir(path) and not overwrite:
            raise TfdumpUsageError("%s already exists and is not empty: pick another destination or "
                                   "pass overwrite=True" % path)
    total = sum(len(r) for _, members in units for r in members)
    bar, report = progress_reporter(progress, total, "converting")
    out = []
    try:
        for (run, members), name in zip(units, names):
            path = os.path.join(dest, name)
            _write_run(reader, run, path, report, members)
            out.append(path)
    finally:
        if bar is not None:
            bar.close()
    return out


def _step_units(reader: DumpReader, selected: Sequence[Run]) -> List[tuple]:
    """``(run, members)`` per directory to write: one per master step.

    A run with a ``master_step_id`` is written with every run of its step
    (:meth:`DumpReader.step_runs`): the client's run names the directory and
    gives the metadata (fetches, feeds, core metadata, partition graphs of
    every task); the tasks' served runs add their tensors. Served runs of a
    step whose client run is not in the store (a client without a local
    partition, or a client store not gathered) make one directory of their
    own. Every other run is written alone.
    """
    units, done = [], set()
    for run in selected:
        if run.key in done:
            continue
        members = reader.step_runs(run) if run.master_step_id is not None else [run]
        primary = next((r for r in members if not r.metadata.get("served")), run)
        members = [primary] + [r for r in members if r is not primary]
        done.update(r.key for r in members)
        units.append((primary, members))
    return units


def run_dir_name(run: Run) -> str:
    """The directory name :func:`convert` gives a run (tfdbg's ``run_<us>_<n>``)."""
    return _unique_run_dir_names([run])[0]


def _unique_run_dir_names(runs: Sequence[Run]) -> List[str]:
    names, seen = [], set()
    for i, run in enumerate(runs):
        name = run.name
        if not name or "/" in name or name in (".", "..") or name.startswith("_tfdbg_") or name in seen:
            name = "run_%d_%d" % (run.begin_us or 0, i)
            while name in seen:
                name += "_"
        seen.add(name)
        names.append(name)
    return names


def tensor_proto(reader: DumpReader, g: int) -> bytes:
    """The TensorProto tfdbg writes for stored tensor ``g`` (a row of the
    reader's tensor index; ``record.tensor_id``)."""
    cols = reader.index.columns(np.asarray([g]))
    prefix, chunks = _EventEncoder(reader).tensor_proto(cols, 0, reader.index.shape(g))
    return prefix + b"".join(bytes(c) for c in chunks)


def tensor_event(reader: DumpReader, record) -> bytes:
    """The exact Event file content tfdbg writes for one dumped tensor."""
    key = record.key
    head, tail = P.debug_key_fields(key.node, key.output_slot, key.debug_op, key.device)
    cols = reader.index.columns(np.asarray([record.tensor_id]))
    prefix, chunks = _EventEncoder(reader).tensor_proto(cols, 0, reader.index.shape(record.tensor_id))
    return b"".join(bytes(p) for p in P.debug_tensor_event_parts(record.wall_us, head, tail, prefix, chunks))


def _write_file(path: str, data: bytes) -> None:
    _write_file_parts(path, (data,))


_GRAPH_NAMES: Dict[bytes, int] = {}  # hash128 -> tensorflow::Hash64 of a graph


def _graph_hash64(graph: bytes, h: bytes) -> int:
    """Hash64 of a partition graph, remembered: a hook's runs share graphs."""
    v = _GRAPH_NAMES.get(h)
    if v is None:
        if len(_GRAPH_NAMES) > 1024:
            _GRAPH_NAMES.clear()
        v = _GRAPH_NAMES[h] = P.tf_hash64(graph)
    return v


def _write_run(reader: DumpReader, run: Run, run_dir: str, report, members=None) -> None:
    try:
        os.makedirs(run_dir, exist_ok=True)
        _write_run_files(reader, run, run_dir, report, members or [run])
    except OSError as exc:
        raise TfdumpIOError(exc.errno, "writing %s failed: %s" % (exc.filename or run_dir, exc.strerror)) from None


def _write_run_files(reader: DumpReader, run: Run, run_dir: str, report, members: Sequence[Run]) -> None:
    md = run.metadata
    tfdbg = md.get("tfdbg") or {}
    begin_us = run.begin_us or run.t0 or 0

    # Per-run metadata files (DumpingDebugWrapperSession / PublishDebugMetadata).
    if run.fetches is not None:
        _write_file(os.path.join(run_dir, P.FETCHES_INFO_FILE), P.log_message_event(run.fetches))
    if run.feed_keys is not None:
        _write_file(os.path.join(run_dir, P.FEED_KEYS_INFO_FILE), P.log_message_event(run.feed_keys))
    core_files = tfdbg.get("core_metadata_files")
    if core_files:
        for entry in core_files:
            _write_file(os.path.join(run_dir, entry["file"]),
                        P.log_message_event(entry["json"], entry["wall_time"]))
    elif isinstance(run.core_metadata, dict):
        core = run.core_metadata
        name = "%ssessionrun%014d_%d" % (P.CORE_METADATA_PREFIX, int(core.get("session_run_index", -1)), begin_us)
        _write_file(os.path.join(run_dir, name),
                    _with_event_step(P.log_message_event(P.core_metadata_json(core), begin_us), run.global_step))

    made_dirs = set()

    def device_dir(device):
        path = os.path.join(run_dir, P.device_name_to_path(device))
        if path not in made_dirs:
            os.makedirs(path, exist_ok=True)
            made_dirs.add(path)
        return path

    # Partition graphs (DebugIO::PublishGraph), one file per device graph.
    graph_files = {bytes.fromhex(g["hash"]): g for g in tfdbg.get("graph_files", [])}
    for h, graph in run.graph_items():
        info = graph_files.get(h)
        if info is not None:
            device, name, wall = info["device"], info["file"], info["wall_time"]
        else:
            device = P.graph_device(graph)
            if device is None:
                continue  # tfdbg could not place it either
            wall = begin_us
            name = "%shash%d_%d" % (P.GRAPH_PREFIX, _graph_hash64(graph, h), wall)
        _write_file(os.path.join(device_dir(device), name), P.graph_event(wall, graph))

    # One Event file per dumped tensor, in execution order. (Writer threads
    # were tried: GIL hand-offs cost more than the overlap gains on 2 cores.)
    enc = _EventEncoder(reader)
    key_fields: Dict[int, tuple] = {}
    dims_all = reader.index.dims_list()
    used: set = set()  # file names taken: the runs of one step share the directory
    for member in members:
        _write_dumps(reader, member, run_dir, report, enc, key_fields, dims_all, made_dirs, used)


def _write_dumps(reader, run, run_dir, report, enc, key_fields, dims_all, made_dirs, used) -> None:
    cols = reader.index.columns(run.tensor_ids)
    for i, (g, kid, folder, name, wall) in reported(enumerate(dump_file_names(reader, run, used)), report):
        kf = key_fields.get(kid)
        if kf is None:
            key = reader.index.keys[kid]
            kf = key_fields[kid] = P.debug_key_fields(key.node, key.output_slot, key.debug_op, key.device)
            path = os.path.join(run_dir, folder)
            if path not in made_dirs:
                os.makedirs(path, exist_ok=True)
                made_dirs.add(path)
        nd, off = cols["ndims"][i], cols["dims_offset"][i]
        shape = tuple(dims_all[off:off + nd]) if nd else ()
        prefix, chunks = enc.tensor_proto(cols, i, shape)
        _write_file_parts(os.path.join(run_dir, folder, name),
                          P.debug_tensor_event_parts(wall, kf[0], kf[1], prefix, chunks))


def _string_list_chunks(items: list) -> list:
    """TF's string-list encoding (lengths, then the items) as chunks."""
    return [b"".join(P.varint(len(it)) for it in items), *items]


class _EventEncoder:
    """Builds the TensorProto of each dump, caching what repeats: variant
    element tensors (a TensorList dump lists every element, and the next dump
    lists them again) are encoded once per distinct payload."""

    def __init__(self, reader: DumpReader, cache_bytes: int = 256 << 20):
        self.index = reader.index
        self.payloads = reader.payloads
        self.frames: dict = {}
        self.cache: Dict[tuple, bytes] = {}
        self.cache_bytes = 0
        self.cache_limit = cache_bytes

    def tensor_proto(self, cols, i, shape):
        """(prefix, chunks) of the i-th tensor of ``cols``: the TensorProto
        is ``prefix`` followed by the byte strings ``chunks`` (the tensor's
        bytes, not copied)."""
        dtype, flags = cols["dtype"][i], cols["flags"][i]
        if dtype > 100:
            dtype -= 100
        plen = cols["payload_len"][i]
        if flags & FLAG_UNINITIALIZED or not plen:
            return P.tensor_proto_content(dtype, shape, b""), ()
        payload = self.payloads.payload(cols["writer"][i], cols["hash"][i], self._frames())
        if flags & FLAG_STRING and not flags & FLAG_RESOURCE:
            return P.tensor_proto_strings(dtype, shape, decode_strings(payload)), ()
        if flags & FLAG_RESOURCE:
            chunks = _string_list_chunks(decode_strings(payload))
        elif flags & FLAG_VARIANT:
            refs = self.index.blob_hashes(cols["frame"][i], cols["blobs_offset"][i], cols["n_blobs"][i])
            chunks = self._variant_content(payload, refs, cols["writer"][i])
        else:
            chunks = (payload,)
        return P.tensor_proto_head(dtype, shape, sum(len(c) for c in chunks)), chunks

    def _frames(self):
        # keep at most a few decompressed blocks referenced here; the reader's
        # own LRU bounds the rest
        if len(self.frames) > 8:
            self.frames.clear()
        return self.frames

    def _remember(self, key, value):
        if self.cache_bytes > self.cache_limit:
            self.cache.clear()
            self.cache_bytes = 0
        self.cache[key] = value
        self.cache_bytes += len(value) + 64
        return value

    def _variant_content(self, payload, refs: list, wi: int) -> list:
        """tensor_content of a variant tensor from its stored structure:
        TF's string-list encoding of one VariantTensorDataProto per element."""
        items = []
        for element in parse_variant_structure(payload, len(refs)):
            if element.list_blob is not None:
                # a TensorList described by a shared list blob: its encoding
                # is the same in every dump of that list state
                list_hash = refs[element.list_blob]
                key = ("list", element.type_name, element.metadata, list_hash)
                enc = self.cache.get(key)
                if enc is None:
                    enc = self._remember(key, P.variant_data_head(element.type_name, element.metadata)
                                         + self._list_tensors(list_hash, wi))
                items.append(enc)
                continue
            parts = [P.variant_data_head(element.type_name, element.metadata)]
            for tensor in element.tensors:
                blob = refs[tensor.data] if tensor.storage == STORAGE_BLOB else None
                parts.append(self._element_tensor(tensor, blob, refs, wi))
            items.append(b"".join(parts))
        return _string_list_chunks(items)

    def _list_tensors(self, list_hash: bytes, wi: int) -> bytes:
        """The ``tensors`` fields of a TensorList described by a list blob."""
        tensors = parse_list_blob(self.payloads.payload(wi, list_hash, self._frames()))
        return b"".join(self._element_tensor(t, t.data, (), wi) for t in tensors)

    def _element_tensor(self, tensor, blob, refs, wi) -> bytes:
        """One ``tensors`` field of a VariantTensorDataProto: an element
        tensor as Tensor::AsProtoField writes it, encoded once per distinct
        descriptor and payload. ``blob`` is the hash of its payload when
        that is stored as a blob."""
        if blob is not None:
            key = (tensor.descriptor, blob)
        elif tensor.storage == STORAGE_INLINE:
            key = (tensor.descriptor, tensor.storage, tensor.data)
        else:
            key = (tensor.descriptor, tensor.storage)
        enc = self.cache.get(key)
        if enc is None:
            enc = self._remember(key, P.variant_data_tensor(self._element_proto(tensor, blob, refs, wi)))
        return enc

    def _element_proto(self, tensor, blob, refs, wi) -> bytes:
        dtype, flags, shape = tensor.dtype, tensor.flags, tensor.shape
        if dtype > 100:
            dtype -= 100
        if flags & FLAG_UNINITIALIZED:
            return P.tensor_proto_fields(dtype, shape, None)
        if blob is not None:
            payload = bytes(self.payloads.payload(wi, blob, self._frames()))
        elif tensor.storage == STORAGE_INLINE:
            payload = tensor.data
        else:
            return P.tensor_proto_fields(dtype, shape, None)
        if flags & FLAG_RESOURCE:
            return P.tensor_proto_fields(dtype, shape, None, messages=decode_strings(payload))
        if flags & FLAG_STRING:
            return P.tensor_proto_fields(dtype, shape, None, strings=decode_strings(payload))
        if flags & FLAG_VARIANT:
            content = b"".join(self._variant_content(payload, refs, wi))
            # nested: variant_val holds the VariantTensorDataProtos themselves
            n = 1
            for d in shape:
                n *= d
            return P.tensor_proto_fields(dtype, shape, None, messages=P.parse_string_list(content, n))
        return P.tensor_proto_fields(dtype, shape, payload)


_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024) if hasattr(os, "sysconf") else 16


def _write_file_parts(path: str, parts) -> None:
    """Create ``path`` holding the concatenation of ``parts`` (one writev
    for most files, no joined copy)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        views = [memoryview(p).cast("B") for p in parts if len(p)]
        i = 0
        while i < len(views):
            n = os.writev(fd, views[i:i + _IOV_MAX])
            while i < len(views) and n >= len(views[i]):
                n -= len(views[i])
                i += 1
            if n:
                views[i] = views[i][n:]
    finally:
        os.close(fd)


def dump_file_names(reader: DumpReader, run: Run, used: Optional[set] = None):
    """Where tfdbg puts each dump of a run, in execution order.

    Yields ``(tensor index, key index, folder, file name, wall_us)`` with
    ``folder`` relative to the run directory (device directory plus the
    node's name scopes) and the file name ``<node>_<slot>_<op>_<us>``, with
    tfdbg's ``-1``, ``-2``, ... suffix when a watch key dumps twice within
    one microsecond (debug_io_utils.cc, AppendTimestampToFilePath).
    ``used``: ``(folder, name)`` pairs already taken in the directory (the
    runs of one master step share it); updated.
    """
    g_all = run.tensor_ids
    key_of = reader.index.key_of[g_all].tolist()
    walls = reader.index.tensors["wall_us"][g_all].tolist()
    key_parts: Dict[int, tuple] = {}
    used = set() if used is None else used
    for g, kid, wall in zip(g_all.tolist(), key_of, walls):
        kp = key_parts.get(kid)
        if kp is None:
            key = reader.index.keys[kid]
            parent, _, base = key.node.rpartition("/")
            folder = P.device_name_to_path(key.device)
            if parent:
                folder = os.path.join(folder, *parent.split("/"))
            kp = key_parts[kid] = (folder, "%s_%d_%s" % (base, key.output_slot, key.debug_op))
        folder, stem = kp
        name = "%s_%d" % (stem, wall)
        if (folder, name) in used:
            k = 1
            while (folder, "%s-%d" % (name, k)) in used:
                k += 1
            name = "%s-%d" % (name, k)
        used.add((folder, name))
        yield g, kid, folder, name, wall


def _with_event_step(event: bytes, step) -> bytes:
    """``event`` (an Event starting with its wall_time field) with ``step``
    (Event field 2, int64) added after the wall time; unchanged for None."""
    if step is None or not isinstance(step, (int, np.integer)) or isinstance(step, bool):
        return event
    head = 9 if event[:1] == b"\x09" else 0   # tag + fixed64 wall_time
    return event[:head] + b"\x10" + P.varint(int(step) & 0xFFFFFFFFFFFFFFFF) + event[head:]
