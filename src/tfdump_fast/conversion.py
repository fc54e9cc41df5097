"""Convert between a tfdump-fast store and tfdbg's on-disk dump layout.

:func:`convert` writes, for each run, exactly the directory tfdbg's
``file://`` debug URLs produce (``tensorflow/core/debug/debug_io_utils.cc``
and ``tensorflow/python/debug/wrappers/dumping_wrapper.py``)::

    <dest>/run_<epoch_us>_<n>/
        _tfdbg_fetches_info_                 Event(log_message = repr(fetches))
        _tfdbg_feed_keys_info_               Event(log_message = repr(feed keys))
        _tfdbg_core_metadata_sessionrun<14 digits>_<us>   Event(log_message = JSON)
        _tfdbg_device_,job_localhost,...,device_CPU_0/
            _tfdbg_graph_hash<Hash64>_<us>   Event(graph_def = partition GraphDef)
            <node path>_<slot>_<debug op>_<wall us>[-<k>]   one Event per dump

so that ``tensorflow.python.debug.lib.debug_data.DebugDumpDir`` and the
offline analyzer read it. Each dump file holds, byte for byte, the Event
tfdbg writes: ``tensor_content`` for numeric, resource and variant tensors
(``Tensor::AsProtoTensorContent``), ``string_val`` for strings.

:func:`import_tfdbg` reads such a layout (written by tfdbg or by
:func:`convert`) into a new tfdump-fast store; converting that store back
reproduces the same files.

Neither function imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import struct
import time
from typing import Callable, Dict, List, Sequence, Union

import numpy as np
import zstandard

from tfdump_fast import _native, _tfproto as P, dtypes
from tfdump_fast.encoding import decode_strings, encode_strings
from tfdump_fast.errors import (
    TfdumpFormatError,
    TfdumpIOError,
    TfdumpUsageError,
)
from tfdump_fast._native import (
    FLAG_RESOURCE, FLAG_STRING, FLAG_UNINITIALIZED, FLAG_VARIANT, STORAGE_BLOB, STORAGE_INLINE)
from tfdump_fast.reader import DumpReader, Run
from tfdump_fast.store.payloads import parse_list_blob, parse_variant_structure

__all__ = ["convert", "import_tfdbg", "tensor_event", "tensor_proto", "run_dir_name", "dump_file_names"]

_RUN_NAME_RE = re.compile(r"^run_(\d+)_(\d+)$")
_FETCHES_FILE = "_tfdbg_fetches_info_"
_FEEDS_FILE = "_tfdbg_feed_keys_info_"
_CORE_PREFIX = "_tfdbg_core_metadata_"
_GRAPH_PREFIX = "_tfdbg_graph_"


# --------------------------------------------------------------------------- export

def convert(session_root, dest, runs=None, progress: Union[bool, Callable[[int, int], None]] = False,
            *, overwrite: bool = False) -> List[str]:
    """Write runs of a tfdump-fast store in tfdbg's dump layout.

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
    reader = session_root if isinstance(session_root, DumpReader) else DumpReader(session_root)
    selected = reader.runs if runs is None else [r if isinstance(r, Run) else reader.run(r) for r in
                                                 ([runs] if isinstance(runs, (str, int, tuple)) else runs)]
    dest = os.fspath(dest)
    names = _unique_run_dir_names(selected)
    for name in names:
        path = os.path.join(dest, name)
        if os.path.exists(path) and os.listdir(path) and not overwrite:
            raise TfdumpUsageError("%s already exists and is not empty: pick another destination or "
                                   "pass overwrite=True" % path)
    total = sum(len(r) for r in selected)
    bar, report = _progress(progress, total, "converting")
    out = []
    try:
        for run, name in zip(selected, names):
            path = os.path.join(dest, name)
            _write_run(reader, run, path, report)
            out.append(path)
    finally:
        if bar is not None:
            bar.close()
    return out


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


