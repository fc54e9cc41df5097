"""results.md: the tables for BENCHMARKS.md, one function per section."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from benchmarks.compare.config import CONFIGS


def _fmt_ms(x: Optional[float]) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def _fmt_bytes(x: Optional[float]) -> str:
    if x is None:
        return "-"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.3g} {unit}"
    return f"{x:.0f} B"


def _peak_mb(r: Optional[Dict[str, Any]]) -> Optional[float]:
    if not r or r.get("status") != "ok":
        return None
    return r.get("ru_maxrss_mb") or r.get("rss_peak_mb")


def _drain(f: Dict[str, Any]) -> str:
    d = (f.get("drain_ms") or {}).get("median")
    return f"{_fmt_ms(d)} ms" if d is not None else "-"


def _cell_time(f: Optional[Dict[str, Any]]) -> str:
    if not f:
        return "-"
    st = f.get("status")
    if st == "skipped":
        return "skipped¹"
    if st != "ok":
        return "error²"
    t = f.get("time_ms") or {}
    ratio = f.get("ratio")
    r = f"**{ratio:.2f}x** " if ratio is not None else ""
    return f"{r}{_fmt_ms(t.get('median'))} ms (IQR {_fmt_ms(t.get('iqr'))})"


def models_in(results) -> List[str]:
    """The models of a run, in the order they first appear."""
    seen: List[str] = []
    for models in results["regimes"].values():
        for m in models:
            if m not in seen:
                seen.append(m)
    return seen



def render_markdown(results: Dict[str, Any]) -> str:
    """The whole of results.md."""
    models = models_in(results)
    configs = list(results["configs"])
    md: List[str] = []
    md += _header(results["meta"])
    md += _machine(results.get("machine") or {}, results.get("dd") or {})
    md += _workloads(results, models)
    for regime, rmodels in results["regimes"].items():
        md += _regime_times(results, regime, rmodels, models, configs)
        md += _regime_bytes(results, rmodels, models, configs)
        md += _regime_internals(results, rmodels, models, configs)
    if results.get("memory"):
        md += _memory(results, models, configs)
    if results.get("reader"):
        md += _reader(results["reader"])
    if results.get("targets"):
        md += _targets(results["targets"])
    md += _skipped_and_failed(results)
    md += _reproduce(results["meta"])
    return "\n".join(md)


def _header(meta: Dict[str, Any]) -> List[str]:
    md = ["# tfdump-fast benchmark results\n",
          f"Run {meta['started']} → {meta.get('finished', '?')} ({meta.get('wall_s', 0):.0f} s), "
          f"`{meta['command']}`\n"]
    if meta["quick"]:
        md.append("> **Quick mode**: tiny workloads and a few steps; a smoke test of the harness. "
                  "These numbers mean nothing.\n")
    return md


def _machine(m: Dict[str, Any], dd: Dict[str, Any]) -> List[str]:
    md = ["## Machine\n"]
    md.append(f"- CPU: {m.get('Model name', '?')}, {m.get('CPU(s)', m.get('cpu_count'))} CPUs"
              f"{', hypervisor ' + m['Hypervisor vendor'] if m.get('Hypervisor vendor') else ''}")
    md.append(f"- Memory: {m.get('MemTotal', '?')} (available at start {m.get('MemAvailable', '?')}); "
              f"vm.dirty_ratio {m.get('vm.dirty_ratio', '?')}, "
              f"vm.dirty_background_ratio {m.get('vm.dirty_background_ratio', '?')}")
    md.append(f"- Dump disk: `{(m.get('mount') or '?').strip()}`")
    md.append(f"- Software: Python {m.get('python')}, " + ", ".join(
        f"{k} {v}" for k, v in (m.get("versions") or {}).items()) + f"; git {m.get('git_commit')}"
              f"{' (dirty)' if m.get('git_dirty') else ''}")
    parts = []
    for k in ("direct", "fdatasync"):
        d = dd.get(k) or {}
        parts.append(f"{k}: {d['bytes_per_s'] / 1e6:.0f} MB/s" if d.get("bytes_per_s") else
                     f"{k}: {d.get('error', 'n/a')}")
    md.append(f"- Sequential write (dd, {dd.get('mib')} MiB, bs=4M): " + "; ".join(parts) +
              f". The disk-bound limit uses {dd.get('limit_source')}.\n")
    return md


def _workloads(results: Dict[str, Any], models: List[str]) -> List[str]:
    md = ["## Workloads\n",
          "| model | description | tfdbg files/step | tfdbg bytes/step | baseline step (v1 / tf.function) |",
          "|---|---|---:|---:|---:|"]
    burst = results["regimes"].get("burst") or results["regimes"].get("sustained") or {}
    for model in models:
        w = results["workloads"].get(model, {})
        desc = (w.get("v1") or w.get("v2") or {}).get("description", "")
        figs = burst.get(model, {})
        tb = figs.get("tfdbg") or {}
        base = (figs.get("none") or {}).get("step_ms") or {}
        b2 = (figs.get("tf2-none") or {}).get("step_ms") or {}
        md.append(f"| {model} | {desc} | {_fmt_ms(tb.get('files_per_step'))} | "
                  f"{_fmt_bytes(tb.get('bytes_per_step'))} | {_fmt_ms(base.get('median'))} ms / "
                  f"{_fmt_ms(b2.get('median'))} ms |")
    md.append("")
    chk = results.get("rnn_reference_check")
    if chk:
        md.append(f"rnn against the reference tfdbg dump of one step ({chk['reference_files']} files, "
                  f"{_fmt_bytes(chk['reference_bytes'])}): {chk['files_per_step']:.0f} files "
                  f"({chk['files_deviation']:+.1%}), {_fmt_bytes(chk['bytes_per_step'])} "
                  f"({chk['bytes_deviation']:+.1%}).\n")
    return md


def _table_head(models: List[str]) -> List[str]:
    return ["| configuration | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]


def _regime_times(results, regime: str, rmodels, models: List[str], configs: List[str]) -> List[str]:
    md = [f"## {regime.capitalize()} regime\n"]
    if regime == "burst":
        md.append("Median step time per configuration (IQR), and its ratio to the baseline of the same "
                  "run (v1 configurations: no hook; tfdbg v2: the undebugged tf.function). Our writer "
                  "drains between blocks, untimed.\n")
    else:
        md.append("Effective step time (IQR across blocks): each block's steps plus the writer flush "
                  "and `os.sync()` that put its data on disk, divided by its steps; ratio to the "
                  "baseline of the same run.\n")
    md += _table_head(models)
    for name in configs:
        md.append(f"| {results['configs'][name]['label']} | " + " | ".join(
            _cell_time(rmodels.get(model, {}).get(name)) for model in models) + " |")
    md.append("")
    return md


def _regime_bytes(results, rmodels, models: List[str], configs: List[str]) -> List[str]:
    md = ["Bytes and files on disk per step:\n"] + _table_head(models)
    for name in configs:
        if not CONFIGS[name].writes:
            continue
        cells = []
        for model in models:
            f = rmodels.get(model, {}).get(name) or {}
            if f.get("status") != "ok":
                cells.append("-")
                continue
            if f.get("files_in_dump") is not None:  # a few append-only files for the whole run
                cells.append(f"{_fmt_bytes(f.get('bytes_per_step'))}/step, {f['files_in_dump']} files in all")
            else:
                cells.append(f"{_fmt_bytes(f.get('bytes_per_step'))}/step, "
                             f"{f.get('files_per_step') or 0:.0f} files/step")
        md.append(f"| {results['configs'][name]['label']} | " + " | ".join(cells) + " |")
    md.append("")
    return md


def _regime_internals(results, rmodels, models: List[str], configs: List[str]) -> List[str]:
    ours_rows = [n for n in configs if CONFIGS[n].ours]
    if not ours_rows:
        return []
    md = ["tfdump-fast internals (vs floor = ratio to the capture floor, or to no hook where the "
          "floor is missing; queue high-water; drops; frames per codec; drain after a block):\n",
          "| configuration | model | vs floor | disk-bound limit | queue high-water | drops | "
          "codec frames | drain (median) |",
          "|---|---|---:|---:|---:|---:|---|---:|"]
    for name in ours_rows:
        for model in models:
            f = rmodels.get(model, {}).get(name) or {}
            if f.get("status") != "ok":
                continue
            lim = f.get("disk_bound_limit_ratio_vs_floor")
            md.append(
                f"| {results['configs'][name]['label']} | {model} | "
                f"{(f.get('ratio_vs_floor') or 0):.2f}x ({f.get('ratio_vs_floor_ref', '-')}) | "
                f"{f'{lim:.2f}x' if lim else '-'} | {_fmt_bytes(f.get('queue_high_water'))} | "
                f"{f.get('tensors_dropped', '-')} | {f.get('frames_by_codec') or '-'} | "
                f"{_drain(f)} |")
    md.append("")
    return md


def _memory(results, models: List[str], configs: List[str]) -> List[str]:
    md = ["## Peak resident memory\n"]
    method = "one child process per configuration (`ru_maxrss`)" if results["meta"]["args"].get(
        "memory") == "isolated" else "sampled inside the shared timing process (indicative only)"
    md.append(f"Peak RSS in MB, {method}; in brackets the difference to the baseline (no hook, or the "
              "undebugged tf.function for tfdbg v2).\n")
    md += _table_head(models)
    for name in configs:
        cells = []
        for model in models:
            r = results["memory"].get(model, {}).get(name)
            if not r:
                cells.append("-")
            elif r.get("status") != "ok":
                cells.append(r.get("status", "error"))
            else:
                v = _peak_mb(r)
                base = _peak_mb(results["memory"].get(model, {}).get(CONFIGS[name].baseline))
                delta = f" ({v - base:+.0f})" if v and base and name != CONFIGS[name].baseline else ""
                cells.append(f"{v:.0f}{delta}" if v else "-")
        md.append(f"| {results['configs'][name]['label']} | " + " | ".join(cells) + " |")
    md.append("")
    return md


def _reader(rd: Dict[str, Any]) -> List[str]:
    md = [f"## Reader ({rd.get('model', '?')} dump, one step)\n"]
    ours, theirs = rd.get("tfdump") or {}, rd.get("tfdbg") or {}
    md.append(f"tfdbg dump: {theirs.get('files', '-')} files, {_fmt_bytes(theirs.get('bytes'))}; "
              f"tfdump-fast dump: {ours.get('files', '-')} files, {_fmt_bytes(ours.get('bytes'))}. "
              f"Median of {rd.get('repeats')} repeats, warm page cache.\n")
    md.append("| operation | DebugDumpDir (ms) | DumpReader (ms) | speed-up |")
    md.append("|---|---:|---:|---:|")
    sp = rd.get("speedup") or {}
    for op in ("open", "list", "find", "load_all"):
        a = (theirs.get(f"{op}_ms") or {}).get("median")
        b = (ours.get(f"{op}_ms") or {}).get("median")
        md.append(f"| {op.replace('_', '-')} | {_fmt_ms(a)} | {_fmt_ms(b)} | "
                  f"{f'{sp[op]:.1f}x' if op in sp else '-'} |")
    if ours.get("status") in ("skipped", "error"):
        md.append(f"\ntfdump-fast reader: {ours.get('status')}: {ours.get('reason') or ours.get('error')}")
    if theirs.get("error"):
        md.append(f"\nDebugDumpDir: error: {theirs['error']}")
    conv = rd.get("convert") or {}
    if conv.get("status") == "ok":
        md.append(f"\nConvert to tfdbg layout: {conv['seconds']:.2f} s, {conv['files']} files, "
                  f"{_fmt_bytes(conv['bytes'])} ({_fmt_bytes(conv.get('bytes_per_s'))}/s, "
                  f"{conv.get('files_per_s') or 0:.0f} files/s); DebugDumpDir reads "
                  f"{conv.get('debugdumpdir_tensors')} tensors from it.")
    elif conv:
        md.append(f"\nConvert: {conv.get('status')}: {conv.get('reason') or conv.get('error')}")
    md.append("")
    return md


def _targets(targets: List[Dict[str, Any]]) -> List[str]:
    md = ["## Targets (reported, not asserted)\n", "| target | measured | limit | met |", "|---|---:|---:|:---:|"]
    for c in targets:
        v = c.get("value")
        md.append(f"| {c['target']} | {f'{v:.2f}' if v is not None else '-'} | {c['limit']:.2f} | "
                  f"{'yes' if c['met'] else 'no'} |")
    md.append("")
    return md


def _skipped_and_failed(results: Dict[str, Any]) -> List[str]:
    notes = []
    for regime, rmodels in results["regimes"].items():
        for model, figs in rmodels.items():
            for name, f in figs.items():
                if f.get("status") == "skipped":
                    notes.append(f"¹ {regime}/{model}/{name}: skipped: {f.get('reason')}")
                elif f.get("status") != "ok":
                    notes.append(f"² {regime}/{model}/{name}: error: {(f.get('error') or '')[:400]}")
    if not notes:
        return []
    md = ["## Skipped and failed configurations\n"]
    # The same reason repeats for every model; show each once.
    seen = set()
    for n in notes:
        key = n.split(": ", 1)[1] if ": " in n else n
        if key in seen:
            continue
        seen.add(key)
        md.append(f"- {n}")
    md.append("")
    return md


def _reproduce(meta: Dict[str, Any]) -> List[str]:
    return ["## Reproduce\n", f"```\n{meta['command']}\n```\n"]
