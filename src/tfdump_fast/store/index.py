"""The columnar index of a store's tensor records.

Every TENSOR record of every frame becomes one row of numpy columns (the
record tables are parsed natively, so building it costs no Python work per
tensor). A row number -- a *tensor id* -- names one stored tensor across the
package: runs hold arrays of them, the decoder and the converter take them.
Frames found by a later scan append rows, so tensor ids stay valid.
"""

from __future__ import annotations

import json
from typing import Dict, List, NamedTuple, Optional

import numpy as np

from tfdump_fast import _native
from tfdump_fast.store.naming import writer_name

__all__ = ["TensorIndex", "WatchKey", "WriterInfo", "COLUMN_NAMES"]

# the columns :meth:`TensorIndex.columns` returns as lists
COLUMN_NAMES = ("flags", "dtype", "payload_len", "ndims", "dims_offset", "n_blobs", "blobs_offset", "wall_us",
                "hash", "writer", "frame", "key", "g")


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


class WriterInfo:
    """What the index knows of one writer (all shards with one writer id)."""

    def __init__(self, writer_id: int):
        self.writer_id = writer_id
        self.name = writer_name(writer_id)
        self.shards: List[int] = []
        self.events: List[dict] = []       # META events in file order
        self.open: Optional[dict] = None   # writer_open event
        self.close: Optional[dict] = None  # writer_close event
        self.blob_frames: List[int] = []   # frames holding this writer's blobs
        self.blob_index: Optional[dict] = None


