# PYTHON_ARGCOMPLETE_OK
"""The ``tfdump-fast`` command line: inspect, search, trace, compare, plot,
verify and convert dumps.

Exit status: 0 success, 1 a problem was found (inf/nan tensors, corruption)
or the dump could not be read, 2 a usage error (bad arguments, no such run,
a path that is not a dump).

Every command takes ``--json``: one JSON document on stdout instead of the
tables (schemas in docs/CLI.md); errors stay one line on stderr.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import errno
import json
import math
import os
import re
import sys
from typing import List, Optional

import numpy as np

from tfdump_fast.errors import (
    TfdumpCorruptionError,
    TfdumpError,
    TfdumpFormatError,
    TfdumpIOError,
    TfdumpNotFoundError,
    TfdumpTruncatedError,
    TfdumpUsageError,
)
from tfdump_fast.flight import TRIGGER_EVENT

PROG = "tfdump-fast"
EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2

# Python keyword arguments that library messages name, in CLI terms.
_CLI_TERMS = (
    ("pass overwrite=True", "pass --overwrite"),
    ("overwrite=True", "--overwrite"),
    ("allow_existing=True", "an empty or new directory"),
)


def _cli_terms(message: str) -> str:
    for python, cli in _CLI_TERMS:
        message = message.replace(python, cli)
    return message


def _jsonable(obj):
    """``obj`` with numpy scalars/arrays, bytes and non-finite floats made
    JSON-safe (nan, inf and -inf become the strings "nan", "inf", "-inf")."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, complex):
        return [_jsonable(obj.real), _jsonable(obj.imag)]
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "backslashreplace")
    return obj


def _emit_json(doc) -> None:
    json.dump(_jsonable(doc), sys.stdout, indent=1, sort_keys=True, allow_nan=False)
    sys.stdout.write("\n")


def _run_json(run, index=None) -> dict:
    return {"index": index, "name": run.name, "writer_id": "%016x" % run.writer_id, "run_id": run.run_id,
            "status": run.status, "error": run.error, "tensors": len(run), "dropped": run.dropped_tensors,
            "missing": run.missing_tensors, "payload_bytes": run.payload_bytes,
            "global_step": run.global_step, "begin_us": run.begin_us, "end_us": run.end_us}


def _fmt(x) -> str:
    return "-" if x is None else ("%.6g" % x if isinstance(x, float) else str(x))


def _stats_text(st) -> str:
    if not st:
        return ""
    parts = ["nan=%d inf=%d" % (st["nan"], st["inf"])]
    if st["min"] is not None:
        parts.append("min=%s max=%s mean=%s std=%s" % tuple(_fmt(st[k]) for k in ("min", "max", "mean", "std")))
    parts.append("zeros=%d" % st["zeros"])
    return " ".join(parts)


# --------------------------------------------------------------------------- helpers

def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0
    return str(n)


def _when(us: Optional[int]) -> str:
    if not us:
        return "-"
    return datetime.datetime.fromtimestamp(us / 1e6).strftime("%Y-%m-%d %H:%M:%S")


def _table(rows: List[List[str]], header: List[str], right: set = frozenset()) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    lines = []
    for row in [header] + rows:
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _open(root, skip_corrupt: bool = False):
    from tfdump_fast.reader import DumpReader

    reader = DumpReader(root, on_corruption="skip" if skip_corrupt else "raise")
    for path, nbytes in reader.torn_tails.items():
        print("%s: warning: %s ends with %d bytes of an incomplete frame (writer killed or still "
              "writing); they are ignored" % (PROG, path, nbytes), file=sys.stderr)
    return reader


def _status(run) -> str:
    s = run.status
    if run.missing_tensors:
        s += " (%d missing)" % run.missing_tensors
    return s


