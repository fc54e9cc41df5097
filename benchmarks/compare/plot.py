"""step_time_ratio.png: the step-time ratio per configuration and model."""

from __future__ import annotations

from typing import Any, Dict, Optional

from benchmarks.compare.config import CONFIGS, REGIMES
from benchmarks.compare.env import short_error
from benchmarks.compare.report import models_in


def render_plot(results: Dict[str, Any], path: str) -> Optional[str]:
    """Grouped bars of the step-time ratio, one panel per regime. Returns an error or None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:  # noqa: BLE001
        return f"matplotlib unavailable: {short_error(exc)}"
    regimes = [r for r in REGIMES if r in results["regimes"]]
    models = models_in(results)
    configs = [c for c in results["configs"] if c not in ("none", "tf2-none")]
    if not regimes or not models or not configs:
        return "nothing to plot"
    fig, axes = plt.subplots(1, len(regimes), figsize=(6.5 * len(regimes), 4.8), squeeze=False)
    width = 0.8 / len(configs)
    cmap = plt.get_cmap("tab10")
    for ax, regime in zip(axes[0], regimes):
        for ci, name in enumerate(configs):
            xs, ys, lo, hi = [], [], [], []
            for mi, model in enumerate(models):
                f = results["regimes"][regime].get(model, {}).get(name) or {}
                if f.get("ratio") is None:
                    continue
                xs.append(mi - 0.4 + width * (ci + 0.5))
                ys.append(f["ratio"])
                lo.append(max(0.0, f["ratio"] - f.get("ratio_q1", f["ratio"])))
                hi.append(max(0.0, f.get("ratio_q3", f["ratio"]) - f["ratio"]))
            if xs:
                ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=CONFIGS[name].label, color=cmap(ci % 10))
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models)
        ax.set_ylabel("step time / baseline (log)")
        ax.set_title(f"{regime}" + (" (quick mode: meaningless)" if results["meta"]["quick"] else ""))
        ax.grid(axis="y", which="both", alpha=0.3)
    if axes[0][-1].get_legend_handles_labels()[0]:
        axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