def _progress(progress, total, what):
    """A (tqdm bar or None, callable(n)) pair for the chosen progress style."""
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="tensor", desc=what, dynamic_ncols=True)
        return bar, bar.update
    if callable(progress):
        state = {"done": 0}

        def report(n):
            state["done"] += n
            progress(state["done"], total)

        return None, report
    return None, lambda n: None


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


def _write_run(reader: DumpReader, run: Run, run_dir: str, report) -> None:
    try:
        os.makedirs(run_dir, exist_ok=True)
        _write_run_files(reader, run, run_dir, report)
    except OSError as exc:
        raise TfdumpIOError(exc.errno, "writing %s failed: %s" % (exc.filename or run_dir, exc.strerror)) from None


def _write_run_files(reader: DumpReader, run: Run, run_dir: str, report) -> None:
    md = run.metadata
    tfdbg = md.get("tfdbg") or {}
    begin_us = run.begin_us or run.t0 or 0

    # Per-run metadata files (DumpingDebugWrapperSession / PublishDebugMetadata).
    if run.fetches is not None:
        _write_file(os.path.join(run_dir, _FETCHES_FILE), P.log_message_event(run.fetches))
    if run.feed_keys is not None:
        _write_file(os.path.join(run_dir, _FEEDS_FILE), P.log_message_event(run.feed_keys))
    core_files = tfdbg.get("core_metadata_files")
    if core_files:
        for entry in core_files:
            _write_file(os.path.join(run_dir, entry["file"]),
                        P.log_message_event(entry["json"], entry["wall_time"]))
    elif isinstance(run.core_metadata, dict):
        core = run.core_metadata
        name = "%ssessionrun%014d_%d" % (_CORE_PREFIX, int(core.get("session_run_index", -1)), begin_us)
        _write_file(os.path.join(run_dir, name), P.log_message_event(P.core_metadata_json(core), begin_us))

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
            name = "%shash%d_%d" % (_GRAPH_PREFIX, _graph_hash64(graph, h), wall)
        _write_file(os.path.join(device_dir(device), name), P.graph_event(wall, graph))

    # One Event file per dumped tensor, in execution order. (Writer threads
    # were tried: GIL hand-offs cost more than the overlap gains on 2 cores.)
    enc = _EventEncoder(reader)
    key_fields: Dict[int, tuple] = {}
    done = 0
    cols = reader.index.columns(run.tensor_ids)
    dims_all = reader.index.dims_list()
    for i, (g, kid, folder, name, wall) in enumerate(dump_file_names(reader, run)):
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
        done += 1
        if done == 256:
            report(done)
            done = 0
    if done:
        report(done)


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


def dump_file_names(reader: DumpReader, run: Run):
    """Where tfdbg puts each dump of a run, in execution order.

    Yields ``(tensor index, key index, folder, file name, wall_us)`` with
    ``folder`` relative to the run directory (device directory plus the
    node's name scopes) and the file name ``<node>_<slot>_<op>_<us>``, with
    tfdbg's ``-1``, ``-2``, ... suffix when a watch key dumps twice within
    one microsecond (debug_io_utils.cc, AppendTimestampToFilePath).
    """
    g_all = run.tensor_ids
    key_of = reader.index.key_of[g_all].tolist()
    walls = reader.index.tensors["wall_us"][g_all].tolist()
    key_parts: Dict[int, tuple] = {}
    used = set()
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


# --------------------------------------------------------------------------- import

