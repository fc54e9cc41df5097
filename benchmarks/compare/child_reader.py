"""The reader child: open / list / find / load-all of one step's dump,
DumpReader against tfdbg's DebugDumpDir, and the conversion to tfdbg's layout."""

from __future__ import annotations

import os
import shutil
import time
import traceback
from typing import Any, Dict, Optional, Tuple

from benchmarks.compare.children import write_result
from benchmarks.compare.env import ensure_tfdump_importable, short_error
from benchmarks.compare.measure import du, quantiles, scaled
from benchmarks.compare.runners import tfdump_availability


def _timed(fn, repeats: int) -> Tuple[Optional[Dict[str, float]], Any]:
    times, value = [], None
    for _ in range(max(1, repeats)):
        value = None  # free the previous result before the next repeat
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return scaled(quantiles(times), 1e3), value


def _reader_ops(open_fn, list_fn, find_fn, load_fn, repeats: int) -> Dict[str, Any]:
    """Times open / list / find / load-all, each from a fresh open.

    Every operation starts from a new reader object so that neither side
    profits from state a previous operation left (tfdbg's DebugDumpDir lists
    everything when opened; our reader caches decompressed blocks). The page
    cache is warm for both after the first repeat.
    """
    out: Dict[str, Any] = {}
    out["open_ms"], _ = _timed(open_fn, repeats)
    out["list_ms"], items = _timed(lambda: list_fn(open_fn()), repeats)
    out["tensors"] = len(items)
    del items
    out["find_ms"], found = _timed(lambda: find_fn(open_fn()), repeats)
    out["find_matches"] = len(found)
    del found
    out["load_all_ms"], values = _timed(lambda: load_fn(open_fn()), repeats)
    out["loaded"] = len(values)
    del values
    return out


def child_reader(spec: Dict[str, Any], result_path: str) -> None:
    """open / list / find(has_inf_or_nan) / load-all: DumpReader vs DebugDumpDir.

    Both read one training step of the reader workload (rnn by default): ours
    from our own dump, tfdbg from tfdbg's own dump of the same step of the
    same graph; then our dump is converted to the tfdbg layout (throughput)
    and DebugDumpDir opens the result.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ensure_tfdump_importable()
    from benchmarks import workloads as W
    import tensorflow as tf
    from tensorflow.python import debug as tf_debug

    W.graph_mode_setup()
    model = spec["reader_model"]
    reps = spec["reader_repeats"]
    out: Dict[str, Any] = {"model": model, "repeats": reps,
                           "method": "each operation from a fresh open; warm page cache after repeat 1"}

    base = os.path.join(spec["workdir"], f"reader-{model}")
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    try:
        wl = W.build_graph(model, spec["scale"], spec["seed"])
        out["workload"] = wl.info()
    except Exception as exc:  # noqa: BLE001
        out["error"] = short_error(exc)
        write_result(out, result_path)
        return

    def one_step(hooks):
        with wl.graph.as_default():
            W.unfinalize(wl.graph)
            with tf.compat.v1.train.MonitoredSession(hooks=hooks) as sess:
                sess.run(wl.train_op)

    tfdbg_root = os.path.join(base, "tfdbg")
    tfdbg = out["tfdbg"] = {}
    try:
        one_step([tf_debug.DumpingDebugHook(tfdbg_root)])
        run_dir = os.path.join(tfdbg_root, sorted(os.listdir(tfdbg_root))[0])
        tfdbg["files"], tfdbg["bytes"] = du(run_dir)
        tfdbg.update(_reader_ops(
            lambda: tf_debug.DebugDumpDir(run_dir),
            lambda dd: list(dd.dumped_tensor_data),
            lambda dd: dd.find(tf_debug.has_inf_or_nan),
            lambda dd: [d.get_tensor() for d in dd.dumped_tensor_data],
            reps))
        tfdbg["status"] = "ok"
    except Exception as exc:  # noqa: BLE001
        tfdbg.update(status="error", error=short_error(exc), traceback=traceback.format_exc())
    write_result(out, result_path)

    avail = tfdump_availability()
    ours = out["tfdump"] = {}
    conv = out["convert"] = {}
    ours_root = os.path.join(base, "tfdump")
    if avail["hook"]:
        ours.update(status="skipped", reason=avail["hook"])
        conv.update(status="skipped", reason=avail["hook"])
        write_result(out, result_path)
        shutil.rmtree(base, ignore_errors=True)
        return
    try:
        import tfdump_fast
        from tfdump_fast.reader import has_inf_or_nan
        one_step([tfdump_fast.DumpingDebugHook(ours_root, log_usage=False)])
        ours["files"], ours["bytes"] = du(ours_root)
        ours.update(_reader_ops(
            lambda: tfdump_fast.DumpReader(ours_root),
            lambda r: list(r.runs[-1].records),
            lambda r: r.runs[-1].find(has_inf_or_nan),
            lambda r: r.runs[-1].values(),
            reps))
        ours["status"] = "ok"
    except Exception as exc:  # noqa: BLE001
        ours.update(status="error", error=short_error(exc), traceback=traceback.format_exc())
    write_result(out, result_path)

    if ours.get("status") != "ok":
        conv.update(status="skipped", reason="no tfdump-fast dump to convert")
    else:
        try:
            import tfdump_fast
            dest = os.path.join(base, "converted")
            t0 = time.perf_counter()
            run_dirs = tfdump_fast.convert(ours_root, dest)
            secs = time.perf_counter() - t0
            files, size = du(dest)
            conv.update(status="ok", seconds=secs, files=files, bytes=size,
                        bytes_per_s=size / secs if secs else None, files_per_s=files / secs if secs else None)
            target = list(run_dirs)[-1]
            conv["debugdumpdir_open_ms"], dd = _timed(lambda: tf_debug.DebugDumpDir(target), 1)
            conv["debugdumpdir_tensors"] = dd.size
        except Exception as exc:  # noqa: BLE001
            conv.update(status="error", error=short_error(exc), traceback=traceback.format_exc())
    write_result(out, result_path)
    shutil.rmtree(base, ignore_errors=True)
