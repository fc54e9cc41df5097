"""Checking a whole store: every checksum of every frame; that every payload
a tensor refers to -- variant element tensors and TensorList list blobs
included -- is stored in a frame that could be read; that every run holds
the tensors its writer counted; and that no writer lost tensors to an error
(a full disk, lost permissions)."""

from __future__ import annotations

import collections
from typing import Callable, List, Optional, Sequence

import numpy as np

from tfdump_fast import _native
from tfdump_fast.errors import TfdumpCorruptionError, TfdumpIOError, TfdumpNotFoundError, TfdumpTruncatedError
from tfdump_fast.store.payloads import parse_list_blob, parse_variant_structure

__all__ = ["verify_store"]


# drops of these reasons are the user's choice (disk_limit_bytes; mute_if_healthy), not a loss
_CHOSEN_DROP_REASONS = ("disk_budget", "muted")


def verify_store(index, blocks, payloads, decoder, known_problems: List[str],
                 progress: Optional[Callable[[int, int], None]] = None, runs: Sequence = ()) -> List[str]:
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
    runs : sequence of reader Runs
        Checked against the counts their writers recorded.
    """
    problems = list(known_problems)
    problems += writer_losses(index)
    problems += run_count_problems(index, runs)
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


def writer_losses(index) -> List[str]:
    """Tensors a writer accepted and then lost to an error (``writer_error``
    events, ``drops`` of a reason other than the disk budget, an error in
    the ``writer_close`` stats), one line per writer."""
    out = []
    for w in index.writers:
        errors_seen = [str(e.get("message")) for e in w.events if e.get("event") == "writer_error"]
        if not errors_seen and isinstance(w.close, dict) and isinstance(w.close.get("stats"), dict) \
                and w.close["stats"].get("error"):
            errors_seen = [str(w.close["stats"]["error"])]
        lost = collections.Counter()
        runs = collections.defaultdict(set)
        for e in w.events:
            if e.get("event") == "drops" and e.get("reason") not in _CHOSEN_DROP_REASONS:
                reason = str(e.get("reason"))
                lost[reason] += int(e.get("dropped_tensors", 0) or 0)
                runs[reason].add(e.get("run_id"))
        if errors_seen:
            out.append("writer %s failed: %s" % (w.name, errors_seen[0]))
        for reason, n in sorted(lost.items()):
            out.append("writer %s: %d tensor(s) of %d run(s) were accepted but not written (reason: %s)"
                       % (w.name, n, len(runs[reason]), reason))
    return out


def run_count_problems(index, runs: Sequence) -> List[str]:
    """Runs whose stored tensors differ from the count their ``run_end``
    recorded (less late drops), one line per run."""
    out = []
    for run in runs:
        if run.expected_tensors is None:
            continue  # truncated: the writer died before it counted
        w = index.writers[run.writer_index]
        stored = len(run)
        should = int(run.expected_tensors) - run.late_dropped_tensors - run.muted_tensors
        if stored == should:
            continue
        hint = "" if w.close is not None else " (writer %s was not closed: killed, or still writing)" % w.name
        if stored < should:
            out.append("run %s of writer %s: %d of its %d tensor(s) are missing%s"
                       % (run.name, w.name, should - stored, should, hint))
        else:
            out.append("run %s of writer %s: %d tensor(s) are stored, but its writer counted %d"
                       % (run.name, w.name, stored, should))
    return out
