"""Checking a whole store: every checksum of every frame, and that every
payload a tensor refers to -- variant element tensors and TensorList list
blobs included -- is stored in a frame that could be read."""

from __future__ import annotations

from typing import Callable, List, Optional

import numpy as np

from tfdump_fast import _native
from tfdump_fast.errors import TfdumpCorruptionError, TfdumpIOError, TfdumpNotFoundError, TfdumpTruncatedError
from tfdump_fast.store.payloads import parse_list_blob, parse_variant_structure

__all__ = ["verify_store"]


def verify_store(index, blocks, payloads, decoder, known_problems: List[str],
                 progress: Optional[Callable[[int, int], None]] = None) -> List[str]:
    """Problems found in a store, one line each (``known_problems`` first:
    what the scan skipped).

    Parameters
    ----------
    index : TensorIndex
    blocks : BlockCache
    payloads : PayloadReader
    decoder : ValueDecoder
    known_problems : list of str
    progress : callable, optional
        Called as ``progress(done_bytes, total_bytes)``.
    """
    problems = list(known_problems)
    frames = index.frames
    total = sum(f.data_stored for f in frames) or 1
    done = 0
    for fi, f in enumerate(frames):
        try:
            blocks.data(fi, use_cache=False)
        except (TfdumpCorruptionError, TfdumpTruncatedError, TfdumpIOError) as exc:
            problems.append(str(exc))
        done += f.data_stored
        if progress is not None:
            progress(done, total)
    t = index.tensors
    for wi, writer in enumerate(index.writers):
        stored = index.blob_index(wi)
        mine = np.flatnonzero(index.writer_of == wi)
        need = set(index.hashes[mine][t["payload_len"][mine] > 0].tolist())
        for fi in np.unique(index.frame_of[mine]).tolist():
            refs = frames[fi].table.blob_refs
            if len(refs):
                need.update(refs.view("V16").tolist())
        # element tensors of variants; each TensorList list blob is parsed once
        lists: set = set()
        variants = mine[(t["flags"][mine] & _native.FLAG_VARIANT) != 0]
        for g in variants.tolist():
            try:
                record = decoder.stored(int(g))
                elements = parse_variant_structure(record.payload, len(record.blob_hashes)) \
                    if record.payload else []
            except (TfdumpNotFoundError, TfdumpCorruptionError) as exc:
                problems.append("writer %s: variant tensor %s: %s" % (
                    writer.name, index.key(g).watch_key, exc))
                continue
            for el in elements:
                if el.list_blob is not None:
                    lists.add(record.blob_hashes[el.list_blob])
                    continue
                need.update(record.blob_hashes[e.data] for e in el.tensors if e.storage == _native.STORAGE_BLOB)
        for h in lists:
            try:
                tensors = parse_list_blob(payloads.payload(wi, h))
            except (TfdumpNotFoundError, TfdumpCorruptionError) as exc:
                problems.append("writer %s: TensorList list blob %s: %s" % (writer.name, h.hex(), exc))
                continue
            need.update(e.data for e in tensors if e.storage == _native.STORAGE_BLOB)
        missing = [h for h in need if h not in stored]
        if missing:
            problems.append("writer %s: %d tensor payload(s) are referred to but stored in no "
                            "frame (e.g. %s)" % (writer.name, len(missing), missing[0].hex()))
    return problems
