"""From the children's measurements to the figures of the tables: medians
over repetitions, ratios to the floor measured in the same run under the
same load, bytes per step, the disk-bound limit, the CPU split and the
engine's counters."""

from __future__ import annotations

import statistics
from typing import Any, Dict, List, Optional

#: Ratio to the floor each workload's target allows (issue #15, "Targets").
TARGET_RATIO = {"rnn": 1.3, "mlp": 1.3, "lstm": 1.5, "mobilenetv2": 1.5, "resnet50": 1.5}
REGIME_ORDER = ("short", "long", "sustained")


def _median(values: List[Optional[float]]) -> Optional[float]:
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None


def _sustained(rec: Dict[str, Any]) -> float:
    """Steady-state per-step time of one long measurement: median step of its second half."""
    steps = rec["step_ms"]
    return statistics.median(steps[len(steps) // 2:])


def _config_figures(recs: List[Dict[str, Any]], regime: str) -> Dict[str, Any]:
    if regime == "sustained":
        per_step = [_sustained(r) for r in recs]
    else:
        per_step = [r["per_step_ms"] for r in recs]
    out: Dict[str, Any] = {
        "reps": len(recs), "n": recs[0]["n"],
        "per_step_ms": _median(per_step), "min_ms": min(per_step), "max_ms": max(per_step),
        "first_step_ms": _median([r.get("first_step_ms") for r in recs]),
    }
    if regime == "sustained":
        return out
    out["finish_ms"] = _median([r["finish_s"] * 1e3 for r in recs])
    # The directory also holds the untimed first step: n + 1 steps.
    if recs[0].get("bytes") is not None:
        out["bytes_per_step"] = _median([r["bytes"] / (r["n"] + 1) for r in recs])
    for part in ("main", "tf", "named", "total"):
        out[f"cpu_{part}_ms"] = _median([r["cpu_s"][part] / r["n"] * 1e3 for r in recs])
    if recs[0].get("floor_tensors") is not None:
        out["tensors_per_step"] = _median([r["floor_tensors"] / r["n"] for r in recs])
    rings = [r["ring"] for r in recs if r.get("ring")]
    if rings:  # flight recorder configurations
        out["ring"] = {"held_mb": _median([g["held_bytes"] / 1e6 for g in rings]),
                       "rss_mb": _median([g["rss_bytes"] / 1e6 for g in rings]),
                       "tensors_written_per_step": _median([g["tensors_written"] / (r["n"] + 1)
                                                            for r, g in zip(recs, rings)])}
    stats = [r["stats"] for r in recs if r.get("stats")]
    if stats:
        frames: Dict[str, int] = {}
        for s in stats:
            for k, v in (s.get("frames_by_codec") or {}).items():
                frames[k] = frames.get(k, 0) + int(v)
        out["engine"] = {
            "frames_by_codec": frames,
            "codec_changes": sum(int(s.get("codec_changes") or 0) for s in stats),
            "queue_high_water_max": max(int(s.get("queue_high_water") or 0) for s in stats),
            "tensors_dropped": sum(int(s.get("tensors_dropped") or 0) for s in stats),
            "tensors_per_step": _median([s.get("tensors_accepted", 0) / (r["n"] + 1)
                                         for r, s in zip(recs, stats)]),
            "errors": sorted({s["error"] for s in stats if s.get("error")}),
        }
    return out


def summarize(child: Dict[str, Any], disk_bytes_per_s: Optional[float]) -> Dict[str, Any]:
    """{load: {regime: {config: figures}}} for one workload, with ratios and limits."""
    out: Dict[str, Any] = {}
    wl = child["workload"]
    for load, lrec in child.get("loads", {}).items():
        regimes = dict(lrec["regimes"])
        if "long" in regimes:
            regimes = {**regimes, "sustained": regimes["long"]}
        per_load: Dict[str, Any] = {}
        for regime in [r for r in REGIME_ORDER if r in regimes]:
            cfgs = {c: _config_figures(recs, regime) for c, recs in regimes[regime].items() if recs}
            floor = (cfgs.get("floor") or {}).get("per_step_ms")
            none = (cfgs.get("none") or {}).get("per_step_ms")
            long_cfgs = per_load.get("long", {})
            for c, f in cfgs.items():
                if floor:
                    f["ratio_to_floor"] = f["per_step_ms"] / floor
                if none:
                    f["ratio_to_none"] = f["per_step_ms"] / none
                if regime == "sustained" and (long_cfgs.get(c) or {}).get("bytes_per_step") is not None:
                    f["bytes_per_step"] = long_cfgs[c]["bytes_per_step"]  # the same measurements
                bps = f.get("bytes_per_step")
                if bps and disk_bytes_per_s:
                    f["disk_bound_ms"] = bps / disk_bytes_per_s * 1e3
                if floor and c.startswith("tfdump"):
                    limit = max(TARGET_RATIO.get(wl, 1.5) * floor, f.get("disk_bound_ms") or 0.0)
                    f["limit_ms"] = limit
                    f["within_limit"] = f["per_step_ms"] <= limit
            per_load[regime] = cfgs
        out[load] = per_load
    return out