def import_tfdbg(tfdbg_dir, session_root, *, progress: Union[bool, Callable[[int, int], None]] = False,
                 allow_existing: bool = False, level: int = 3) -> List[str]:
    """Import a tfdbg dump into a new tfdump-fast store.

    Parameters
    ----------
    tfdbg_dir : str or os.PathLike
        A tfdbg session root (holding ``run_*`` directories, as
        ``DumpingDebugWrapperSession`` writes) or a single run directory
        (holding ``_tfdbg_device_*`` directories).
    session_root : str or os.PathLike
        The store to create (an empty or new directory).
    progress : bool or callable, default False
        As for :func:`convert`.
    allow_existing : bool, default False
        Add to a session root that already holds shards.
    level : int, default 3
        zstd level.

    Returns
    -------
    list of str
        Names of the imported runs.

    Raises
    ------
    TfdumpFormatError
        ``tfdbg_dir`` is not a tfdbg dump, or a dump file is unreadable.
    """
    tfdbg_dir = os.fspath(tfdbg_dir)
    if not os.path.isdir(tfdbg_dir):
        raise TfdumpIOError(2, "%s is not a directory" % tfdbg_dir)
    run_dirs = _find_tfdbg_runs(tfdbg_dir)
    session_root = os.fspath(session_root)
    if os.path.isdir(session_root) and os.listdir(session_root) and not allow_existing:
        raise TfdumpUsageError("%s is not empty: import into a new directory, or pass "
                               "allow_existing=True" % session_root)
    scanned = [_scan_tfdbg_run(d) for d in run_dirs]
    total = sum(len(s["dumps"]) for s in scanned)
    bar, report = _progress(progress, total, "importing")
    writer = _StoreWriter(session_root, level=level)
    names = []
    try:
        for run_id, scan in enumerate(scanned, start=1):
            _import_run(writer, run_id, scan, report)
            names.append(scan["name"])
    finally:
        writer.close()
        if bar is not None:
            bar.close()
    return names


def _is_run_dir(path: str) -> bool:
    try:
        return any(n.startswith("_tfdbg_") for n in os.listdir(path))
    except OSError:
        return False


def _find_tfdbg_runs(root: str) -> List[str]:
    if _is_run_dir(root):
        return [root]
    runs = sorted(os.path.join(root, n) for n in os.listdir(root)
                  if os.path.isdir(os.path.join(root, n)) and _is_run_dir(os.path.join(root, n)))
    if not runs:
        raise TfdumpFormatError(
            "%s is not a tfdbg dump: neither it nor its subdirectories hold _tfdbg_* files" % root)

    def order(path):
        m = _RUN_NAME_RE.match(os.path.basename(path))
        return (int(m.group(1)), int(m.group(2))) if m else (1 << 62, 0)

    return sorted(runs, key=lambda p: (order(p), p))


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise TfdumpIOError(exc.errno, "cannot read %s: %s" % (path, exc.strerror)) from None


def _scan_tfdbg_run(run_dir: str) -> dict:
    """Collect a tfdbg run directory's metadata, graphs and dump files."""
    scan = {"dir": run_dir, "name": os.path.basename(os.path.normpath(run_dir)), "fetches": None,
            "feed_keys": None, "core": [], "graphs": [], "dumps": []}
    for name in sorted(os.listdir(run_dir)):
        path = os.path.join(run_dir, name)
        if name == _FETCHES_FILE:
            scan["fetches"] = P.decode_event(_read(path))["log_message"] or ""
        elif name == _FEEDS_FILE:
            scan["feed_keys"] = P.decode_event(_read(path))["log_message"] or ""
        elif name.startswith(_CORE_PREFIX):
            ev = P.decode_event(_read(path))
            scan["core"].append({"file": name, "wall_time": ev["wall_time"], "json": ev["log_message"] or ""})
        elif name.startswith(P.DEVICE_PREFIX) and os.path.isdir(path):
            device = P.device_path_to_name(name)
            for folder, _, files in os.walk(path):
                rel = os.path.relpath(folder, path)
                parents = [] if rel == "." else rel.split(os.sep)
                for f in files:
                    fpath = os.path.join(folder, f)
                    if f.startswith(_GRAPH_PREFIX):
                        ev = P.decode_event(_read(fpath))
                        scan["graphs"].append({"device": device, "file": f, "wall_time": ev["wall_time"],
                                               "graph": ev["graph_def"] or b""})
                        continue
                    parsed = _parse_dump_name(f)
                    if parsed is None:
                        continue  # not a dump file (tfdbg's reader would choke on it too)
                    base, slot, op, ts, k = parsed
                    node = "/".join(parents + [base])
                    scan["dumps"].append((ts, k, device, node, slot, op, fpath))
    scan["dumps"].sort(key=lambda d: (d[0], d[1], d[2], d[6]))
    return scan


