"""The ``tfdump-fast`` command line: inspect, search, verify and convert dumps.

Exit status: 0 success, 1 a problem was found (inf/nan tensors, corruption)
or the dump could not be read, 2 a usage error (bad arguments, no such run,
a path that is not a dump).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import errno
import os
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

PROG = "tfdump-fast"
EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


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

def cmd_ls(args) -> int:
    reader = _open(args.root)
    runs = reader.runs
    rows = []
    multi_writer = len({r.writer_id for r in runs}) > 1
    for i, run in enumerate(runs):
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
    print("%d run(s) from %d writer(s); %s on disk for %s of tensor payloads" % (
        len(runs), len(reader.writers), _human(st["files"]), _human(logical)))
    tasks = reader.tasks()
    if tasks:  # a distributed job's store (README, "Distributed")
        print("tasks: %s" % ", ".join(tasks))
    for run in runs:
        if run.status == "failed" and run.error:
            print("run %s failed: %s" % (run.name, run.error.strip().splitlines()[0] if run.error.strip()
                                         else run.error))
    return EXIT_OK


def _stats_line(value) -> str:
    if not isinstance(value, np.ndarray) or value.dtype == object or value.size == 0:
        return ""
    v = value
    if v.dtype.kind not in "biufc":
        try:
            v = v.astype(np.float64)
        except (TypeError, ValueError):
            return ""
    parts = []
    if v.dtype.kind in "fc":
        nan = int(np.isnan(v).sum())
        inf = int(np.isinf(v).sum())
        finite = v[np.isfinite(v)]
        parts.append("nan=%d inf=%d" % (nan, inf))
    else:
        finite = v
    if finite.size and v.dtype.kind != "c":
        f = finite.astype(np.float64)
        parts.append("min=%.6g max=%.6g mean=%.6g std=%.6g" % (f.min(), f.max(), f.mean(), f.std()))
    parts.append("zeros=%d" % int((v == 0).sum()))
    return " ".join(parts)


def cmd_show(args) -> int:
    reader = _open(args.root)
    try:
        run = reader.run(_run_arg(args.run))
    except TfdumpNotFoundError:
        # `show ROOT TENSOR`: a lone second argument that names no run but a
        # tensor of the last run means that tensor.
        if args.tensor is not None or not reader.runs:
            raise
        try:
            reader.runs[-1].select(args.run, device=args.device)
        except (TfdumpNotFoundError, TfdumpUsageError):
            raise TfdumpNotFoundError("%s is neither a run nor a tensor of the last run (%s)" % (
                args.run, reader.runs[-1].name)) from None
        run, args.tensor = reader.runs[-1], args.run
    if args.tensor is None:
        recs = run.records
        print("run %s: %s, %d tensors, %d watch keys" % (run.name, _status(run), len(run), len(run.watch_keys)))
        if run.fetches is not None:
            print("fetches: %s" % run.fetches)
        if run.feed_keys is not None:
            print("feed keys: %s" % run.feed_keys)
        if run.error:
            print("error: %s" % run.error)
        if not recs:
            return EXIT_OK
        t0 = run.t0
        first = {}
        count = collections.Counter()
        for rec in recs:
            k = rec.key
            count[k] += 1
            first.setdefault(k, rec)
        multi_device = len({k.device for k in first}) > 1
        rows = []
        for k, rec in first.items():
            row = ["%.3f" % ((rec.wall_us - t0) / 1000.0), str(count[k]), rec.dtype_name, _shape(rec.shape),
                   _human(rec.nbytes), k.watch_key]
            if multi_device:
                row.append(k.device)
            rows.append(row)
        print(_table(rows, ["t (ms)", "runs", "dtype", "shape", "size", "watch key"] +
                     (["device"] if multi_device else []), {0, 1, 4}))
        return EXIT_OK
    recs = run.select(args.tensor, device=args.device)
    if args.all:
        chosen = list(enumerate(recs))
    else:
        index = args.index if args.index >= 0 else len(recs) + args.index
        if not 0 <= index < len(recs):
            raise TfdumpUsageError("--index %d is out of range: %s ran %d time(s) in run %s" % (
                args.index, args.tensor, len(recs), run.name))
        chosen = [(index, recs[index])]
    np_opts = {"threshold": args.max_elements, "edgeitems": 3, "linewidth": 100}
    for i, rec in chosen:
        value = rec.value
        print("%s  (execution %d of %d, device %s)" % (rec.watch_key, i + 1, len(recs), rec.device))
        print("  dtype %s, shape %s, %s, t=%.3f ms" % (rec.dtype_name, _shape(rec.shape), _human(rec.nbytes),
                                                      (rec.wall_us - run.t0) / 1000.0))
        stats = _stats_line(value)
        if stats:
            print("  " + stats)
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
    from tfdump_fast.reader import has_inf_or_nan

    if not args.inf_nan:
        raise TfdumpUsageError("say what to find: --inf-nan (tensors holding inf or nan)")
    reader = _open(args.root)
    runs = [reader.run(_run_arg(args.run))] if args.run is not None else reader.runs
    found_any = False
    for run in runs:
        hits = run.find(has_inf_or_nan, first_n=args.first, exclude=args.exclude)
        if not hits:
            continue
        found_any = True
        print("run %s: first %d tensor(s) with inf or nan, in execution order:" % (run.name, len(hits)))
        rows = []
        t0 = run.t0
        for rec in hits:
            v = rec.value
            nan = int(np.isnan(v).sum()) if isinstance(v, np.ndarray) else 0
            inf = int(np.isinf(v).sum()) if isinstance(v, np.ndarray) else 0
            rows.append([str(rec.index), "%.3f" % ((rec.wall_us - t0) / 1000.0), rec.watch_key,
                         rec.dtype_name, _shape(rec.shape), str(nan), str(inf)])
        print(_table(rows, ["#", "t (ms)", "watch key", "dtype", "shape", "nan", "inf"], {0, 1, 5, 6}))
    if not found_any:
        print("no tensor with inf or nan in %d run(s)" % len(runs))
        return EXIT_OK
    return EXIT_PROBLEM


def cmd_convert(args) -> int:
    from tfdump_fast.conversion import convert

    reader = _open(args.root)
    runs = [_run_arg(r) for r in args.run] if args.run else None
    dirs = convert(reader, args.dest, runs=runs, progress=not args.no_progress and sys.stderr.isatty(),
                   overwrite=args.overwrite)
    for d in dirs:
        print(d)
    print("converted %d run(s) to tfdbg's layout in %s; open one with "
          "tensorflow.python.debug.lib.debug_data.DebugDumpDir(<run dir>)" % (len(dirs), args.dest),
          file=sys.stderr)
    return EXIT_OK


def cmd_import(args) -> int:
    from tfdump_fast.importer import import_tfdbg

    names = import_tfdbg(args.tfdbg_dir, args.root, progress=not args.no_progress and sys.stderr.isatty())
    print("imported %d run(s) into %s: %s" % (len(names), args.root, ", ".join(names)))
    return EXIT_OK


def _graph_op_types(graphs) -> dict:
    """node name -> op type, from serialized GraphDefs (no TensorFlow)."""
    from tfdump_fast._tfproto import iter_fields

    ops = {}
    for g in graphs:
        for field, wire, node in iter_fields(g):
            if field != 1 or wire != 2:
                continue
            name = op = None
            for f, w, v in iter_fields(node):
                if w == 2 and f == 1:
                    name = bytes(v).decode("utf-8", "replace")
                elif w == 2 and f == 2:
                    op = bytes(v).decode("utf-8", "replace")
            if name:
                ops[name] = op
    return ops


def cmd_stats(args) -> int:
    reader = _open(args.root)
    runs = [reader.run(_run_arg(args.run))] if args.run is not None else reader.runs
    st = reader.storage()
    logical = sum(r.payload_bytes for r in runs)
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
            if ev.get("event") in ("disk_budget_exceeded", "writer_error", "codec_change"):
                print("writer %s: %s" % (w["name"], ", ".join("%s=%s" % kv for kv in sorted(ev.items()))))
    by_node = collections.Counter()
    by_op = collections.Counter()
    by_type = collections.Counter()
    largest = []
    ops = _graph_op_types([g for r in runs for g in r.graphs]) if runs else {}
    for run in runs:
        g = run.tensor_ids
        sizes = reader.index.tensors["payload_len"][g]
        keys = reader.index.key_of[g]
        for kid, nbytes in zip(*_group_sum(keys, sizes)):
            k = reader.index.keys[kid]
            by_node[k.node] += nbytes
            by_op[k.debug_op] += nbytes
            by_type[ops.get(k.node, "?")] += nbytes
        if len(g):
            top = np.argsort(-sizes.astype(np.int64), kind="stable")[:args.top]
            largest.extend((int(sizes[i]), run, int(i)) for i in top)
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
    largest.sort(key=lambda x: -x[0])
    rows = []
    for nbytes, run, i in largest[:n]:
        rec = run.records[i]
        rows.append([_human(nbytes), rec.dtype_name, _shape(rec.shape), rec.watch_key, run.name])
    print(_table(rows, ["size", "dtype", "shape", "watch key", "run"], {0}))
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

def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=fmt,
        description="Inspect, search, verify and convert tfdump-fast tensor dumps.",
        epilog="Exit status: 0 success, 1 a problem was found (inf/nan tensors, corruption, unreadable "
               "data), 2 usage error.\nRun '%s <command> --help' for a command's options." % PROG)
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    sub.required = True
    run_help = ("run: index in 'ls' order (negative counts from the end), or name run_<us>_<n> "
                "(w<writer id>/run_... when several writers used the name); default: the last run")

    p = sub.add_parser("ls", formatter_class=fmt, help="list runs with their status and sizes",
                       description="List the runs of a session root: name, status (complete, failed, "
                                   "truncated), tensor and drop counts, payload size, global step, start.")
    p.add_argument("root", help="session root (directory of *.tfds files)")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("show", formatter_class=fmt, help="a run's watch keys, or one tensor's values",
                       description="Without TENSOR: the run's watch keys in execution order, with how "
                                   "often each ran, dtype, shape and size.\nWith TENSOR: its value(s) and "
                                   "statistics (min, max, mean, std, nan/inf/zero counts).",
                       epilog="examples:\n  %(prog)s /tmp/dump\n  %(prog)s /tmp/dump -1 dense/MatMul:0\n"
                              "  %(prog)s /tmp/dump run_1700000000000000_3 loop/add:0 --all")
    p.add_argument("root", help="session root")
    p.add_argument("run", nargs="?", help=run_help)
    p.add_argument("tensor", nargs="?", help="node, node:slot or node:slot:debug_op")
    p.add_argument("--index", type=int, default=0,
                   help="which execution of the tensor to show (while loops run it many times; "
                        "negative counts from the end; default 0)")
    p.add_argument("--all", action="store_true", help="show every execution")
    p.add_argument("--device", help="device, when the node ran on several")
    p.add_argument("--max-elements", type=int, default=200,
                   help="summarize arrays with more elements than this (default 200)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("find", formatter_class=fmt, help="first tensors holding inf or nan",
                       description="Search runs for the first tensors (in execution order) holding inf "
                                   "or nan -- where a numerical problem starts. Exit status 1 if any is "
                                   "found, 0 if none.",
                       epilog="example:\n  %(prog)s /tmp/dump --inf-nan --exclude '^gradients/'")
    p.add_argument("root", help="session root")
    p.add_argument("run", nargs="?", help="run to search (default: every run); " + run_help.split(";")[0])
    p.add_argument("--inf-nan", action="store_true", help="find tensors holding inf or nan")
    p.add_argument("--exclude", action="append", metavar="REGEX",
                   help="skip nodes whose name matches REGEX at its start (repeatable)")
    p.add_argument("--first", type=int, default=10, metavar="N",
                   help="report at most N tensors per run (default 10; 0: all)")
    p.set_defaults(func=cmd_find)

    p = sub.add_parser("convert", formatter_class=fmt, help="write runs in tfdbg's dump layout",
                       description="Write runs as tfdbg's file:// debug URLs would have: one run_<us>_<n> "
                                   "directory per run, readable by tfdbg's DebugDumpDir and "
                                   "`python -m tensorflow.python.debug.cli.offline_analyzer --dump_dir=DIR`.")
    p.add_argument("root", help="session root")
    p.add_argument("dest", help="destination directory (created if missing)")
    p.add_argument("--run", action="append", metavar="RUN",
                   help="convert only this run (repeatable; index or name); default: all runs")
    p.add_argument("--overwrite", action="store_true", help="write into run directories that exist")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("import", formatter_class=fmt, help="import a tfdbg dump into a new store",
                       description="Read a tfdbg dump (a session root of run_* directories, or one run "
                                   "directory) into a new tfdump-fast session root. Converting it back "
                                   "reproduces the same files.")
    p.add_argument("tfdbg_dir", help="tfdbg dump directory")
    p.add_argument("root", help="new session root (empty or missing directory)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("stats", formatter_class=fmt, help="where the bytes go",
                       description="Storage statistics: bytes per node, op type and debug op, compression "
                                   "and dedup ratios, codecs used, drops, and the largest tensors.")
    p.add_argument("root", help="session root")
    p.add_argument("run", nargs="?", help="only this run (default: all); " + run_help.split(";")[0])
    p.add_argument("--top", type=int, default=10, metavar="N", help="rows per table (default 10)")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("verify", formatter_class=fmt, help="check every checksum",
                       description="Read every frame of every shard and check all checksums and that "
                                   "every payload a tensor refers to is present. Exit status 1 and a "
                                   "report if anything is corrupt. A torn last frame (writer killed) is "
                                   "reported but is not corruption.")
    p.add_argument("root", help="session root")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_verify)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``tfdump-fast`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (TfdumpCorruptionError, TfdumpTruncatedError) as exc:
        print("%s: error: %s" % (PROG, exc), file=sys.stderr)
        return EXIT_PROBLEM
    except (TfdumpUsageError, TfdumpNotFoundError, TfdumpFormatError) as exc:
        print("%s: error: %s" % (PROG, exc), file=sys.stderr)
        return EXIT_USAGE
    except TfdumpIOError as exc:
        print("%s: error: %s" % (PROG, exc.strerror or exc), file=sys.stderr)
        return EXIT_USAGE if exc.errno == errno.ENOENT else EXIT_PROBLEM
    except TfdumpError as exc:
        print("%s: error: %s" % (PROG, exc), file=sys.stderr)
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
