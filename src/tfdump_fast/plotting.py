"""PNG plots of a tensor: its histogram, and its statistics over steps.

matplotlib is an optional dependency (``pip install 'tfdump-fast[plot]'``);
it is imported only here, with the non-interactive Agg backend.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np

from tfdump_fast.errors import TfdumpUsageError
from tfdump_fast.tensor_stats import numeric

__all__ = ["plot_tensor"]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise TfdumpUsageError("plot needs matplotlib, an optional dependency: "
                               "pip install 'tfdump-fast[plot]' (or pip install matplotlib)") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_tensor(path: str, title: str, value, history_rows: Optional[List[dict]] = None,
                bins: int = 50) -> str:
    """Write a PNG: the histogram of ``value``'s finite elements (nan/inf
    counts in the legend) and, given ``history_rows`` of
    :func:`tfdump_fast.analysis.history`, min/mean/max over global steps."""
    v = numeric(value)
    if v is None:
        raise TfdumpUsageError("%s is not a numeric tensor: nothing to plot" % title)
    plt = _pyplot()
    panels = 2 if history_rows and len(history_rows) > 1 else 1
    fig, axes = plt.subplots(panels, 1, figsize=(8, 3.5 * panels), squeeze=False)
    ax = axes[0][0]
    flat = v.astype(np.float64).ravel() if v.dtype.kind != "c" else np.abs(v).ravel()
    finite = flat[np.isfinite(flat)]
    nan, inf = int(np.isnan(flat).sum()), int(np.isinf(flat).sum())
    ax.hist(finite, bins=bins, label="%d finite, %d nan, %d inf" % (finite.size, nan, inf))
    ax.set_title(title)
    ax.set_xlabel("value")
    ax.set_ylabel("elements")
    ax.legend()
    if panels == 2:
        ax = axes[1][0]
        xs = [r["global_step"] if r["global_step"] is not None else i for i, r in enumerate(history_rows)]
        for key in ("min", "mean", "max"):
            ys = [np.nan if not r["stats"] or r["stats"][key] is None else r["stats"][key] for r in history_rows]
            ax.plot(xs, ys, marker=".", label=key)
        ax.set_xlabel("global step" if any(r["global_step"] is not None for r in history_rows) else "run")
        ax.set_title("statistics over runs")
        ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