def _parse_dump_name(name: str):
    """``<node>_<slot>_<op>_<ts>[-<k>]`` -> (node, slot, op, ts, k) or None."""
    parts = name.split("_")
    if len(parts) < 4:
        return None
    ext = parts[-1]
    ts_text, _, k_text = ext.partition("-")
    if not ts_text.isdigit() or not parts[-3].lstrip("-").isdigit() or (k_text and not k_text.isdigit()):
        return None
    return "_".join(parts[:-3]), int(parts[-3]), parts[-2], int(ts_text), int(k_text or 0)


def _import_run(writer: "_StoreWriter", run_id: int, scan: dict, report) -> None:
    name = scan["name"]
    m = _RUN_NAME_RE.match(name)
    begin_us = int(m.group(1)) if m else (scan["dumps"][0][0] if scan["dumps"] else int(time.time() * 1e6))
    graphs = [g["graph"] for g in scan["graphs"]]
    begin = {"event": "run_begin", "run_id": run_id, "run_name": name, "wall_us": begin_us,
             "source": "tfdbg import", "graph_hashes": [_native.hash128(g).hex() for g in graphs],
             "tfdbg": {"core_metadata_files": scan["core"],
                       "graph_files": [{"device": g["device"], "file": g["file"], "wall_time": g["wall_time"],
                                        "hash": _native.hash128(g["graph"]).hex()} for g in scan["graphs"]]}}
    if scan["fetches"] is not None:
        begin["fetches"] = scan["fetches"]
    if scan["feed_keys"] is not None:
        begin["feed_keys"] = scan["feed_keys"]
    if scan["core"]:
        try:
            core = json.loads(scan["core"][0]["json"])
            begin["core_metadata"] = core
            begin["global_step"] = core.get("global_step")
        except ValueError:
            pass
    writer.meta(begin)
    cache: dict = {}
    nbytes = 0
    done = 0
    last_wall = begin_us
    for seq, (ts, _k, device, node, slot, op, path) in enumerate(scan["dumps"]):
        ev = P.decode_event(_read(path))
        if ev["tensor"] is None:
            raise TfdumpFormatError("%s is not a tfdbg tensor dump (its Event holds no tensor)" % path)
        rec = _record_from_tensor_proto(P.decode_tensor_proto(ev["tensor"]), path, cache)
        writer.tensor(run_id, seq, ts, (device, node, slot, op), *rec)
        nbytes += len(rec[3] or b"")
        last_wall = max(last_wall, ts)
        done += 1
        if done == 256:
            report(done)
            done = 0
    if done:
        report(done)
    writer.flush()
    writer.meta({"event": "run_end", "run_id": run_id, "run_name": name, "wall_us": last_wall,
                 "status": "ok", "tensors": len(scan["dumps"]), "bytes": nbytes,
                 "dropped_tensors": 0, "dropped_bytes": 0,
                 "attachment_hashes": [_native.hash128(g).hex() for g in graphs]}, attachments=graphs)


