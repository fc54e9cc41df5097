"""The vectorized inf/nan search: which stored tensors hold inf or nan.

Only floating-point tensors are looked at; each distinct payload is checked
once, and small payloads of one dtype are concatenated and checked in one
numpy pass. Summary records (debug ops of :mod:`tfdump_fast.summaries`) are
judged by the counts they hold, not by their own values
(:func:`~tfdump_fast.summaries.summary_has_inf_or_nan`).
"""

from __future__ import annotations

import collections
from typing import Dict, List

import numpy as np

from tfdump_fast.store.decode import FLOATING_DTYPES, NUMPY_DTYPES
from tfdump_fast.summaries import is_summary_debug_op, summary_has_inf_or_nan

__all__ = ["find_inf_nan"]

_BATCH = 4096            # tensors whose verdicts are worked out together
_PREFETCH = 1024         # payloads whose blocks are decompressed together
_ALONE_BYTES = 256 << 10  # payloads at least this large are checked on their own (no copy)


def find_inf_nan(index, payloads, gidx: np.ndarray, rows: np.ndarray, first_n: int) -> List[int]:
    """Rows (indices into ``gidx``) of tensors holding inf or nan.

    Parameters
    ----------
    index : TensorIndex
    payloads : PayloadReader
    gidx : numpy array of int
        Tensor ids (a run's, in execution order).
    rows : numpy array of int
        The positions in ``gidx`` to search, ascending.
    first_n : int
        Stop after this many (0: all).
    """
    t = index.tensors
    g = gidx[rows]
    dt = t["dtype"][g]
    dt = np.where(dt > 100, dt - 100, dt)
    kids = index.key_of[g]
    summary_kids = [k for k in np.unique(kids).tolist() if is_summary_debug_op(index.keys[k].debug_op)]
    found_summaries: List[int] = []
    if summary_kids:
        is_summary = np.isin(kids, summary_kids)
        found_summaries = _find_in_summaries(index, payloads, rows[is_summary], g[is_summary],
                                             dt[is_summary], first_n)
        rows, g, dt = rows[~is_summary], g[~is_summary], dt[~is_summary]
    found = _find_in_tensors(index, payloads, rows, g, dt, first_n)
    if found_summaries:
        found = sorted(found + found_summaries)
        if first_n > 0:
            found = found[:first_n]
    return found


def _find_in_summaries(index, payloads, rows: np.ndarray, g: np.ndarray, dt: np.ndarray,
                       first_n: int) -> List[int]:
    """Rows of summary records whose counts report inf or nan."""
    t = index.tensors
    found: List[int] = []
    verdict: Dict[tuple, bool] = {}
    for r, gi, d in zip(rows.tolist(), g.tolist(), dt.tolist()):
        if t["payload_len"][gi] == 0 or d not in NUMPY_DTYPES:
            continue
        w = int(index.writer_of[gi])
        op = index.keys[int(index.key_of[gi])].debug_op
        k = (w, index.hashes[gi].tolist(), d, op)
        if k not in verdict:
            value = np.frombuffer(payloads.payload(w, k[1]), dtype=NUMPY_DTYPES[d])
            verdict[k] = bool(summary_has_inf_or_nan(op, value))
        if verdict[k]:
            found.append(r)
            if 0 < first_n <= len(found):
                break
    return found


def _find_in_tensors(index, payloads, rows: np.ndarray, g: np.ndarray, dt: np.ndarray,
                     first_n: int) -> List[int]:
    t = index.tensors
    cand = np.isin(dt, list(FLOATING_DTYPES)) & (t["flags"][g] == 0) & (t["payload_len"][g] > 0)
    rows, g, dt = rows[cand], g[cand], dt[cand]
    found: List[int] = []
    verdict: Dict[tuple, bool] = {}
    for start in range(0, len(rows), _BATCH):
        bg = g[start:start + _BATCH]
        bdt = dt[start:start + _BATCH]
        keys = [(w, h, d) for w, h, d in zip(index.writer_of[bg].tolist(),
                                             index.hashes[bg].tolist(), bdt.tolist())]
        todo = {}
        for k in keys:
            if k not in verdict and k not in todo:
                todo[k] = None
        if todo:
            verdict.update(_check_finite(payloads, list(todo)))
        for r, k in zip(rows[start:start + _BATCH].tolist(), keys):
            if verdict[k]:
                found.append(r)
                if 0 < first_n <= len(found):
                    return found
    return found


def _check_finite(payloads, keys: List[tuple]) -> Dict[tuple, bool]:
    """For (writer, hash, dtype) keys: does the payload hold inf or nan?
    Payloads of one dtype are concatenated and checked in one pass."""
    out = {}
    by_dtype = collections.defaultdict(list)
    for k in keys:
        by_dtype[k[2]].append(k)
    for dt, ks in by_dtype.items():
        npd = NUMPY_DTYPES[dt]
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
            if n % _PREFETCH == 0:  # decompress the frames of the next keys together
                frames.clear()
                chunk = ks[n:n + _PREFETCH]
                payloads.prefetch([w for w, _, _ in chunk], [h for _, h, _ in chunk], frames)
            payload = payloads.payload(k[0], k[1], frames)
            n = len(payload) // npd.itemsize
            if n == 0:
                out[k] = False
                continue
            if len(payload) >= _ALONE_BYTES:
                out[k] = not bool(np.isfinite(np.frombuffer(payload, dtype=npd)).all())
                continue
            parts.append(payload)
            owners.append(k)
            sizes.append(n)
            pending += len(payload)
            if pending >= _ALONE_BYTES:
                flush()
        flush()
    return out
