"""results.md and ratio_to_floor.png of ``benchmarks.steps``."""

from __future__ import annotations

from typing import Any, Dict, List

from benchmarks.steps.summary import REGIME_ORDER, TARGET_RATIO

OURS = ("tfdump", "tfdump-nodurability")


def _ms(x) -> str:
    return "-" if x is None else (f"{x:.1f}" if x >= 1 else f"{x:.2f}")


def _ratio(x) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _mb(x) -> str:
    return "-" if x is None else f"{x / 1e6:.2f}"


def _rows(results: Dict[str, Any]):
    for wl, per_load in results["summary"].items():
        for load, regimes in per_load.items():
            for regime in REGIME_ORDER:
                if regime in regimes:
                    yield wl, load, regime, regimes[regime]


def markdown(results: Dict[str, Any]) -> str:
    meta = results["meta"]
    lines: List[str] = [
        "# benchmarks.steps results", "",
        f"Commit {meta.get('git_commit')}{' (dirty)' if meta.get('git_dirty') else ''}, "
        f"{meta.get('cpu_model')}, {meta.get('cpu_count')} CPUs; {'quick mode (timings mean nothing); ' if meta['quick'] else ''}"
        f"run took {meta.get('elapsed_s', 0):.0f} s. Load `loaded` = {meta.get('busy')} CPU-bound processes "
        f"started by the harness. Disk: {_mb(meta.get('disk_bytes_per_s'))} MB/s sequential "
        f"(dd, {meta.get('disk_source')}).", "",
        "Per-step time = (N steps back to back + the hook's `end()`, which flushes and closes the writer) / N; "
        "medians over repetitions (min-max in the JSON). `short`/`long`: a fresh hook per measurement; "
        "`sustained`: median step of the second half of the long measurements (no flush in it). "
        "Ratios are to `floor` (a no-op memcbk callback, same watches) measured in the same run under the same load. "
        "limit = max(target x floor, disk-bound), target "
        + ", ".join(f"{k} {v}x" for k, v in TARGET_RATIO.items()) + ".", "",
        "| workload | load | regime | N x reps | none ms | floor ms | tfdump ms | tfdump/floor | no-durability ms "
        "| no-dur/floor | MB/step | disk-bound ms | limit ms | within |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for wl, load, regime, cfgs in _rows(results):
        g = lambda c, k: (cfgs.get(c) or {}).get(k)  # noqa: E731
        within = g("tfdump", "within_limit")
        lines.append(
            f"| {wl} | {load} | {regime} | {g('floor', 'n')} x{g('floor', 'reps')} | {_ms(g('none', 'per_step_ms'))} "
            f"| {_ms(g('floor', 'per_step_ms'))} | {_ms(g('tfdump', 'per_step_ms'))} | {_ratio(g('tfdump', 'ratio_to_floor'))} "
            f"| {_ms(g('tfdump-nodurability', 'per_step_ms'))} | {_ratio(g('tfdump-nodurability', 'ratio_to_floor'))} "
            f"| {_mb(g('tfdump', 'bytes_per_step'))} | {_ms(g('tfdump', 'disk_bound_ms'))} "
            f"| {_ms(g('tfdump', 'limit_ms'))} | {'-' if within is None else ('yes' if within else '**no**')} |")
    for other in ("tfdbg", "tfdump-summary", "tfdump-health", "tfdbg-summary"):
        if not any(other in cfgs for *_, cfgs in _rows(results)):
            continue
        lines += ["", f"| workload | load | regime | {other} ms | {other}/floor | {other} MB/step |",
                  "|---|---|---|---|---|---|"]
        for wl, load, regime, cfgs in _rows(results):
            t = cfgs.get(other)
            if t:
                lines.append(f"| {wl} | {load} | {regime} | {_ms(t['per_step_ms'])} | {_ratio(t.get('ratio_to_floor'))} "
                             f"| {_mb(t.get('bytes_per_step'))} |")
    left_out = [f"{wl} {c}: `{e}`" for wl, r in results["workloads"].items()
                for c, e in (r.get("config_errors") or {}).items()]
    if left_out:
        lines += ["", "Configurations left out (their step failed): " + "; ".join(left_out)]
    if any(c.startswith("flight") for *_, cfgs in _rows(results) for c in cfgs):
        lines += ["", "## Flight recorder (keep_last=4; flight-trigger: hook.persist() every 10 steps)", "",
                  "Ring MB: bytes held at the end of the steps; RSS: the benchmark process's resident memory then "
                  "(every configuration's session lives in it). Tensors written/step: by the writer, incl. the "
                  "untimed first step.", "",
                  "| workload | load | regime | floor ms | flight ms | flight/floor | flight MB/step "
                  "| flight tensors written/step | ring MB | RSS MB | trigger ms | trigger/floor | trigger MB/step "
                  "| no-scan ms | no-scan/floor |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for wl, load, regime, cfgs in _rows(results):
            g = lambda c, k: (cfgs.get(c) or {}).get(k)  # noqa: E731
            ring = g("flight", "ring") or {}
            if not any(cfgs.get(c) for c in ("flight", "flight-trigger", "flight-noscan")):
                continue
            wr = ring.get("tensors_written_per_step")
            lines.append(
                f"| {wl} | {load} | {regime} | {_ms(g('floor', 'per_step_ms'))} | {_ms(g('flight', 'per_step_ms'))} "
                f"| {_ratio(g('flight', 'ratio_to_floor'))} | {_mb(g('flight', 'bytes_per_step'))} "
                f"| {'-' if wr is None else f'{wr:.0f}'} | {_ms(ring.get('held_mb'))} | {_ms(ring.get('rss_mb'))} "
                f"| {_ms(g('flight-trigger', 'per_step_ms'))} | {_ratio(g('flight-trigger', 'ratio_to_floor'))} "
                f"| {_mb(g('flight-trigger', 'bytes_per_step'))} | {_ms(g('flight-noscan', 'per_step_ms'))} "
                f"| {_ratio(g('flight-noscan', 'ratio_to_floor'))} |")
    lines += [
        "", "## CPU per step (ms of CPU time per step, timed window)", "",
        "From /proc/self/task/<tid>/stat (utime+stime). `main`: the Python main thread; `TF`: every other thread "
        "alive before and after the window that is not ours; `writer`: the process total minus those (our "
        "`tfdump-*` threads, which end at close()).", "",
        "| workload | load | regime | config | wall ms | main | TF | writer | total |", "|---|---|---|---|---|---|---|---|---|",
    ]
    for wl, load, regime, cfgs in _rows(results):
        if regime == "sustained":
            continue
        for c in ("floor",) + OURS:
            f = cfgs.get(c)
            if f and f.get("cpu_total_ms") is not None:
                lines.append(f"| {wl} | {load} | {regime} | {c} | {_ms(f['per_step_ms'])} | {_ms(f['cpu_main_ms'])} "
                             f"| {_ms(f['cpu_tf_ms'])} | {_ms(f['cpu_named_ms'])} | {_ms(f['cpu_total_ms'])} |")
    lines += [
        "", "## Engine counters (tfdump, summed over repetitions)", "",
        "| workload | load | regime | tensors/step | frames by codec | codec changes (backoff) | queue peak MB "
        "| dropped | first step ms | end() ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for wl, load, regime, cfgs in _rows(results):
        f = cfgs.get("tfdump") or {}
        e = f.get("engine")
        if not e:
            continue
        frames = ", ".join(f"{k} {v}" for k, v in sorted(e["frames_by_codec"].items()))
        lines.append(f"| {wl} | {load} | {regime} | {e['tensors_per_step']:.0f} | {frames} | {e['codec_changes']} "
                     f"| {_mb(e['queue_high_water_max'])} | {e['tensors_dropped']} | {_ms(f.get('first_step_ms'))} "
                     f"| {_ms(f.get('finish_ms'))} |")
    cut = [f"{wl} {load} ({c['loads'][load]['reps_done']} repetitions)" for wl, c in results["workloads"].items()
           for load in c.get("loads", {}) if c["loads"][load].get("truncated_by_budget")]
    if cut:
        lines += ["", "Repetitions cut short to keep the run within --budget-min: " + "; ".join(cut) + "."]
    checks = [(wl, c.get("watch_check")) for wl, c in results["workloads"].items()]
    lines += ["", "Watch sets (floor vs hook, equal): " + "; ".join(
        f"{wl} {chk.get('floor_watches')} watches" if chk else f"{wl} not checked" for wl, chk in checks)]
    errors = {wl: c["error"] for wl, c in results["workloads"].items() if c.get("error")}
    if errors:
        lines += ["", "## Errors", ""] + [f"- {wl}: `{e}`" for wl, e in errors.items()]
    return "\n".join(lines) + "\n"


def plot(results: Dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups, series = [], {}
    loads = sorted({load for _, load, _, _ in _rows(results)}, key=lambda x: x != "quiet")
    for wl, per_load in results["summary"].items():
        regimes = [r for r in REGIME_ORDER if any(r in per_load[ld] for ld in per_load)]
        for regime in regimes:
            groups.append(f"{wl}\n{regime}")
            for load in loads:
                for c in OURS:
                    v = (((per_load.get(load) or {}).get(regime) or {}).get(c) or {}).get("ratio_to_floor")
                    series.setdefault((load, c), []).append(v if v is not None else float("nan"))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) + 2), 4.5))
    width = 0.8 / max(1, len(series))
    colors = {"quiet": "tab:blue", "loaded": "tab:red"}
    for i, ((load, c), vals) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, vals, width, label=f"{c}, {load}", color=colors.get(load, "gray"),
               alpha=1.0 if c == "tfdump" else 0.5, hatch=None if c == "tfdump" else "//")
    for y, style in ((1.0, "-"), (1.3, "--"), (1.5, ":")):
        ax.axhline(y, color="black", linestyle=style, linewidth=0.8)
    finite = [v for vals in series.values() for v in vals if v == v]
    if finite and max(finite) > 5:
        ax.set_yscale("log")  # a few starved cells must not flatten the rest
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, fontsize=8)
    ax.set_ylabel("per-step time / floor (same load)")
    ax.set_title("tfdump-fast vs a no-op memcbk callback (lines: 1.0, 1.3, 1.5)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
