"""Summary debug ops: what a watch may ask for besides full tensors, and what the stored records mean.

A watch's ``debug_ops`` may name, besides ``DebugIdentity``:

``DebugNumericSummary`` (attributes ``lower_bound``, ``upper_bound``, ``mute_if_healthy``)
    tfdbg v1's summary: float64[14 + rank] = is_initialized, element_count,
    nan, -inf, negative, zero, positive, +inf counts, min, max, mean,
    variance, dtype enum, rank, dims. Values <= ``lower_bound`` count as
    -inf, values >= ``upper_bound`` as +inf. With ``mute_if_healthy=true``
    nothing is stored for a tensor without nan and (bounded) inf, exactly as
    TF's kernel then dumps nothing.
``DebugNanCount``
    int64[1], the number of nans.
``CURT_HEALTH``, ``CONCISE_HEALTH``, ``FULL_HEALTH``, ``SHAPE``
    tfdbg v2's health modes, the float64 output of TF's
    ``DebugNumericSummaryV2`` for that ``tensor_debug_mode`` with
    ``tensor_id=-1``: CURT_HEALTH [id, has_inf_or_nan]; CONCISE_HEALTH [id,
    size, -inf, +inf, nan]; FULL_HEALTH [id, device (-1), dtype, rank, size,
    -inf, +inf, nan, negative, zero, positive]; SHAPE [id, dtype, rank, size,
    the last 6 dims right-padded with 0].

The capture hooks rewrite them into the bridge's own debug ops
(:data:`NATIVE_DEBUG_OPS`), which keep a reference to the tensor and
compute the summary on the writer threads, bit-identical to TF's kernels,
instead of inside the step. Tensors a summary is not defined for (variant,
resource, string, complex, ...; uninitialized ones for the v2 modes) are
skipped and counted (``stats()["summaries_skipped"]``), never an error. The
record is keyed with the debug op name above, so ``convert`` writes the
files tfdbg would (``<node>_<slot>_DebugNumericSummary_<µs>``).

This module does not import TensorFlow (the reader uses it).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from tfdump_fast.tf2_reader import mode_of_debug_op

__all__ = ["HEALTH_MODES", "NATIVE_DEBUG_OPS", "SUMMARY_DEBUG_OPS", "native_debug_op", "summary_has_inf_or_nan",
           "summary_mode_of", "is_summary_debug_op"]

#: tfdbg v2's health modes offered for TF1 watches (debug op spellings).
HEALTH_MODES = ("CURT_HEALTH", "CONCISE_HEALTH", "FULL_HEALTH", "SHAPE")

#: Debug op name in a watch (and in the stored key) -> the bridge's op.
NATIVE_DEBUG_OPS = {
    "DebugNumericSummary": "TfdumpNumericSummary",
    "DebugNanCount": "TfdumpNanCount",
    "CURT_HEALTH": "TfdumpCurtHealth",
    "CONCISE_HEALTH": "TfdumpConciseHealth",
    "FULL_HEALTH": "TfdumpFullHealth",
    "SHAPE": "TfdumpShape",
}

#: Debug op names whose records are summaries, not tensors.
SUMMARY_DEBUG_OPS = frozenset(NATIVE_DEBUG_OPS)


def summary_mode_of(debug_op) -> Optional[str]:
    """The summary a record's debug op names: a TF1 summary op's name as is
    (``"CURT_HEALTH"``, ``"DebugNumericSummary"``, ...), the mode of a TF2
    capture summary record (``"TfdumpCaptureV2.<context>.<MODE>"``, see
    :mod:`tfdump_fast.tf2`), else None (a full tensor)."""
    if debug_op in SUMMARY_DEBUG_OPS:
        return debug_op
    mode = mode_of_debug_op(debug_op) if isinstance(debug_op, str) else None
    return mode if mode in HEALTH_MODES else None


def is_summary_debug_op(debug_op) -> bool:
    """Whether records of ``debug_op`` are summaries (judged by their counts)."""
    return summary_mode_of(debug_op) is not None


def native_debug_op(debug_op: str) -> str:
    """``debug_op`` (``Name`` or ``Name(attrs)``) with a summary op's name
    replaced by the bridge's op; other debug ops unchanged."""
    lpar = debug_op.find("(")
    name = debug_op if lpar < 0 else debug_op[:lpar]
    native = NATIVE_DEBUG_OPS.get(name)
    return debug_op if native is None else native + debug_op[len(name):]


def summary_has_inf_or_nan(debug_op: str, value) -> Optional[bool]:
    """Whether a summary record reports inf or nan in its tensor; None if
    ``debug_op`` is not a summary op (TF2 capture's summary records,
    ``TfdumpCaptureV2.<context>.<MODE>``, are judged as their mode).

    The summary's own values are not what is judged (an empty tensor's
    DebugNumericSummary has min=+inf and mean=nan): its counts are.
    DebugNumericSummary: nan, -inf or +inf count > 0 (values outside custom
    bounds count as inf there, as in TF's kernel); DebugNanCount: > 0;
    CURT_HEALTH: the flag; CONCISE_HEALTH / FULL_HEALTH: their -inf, +inf,
    nan counts; SHAPE: never.
    """
    debug_op = summary_mode_of(debug_op)
    if debug_op is None:
        return None
    v = np.asarray(value).reshape(-1)
    if debug_op == "SHAPE" or v.size == 0:
        return False
    if debug_op == "DebugNumericSummary":
        return v.size >= 8 and bool(v[2] > 0 or v[3] > 0 or v[7] > 0)
    if debug_op == "DebugNanCount":
        return bool(v[0] > 0)
    if debug_op == "CURT_HEALTH":
        return v.size >= 2 and bool(v[1] > 0)
    if debug_op == "CONCISE_HEALTH":
        return v.size >= 5 and bool((v[2:5] > 0).any())
    return v.size >= 8 and bool((v[5:8] > 0).any())  # FULL_HEALTH