def _shape(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


# --------------------------------------------------------------------------- commands

def _indexed_runs(reader, step):
    """(index in `ls` order, run) of every run, or of those at global step ``step``."""
    out = list(enumerate(reader.runs))
    if step is not None:
        out = [(i, r) for i, r in out if r.global_step is not None and int(r.global_step) == step]
    return out


def cmd_ls(args) -> int:
    reader = _open(args.root)
    indexed = _indexed_runs(reader, args.step)
    runs = [r for _, r in indexed]
    if args.json:
        st = reader.storage()
        _emit_json({"root": reader.session_root, "writers": len(reader.writers), "bytes_on_disk": st["files"],
                    "tasks": reader.tasks(), "runs": [_run_json(r, i) for i, r in indexed],
                    "triggers": reader.events(TRIGGER_EVENT)})
        return EXIT_OK
    rows = []
    multi_writer = len({r.writer_id for r in runs}) > 1
    for i, run in indexed:
        row = [str(i), run.name]
        if multi_writer:
            row.append("w%016x" % run.writer_id)
        row += [_status(run), str(len(run)), str(run.dropped_tensors), _human(run.payload_bytes),
                "-" if run.global_step is None else str(run.global_step), _when(run.begin_us)]
        rows.append(row)
    header = ["#", "run"] + (["writer"] if multi_writer else []) + \
        ["status", "tensors", "dropped", "payload", "step", "started"]
    right = {0} | {header.index(h) for h in ("tensors", "dropped", "payload", "step")}
    if rows:
        print(_table(rows, header, right))
    st = reader.storage()
    logical = sum(r.payload_bytes for r in runs)
    print("%d run(s)%s from %d writer(s); %s on disk for %s of tensor payloads" % (
        len(runs), "" if args.step is None else " at global step %d" % args.step, len(reader.writers),
        _human(st["files"]), _human(logical)))
    tasks = reader.tasks()
    if tasks:  # a distributed job's store (README, "Distributed")
        print("tasks: %s" % ", ".join(tasks))
    for ev in reader.events(TRIGGER_EVENT):
        print(_trigger_line(ev, reader))
    for run in runs:
        if run.status == "failed" and run.error:
            print("run %s failed: %s" % (run.name, run.error.strip().splitlines()[0] if run.error.strip()
                                         else run.error))
    return EXIT_OK


def _trigger_line(ev: dict, reader) -> str:
    """One flight recorder trigger, as `ls` prints it."""
    names = {(r.writer_id, r.run_id): r.name for r in reader.runs}
    try:
        writer = int(str(ev.get("writer_id", "w0"))[1:], 16)
    except ValueError:
        writer = 0
    run = ev.get("run_name") or names.get((writer, ev.get("run_id")), "run id %s" % ev.get("run_id"))
    what = str(ev.get("reason"))
    tensor = ev.get("tensor")
    if isinstance(tensor, dict) and tensor.get("node"):
        what += " in %s:%s" % (tensor["node"], tensor.get("output_slot", 0))
    if ev.get("message"):
        what += " (%s)" % ev["message"]
    elif ev.get("error"):
        what += " (%s)" % str(ev["error"]).strip().splitlines()[0]
    runs = ev.get("runs") or []
    return "flight recorder trigger: %s at run %s; %d run(s) written" % (what, run, len(runs))


def _select_run(reader, run_text, step):
    """The run named by RUN or, with --step, the run at that global step."""
    if step is None:
        return reader.run(_run_arg(run_text))
    at = reader.runs_at_step(step)
    if not at:
        steps = sorted({int(r.global_step) for r in reader.runs if r.global_step is not None})
        raise TfdumpNotFoundError("no run at global step %d%s" % (step, (
            " (steps recorded: %s)" % _ranges(steps)) if steps else " (no run recorded a global step)"))
    if run_text is None:
        return at[-1]
    try:
        which = int(run_text)
    except ValueError:
        raise TfdumpUsageError("with --step, RUN is an index among the %d run(s) at that step"
                               % len(at)) from None
    if not -len(at) <= which < len(at):
        raise TfdumpNotFoundError("%d run(s) at global step %d; index %d is out of range" % (len(at), step, which))
    return at[which]


def _ranges(values) -> str:
    if len(values) <= 8:
        return ", ".join(map(str, values))
    return "%s, ..., %s (%d steps)" % (", ".join(map(str, values[:4])), values[-1], len(values))


def _run_overview(run, args) -> int:
    recs = run.records
    first = {}
    count = collections.Counter()
    for rec in recs:
        k = rec.key
        count[k] += 1
        first.setdefault(k, rec)
    graph = run.graph() if args.json or first else None
    if args.json:
        _emit_json({"run": _run_json(run), "fetches": run.fetches, "feed_keys": run.feed_keys,
                    "watch_keys": [{
                        "watch_key": k.watch_key, "tensor": k.tensor_name, "node": k.node,
                        "output_slot": k.output_slot, "debug_op": k.debug_op, "device": k.device,
                        "op": graph.op_type(k.node), "feed": graph.feed_of(k.node), "executions": count[k],
                        "dtype": rec.dtype_name, "shape": list(rec.shape), "nbytes": rec.nbytes,
                        "t_ms": (rec.wall_us - run.t0) / 1000.0} for k, rec in first.items()]})
        return EXIT_OK
    print("run %s: %s, %d tensors, %d watch keys%s" % (
        run.name, _status(run), len(run), len(run.watch_keys),
        "" if run.global_step is None else ", global step %s" % run.global_step))
    if run.fetches is not None:
        print("fetches: %s" % run.fetches)
    if run.feed_keys is not None:
        print("feed keys: %s" % run.feed_keys)
    if run.error:
        print("error: %s" % run.error)
    if not recs:
        return EXIT_OK
    t0 = run.t0
    multi_device = len({k.device for k in first}) > 1
    with_ops = len(graph) > 0
    rows = []
    for k, rec in first.items():
        row = ["%.3f" % ((rec.wall_us - t0) / 1000.0), str(count[k]), rec.dtype_name, _shape(rec.shape),
               _human(rec.nbytes), k.watch_key]
        if with_ops:
            feed = graph.feed_of(k.node)
            row.append((graph.op_type(k.node) or "?") + (" (feed %s)" % feed if feed else ""))
        if multi_device:
            row.append(k.device)
        rows.append(row)
    print(_table(rows, ["t (ms)", "runs", "dtype", "shape", "size", "watch key"] +
                 (["op"] if with_ops else []) + (["device"] if multi_device else []), {0, 1, 4}))
    return EXIT_OK


def cmd_show(args) -> int:
    from tfdump_fast.analysis import created_at, record_summary, resolve_tensor
    from tfdump_fast.tensor_stats import apply_slice, nonfinite_elements, parse_slice, split_slice, tensor_stats

    reader = _open(args.root)
    run_text, tensor = args.run, args.tensor
    try:
        run = _select_run(reader, run_text, args.step)
    except (TfdumpNotFoundError, TfdumpUsageError):
        # `show ROOT TENSOR`: a lone second argument that names no run but a
        # tensor of the last (or --step's) run means that tensor.
        if tensor is not None or run_text is None or not reader.runs:
            raise
        run = _select_run(reader, None, args.step)
        tensor = run_text
        try:
            resolve_tensor(run, split_slice(tensor)[0], regex=args.regex, device=args.device)
        except (TfdumpNotFoundError, TfdumpUsageError) as exc:
            raise TfdumpNotFoundError("%s is neither a run nor a tensor of run %s: %s" % (
                tensor, run.name, exc)) from None
    if tensor is None:
        return _run_overview(run, args)
    name, index_text = split_slice(tensor)
    index = parse_slice(index_text) if index_text is not None else None
    recs, resolved = resolve_tensor(run, name, regex=args.regex, device=args.device)
    if args.all:
        chosen = list(enumerate(recs))
    else:
        i = args.index if args.index >= 0 else len(recs) + args.index
        if not 0 <= i < len(recs):
            raise TfdumpUsageError("--index %d is out of range: %s ran %d time(s) in run %s" % (
                args.index, resolved, len(recs), run.name))
        chosen = [(i, recs[i])]
    shown = []
    for i, rec in chosen:
        value = rec.value
        if index is not None:
            value = apply_slice(value, index, index_text)
            if not isinstance(value, np.ndarray):
                value = np.asarray(value)
        summary = record_summary(rec, run)
        if index is not None:   # statistics of the slice
            summary["stats"] = tensor_stats(value)
            n, where = nonfinite_elements(value)
            summary["nonfinite"] = {"count": n, "first": [{"index": list(ix), "value": v} for ix, v in where]}
            summary["slice_shape"] = list(np.shape(value))
        summary["execution"] = i
        shown.append((rec, value, summary))
    site = created_at(run, recs[0].node_name, run.graph().feed_of(recs[0].node_name)) if recs else None
    if args.json:
        docs = []
        for rec, value, summary in shown:
            size = value.size if isinstance(value, np.ndarray) else 0
            summary["value"] = value if isinstance(value, np.ndarray) and size <= args.max_elements else None
            if not isinstance(value, np.ndarray):
                summary["value"] = repr(value)
            docs.append(summary)
        _emit_json({"run": run.name, "global_step": run.global_step, "tensor": resolved, "slice": index_text,
                    "executions": len(recs), "created_at": site, "shown": docs})
        return EXIT_OK
    np_opts = {"threshold": args.max_elements, "edgeitems": 3, "linewidth": 100}
    for rec, value, summary in shown:
        print("%s%s  (execution %d of %d, device %s)" % (
            rec.watch_key, "" if index_text is None else "[%s]" % index_text, summary["execution"] + 1,
            len(recs), rec.device))
        if resolved != name and resolved.startswith(name + " (fed as"):
            print("  fed input %s" % resolved)
        if site:
            print("  created at %s" % _site_text(site))
        print("  dtype %s, shape %s, %s, t=%.3f ms%s" % (
            rec.dtype_name, _shape(rec.shape), _human(rec.nbytes), (rec.wall_us - run.t0) / 1000.0,
            "" if index is None else ", slice shape %s" % _shape(summary["slice_shape"])))
        stats = _stats_text(summary["stats"])
        if stats:
            print("  " + stats)
        bad = summary["nonfinite"]
        if bad["count"]:
            print("  non-finite elements: %d; first at %s" % (bad["count"], ", ".join(
                "[%s]=%s" % (",".join(map(str, e["index"])), e["value"]) for e in bad["first"])))
        if isinstance(value, np.ndarray):
            with np.printoptions(**np_opts):
                text = np.array2string(value, separator=", ")
        else:
            text = repr(value)
        print("\n".join("  " + line for line in text.splitlines()))
    if not args.all and len(recs) > 1:
        print("(%d executions; --index N or --all to see others)" % len(recs))
    return EXIT_OK


def cmd_find(args) -> int:
    from tfdump_fast.analysis import EXCLUDE_BY
    from tfdump_fast.reader import has_inf_or_nan

    reader = _open(args.root)
    if args.run is not None or args.step is not None:
        runs = [_select_run(reader, args.run, args.step)] if args.step is None or args.run is not None \
            else reader.runs_at_step(args.step)
    else:
        runs = reader.runs
    found = []
    for run in runs:
        hits = run.find(has_inf_or_nan, first_n=args.first, exclude=args.exclude,
                        include_scratch=args.include_scratch, exclude_by=EXCLUDE_BY)
        if not hits:
            continue
        t0 = run.t0
        rows = []
        for rec in hits:
            v = rec.value
            nan = int(np.isnan(v).sum()) if isinstance(v, np.ndarray) else 0
            inf = int(np.isinf(v).sum()) if isinstance(v, np.ndarray) else 0
            rows.append({"index": rec.index, "t_ms": (rec.wall_us - t0) / 1000.0, "watch_key": rec.watch_key,
                         "device": rec.device, "dtype": rec.dtype_name, "shape": list(rec.shape),
                         "nan": nan, "inf": inf})
        found.append((run, rows))
    if args.json:
        _emit_json({"searched_runs": len(runs), "found": bool(found), "runs": [
            {"run": run.name, "global_step": run.global_step, "hits": rows} for run, rows in found]})
        return EXIT_PROBLEM if found else EXIT_OK
    for run, rows in found:
        print("run %s%s: first %d tensor(s) with inf or nan, in execution order:" % (
            run.name, "" if run.global_step is None else " (global step %s)" % run.global_step, len(rows)))
        print(_table([[str(r["index"]), "%.3f" % r["t_ms"], r["watch_key"], r["dtype"], _shape(r["shape"]),
                       str(r["nan"]), str(r["inf"])] for r in rows],
                     ["#", "t (ms)", "watch key", "dtype", "shape", "nan", "inf"], {0, 1, 5, 6}))
    if not found:
        print("no tensor with inf or nan in %d run(s)" % len(runs))
        return EXIT_OK
    return EXIT_PROBLEM


def cmd_trace(args) -> int:
    from tfdump_fast.analysis import trace

    reader = _open(args.root)
    if args.run is None and args.step is None and args.tensor is None:
        # the first run with a bad tensor
        candidates = reader.runs
    else:
        candidates = [_select_run(reader, args.run, args.step)]
    result = None
    for run in candidates:
        result = trace(run, start=args.tensor, exclude=args.exclude, include_scratch=args.include_scratch)
        if result is not None:
            break
    if args.json:
        _emit_json({"searched_runs": len(candidates), "trace": result})
        return EXIT_PROBLEM if result else EXIT_OK
    if result is None:
        print("no tensor with inf or nan in %d run(s)" % len(candidates))
        return EXIT_OK
    first, origin = result["first_bad"], result["origin"]
    print("run %s%s: first tensor with inf or nan: %s (execution #%d)" % (
        result["run"], "" if result["global_step"] is None else " (global step %s)" % result["global_step"],
        first["watch_key"], first["index"]))
    if not result["graphs"]:
        print("(the run stored no partition graphs: no inputs to follow)")
    for depth, step in enumerate(result["path"]):
        rec = step["record"]
        fed = " (feed %s)" % step["fed_as"] if step["fed_as"] else ""
        print("%s%s%s  %s%s  %s" % ("  " * (depth + 1), "<- " if depth else "", step["tensor"], step["op"] or "?",
                                    fed, _shape(rec["shape"])))
        print("%s     output: %s" % ("  " * depth, _stats_text(rec["stats"])))
        if step.get("created_at"):
            print("%s     created at %s" % ("  " * depth, _site_text(step["created_at"])))
        for inp in step["inputs"]:
            what = inp["op"] or "?"
            if inp["feed"]:
                what += ", feed %s" % inp["feed"]
            if not inp["dumped"]:
                state = "not dumped" + (" (inf/nan upstream via %s)" % inp["via"] if inp.get("via") else "")
            else:
                state = ("BAD " if inp["bad"] else "") + _stats_text(inp["stats"])
            print("%s     input %s (%s): %s" % ("  " * depth, inp["tensor"], what, state))
    if origin.get("created_at"):
        where = " -- created at %s" % _site_text(origin["created_at"])
    else:
        where = ""
    if origin["fed_as"]:
        print("origin: the fed input %s (stored as %s) holds inf or nan: it came in with the feed" % (
            origin["fed_as"], origin["tensor"]))
    elif all(i["bad"] is False for i in origin["inputs"]):
        print("origin: %s (op %s): its inputs are finite, its output is not%s" % (
            origin["tensor"], origin["op"] or "?", where))
    else:
        print("origin: %s (op %s): the first op on the path without a bad dumped input (inputs not dumped "
              "cannot be checked)%s" % (origin["tensor"], origin["op"] or "?", where))
    return EXIT_PROBLEM


def _site_text(site: dict) -> str:
    return "%s:%d in %s" % (site["file"], site["line"], site["function"])


def _runs_for(reader, args):
    runs = reader.runs
    if getattr(args, "step_from", None) is not None:
        runs = [r for r in runs if r.global_step is not None and r.global_step >= args.step_from]
    if getattr(args, "step_to", None) is not None:
        runs = [r for r in runs if r.global_step is not None and r.global_step < args.step_to]
    return runs


def cmd_history(args) -> int:
    from tfdump_fast.analysis import history

    reader = _open(args.root)
    result = history(_runs_for(reader, args), args.tensor, execution=args.index, device=args.device)
    if args.json:
        _emit_json(result)
        return EXIT_OK
    print("%s over %d run(s) (execution %d of each):" % (args.tensor, len(result["rows"]), args.index))
    rows = []
    for r in result["rows"]:
        st = r["stats"] or {}
        rows.append([_fmt(r["global_step"]), r["run"], str(r["executions"]), r["dtype"], _shape(r["shape"])] +
                    [_fmt(st.get(k)) for k in ("min", "max", "mean", "std", "nan", "inf")])
    print(_table(rows, ["step", "run", "runs", "dtype", "shape", "min", "max", "mean", "std", "nan", "inf"],
                 {0, 2, 5, 6, 7, 8, 9, 10}))
    return EXIT_OK


def cmd_diff(args) -> int:
    from tfdump_fast.analysis import diff

    reader = _open(args.root)
    a, b = reader.run(_run_arg(args.run_a)), reader.run(_run_arg(args.run_b))
    result = diff(a, b, atol=args.atol)
    if args.json:
        _emit_json(result)
        return EXIT_OK
    print("%s -> %s: %d tensor(s) changed, %d unchanged, %d only in %s, %d only in %s" % (
        a.name, b.name, len(result["changed"]), result["unchanged"], len(result["only_a"]), a.name,
        len(result["only_b"]), b.name))
    if result["changed"]:
        print(_table([[_fmt(c["max_abs_diff"]), "%d/%d" % (c["changed_executions"], c["executions_a"]),
                       c["watch_key"], c["note"] or ""] for c in result["changed"][:args.top]],
                     ["max |a-b|", "changed", "watch key", "note"], {0, 1}))
        if len(result["changed"]) > args.top:
            print("(%d more; --top N)" % (len(result["changed"]) - args.top))
    for label, keys in ((a.name, result["only_a"]), (b.name, result["only_b"])):
        if keys:
            print("only in %s: %s%s" % (label, ", ".join(keys[:args.top]), ", ..." if len(keys) > args.top else ""))
    return EXIT_OK


def cmd_plot(args) -> int:
    from tfdump_fast.analysis import history, resolve_tensor
    from tfdump_fast.plotting import plot_tensor

    reader = _open(args.root)
    run = _select_run(reader, args.run, args.step)
    recs, resolved = resolve_tensor(run, args.tensor, device=args.device)
    i = args.index if args.index >= 0 else len(recs) + args.index
    if not 0 <= i < len(recs):
        raise TfdumpUsageError("--index %d is out of range: %s ran %d time(s) in run %s" % (
            args.index, resolved, len(recs), run.name))
    rec = recs[i]
    rows = None
    if not args.no_history:
        rows = history(_runs_for(reader, args), rec.tensor_name, execution=args.index, device=rec.device)["rows"]
    out = args.output or re.sub(r"[^A-Za-z0-9_.-]+", "_", rec.tensor_name) + ".png"
    plot_tensor(out, "%s, run %s%s" % (rec.watch_key, run.name, "" if run.global_step is None else
                                         " (step %s)" % run.global_step), rec.value, rows, bins=args.bins)
    if args.json:
        _emit_json({"output": os.path.abspath(out), "run": run.name, "tensor": rec.tensor_name,
                    "history_runs": len(rows or [])})
    else:
        print(out)
    return EXIT_OK


def cmd_convert(args) -> int:
    from tfdump_fast.conversion import convert

    reader = _open(args.root)
    if args.layout == "tfdbg2":
        if args.run:
            raise TfdumpUsageError("convert --layout tfdbg2 converts the whole store: leave --run out")
        files = convert(reader, args.dest, overwrite=args.overwrite, layout="tfdbg2",
                        tensor_debug_mode=args.tensor_debug_mode)
        if args.json:
            _emit_json({"dest": os.path.abspath(args.dest), "run_dirs": [], "files": list(files)})
            return EXIT_OK
        for f in files:
            print(f)
        print("converted the TF2 store to tfdbg v2's DebugEvents files in %s; open them with "
              "tensorboard --logdir %s (Debugger V2) or DebugDataReader" % (args.dest, args.dest),
              file=sys.stderr)
        return EXIT_OK
    if args.tensor_debug_mode != "FULL_TENSOR":
        raise TfdumpUsageError("--tensor-debug-mode is for --layout tfdbg2")
    runs = [_run_arg(r) for r in args.run] if args.run else None
    dirs = convert(reader, args.dest, runs=runs, progress=not args.no_progress and sys.stderr.isatty(),
                   overwrite=args.overwrite)
    if args.json:
        _emit_json({"dest": os.path.abspath(args.dest), "run_dirs": list(dirs)})
        return EXIT_OK
    for d in dirs:
        print(d)
    print("converted %d run(s) to tfdbg's layout in %s; open one with "
          "tensorflow.python.debug.lib.debug_data.DebugDumpDir(<run dir>)" % (len(dirs), args.dest),
          file=sys.stderr)
    return EXIT_OK


def cmd_import(args) -> int:
    from tfdump_fast.importer import import_tfdbg
    from tfdump_fast.tf2_importer import import_tfdbg2, is_tfdbg2_dump

    if is_tfdbg2_dump(args.tfdbg_dir):
        names = import_tfdbg2(args.tfdbg_dir, args.root)
        if args.json:
            _emit_json({"root": os.path.abspath(args.root), "runs": list(names)})
            return EXIT_OK
        print("imported a tfdbg v2 dump: %d run(s) into %s (read them with tfdump_fast.Tf2Dump)"
              % (len(names), args.root))
        return EXIT_OK

    names = import_tfdbg(args.tfdbg_dir, args.root, progress=not args.no_progress and sys.stderr.isatty())
    if args.json:
        _emit_json({"root": os.path.abspath(args.root), "runs": list(names)})
        return EXIT_OK
    print("imported %d run(s) into %s: %s" % (len(names), args.root, ", ".join(names)))
    return EXIT_OK


def cmd_stats(args) -> int:
    reader = _open(args.root)
    runs = [reader.run(_run_arg(args.run))] if args.run is not None else reader.runs
    st = reader.storage()
    logical = sum(r.payload_bytes for r in runs)
    if args.json:
        return _stats_json(reader, runs, st, logical, args.top)
    print("store %s: %d shard file(s), %s on disk, %d frame(s)" % (
        reader.session_root, len([p for w in reader.writers for p in w["shards"]]), _human(st["files"]),
        st["frames"]))
    print("codecs: " + (", ".join("%s x%d" % kv for kv in sorted(st["codecs"].items())) or "-"))
    if st["data_raw"]:
        print("tensor payloads: %s logical, %s distinct (dedup %.2fx), %s compressed (%.2fx); "
              "record tables %s; overall ratio %.2fx (raw tensors : stored bytes)" % (
                  _human(logical), _human(st["data_raw"]), logical / max(1, st["data_raw"]),
                  _human(st["data_stored"]), st["data_raw"] / max(1, st["data_stored"]),
                  _human(st["table_stored"]), logical / max(1, st["data_stored"] + st["table_stored"])))
    print("metadata (run events, graphs): %s" % _human(st["meta_stored"]))
    dropped = sum(r.dropped_tensors for r in runs)
    print("runs: %d, tensors: %d, dropped: %d (%s), missing: %d" % (
        len(runs), sum(len(r) for r in runs), dropped, _human(sum(r.dropped_bytes for r in runs)),
        sum(r.missing_tensors for r in runs)))
    for w in reader.writers:
        for ev in w["events"]:
            if ev.get("event") not in ("run_begin", "run_end", "drops", "writer_open", "writer_close"):
                print("writer %s: %s" % (w["name"], ", ".join("%s=%s" % kv for kv in sorted(ev.items()))))
    by_node, by_op, by_type, largest = _byte_tables(reader, runs, args.top)
    ops = any(name != "?" for name in by_type)
    n = args.top
    print()
    print("bytes per node (top %d):" % n)
    print(_table([[_human(b), name] for name, b in by_node.most_common(n)], ["payload", "node"], {0}))
    if ops:
        print()
        print("bytes per op type (top %d):" % n)
        print(_table([[_human(b), name] for name, b in by_type.most_common(n)], ["payload", "op type"], {0}))
    print()
    print("bytes per debug op:")
    print(_table([[_human(b), name] for name, b in by_op.most_common()], ["payload", "debug op"], {0}))
    print()
    print("largest tensors (top %d):" % n)
    rows = []
    for nbytes, run, i in largest:
        rec = run.records[i]
        rows.append([_human(nbytes), rec.dtype_name, _shape(rec.shape), rec.watch_key, run.name])
    print(_table(rows, ["size", "dtype", "shape", "watch key", "run"], {0}))
    return EXIT_OK


def _byte_tables(reader, runs, top):
    by_node, by_op, by_type = collections.Counter(), collections.Counter(), collections.Counter()
    largest = []
    for run in runs:
        g = run.tensor_ids
        sizes = reader.index.tensors["payload_len"][g]
        graph = run.graph()
        for kid, nbytes in zip(*_group_sum(reader.index.key_of[g], sizes)):
            k = reader.index.keys[kid]
            by_node[k.node] += nbytes
            by_op[k.debug_op] += nbytes
            by_type[graph.op_type(k.node) or "?"] += nbytes
        if len(g):
            order = np.argsort(-sizes.astype(np.int64), kind="stable")[:top]
            largest.extend((int(sizes[i]), run, int(i)) for i in order)
    largest.sort(key=lambda x: -x[0])
    return by_node, by_op, by_type, largest[:top]


def _stats_json(reader, runs, st, logical, top) -> int:
    by_node, by_op, by_type, largest = _byte_tables(reader, runs, top)
    _emit_json({
        "root": reader.session_root, "storage": st, "payload_bytes": logical, "runs": len(runs),
        "tensors": sum(len(r) for r in runs), "dropped": sum(r.dropped_tensors for r in runs),
        "dropped_bytes": sum(r.dropped_bytes for r in runs), "missing": sum(r.missing_tensors for r in runs),
        "by_node": [{"node": n, "bytes": b} for n, b in by_node.most_common(top)],
        "by_op_type": [{"op": n, "bytes": b} for n, b in by_type.most_common(top)],
        "by_debug_op": [{"debug_op": n, "bytes": b} for n, b in by_op.most_common()],
        "largest": [{"bytes": b, "run": run.name, "watch_key": run.records[i].watch_key,
                     "dtype": run.records[i].dtype_name, "shape": list(run.records[i].shape)}
                    for b, run, i in largest],
    })
    return EXIT_OK


def _group_sum(keys: np.ndarray, values: np.ndarray):
    if not len(keys):
        return [], []
    uniq, inv = np.unique(keys, return_inverse=True)
    sums = np.bincount(inv, weights=values.astype(np.float64))
    return uniq.tolist(), [int(s) for s in sums]


def cmd_verify(args) -> int:
    reader = _open(args.root, skip_corrupt=True)
    bar = None
    if not args.no_progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=1, unit="B", unit_scale=True, desc="verifying")

    def progress(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()
    try:
        problems = reader.verify(progress=progress if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    st = reader.storage()
    n_tensors = sum(len(r) for r in reader.runs)
    torn = reader.torn_tails
    if args.json:
        _emit_json({"ok": not problems, "problems": list(problems), "torn_tails": torn,
                    "shards": len([p for w in reader.writers for p in w["shards"]]), "frames": st["frames"],
                    "tensors": n_tensors, "runs": len(reader.runs)})
        return EXIT_PROBLEM if problems else EXIT_OK
    if problems:
        print("CORRUPT: %d problem(s) in %s:" % (len(problems), reader.session_root))
        for p in problems:
            print("  - " + p)
        for path, nbytes in sorted(torn.items()):
            print("  (%s ends with %d bytes of an incomplete frame: its writer was killed mid-frame)"
                  % (path, nbytes))
        print("Intact frames are still readable: open with DumpReader(root, on_corruption='skip').")
        return EXIT_PROBLEM
    print("OK: %d shard file(s), %d frame(s), %d tensor(s) in %d run(s); every checksum matches%s" % (
        len([p for w in reader.writers for p in w["shards"]]), st["frames"], n_tensors, len(reader.runs),
        "; %d file(s) end in a torn frame (ignored)" % len(torn) if torn else ""))
    return EXIT_OK


def _run_arg(text):
    if text is None:
        return -1
    try:
        return int(text)
    except ValueError:
        return text


# --------------------------------------------------------------------------- parser

def _count(minimum: int, what: str):
    """argparse type: an integer >= ``minimum``, refused with a clear message otherwise."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError("%s must be an integer, not %r" % (what, text)) from None
        if value < minimum:
            raise argparse.ArgumentTypeError("%s must be %s, not %d" % (
                what, "a positive integer" if minimum == 1 else "an integer >= %d" % minimum, value))
        return value
    return parse


JSON_HELP = "print one JSON document instead of tables (schema: docs/CLI.md)"


def _version() -> str:
    from tfdump_fast import __version__

    return "%s %s" % (PROG, __version__)


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=fmt,
        description="Inspect, search, trace, compare, plot, verify and convert tfdump-fast tensor dumps.",
        epilog="Exit status: 0 success, 1 a problem was found (inf/nan tensors, corruption, unreadable "
               "data), 2 usage error.\nEvery command takes --json (one JSON document on stdout; schemas in "
               "docs/CLI.md).\nRun '%s <command> --help' for a command's options." % PROG)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    sub.required = True
    run_help = ("run: index in 'ls' order (negative counts from the end), or name run_<us>_<n> "
                "(w<writer id>/run_... when several writers used the name); default: the last run")
    step_help = "select runs by the global step recorded for them (with RUN: an index among those runs)"
    exclude_help = ("skip tensors whose node or node:slot name matches REGEX at its start, or whose op type "
                    "matches REGEX in full (repeatable), e.g. '^gradients/', 'bn/FusedBatchNormV3:5', "
                    "'FusedBatchNormV3'")
    scratch_help = ("also search outputs that hold scratch space, not values (FusedBatchNormV3:5, "
                    "oneDNN's workspace, and the like): skipped by default, their contents are undefined")

    def command(name, **kw):
        p = sub.add_parser(name, formatter_class=fmt, **kw)
        p.add_argument("--json", action="store_true", help=JSON_HELP)
        return p

    p = command("ls", help="list runs with their status, sizes and global step",
                description="List the runs of a session root: name, status (complete, failed, "
                            "truncated), tensor and drop counts, payload size, global step, start.")
    p.add_argument("root", help="session root (directory of *.tfds files)")
    p.add_argument("--step", type=int, help="only runs at this global step")
    p.set_defaults(func=cmd_ls)

    p = command("show", help="a run's watch keys, or one tensor's values and statistics",
                description="Without TENSOR: the run's watch keys in execution order, with how often each "
                            "ran, dtype, shape, size and op type.\nWith TENSOR: its value(s), statistics "
                            "(min, max, mean, std, nan/inf/zero counts) and where its nan/inf elements are. "
                            "TENSOR is node, node:slot or node:slot:debug_op, optionally sliced numpy-style "
                            "(quote it: 'dense/MatMul:0[2:4, 0]'); a fed input by its graph name (x for "
                            "_arg_x_0_1); or a substring (--regex: a regular expression) matching one tensor.",
                epilog="examples:\n  %(prog)s /tmp/dump\n  %(prog)s /tmp/dump -1 dense/MatMul:0\n"
                       "  %(prog)s /tmp/dump 'mlp/hidden:0[5]'\n  %(prog)s /tmp/dump sigma_estimate/Sqrt --step 40\n"
                       "  %(prog)s /tmp/dump run_1700000000000000_3 loop/add:0 --all")
    p.add_argument("root", help="session root")
    p.add_argument("run", nargs="?", help=run_help)
    p.add_argument("tensor", nargs="?", help="node, node:slot or node:slot:debug_op, optionally [index]")
    p.add_argument("--step", type=int, help=step_help)
    p.add_argument("--index", type=int, default=0,
                   help="which execution of the tensor to show (while loops run it many times; "
                        "negative counts from the end; default 0)")
    p.add_argument("--all", action="store_true", help="show every execution")
    p.add_argument("--device", help="device, when the node ran on several")
    p.add_argument("--regex", action="store_true", help="TENSOR is a regular expression")
    p.add_argument("--max-elements", type=_count(1, "--max-elements"), default=200,
                   help="summarize arrays with more elements than this (default 200)")
    p.set_defaults(func=cmd_show)

    p = command("find", help="first tensors holding inf or nan",
                description="Search runs for the first tensors (in execution order) holding inf "
                            "or nan -- where a numerical problem starts. Exit status 1 if any is "
                            "found, 0 if none.",
                epilog="example:\n  %(prog)s /tmp/dump --exclude '^gradients/'")
    p.add_argument("root", help="session root")
    p.add_argument("run", nargs="?", help="run to search (default: every run); " + run_help.split(";")[0])
    p.add_argument("--inf-nan", action="store_true",
                   help="find tensors holding inf or nan (the default and only search)")
    p.add_argument("--step", type=int, help="only runs at this global step")
    p.add_argument("--exclude", action="append", metavar="REGEX", help=exclude_help)
    p.add_argument("--include-scratch", action="store_true", help=scratch_help)
    p.add_argument("--first", type=_count(0, "--first"), default=10, metavar="N",
                   help="report at most N tensors per run (default 10; 0: all)")
    p.set_defaults(func=cmd_find)

    p = command("trace", help="from the first inf/nan upstream to the op that made it",
                description="Find the first tensor holding inf or nan (in the first run that has one, or in "
                            "RUN), then walk its inputs upstream through the stored partition graphs to the "
                            "origin: the first op whose inputs are finite and whose output is not. Prints "
                            "each op on the way with its type and its inputs' statistics. Exit status 1 if a "
                            "bad tensor was found, 0 if none.",
                epilog="examples:\n  %(prog)s /tmp/dump\n  %(prog)s /tmp/dump -1 --from loss:0")
    p.add_argument("root", help="session root")
    p.add_argument("run", nargs="?", help="run to trace (default: the first run with inf or nan); " +
                   run_help.split(";")[0])
    p.add_argument("--from", dest="tensor", metavar="TENSOR",
                   help="start from this tensor's first bad execution instead of the run's first bad tensor")
    p.add_argument("--step", type=int, help=step_help)
    p.add_argument("--exclude", action="append", metavar="REGEX", help=exclude_help)
    p.add_argument("--include-scratch", action="store_true", help=scratch_help)
    p.set_defaults(func=cmd_trace)

    p = command("history", help="one tensor's statistics over runs (global steps)",
                description="For each run that dumped TENSOR: global step, executions, dtype, shape and "
                            "statistics (min, max, mean, std, nan, inf) of one execution.")
    p.add_argument("root", help="session root")
    p.add_argument("tensor", help="node or node:slot (a fed input by its graph name)")
    p.add_argument("--index", type=int, default=0, help="which execution in each run (default 0)")
    p.add_argument("--device", help="device, when the node ran on several")
    p.add_argument("--from-step", dest="step_from", type=int, help="only runs at this global step or later")
    p.add_argument("--to-step", dest="step_to", type=int, help="only runs before this global step")
    p.set_defaults(func=cmd_history)

    p = command("diff", help="which tensors changed between two runs, by how much",
                description="Compare the tensors of two runs watch key by watch key (execution by "
                            "execution; equal payloads are recognised by their hash without decoding): "
                            "which changed, the largest absolute difference, and which exist in one run only.")
    p.add_argument("root", help="session root")
    p.add_argument("run_a", help="first run (index or name)")
    p.add_argument("run_b", help="second run (index or name)")
    p.add_argument("--atol", type=float, default=0.0, help="ignore differences up to this (default 0)")
    p.add_argument("--top", type=_count(1, "--top"), default=20, metavar="N", help="rows shown (default 20)")
    p.set_defaults(func=cmd_diff)

    p = command("plot", help="PNG: a tensor's histogram and its statistics over steps",
                description="Write a PNG with the histogram of one tensor's finite values (nan/inf counts in "
                            "the legend) and, when several runs dumped it, its min/mean/max over global "
                            "steps. Needs matplotlib: pip install 'tfdump-fast[plot]'.")
    p.add_argument("root", help="session root")
    p.add_argument("run", nargs="?", help=run_help)
    p.add_argument("tensor", help="node or node:slot")
    p.add_argument("-o", "--output", help="PNG file to write (default: <tensor>.png)")
    p.add_argument("--step", type=int, help=step_help)
    p.add_argument("--index", type=int, default=0, help="which execution (default 0)")
    p.add_argument("--device", help="device, when the node ran on several")
    p.add_argument("--bins", type=_count(1, "--bins"), default=50, help="histogram bins (default 50)")
    p.add_argument("--no-history", action="store_true", help="histogram only")
    p.set_defaults(func=cmd_plot)

    p = command("convert", help="write runs in tfdbg's dump layout",
                description="Write runs as tfdbg's file:// debug URLs would have: one run_<us>_<n> "
                            "directory per run, readable by tfdbg's DebugDumpDir and "
                            "`python -m tensorflow.python.debug.cli.offline_analyzer --dump_dir=DIR`.")
    p.add_argument("root", help="session root")
    p.add_argument("dest", help="destination directory (created if missing)")
    p.add_argument("--run", action="append", metavar="RUN",
                   help="convert only this run (repeatable; index or name); default: all runs")
    p.add_argument("--overwrite", action="store_true", help="write into run directories that exist")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--layout", choices=("tfdbg", "tfdbg2"), default="tfdbg",
                   help="tfdbg (default: run_* directories) or tfdbg2 (tfdbg v2's DebugEvents files "
                        "of a TF2 store, for DebugDataReader and TensorBoard's Debugger V2)")
    p.add_argument("--tensor-debug-mode", default="FULL_TENSOR",
                   choices=("FULL_TENSOR", "CURT_HEALTH", "CONCISE_HEALTH", "FULL_HEALTH", "SHAPE"),
                   help="with --layout tfdbg2: values (default) or tfdbg v2's summaries of them "
                        "(TensorBoard's Debugger V2 needs a summary mode)")
    p.set_defaults(func=cmd_convert)

    p = command("import", help="import a tfdbg dump into a new store",
                description="Read a tfdbg dump (a session root of run_* directories, or one run "
                            "directory) into a new tfdump-fast session root. Converting it back "
                            "reproduces the same files. A tfdbg v2 dump (tfdbg_events.* files of "
                            "tf.debugging.experimental.enable_dump_debug_info, FULL_TENSOR) is "
                            "detected and imported as a TF2 store (needs TensorFlow).")
    p.add_argument("tfdbg_dir", help="tfdbg dump directory")
    p.add_argument("root", help="new session root (empty or missing directory)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_import)

    p = command("stats", help="where the bytes go",
                description="Storage statistics: bytes per node, op type and debug op, compression "
                            "and dedup ratios, codecs used, drops, and the largest tensors.")
    p.add_argument("root", help="session root")
    p.add_argument("run", nargs="?", help="only this run (default: all); " + run_help.split(";")[0])
    p.add_argument("--top", type=_count(1, "--top"), default=10, metavar="N", help="rows per table (default 10)")
    p.set_defaults(func=cmd_stats)

    p = command("verify", help="check every checksum",
                description="Read every frame of every shard and check all checksums and that "
                            "every payload a tensor refers to is present. Exit status 1 and a "
                            "report if anything is corrupt. A torn last frame (writer killed) is "
                            "reported but is not corruption.")
    p.add_argument("root", help="session root")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_verify)
    try:  # shell completion, when the optional argcomplete is installed
        import argcomplete
    except ImportError:
        pass
    else:
        argcomplete.autocomplete(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``tfdump-fast`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (TfdumpCorruptionError, TfdumpTruncatedError) as exc:
        print("%s: error: %s" % (PROG, _cli_terms(str(exc))), file=sys.stderr)
        return EXIT_PROBLEM
    except (TfdumpUsageError, TfdumpNotFoundError, TfdumpFormatError) as exc:
        print("%s: error: %s" % (PROG, _cli_terms(str(exc))), file=sys.stderr)
        return EXIT_USAGE
    except TfdumpIOError as exc:
        print("%s: error: %s" % (PROG, exc.strerror or exc), file=sys.stderr)
        return EXIT_USAGE if exc.errno == errno.ENOENT else EXIT_PROBLEM
    except TfdumpError as exc:
        print("%s: error: %s" % (PROG, _cli_terms(str(exc))), file=sys.stderr)
        return EXIT_PROBLEM
    except BrokenPipeError:  # `tfdump-fast show ... | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
