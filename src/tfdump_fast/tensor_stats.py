"""Statistics of one tensor value and where its non-finite elements are.

Used by ``show``, ``trace``, ``history`` and ``diff``; everything here works
on numpy values as :class:`~tfdump_fast.reader.DumpReader` returns them
(strings, resources and variants have no statistics).
"""

from __future__ import annotations

import re
from typing import List, Optional, Tuple

import numpy as np

from tfdump_fast.errors import TfdumpUsageError

__all__ = ["numeric", "tensor_stats", "nonfinite_elements", "parse_slice", "split_slice",
           "apply_slice", "max_abs_diff"]


def numeric(value) -> Optional[np.ndarray]:
    """``value`` as a numeric numpy array (bfloat16 and friends as float64),
    or None for strings, resources, variants and uninitialized tensors."""
    if not isinstance(value, np.ndarray) or value.dtype == object:
        return None
    if value.dtype.kind in "biufc":
        return value
    try:
        return value.astype(np.float64)   # ml_dtypes floats
    except (TypeError, ValueError):
        return None


def tensor_stats(value) -> Optional[dict]:
    """``size``, ``nan``, ``inf``, ``zeros`` and, over the finite elements,
    ``min``, ``max``, ``mean``, ``std`` (None when there is none); None for
    non-numeric values. Complex tensors get counts only."""
    v = numeric(value)
    if v is None:
        return None
    out = {"size": int(v.size), "nan": 0, "inf": 0, "zeros": int(np.count_nonzero(v == 0)),
           "min": None, "max": None, "mean": None, "std": None}
    if v.dtype.kind in "fc":
        out["nan"] = int(np.count_nonzero(np.isnan(v)))
        out["inf"] = int(np.count_nonzero(np.isinf(v)))
    if v.dtype.kind == "c" or not v.size:
        return out
    finite = v[np.isfinite(v)] if v.dtype.kind == "f" else v
    if finite.size:
        f = finite.astype(np.float64)
        out.update(min=float(f.min()), max=float(f.max()), mean=float(f.mean()), std=float(f.std()))
    return out


def nonfinite_elements(value, limit: int = 10) -> Tuple[int, List[Tuple[tuple, float]]]:
    """(count, up to ``limit`` (index, value) pairs) of the nan/inf elements."""
    v = numeric(value)
    if v is None or v.dtype.kind not in "fc":
        return 0, []
    bad = ~np.isfinite(v)
    count = int(np.count_nonzero(bad))
    if not count:
        return 0, []
    if v.ndim == 0:
        return 1, [((), v.item())]
    where = np.argwhere(bad)[:limit]
    return count, [(tuple(int(i) for i in idx), v[tuple(idx)].item()) for idx in where]


def max_abs_diff(a, b) -> Optional[float]:
    """Largest elementwise |a - b| over positions finite in both (nan/inf
    positions that differ count as ``inf``); None when not comparable."""
    va, vb = numeric(a), numeric(b)
    if va is None or vb is None or va.shape != vb.shape:
        return None
    if va.size == 0:
        return 0.0
    fa, fb = va.astype(np.complex128 if "c" in (va.dtype.kind, vb.dtype.kind) else np.float64), \
        vb.astype(np.complex128 if "c" in (va.dtype.kind, vb.dtype.kind) else np.float64)
    both = np.isfinite(fa) & np.isfinite(fb)
    worst = float(np.abs(fa[both] - fb[both]).max()) if both.any() else 0.0
    # the same non-finite value (nan vs nan, inf vs inf) is no change
    same_bad = (~both) & ((np.isnan(fa) & np.isnan(fb)) | (fa == fb))
    if np.any(~both & ~same_bad):
        return float("inf")
    return worst


# ---------------------------------------------------------------- slicing

_SLICE_SUFFIX = re.compile(r"^(?P<name>.*?)\s*\[(?P<index>[^\[\]]*)\]$")
_INT = r"[+-]?\d+"
_PART = re.compile(r"^(?:(?P<int>%s)|(?P<ell>\.\.\.)|(?P<start>%s)?:(?P<stop>%s)?(?::(?P<step>%s)?)?)$"
                   % (_INT, _INT, _INT, _INT))


def split_slice(text: str) -> Tuple[str, Optional[str]]:
    """``'mlp/hidden:0[5, 2:4]'`` -> ``('mlp/hidden:0', '5, 2:4')``; no
    brackets -> (text, None)."""
    m = _SLICE_SUFFIX.match(text)
    if m is None:
        return text, None
    return m.group("name"), m.group("index")


def parse_slice(text: str) -> tuple:
    """numpy index expression -> index tuple: integers, ``start:stop:step``
    slices and ``...``, comma separated (no evaluation of code)."""
    parts = [p.strip() for p in text.split(",")]
    if parts and parts[-1] == "" and len(parts) > 1:
        parts.pop()   # a trailing comma, as in x[1,]
    out = []
    for p in parts:
        m = _PART.match(p)
        if not p or m is None:
            raise TfdumpUsageError(
                "cannot read the index [%s]: use integers, start:stop:step slices and ... separated "
                "by commas, e.g. [5] or [2:4, 0]" % text)
        if m.group("int") is not None:
            out.append(int(m.group("int")))
        elif m.group("ell"):
            out.append(Ellipsis)
        else:
            out.append(slice(*(None if m.group(g) is None else int(m.group(g))
                               for g in ("start", "stop", "step"))))
    return tuple(out)


def apply_slice(value, index: tuple, text: str):
    """``value[index]``, with numpy's IndexError turned into a usage error."""
    if not isinstance(value, np.ndarray):
        raise TfdumpUsageError("[%s]: this tensor is not an array (%s), so it cannot be sliced"
                               % (text, type(value).__name__))
    try:
        return value[index]
    except (IndexError, ValueError) as exc:
        raise TfdumpUsageError("[%s] does not fit shape %s: %s" % (text, list(value.shape), exc)) from None
