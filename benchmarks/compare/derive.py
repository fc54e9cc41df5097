"""Figures derived from the measured ones: ratios to the capture floor,
disk-bound limits, the rnn reference check, reader speed-ups, and the
project's targets (reported, never asserted)."""

from __future__ import annotations

from typing import Any, Dict, List

from benchmarks.compare.config import CONFIGS, RNN_REFERENCE, TARGETS


def derive(results: Dict[str, Any], args) -> None:
    """Adds the derived figures to `results` in place, and the target checks as results["targets"]."""
    bw = (results.get("dd") or {}).get("limit_bytes_per_s")
    checks: List[Dict[str, Any]] = []
    for regime, models in results["regimes"].items():
        for model, figs in models.items():
            _ratios_vs_floor(figs, regime, bw)
            checks.extend(_workload_checks(figs, model, regime))
    _rnn_reference_check(results, args)
    checks.extend(_reader_speedups(results))
    results["targets"] = checks


def _ok(f) -> bool:
    return bool(f) and f.get("status") == "ok" and f.get("time_ms")


def _ratios_vs_floor(figs: Dict[str, Dict[str, Any]], regime: str, bw) -> None:
    """Each v1 configuration's ratio to the capture floor (to no hook where the
    floor is missing) and, in sustained, the disk-bound limit at `bw` bytes/s."""
    floor = figs.get("floor")
    none = figs.get("none")
    ref = floor if _ok(floor) else (none if _ok(none) else None)
    ref_name = "floor" if _ok(floor) else "none"
    for name, f in figs.items():
        if not _ok(f) or not CONFIGS.get(name) or CONFIGS[name].group != "v1" or ref is None:
            continue
        f["ratio_vs_floor"] = f["time_ms"]["median"] / ref["time_ms"]["median"]
        f["ratio_vs_floor_ref"] = ref_name
        if regime == "sustained" and bw and f.get("bytes_per_step") is not None:
            limit_ms = ref["time_ms"]["median"] + f["bytes_per_step"] / bw * 1e3
            f["disk_bound_limit_ms"] = limit_ms
            f["disk_bound_limit_ratio_vs_floor"] = limit_ms / ref["time_ms"]["median"]


def _workload_checks(figs: Dict[str, Dict[str, Any]], model: str, regime: str) -> List[Dict[str, Any]]:
    """The targets one workload in one regime is checked against."""
    checks: List[Dict[str, Any]] = []
    unsampled = figs.get("tfdump-unsampled")
    if _ok(unsampled) and unsampled.get("ratio") is not None:
        checks.append({"target": f"{model} {regime}: unsampled steps within "
                       f"{TARGETS['unsampled_vs_none']}x of no hook", "value": unsampled["ratio"],
                       "limit": TARGETS["unsampled_vs_none"],
                       "met": unsampled["ratio"] <= TARGETS["unsampled_vs_none"]})
    ours = figs.get("tfdump")
    if not _ok(ours):
        return checks
    rv = ours.get("ratio_vs_floor")
    if model == "rnn":
        checks.append({"target": f"rnn {regime}: tfdump-fast within {TARGETS['rnn_vs_floor']}x "
                       f"of the {ours.get('ratio_vs_floor_ref')}", "value": rv,
                       "limit": TARGETS["rnn_vs_floor"],
                       "met": rv is not None and rv <= TARGETS["rnn_vs_floor"]})
    if model == "mlp" and regime == "burst":
        checks.append({"target": f"mlp burst: tfdump-fast within {TARGETS['mlp_burst_vs_floor']}x "
                       f"of the {ours.get('ratio_vs_floor_ref')}", "value": rv,
                       "limit": TARGETS["mlp_burst_vs_floor"],
                       "met": rv is not None and rv <= TARGETS["mlp_burst_vs_floor"]})
    if regime == "sustained":
        lim = max(TARGETS["sustained_vs_floor"], ours.get("disk_bound_limit_ratio_vs_floor") or 0)
        checks.append({"target": f"{model} sustained: tfdump-fast at most max(1.6x, disk-bound "
                       f"limit) of the {ours.get('ratio_vs_floor_ref')}", "value": rv, "limit": lim,
                       "met": rv is not None and rv <= lim})
    v2 = figs.get("tfdbg2")
    if _ok(v2) and ours.get("ratio") and v2.get("ratio"):
        checks.append({"target": f"{model} {regime}: tfdump-fast ratio below tfdbg v2's",
                       "value": ours["ratio"], "limit": v2["ratio"], "met": ours["ratio"] < v2["ratio"]})
    return checks


def _rnn_reference_check(results: Dict[str, Any], args) -> None:
    # The rnn workload is meant to reproduce the reference tfdbg dump of one
    # step (17,276 files, 1.34 GB); record how close this run's graph is.
    rnn_tfdbg = ((results["regimes"].get("burst") or results["regimes"].get("sustained") or {})
                 .get("rnn", {}).get("tfdbg") or {})
    if rnn_tfdbg.get("status") == "ok" and args.scale == "full":
        files, nbytes = rnn_tfdbg.get("files_per_step"), rnn_tfdbg.get("bytes_per_step")
        results["rnn_reference_check"] = {
            "reference_files": RNN_REFERENCE["files"], "reference_bytes": RNN_REFERENCE["bytes"],
            "files_per_step": files, "bytes_per_step": nbytes,
            "files_deviation": files / RNN_REFERENCE["files"] - 1 if files else None,
            "bytes_deviation": nbytes / RNN_REFERENCE["bytes"] - 1 if nbytes else None,
        }


def _reader_speedups(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Adds results["reader"]["speedup"] (DebugDumpDir time / ours); returns the reader's target checks."""
    checks: List[Dict[str, Any]] = []
    rd = results.get("reader") or {}
    ours, theirs = rd.get("tfdump") or {}, rd.get("tfdbg") or {}
    speed = {}
    for op in ("open", "list", "find", "load_all"):
        a, b = (ours.get(f"{op}_ms") or {}), (theirs.get(f"{op}_ms") or {})
        if a.get("median") and b.get("median"):
            speed[op] = b["median"] / a["median"]
    if speed:
        rd["speedup"] = speed
        for op in ("find", "load_all"):
            if op in speed:
                checks.append({"target": f"reader {op}: {TARGETS['reader_speedup_low']:.0f}-"
                               f"{TARGETS['reader_speedup_high']:.0f}x faster than DebugDumpDir",
                               "value": speed[op], "limit": TARGETS["reader_speedup_low"],
                               "met": speed[op] >= TARGETS["reader_speedup_low"]})
    return checks
