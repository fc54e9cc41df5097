"""Import a tfdbg dump (``file://`` debug URLs, ``DumpingDebugWrapperSession``)
into a new tfdump-fast store.

:func:`import_tfdbg` reads tfdbg's layout -- written by tfdbg or by
:func:`tfdump_fast.conversion.convert` -- and writes one writer's shards with
every field chosen here (the original timestamps, flags and variant
structures), which the capture engine's API does not offer. Converting the
store back reproduces the same files. Entries are laid out by the engine's own
encoder (``_native.TableBuilder``) and frames by :mod:`tfdump_fast.store.frames`.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import time
from typing import Callable, Dict, List, Sequence, Union

import zstandard

from tfdump_fast import _native, _tfproto as P, dtypes
from tfdump_fast.store.payloads import encode_strings
from tfdump_fast.errors import TfdumpFormatError, TfdumpIOError, TfdumpUsageError
from tfdump_fast.progress import progress_reporter, reported
from tfdump_fast.store import frames
from tfdump_fast.store.naming import shard_file_name, writer_name
from tfdump_fast.store.payloads import (
    NO_STORAGE, encode_blob_storage, encode_descriptor, encode_element_count, encode_element_head,
    encode_inline_storage)

__all__ = ["import_tfdbg", "build_variant_structure"]


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
        As for :func:`~tfdump_fast.conversion.convert`.
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
    for what, path in (("tfdbg_dir", tfdbg_dir), ("session_root", session_root)):
        if not isinstance(path, (str, bytes, os.PathLike)):
            raise TfdumpUsageError("%s=%r must be a path (str or os.PathLike), not %s"
                                   % (what, path, type(path).__name__))
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
    bar, report = progress_reporter(progress, total, "importing")
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


# --------------------------------------------------------------------------- reading tfdbg's layout

def _is_run_dir(path: str) -> bool:
    try:
        return any(n.startswith(P.METADATA_PREFIX) for n in os.listdir(path))
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
        m = P.RUN_DIR_NAME_RE.match(os.path.basename(path))
        return (int(m.group(1)), int(m.group(2))) if m else (1 << 62, 0)

    return sorted(runs, key=lambda p: (order(p), p))


def _read(path: str) -> bytes:
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            # A FIFO would block open(); a directory fail read().
            raise TfdumpFormatError("%s is not a regular file, so not a tfdbg dump file: move it out "
                                    "of the tfdbg dump directory" % path)
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
        if name == P.FETCHES_INFO_FILE:
            scan["fetches"] = P.decode_event(_read(path))["log_message"] or ""
        elif name == P.FEED_KEYS_INFO_FILE:
            scan["feed_keys"] = P.decode_event(_read(path))["log_message"] or ""
        elif name.startswith(P.CORE_METADATA_PREFIX):
            ev = P.decode_event(_read(path))
            scan["core"].append({"file": name, "wall_time": ev["wall_time"], "json": ev["log_message"] or ""})
        elif name.startswith(P.DEVICE_PREFIX) and os.path.isdir(path):
            device = P.device_path_to_name(name)
            for folder, _, files in os.walk(path):
                rel = os.path.relpath(folder, path)
                parents = [] if rel == "." else rel.split(os.sep)
                for f in files:
                    fpath = os.path.join(folder, f)
                    if f.startswith(P.GRAPH_PREFIX):
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


# --------------------------------------------------------------------------- one run

def _import_run(writer: "_StoreWriter", run_id: int, scan: dict, report) -> None:
    name = scan["name"]
    m = P.RUN_DIR_NAME_RE.match(name)
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
    last_wall = begin_us
    for seq, (ts, _k, device, node, slot, op, path) in reported(enumerate(scan["dumps"]), report):
        ev = P.decode_event(_read(path))
        if ev["tensor"] is None:
            raise TfdumpFormatError("%s is not a tfdbg tensor dump (its Event holds no tensor)" % path)
        rec = _record_from_tensor_proto(P.decode_tensor_proto(ev["tensor"]), cache)
        writer.tensor(run_id, seq, ts, (device, node, slot, op), *rec)
        nbytes += len(rec[3] or b"")
        last_wall = max(last_wall, ts)
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


def _record_from_tensor_proto(tp: dict, cache: dict):
    """(dtype, flags, dims, payload, elem_size, blobs) for a top-level TensorProto."""
    dtype, dims = tp["dtype"], tp["dims"]
    n = _num_elements(dims)
    if dtype == P.DT_STRING:
        if tp["strings"] or n == 0:
            return dtype, _native.FLAG_STRING, dims, encode_strings(tp["strings"] or []), 0, []
        return dtype, _native.FLAG_UNINITIALIZED, dims, None, 0, []
    content = tp["content"]
    if dtype == P.DT_RESOURCE:
        if content:
            return dtype, _native.FLAG_RESOURCE, dims, encode_strings(P.parse_string_list(content, n)), 0, []
        if tp["messages"]:
            return dtype, _native.FLAG_RESOURCE, dims, encode_strings(tp["messages"]), 0, []
        return dtype, (0 if n == 0 else _native.FLAG_UNINITIALIZED), dims, None, 0, []
    if dtype == P.DT_VARIANT:
        items = P.parse_string_list(content, n) if content else tp["messages"] or []
        if not items:
            return dtype, (0 if n == 0 else _native.FLAG_UNINITIALIZED), dims, None, 0, []
        blobs: List[tuple] = []
        return dtype, _native.FLAG_VARIANT, dims, build_variant_structure(items, blobs, cache), 0, blobs
    if content is None:
        content = tp["raw"]
    if not content:
        return dtype, (0 if n == 0 else _native.FLAG_UNINITIALIZED), dims, None, 0, []
    return dtype, 0, dims, content, _lane_bytes(dtype), []


def _lane_bytes(dtype: int) -> int:
    try:
        return dtypes.shuffle_lane_bytes(dtype)
    except (KeyError, TypeError):
        return 0


# --------------------------------------------------------------------------- variant structure

def build_variant_structure(items: Sequence[bytes], blobs: List[tuple], cache: dict) -> bytes:
    """The variant structure of docs/FORMAT.md for serialized elements.

    Parameters
    ----------
    items : sequence of bytes
        Serialized ``VariantTensorDataProto``s, one per element of the variant
        tensor (what ``Variant::Encode`` produces).
    blobs : list
        Receives ``(payload, elem_size)`` for each element tensor with numeric
        values: the record's blobs, referred to by index (``STORAGE_BLOB``).
        String, resource and nested variant element tensors are stored inline.
    cache : dict
        Maps element ``TensorProto`` bytes to their encoded form, across
        calls: a TensorList is dumped again with every push, its earlier
        elements unchanged.

    Returns
    -------
    bytes
        The structure, in the inline form only (``n_tensors`` is never
        ``_native.TENSOR_LIST_MARKER``: list blobs are what the capture bridge
        writes for numeric TensorLists).
    """
    out = [encode_element_count(len(items))]
    for item in items:
        type_name, metadata, tensors = P.decode_variant_data_proto(item)
        out.append(encode_element_head(type_name, metadata, len(tensors)))
        for tproto in tensors:
            hit = cache.get(tproto)
            if hit is not None:  # (descriptor, blob payload, lanes)
                desc, raw, lanes = hit
                blobs.append((raw, lanes))
                out.append(desc + encode_blob_storage(len(blobs) - 1))
                continue
            t = P.decode_tensor_proto(tproto)
            dtype, dims = t["dtype"], t["dims"]
            n = _num_elements(dims)
            flags, storage = 0, NO_STORAGE
            if dtype == P.DT_STRING:
                if t["strings"] or n == 0:
                    flags, storage = _native.FLAG_STRING, encode_inline_storage(encode_strings(t["strings"] or []))
                else:
                    flags = _native.FLAG_UNINITIALIZED
            elif dtype == P.DT_RESOURCE:
                if t["messages"]:
                    flags, storage = _native.FLAG_RESOURCE, encode_inline_storage(encode_strings(t["messages"]))
                elif n:
                    flags = _native.FLAG_UNINITIALIZED
            elif dtype == P.DT_VARIANT:
                if t["messages"]:
                    flags = _native.FLAG_VARIANT
                    storage = encode_inline_storage(build_variant_structure(t["messages"], blobs, cache))
                elif n:
                    flags = _native.FLAG_UNINITIALIZED
            else:
                raw = t["raw"] if t["raw"] is not None else t["content"]
                if raw:
                    blobs.append((raw, _lane_bytes(dtype)))
                    storage = encode_blob_storage(len(blobs) - 1)
                elif n:
                    flags = _native.FLAG_UNINITIALIZED
            desc = encode_descriptor(dtype, flags, dims)
            if storage[0] == _native.STORAGE_BLOB:
                if len(cache) > 65536:
                    cache.clear()
                cache[tproto] = (desc, blobs[-1][0], blobs[-1][1])
            out.append(desc + storage)
    return b"".join(out)


# --------------------------------------------------------------------------- the store

class _StoreWriter:
    """Writes one writer's shards (one data shard, one metadata shard) with
    every field chosen by the caller, in frames of about ``frame_bytes``."""

    def __init__(self, root: str, level: int = 3, frame_bytes: int = 4 << 20):
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as exc:
            raise TfdumpIOError(exc.errno, "cannot create %s: %s" % (root, exc.strerror)) from None
        self.writer_id = secrets.randbits(64)
        self.name = writer_name(self.writer_id)
        self._level = level
        self._frame_bytes = frame_bytes
        self._comp = zstandard.ZstdCompressor(level=level, write_content_size=True)
        created = time.time_ns() // 1000
        self._shards: Dict[int, frames.ShardFile] = {}  # by fd: where each file's last frame ends
        self._data_fd = self._create(root, 0, created)
        self._meta_fd = self._create(root, _native.META_SHARD_INDEX, created)
        self._stored: set = set()
        self._keys: Dict[tuple, int] = {}
        self._table = _native.TableBuilder()
        self._data = bytearray()
        self.meta({"event": "writer_open", "writer_id": self.name, "pid": os.getpid(), "host": "",
                   "format_version": _native.FORMAT_VERSION, "options": {"source": "import_tfdbg"},
                   "tfdump_version": _version(), "wall_us": created})

    def _create(self, root: str, index: int, created: int) -> int:
        try:
            fd = frames.create_shard(root, self.writer_id, index, created)
            self._shards[fd] = frames.ShardFile(fd, shard_file_name(self.writer_id, index))
            return fd
        except OSError as exc:
            raise TfdumpIOError(exc.errno, "cannot create %s: %s" % (exc.filename or root, exc.strerror)) from None

    def _blob(self, payload, elem_size: int) -> bytes:
        h = _native.hash128(payload)
        if h not in self._stored:
            self._stored.add(h)
            filt = _native.FILTER_SHUFFLE if elem_size > 1 else _native.FILTER_NONE
            stored = _native.shuffle(payload, elem_size) if filt == _native.FILTER_SHUFFLE else payload
            self._table.blob(h, len(payload), len(self._data), filt, elem_size if filt == _native.FILTER_SHUFFLE else 0)
            self._data += stored
        return h

    def tensor(self, run_id, seq, wall_us, key, dtype, flags, dims, payload, elem_size, blobs):
        kid = self._keys.get(key)
        if kid is None:
            kid = self._keys[key] = len(self._keys) + 1
            device, node, slot, op = key
            self._table.key_def(kid, slot, device, node, op)
        h = self._blob(payload, elem_size) if payload else b"\0" * 16
        blob_hashes = [self._blob(b, es) for b, es in blobs]
        self._table.tensor(run_id, seq, wall_us, kid, dtype, flags, dims, h, len(payload or b""), blob_hashes)
        if len(self._data) >= self._frame_bytes or self._table.n_entries >= 65536:
            self.flush()

    def flush(self):
        n = self._table.n_entries
        if not n:
            return
        self._write(self._data_fd, _native.FRAME_KIND_DATA, self._table.take(), bytes(self._data), n)
        self._data = bytearray()

    def _write(self, fd, kind, raw_table, raw_data, n):
        self._shards[fd].append(frames.encode_frame(kind, raw_table, raw_data, n, self._comp, self._level))

    def meta(self, event: dict, attachments: Sequence[bytes] = ()):
        hashes = [_native.hash128(a) for a in attachments]
        new = []
        for a, h in zip(attachments, hashes):
            if h not in self._stored:
                self._stored.add(h)
                new.append(a)
        raw_table, raw_data, n = _native.encode_meta(json.dumps(event, sort_keys=True), new, hashes)
        self._write(self._meta_fd, _native.FRAME_KIND_META, raw_table, raw_data, n)

    def close(self):
        try:
            self.flush()
            # The clean-close trailer, as a DumpWriter leaves it: later damage
            # to the store reads as corruption, not as a torn tail.
            self.meta({"event": "writer_close", "wall_us": time.time_ns() // 1000, "stats": {},
                       "shards": frames.close_trailer(self._shards.values())})
        finally:
            os.close(self._data_fd)
            os.close(self._meta_fd)


def _version() -> str:
    from tfdump_fast import __version__

    return __version__
