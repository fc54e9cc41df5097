"""``python -m benchmarks.cluster``: the cluster, the schedule, the figures.

One cluster (1 ps + 2 workers, :mod:`benchmarks.cluster.task`) serves every
configuration: per round, the configurations run one block each, in an
order rotated round by round; a block is ``--steps`` timed steps on both
workers at once (after one untimed warm-up step each, which pays a new
hook's first-run costs: probing the cluster, TensorFlow's new executors).
Per configuration the figures pool the step times of both workers over
all rounds: median and quartiles, ratio to the floor's median. The ps's CPU
time per block (read before and after each block) and what each task wrote
are reported beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import queue
import time
from typing import Any, Dict, List, Optional

from benchmarks.compare.env import REPO, child_env, log
from benchmarks.compare.measure import du

CONFIGS = ("none", "floor", "ours", "ours-separate-read", "ours-ps-off", "ours-no-step-read", "tfdbg")
# Profile only, not run by default (--configs): ours with the workers' writers
# storing tensors uncompressed (codec="raw"), or discarding them after the
# capture (sink="null": no hashing, compression or writes); the ps unchanged.
PROFILE_CONFIGS = ("ours-raw", "ours-null-sink")
#: The issue's target: ours within 1.3x of the capture floor per step.
TARGET_RATIO = 1.3
MODEL = {"width": 256, "layers": 4, "batch": 64}
QUICK_MODEL = {"width": 16, "layers": 2, "batch": 4}
START_TIMEOUT_S = 240
BLOCK_TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _loadavg() -> List[float]:
    try:
        return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return []


class Task:
    """One task process and its JSON line protocol."""

    def __init__(self, params: Dict[str, Any], log_path: str):
        self.name = f"{params['job']}:{params['task']}"
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.cluster.task", json.dumps(params)],
                                     cwd=REPO, env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("@@ "):
                self.lines.put(line[3:])
        self.lines.put(None)

    def send(self, **cmd) -> None:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def answer(self, timeout_s: float) -> Dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout_s)
        except queue.Empty:
            line = None
        if line is None:
            self.log.flush()
            with open(self.log.name) as f:
                tail = f.read()[-3000:]
            raise RuntimeError(f"task {self.name} gave no answer (exit code {self.proc.poll()}):\n{tail}")
        return json.loads(line)

    def call(self, timeout_s: float = BLOCK_TIMEOUT_S, **cmd) -> Dict[str, Any]:
        self.send(**cmd)
        return self.answer(timeout_s)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call(timeout_s=30, cmd="quit")
                self.proc.wait(timeout=30)
            except Exception:  # noqa: BLE001 - it is killed below
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.log.close()


def quantiles(values: List[float]) -> Dict[str, float]:
    v = sorted(values)
    q = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else [v[0]] * 3
    return {"n": len(v), "min": v[0], "q1": q[0], "median": statistics.median(v), "q3": q[2], "max": v[-1]}


def summarize(blocks: Dict[str, List[Dict[str, Any]]], steps: int) -> Dict[str, Any]:
    """Per configuration: pooled step-time quantiles, per-step window, CPU, tensors, bytes."""
    out: Dict[str, Any] = {}
    for name, recs in blocks.items():
        if not recs:
            continue
        step_ms = [ms for rec in recs for w in rec["workers"] for ms in w["step_ms"]]
        per_block = [statistics.median([ms for w in rec["workers"] for ms in w["step_ms"]]) for rec in recs]
        window = [w["window_s"] * 1e3 / steps for rec in recs for w in rec["workers"]]
        run_steps = (steps + recs[0]["warmup"]) * len(recs[0]["workers"])  # steps of one block, both workers
        f = {"time_ms": quantiles(step_ms), "block_medians_ms": per_block,
             "window_ms_per_step": statistics.median(window),
             "worker_cpu_ms_per_step": statistics.median(
                 [w["cpu_s"] * 1e3 / steps for rec in recs for w in rec["workers"]]),
             "ps_cpu_ms_per_step": statistics.median([rec["ps"]["cpu_s"] * 1e3 / run_steps for rec in recs]),
             "first_step_ms": statistics.median([w["first_ms"] for rec in recs for w in rec["workers"]]),
             "worker_bytes_per_step": statistics.median(
                 [w["bytes"] / (steps + rec["warmup"]) for rec in recs for w in rec["workers"]]),
             "worker_files_per_step": statistics.median(
                 [w["files"] / (steps + rec["warmup"]) for rec in recs for w in rec["workers"]])}
        if name == "floor":
            f["tensors_per_step"] = statistics.median(
                [(sum(w["floor_tensors"] for w in rec["workers"]) + rec["ps"]["floor_calls"] * steps
                  / (steps + rec["warmup"])) / (steps * len(rec["workers"])) for rec in recs])
        splits = [w["cpu_split_ms"] for rec in recs for w in rec["workers"]]
        f["worker_cpu_split_ms_per_step"] = {k: statistics.median([x[k] for x in splits]) for k in splits[0]}
        hook = [w["hook_ms"] for rec in recs for w in rec["workers"] if w.get("hook_ms")]
        if hook:
            f["hook_ms_per_step"] = {k: statistics.median([h[k] for h in hook]) for k in hook[0]}
        if name.startswith("ours"):
            f["ps_tensors_per_step"] = statistics.median([rec["ps"]["served_tensors"] / run_steps for rec in recs])
            f["ps_bytes_per_step"] = statistics.median([rec["ps_bytes"] / run_steps for rec in recs])
            accepted = [w["stats"]["tensors_accepted"] / (steps + rec["warmup"])
                        for rec in recs for w in rec["workers"] if w.get("stats")]
            f["worker_tensors_per_step"] = statistics.median(accepted) if accepted else None
            f["tensors_dropped"] = sum((w.get("stats") or {}).get("tensors_dropped") or 0
                                       for rec in recs for w in rec["workers"]) + \
                sum(rec["ps"]["tensors_dropped"] + rec["ps"]["served_no_run"] for rec in recs)
        out[name] = f
    floor = out.get("floor", {}).get("time_ms", {}).get("median")
    none = out.get("none", {}).get("time_ms", {}).get("median")
    for f in out.values():
        med = f["time_ms"]["median"]
        f["ratio_to_floor"] = med / floor if floor else None
        f["ratio_to_none"] = med / none if none else None
    if "ours" in out and "ours-ps-off" in out:
        out["ps_capture_cost"] = {
            "ours_over_ps_off": out["ours"]["time_ms"]["median"] / out["ours-ps-off"]["time_ms"]["median"],
            "ms_per_step": out["ours"]["time_ms"]["median"] - out["ours-ps-off"]["time_ms"]["median"]}
    return out


def watch_check(first_watches: Dict[str, List[str]]) -> Dict[str, Any]:
    """The floor watches the same tensors as ours (with every task covered)."""
    # watch_graph's "*" pseudo-watch (node "*", slot -1) names no tensor.
    floor, ours = ({w for w in first_watches.get(name, []) if not w.startswith("*:")} for name in ("floor", "ours"))
    out: Dict[str, Any] = {"floor_watches": len(floor), "ours_watches": len(ours),
                           "ours_ps_off_watches": len(first_watches.get("ours-ps-off", []))}
    if floor and ours:
        out["equal"] = floor == ours
        out["only_floor"] = sorted(floor - ours)[:10]
        out["only_ours"] = sorted(ours - floor)[:10]
    return out


def run(args) -> Dict[str, Any]:
    work = args.workdir or tempfile.mkdtemp(prefix="tfdump-cluster-bench-")
    os.makedirs(work, exist_ok=True)
    model = QUICK_MODEL if args.quick else MODEL
    spec = {"ps": [f"localhost:{_free_port()}"], "worker": [f"localhost:{_free_port()}" for _ in range(2)]}
    ps_root = os.path.join(work, "ps_served")
    tasks: List[Task] = []
    results: Dict[str, Any] = {"meta": {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                        "quick": args.quick, "steps": args.steps, "rounds": args.rounds,
                                        "configs": list(args.configs), "model": model,
                                        "loadavg_start": _loadavg(), "cpu_count": os.cpu_count(),
                                        "command": " ".join(sys.argv)}}
    blocks: Dict[str, List[Dict[str, Any]]] = {c: [] for c in args.configs}
    first_watches: Dict[str, List[str]] = {}
    t_start = time.monotonic()
    try:
        base = {"cluster": spec, "model": model, "keep_dumps": bool(args.workdir)}
        ps = Task(dict(base, job="ps", task=0, serve_root=ps_root), os.path.join(work, "ps.log"))
        tasks.append(ps)
        workers = [Task(dict(base, job="worker", task=i), os.path.join(work, f"worker{i}.log")) for i in range(2)]
        tasks.extend(workers)
        ps.answer(START_TIMEOUT_S)
        for w in workers:
            w.answer(START_TIMEOUT_S)  # built
        for w in workers:  # the chief first: it initializes the variables
            w.call(timeout_s=START_TIMEOUT_S, cmd="session")
        log(f"cluster up in {time.monotonic() - t_start:.0f} s; {args.rounds} round(s) of "
            f"{len(args.configs)} configuration(s), {args.steps} steps per block")
        for r in range(args.rounds):
            order = list(args.configs[r % len(args.configs):]) + list(args.configs[:r % len(args.configs)])
            for name in order:
                before = ps.call(cmd="counters")
                ps_bytes0 = du(ps_root)[1]
                for i, w in enumerate(workers):
                    w.send(cmd="block", config=name, steps=args.steps,
                           root=os.path.join(work, f"{name}-r{r}-w{i}"))
                for w in workers:
                    w.answer(BLOCK_TIMEOUT_S)  # ready: warmed up
                for w in workers:
                    w.send(cmd="go")
                answers = [w.answer(BLOCK_TIMEOUT_S) for w in workers]
                ps.call(cmd="flush")
                after = ps.call(cmd="counters")
                ps_delta = {k: after[k] - before[k] for k in after}
                first_watches.setdefault(name, answers[0].pop("watches"))
                for a in answers:
                    a.pop("watches", None)
                blocks[name].append({"round": r, "workers": answers, "ps": ps_delta, "warmup": 1,
                                     "ps_bytes": du(ps_root)[1] - ps_bytes0})
                med = statistics.median([ms for a in answers for ms in a["step_ms"]])
                log(f"round {r + 1}/{args.rounds} {name:12s} median {med:8.2f} ms/step")
    finally:
        for t in reversed(tasks):
            t.stop()
        results["meta"]["ps_log_tail"] = _tail(os.path.join(work, "ps.log"))
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    results["meta"]["loadavg_end"] = _loadavg()
    results["meta"]["wall_s"] = time.monotonic() - t_start
    results["blocks"] = blocks
    results["summary"] = summarize(blocks, args.steps)
    results["watch_check"] = watch_check(first_watches)
    ours = results["summary"].get("ours", {}).get("ratio_to_floor")
    results["target"] = {"target": f"ours within {TARGET_RATIO}x of the floor per step", "value": ours,
                         "limit": TARGET_RATIO, "met": ours is not None and ours <= TARGET_RATIO}
    return results


def _tail(path: str, n: int = 2000) -> str:
    try:
        with open(path) as f:
            return f.read()[-n:]
    except OSError:
        return ""


def markdown(results: Dict[str, Any]) -> str:
    meta, summary = results["meta"], results["summary"]
    lines = ["# Cluster benchmark: 1 ps + 2 workers (between-graph replication)", ""]
    if meta["quick"]:
        lines += ["Quick mode: a tiny model and a few steps; the figures mean nothing.", ""]
    lines += [f"Model: MLP {meta['model']['layers']} x {meta['model']['width']}, batch {meta['model']['batch']}; "
              f"{meta['rounds']} rounds x {meta['steps']} timed steps per block on each worker; "
              f"load average {meta['loadavg_start']} at start, {meta['loadavg_end']} at the end, "
              f"{meta['cpu_count']} CPUs; {meta['wall_s']:.0f} s.", "",
              "| config | median ms/step | q1 - q3 | ratio to floor | ratio to none | window ms/step "
              "(incl. end) | worker CPU ms/step | ps CPU ms/step | ps tensors/step | ps bytes/step |",
              "|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(v, spec=".2f"):
        return "-" if v is None else format(v, spec)

    for name in meta["configs"]:
        f = summary.get(name)
        if f is None:
            continue
        t = f["time_ms"]
        lines.append(f"| {name} | {t['median']:.2f} | {t['q1']:.2f} - {t['q3']:.2f} | {fmt(f['ratio_to_floor'])} | "
                     f"{fmt(f['ratio_to_none'])} | {f['window_ms_per_step']:.2f} | "
                     f"{f['worker_cpu_ms_per_step']:.2f} | {f['ps_cpu_ms_per_step']:.2f} | "
                     f"{fmt(f.get('ps_tensors_per_step'), '.1f')} | {fmt(f.get('ps_bytes_per_step'), '.0f')} |")
    lines += ["", "Worker CPU per step, split by thread (ms): Python main thread (hooks) / TensorFlow's threads "
                  "(kernels, debug ops, gRPC) / our writer threads (hash, compress, write):", ""]
    for name in meta["configs"]:
        f = summary.get(name)
        if f is None:
            continue
        c = f["worker_cpu_split_ms_per_step"]
        lines.append(f"- {name}: {c['main']:.2f} / {c['tf']:.2f} / {c['named']:.2f} (total {c['total']:.2f})")
    cost = summary.get("ps_capture_cost")
    if cost:
        lines += ["", f"Capture on the ps costs the workers {cost['ms_per_step']:+.2f} ms/step "
                      f"(ours / ours-ps-off = {cost['ours_over_ps_off']:.3f})."]
    for name in ("ours", "ours-separate-read", "ours-ps-off", "ours-no-step-read") + PROFILE_CONFIGS:
        h = (summary.get(name) or {}).get("hook_ms_per_step")
        if h:
            lines += ["", f"{name}: the hook's own time per step on a worker: before_run {h['before_run']:.2f} ms "
                          f"(of which the global-step read, a Session.run of its own where one is made, {h['global_step_read']:.2f} ms), "
                          f"after_run {h['after_run']:.2f} ms."]
    wc = results["watch_check"]
    lines += ["", f"Watches: floor {wc['floor_watches']}, ours {wc['ours_watches']} (equal: {wc.get('equal')}), "
                  f"ours-ps-off {wc['ours_ps_off_watches']}.",
              "", f"Target: {results['target']['target']}: {fmt(results['target']['value'], '.3f')} "
                  f"({'met' if results['target']['met'] else 'missed'}).", ""]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None, help="timed steps per block and worker (default 30; quick 3)")
    p.add_argument("--rounds", type=int, default=None, help="rounds over the configurations (default 5; quick 1)")
    p.add_argument("--configs", nargs="+", choices=CONFIGS + PROFILE_CONFIGS, default=list(CONFIGS))
    p.add_argument("--quick", action="store_true", help="a tiny model, few steps (the smoke test)")
    p.add_argument("--out", required=True, help="directory for results.json and results.md")
    p.add_argument("--workdir", help="keep the dumps and task logs here (default: a removed temp dir)")
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 3 if args.quick else 30
    if args.rounds is None:
        args.rounds = 1 if args.quick else 5
    args.configs = [c for c in CONFIGS + PROFILE_CONFIGS if c in args.configs]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    results = run(args)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    md = markdown(results)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    print(md)
    return 0