def _num_elements(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def _record_from_tensor_proto(tp: dict, where: str, cache: dict):
    """(dtype, flags, dims, payload, elem_size, blobs) for a top-level TensorProto."""
    dtype, dims = tp["dtype"], tp["dims"]
    n = _num_elements(dims)
    if dtype == P.DT_STRING:
        if tp["strings"] or n == 0:
            return dtype, FLAG_STRING, dims, encode_strings(tp["strings"] or []), 0, []
        return dtype, FLAG_UNINITIALIZED, dims, None, 0, []
    content = tp["content"]
    if dtype == P.DT_RESOURCE:
        if content:
            return dtype, FLAG_RESOURCE, dims, encode_strings(P.parse_string_list(content, n)), 0, []
        if tp["messages"]:
            return dtype, FLAG_RESOURCE, dims, encode_strings(tp["messages"]), 0, []
        return dtype, (0 if n == 0 else FLAG_UNINITIALIZED), dims, None, 0, []
    if dtype == P.DT_VARIANT:
        items = P.parse_string_list(content, n) if content else tp["messages"] or []
        if not items:
            return dtype, (0 if n == 0 else FLAG_UNINITIALIZED), dims, None, 0, []
        blobs: List[tuple] = []
        return dtype, FLAG_VARIANT, dims, _variant_structure(items, blobs, where, cache), 0, blobs
    if content is None:
        content = tp["raw"]
    if not content:
        return dtype, (0 if n == 0 else FLAG_UNINITIALIZED), dims, None, 0, []
    return dtype, 0, dims, content, _lane_bytes(dtype), []


def _lane_bytes(dtype: int) -> int:
    try:
        return dtypes.shuffle_lane_bytes(dtype)
    except (KeyError, TypeError):
        return 0


def _variant_structure(items: List[bytes], blobs: List[tuple], where: str, cache: dict) -> bytes:
    """The variant structure of docs/FORMAT.md for serialized
    VariantTensorDataProto elements; element tensors with numeric values go
    to ``blobs`` as ``(payload, elem_size)``. ``cache`` maps element
    TensorProto bytes to their decoded form: a TensorList is dumped again
    with every push, its earlier elements unchanged."""
    out = [struct.pack("<Q", len(items))]
    for item in items:
        type_name, metadata, tensors = P.decode_variant_data_proto(item)
        out.append(struct.pack("<I", len(type_name)) + type_name)
        out.append(struct.pack("<I", len(metadata)) + metadata)
        out.append(struct.pack("<I", len(tensors)))
        for tproto in tensors:
            hit = cache.get(tproto)
            if hit is not None:  # (descriptor head, blob payload, lanes)
                head, raw, lanes = hit
                blobs.append((raw, lanes))
                out.append(head + b"\x00" + struct.pack("<I", len(blobs) - 1))
                continue
            t = P.decode_tensor_proto(tproto)
            dtype, dims = t["dtype"], t["dims"]
            n = _num_elements(dims)
            flags, storage = 0, b"\x02"
            if dtype == P.DT_STRING:
                if t["strings"] or n == 0:
                    flags, storage = FLAG_STRING, _inline(encode_strings(t["strings"] or []))
                else:
                    flags = FLAG_UNINITIALIZED
            elif dtype == P.DT_RESOURCE:
                if t["messages"]:
                    flags, storage = FLAG_RESOURCE, _inline(encode_strings(t["messages"]))
                elif n:
                    flags = FLAG_UNINITIALIZED
            elif dtype == P.DT_VARIANT:
                if t["messages"]:
                    flags, storage = FLAG_VARIANT, _inline(_variant_structure(t["messages"], blobs, where, cache))
                elif n:
                    flags = FLAG_UNINITIALIZED
            else:
                raw = t["raw"] if t["raw"] is not None else t["content"]
                if raw:
                    blobs.append((raw, _lane_bytes(dtype)))
                    storage = b"\x00" + struct.pack("<I", len(blobs) - 1)
                elif n:
                    flags = FLAG_UNINITIALIZED
            head = struct.pack("<iHB", dtype, flags, len(dims)) + struct.pack("<%dq" % len(dims), *dims)
            if storage[:1] == b"\x00":
                if len(cache) > 65536:
                    cache.clear()
                cache[tproto] = (head, blobs[-1][0], blobs[-1][1])
            out.append(head + storage)
    return b"".join(out)


def _inline(payload: bytes) -> bytes:
    return b"\x01" + struct.pack("<Q", len(payload)) + payload


class _StoreWriter:
    """Writes one writer's shards (one data shard, one metadata shard) from
    Python, with full control of every field -- what an importer needs
    (original timestamps, flags, variant structures), which the capture
    engine's API does not offer. Uses the native format functions."""

    def __init__(self, root: str, level: int = 3, frame_bytes: int = 4 << 20):
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as exc:
            raise TfdumpIOError(exc.errno, "cannot create %s: %s" % (root, exc.strerror)) from None
        self.writer_id = secrets.randbits(64)
        self.name = "w%016x" % self.writer_id
        self._level = level
        self._frame_bytes = frame_bytes
        self._comp = zstandard.ZstdCompressor(level=level, write_content_size=True)
        created = time.time_ns() // 1000
        self._data_fd = self._open(os.path.join(root, self.name + "-0.tfds"), 0, created)
        self._meta_fd = self._open(os.path.join(root, self.name + "-meta.tfds"), _native.META_SHARD_INDEX,
                                   created)
        self._stored: set = set()
        self._keys: Dict[tuple, int] = {}
        self._table: List[bytes] = []
        self._data = bytearray()
        self.meta({"event": "writer_open", "writer_id": self.name, "pid": os.getpid(), "host": "",
                   "format_version": _native.FORMAT_VERSION, "options": {"source": "import_tfdbg"},
                   "tfdump_version": _version(), "wall_us": created})

    def _open(self, path, index, created):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        except OSError as exc:
            raise TfdumpIOError(exc.errno, "cannot create %s: %s" % (path, exc.strerror)) from None
        os.write(fd, _native.encode_file_header(index, self.writer_id, created, os.getpid()))
        return fd

    def _blob(self, payload, elem_size: int) -> bytes:
        h = _native.hash128(payload)
        if h not in self._stored:
            self._stored.add(h)
            filt = 1 if elem_size > 1 else 0
            stored = _native.shuffle(payload, elem_size) if filt else payload
            self._table.append(struct.pack("<B16sQQBB", 2, h, len(payload), len(self._data), filt,
                                           elem_size if filt else 0))
            self._data += stored
        return h

    def tensor(self, run_id, seq, wall_us, key, dtype, flags, dims, payload, elem_size, blobs):
        kid = self._keys.get(key)
        if kid is None:
            kid = self._keys[key] = len(self._keys) + 1
            device, node, slot, op = key
            self._table.append(struct.pack("<BIi", 1, kid, slot) + _str(device) + _str(node) + _str(op))
        h = self._blob(payload, elem_size) if payload else b"\0" * 16
        blob_hashes = [self._blob(b, es) for b, es in blobs]
        self._table.append(
            struct.pack("<BIQqIiHB", 3, run_id, seq, wall_us, kid, dtype, flags, len(dims))
            + struct.pack("<%dq" % len(dims), *dims) + h
            + struct.pack("<QI", len(payload or b""), len(blob_hashes)) + b"".join(blob_hashes))
        if len(self._data) >= self._frame_bytes or len(self._table) >= 65536:
            self.flush()

    def flush(self):
        if not self._table:
            return
        raw_table = b"".join(self._table)
        self._write_frame(self._data_fd, _native.FRAME_KIND_DATA, raw_table, bytes(self._data), len(self._table))
        self._table = []
        self._data = bytearray()

    def _write_frame(self, fd, kind, raw_table, raw_data, n):
        table = self._comp.compress(raw_table)
        data = self._comp.compress(raw_data) if raw_data else b""
        header = _native.encode_frame_header(kind, _native.CODEC_ZSTD, self._level, len(table), len(raw_table),
                                             len(data), len(raw_data), n, _native.crc32c(table),
                                             _native.crc32c(data))
        buf = header + table + data
        view = memoryview(buf)
        while view:
            view = view[os.write(fd, view):]

    def meta(self, event: dict, attachments: Sequence[bytes] = ()):
        hashes = [_native.hash128(a) for a in attachments]
        new = []
        for a, h in zip(attachments, hashes):
            if h not in self._stored:
                self._stored.add(h)
                new.append(a)
        raw_table, raw_data, n = _native.encode_meta(json.dumps(event, sort_keys=True), new, hashes)
        self._write_frame(self._meta_fd, _native.FRAME_KIND_META, raw_table, raw_data, n)

    def close(self):
        try:
            self.flush()
            self.meta({"event": "writer_close", "wall_us": time.time_ns() // 1000, "stats": {}})
        finally:
            os.close(self._data_fd)
            os.close(self._meta_fd)


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<I", len(b)) + b


def _version() -> str:
    from tfdump_fast import __version__

    return __version__