class TensorIndex:
    """Columns of every stored tensor, the watch keys and the writers.

    Attributes
    ----------
    tensors : numpy structured array of ``_native.TENSOR_DTYPE``
        One row per tensor; ``dims_offset`` indexes :attr:`dims`.
    key_of, writer_of, frame_of : numpy int32 arrays
        Per tensor: its watch key (index into :attr:`keys`), writer (index
        into :attr:`writers`) and frame (index into :attr:`frames`).
    hashes : numpy ``V16`` array
        Per tensor: its payload hash as exact 16-byte values.
    dims : numpy int64 array
        All tensors' dimensions, concatenated.
    keys : list of WatchKey
    writers : list of WriterInfo
    frames : list of Frame
        The reader's frames (shared, appended to by scans).
    """

    def __init__(self, frames: list):
        self.frames = frames
        self.keys: List[WatchKey] = []
        self._key_index: Dict[WatchKey, int] = {}
        self.writers: List[WriterInfo] = []
        self.writer_by_id: Dict[int, int] = {}
        self._dims_list: Optional[list] = None
        self._set_columns([], [], [], [], [])

    # ---- building

    def rebuild(self, shards: list, reporter) -> None:
        """(Re)build the index from all frames of ``shards``; damage (META
        events that are not JSON, undefined key ids) goes to ``reporter``."""
        self.writers = []
        self.writer_by_id = {}
        for shard in shards:
            if shard.header is None:
                continue
            wi = self.writer_by_id.get(shard.writer_id)
            if wi is None:
                wi = self.writer_by_id[shard.writer_id] = len(self.writers)
                self.writers.append(WriterInfo(shard.writer_id))
        key_maps: List[Dict[int, int]] = [{} for _ in shards]  # shard-local key id -> key index
        for si, shard in enumerate(shards):
            if shard.header is not None:
                self.writers[self.writer_by_id[shard.writer_id]].shards.append(si)
        tensors, key_of, writer_of, frame_of, dims = [], [], [], [], []
        dims_base = 0
        # Frames in the order they were found (each shard's in file order):
        # tensors found by a refresh() are appended, so the indices -- and the
        # Run / TensorRecord objects handed out before -- stay valid.
        for fi, f in enumerate(self.frames):
            shard = shards[f.shard]
            key_map = key_maps[f.shard]
            wi = self.writer_by_id[shard.writer_id]
            w = self.writers[wi]
            t = f.table
            for key_id, slot, device, node, op in t.key_defs:
                key_map[key_id] = self._intern_key(WatchKey(device, node, slot, op))
            if len(t.blobs):
                w.blob_frames.append(fi)
            for js, attachments in t.metas:
                try:
                    ev = json.loads(js)
                except ValueError:
                    reporter.corruption("%s: a META event at offset %d is not JSON" % (shard.path, f.offset))
                    continue
                w.events.append(ev)
            n = len(t.tensors)
            if not n:
                continue
            try:
                lut = _lookup_table(key_map, t.tensors["key_id"])
            except KeyError as exc:
                reporter.corruption("%s: frame at offset %d uses watch key id %s that the shard never defined"
                                    % (shard.path, f.offset, exc.args[0]))
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
        self._set_columns(tensors, key_of, writer_of, frame_of, dims)

    def _set_columns(self, tensors, key_of, writer_of, frame_of, dims) -> None:
        if tensors:
            self.tensors = np.concatenate(tensors)
            self.key_of = np.concatenate(key_of).astype(np.int32, copy=False)
            self.writer_of = np.concatenate(writer_of)
            self.frame_of = np.concatenate(frame_of)
            self.dims = np.concatenate(dims)
        else:
            self.tensors = np.zeros(0, dtype=_native.TENSOR_DTYPE)
            self.key_of = np.zeros(0, np.int32)
            self.writer_of = np.zeros(0, np.int32)
            self.frame_of = np.zeros(0, np.int32)
            self.dims = np.zeros(0, np.int64)
        # hashes as exact 16-byte strings (numpy's S16 would drop trailing NULs),
        # contiguous so that taking one is cheap
        self.hashes = np.ascontiguousarray(self.tensors["payload_hash"]).view("V16") if len(self.tensors) \
            else np.zeros(0, "V16")
        self._dims_list = None

    def _intern_key(self, key: WatchKey) -> int:
        k = self._key_index.get(key)
        if k is None:
            k = self._key_index[key] = len(self.keys)
            self.keys.append(key)
        return k

    # ---- per tensor

    def __len__(self) -> int:
        return len(self.tensors)

    def key(self, g: int) -> WatchKey:
        """The watch key of tensor ``g``."""
        return self.keys[self.key_of[g]]

    def shape(self, g: int) -> tuple:
        """The shape of tensor ``g``."""
        nd = int(self.tensors["ndims"][g])
        off = int(self.tensors["dims_offset"][g])
        return tuple(self.dims[off:off + nd].tolist())

    def payload_hash(self, g: int) -> bytes:
        """The payload hash of tensor ``g`` (16 bytes)."""
        return self.hashes[g].tobytes()

    def blob_hashes(self, fi: int, offset: int, n: int) -> list:
        """The ``n`` blob hashes a record of frame ``fi`` attaches, from
        ``offset`` on (a record's ``frame``, ``blobs_offset``, ``n_blobs``)."""
        return self.frames[fi].table.blob_refs[offset:offset + n].view("V16").tolist() if n else []

    def tensor_blob_hashes(self, g: int) -> tuple:
        """The blob hashes tensor ``g`` attaches (the element tensors of a variant)."""
        t = self.tensors[g]
        return tuple(self.blob_hashes(int(self.frame_of[g]), int(t["blobs_offset"]), int(t["n_blobs"])))

    # ---- many tensors

    def columns(self, gidx) -> dict:
        """Columns of the tensors ``gidx`` as Python lists, for loops that
        touch every tensor (numpy scalar access costs microseconds each).

        Returns
        -------
        dict
            The :data:`COLUMN_NAMES`: the record fields ``flags``, ``dtype``,
            ``payload_len``, ``ndims``, ``dims_offset`` (into
            :meth:`dims_list`), ``n_blobs``, ``blobs_offset``, ``wall_us``;
            ``hash`` (bytes), ``writer``, ``frame``, ``key`` (indices) and
            ``g`` (the tensor ids).
        """
        gidx = np.asarray(gidx, dtype=np.int64)
        t = self.tensors[gidx]
        cols = {name: t[name].tolist() for name in COLUMN_NAMES[:8]}
        cols["hash"] = self.hashes[gidx].tolist()
        cols["writer"] = self.writer_of[gidx].tolist()
        cols["frame"] = self.frame_of[gidx].tolist()
        cols["key"] = self.key_of[gidx].tolist()
        cols["g"] = gidx.tolist()
        return cols

    def dims_list(self) -> list:
        """:attr:`dims` as a Python list (made once per build)."""
        if self._dims_list is None or len(self._dims_list) != len(self.dims):
            self._dims_list = self.dims.tolist()
        return self._dims_list

    # ---- payload locations

    def blob_index(self, wi: int) -> dict:
        """Where each payload of writer ``wi`` is stored: hash -> ``(frame,
        offset, length, filter, elem_size)``, for the frames read so far
        (built on first use)."""
        w = self.writers[wi]
        return w.blob_index if w.blob_index is not None else self._build_blob_index(w)

    def _build_blob_index(self, w: WriterInfo) -> dict:
        index = {}
        for fi in w.blob_frames:
            b = self.frames[fi].table.blobs
            hashes = b["hash"].view("V16").tolist()
            for h, ln, off, flt, es in zip(hashes, b["raw_len"].tolist(), b["data_offset"].tolist(),
                                           b["filter"].tolist(), b["elem_size"].tolist()):
                if h not in index:
                    index[h] = (fi, off, ln, flt, es)
        w.blob_index = index
        return index


def _lookup_table(key_map: Dict[int, int], key_ids: np.ndarray) -> np.ndarray:
    uniq, inv = np.unique(key_ids, return_inverse=True)
    mapped = np.fromiter((key_map[int(k)] for k in uniq), dtype=np.int32, count=len(uniq))
    return mapped[inv]
