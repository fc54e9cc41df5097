"""Smoke test of the benchmark harness (the benchmarks.compare package).

Runs ``python -m benchmarks.compare --quick`` end to end (tiny workloads, a
few steps, every configuration, both regimes, the reader figures) and checks
that it produces the JSON, the Markdown and the PNG with the expected
configurations and sane fields. It asserts nothing about timings: on a CI
machine they are noise, and the quick workloads are too small to mean
anything. A few pure-Python tests cover the scheduler and the report on
synthetic data (a failing configuration must be recorded, not fatal).
"""

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.compare.cli import parse_args, write_outputs  # noqa: E402
from benchmarks.compare.config import CONFIGS  # noqa: E402
from benchmarks.compare.derive import derive  # noqa: E402
from benchmarks.compare.env import child_env  # noqa: E402
from benchmarks.compare.measure import quantiles  # noqa: E402
from benchmarks.compare.schedule import add_ratios, interleave, participates, summarize  # noqa: E402
from benchmarks.workloads import DEFAULT_MODELS  # noqa: E402

OURS = [n for n, c in CONFIGS.items() if c.ours]
ALWAYS_OK = ["none", "tfdbg", "tfdbg-summary", "tf2-none", "tfdbg2"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "out"
    env = child_env()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.compare", "--quick", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(out / "results.json") as f:
        results = json.load(f)
    return out, results, proc


def _finite_pos(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _have_matplotlib():
    return importlib.util.find_spec("matplotlib") is not None


def test_outputs_exist(quick_run):
    out, results, _ = quick_run
    for name in ("results.json", "results.md"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not (out / "work").exists(), "the default work directory is removed after the run"
    assert results["meta"]["quick"] is True
    if not _have_matplotlib():  # the plot is optional ("bench" extra); its absence is recorded
        assert "matplotlib" in results["meta"]["plot_error"]
        return
    assert results["meta"].get("plot_error") is None
    with open(out / "step_time_ratio.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_configs_and_models(quick_run):
    _, results, _ = quick_run
    assert list(results["configs"]) == list(CONFIGS)
    assert set(results["regimes"]) == {"burst", "sustained"}
    for regime, models in results["regimes"].items():
        assert list(models) == list(DEFAULT_MODELS), regime
        for model, figs in models.items():
            assert set(figs) == set(CONFIGS), (regime, model)


def test_statuses(quick_run):
    _, results, _ = quick_run
    hook_missing = (results.get("availability") or {}).get("hook")
    for regime, models in results["regimes"].items():
        for model, figs in models.items():
            for name in ALWAYS_OK:
                assert figs[name]["status"] == "ok", (regime, model, name, figs[name].get("error"))
            for name in OURS:
                f = figs[name]
                if hook_missing:
                    assert f["status"] == "skipped" and f["reason"], (regime, model, name)
                elif name == "tfdump-unsampled" and regime == "sustained":
                    assert f["status"] == "skipped" and "burst only" in f["reason"]
                else:
                    # tfdump-fast is importable and its bridge loads: our
                    # configurations must run, in the harness too.
                    assert f["status"] == "ok", (regime, model, name, f.get("error"))


def test_figures_are_sane(quick_run):
    _, results, _ = quick_run
    for regime, models in results["regimes"].items():
        for model, figs in models.items():
            for name, f in figs.items():
                if f["status"] != "ok":
                    continue
                where = (regime, model, name)
                assert f["steps"] >= 1 and f["blocks"] >= 1, where
                t = f["time_ms"]
                assert _finite_pos(t["median"]), where
                assert t["min"] <= t["q1"] <= t["median"] <= t["q3"] <= t["max"], where
                assert t["iqr"] >= 0, where
                assert _finite_pos(f["ratio"]), where
                if name == CONFIGS[name].baseline:
                    assert f["ratio"] == pytest.approx(1.0), where
                if CONFIGS[name].writes:
                    assert f["bytes_per_step"] > 0, where
                if name in ("tfdbg", "tfdbg-summary"):
                    assert f["files_per_step"] >= 1, where
                if name in ("tfdump", "tfdump-raw"):
                    assert f["files_in_dump"] >= 1, where
                    assert f["tensors_dropped"] == 0, where
                    assert f["queue_high_water"] > 0, where
                    assert f["frames_by_codec"], where
                    if name == "tfdump-raw":
                        assert set(f["frames_by_codec"]) == {"raw"}, where
                if regime == "sustained" and name in ("tfdump", "tfdump-raw"):
                    assert f.get("disk_bound_limit_ms", 1) > 0, where
    # The rnn workload really is a control-flow-v2 loop (tfdbg: > 1 file per iteration).
    rnn_tfdbg = results["regimes"]["burst"]["rnn"]["tfdbg"]
    iters = results["workloads"]["rnn"]["v1"]["params"]["iterations"]
    assert rnn_tfdbg["files_per_step"] > 10 * iters
    assert results["workloads"]["rnn"]["v1"]["control_flow"] == "v2"


def test_machine_dd_memory_reader(quick_run):
    _, results, _ = quick_run
    assert results["machine"]["cpu_count"] >= 1
    dd = results["dd"]
    assert _finite_pos(dd["limit_bytes_per_s"]) or any("error" in (dd.get(k) or {}) for k in ("direct", "fdatasync"))
    assert results["memory"], "quick mode samples RSS inside the timing child"
    for model, per in results["memory"].items():
        for name, r in per.items():
            assert r["status"] == "ok" and _finite_pos(r["rss_peak_mb"]), (model, name)
    rd = results["reader"]
    assert rd["tfdbg"]["status"] == "ok", rd["tfdbg"].get("error")
    assert rd["tfdbg"]["tensors"] > 0 and rd["tfdbg"]["files"] > rd["tfdbg"]["tensors"] // 2
    for op in ("open", "list", "find", "load_all"):
        assert _finite_pos(rd["tfdbg"][f"{op}_ms"]["median"]), op
    assert rd["tfdump"]["status"] in ("ok", "skipped"), rd["tfdump"].get("error")
    if rd["tfdump"]["status"] == "ok":
        assert rd["tfdump"]["tensors"] == rd["tfdbg"]["tensors"]
        assert rd["tfdump"]["loaded"] == rd["tfdump"]["tensors"]
        assert set(rd["speedup"]) == {"open", "list", "find", "load_all"}
        assert rd["convert"]["status"] == "ok", rd["convert"].get("error")
        assert rd["convert"]["debugdumpdir_tensors"] == rd["tfdbg"]["tensors"]
    assert isinstance(results["targets"], list)
    for c in results["targets"]:
        assert {"target", "value", "limit", "met"} <= set(c)


def test_markdown(quick_run):
    out, results, _ = quick_run
    md = (out / "results.md").read_text()
    assert "Quick mode" in md
    for heading in ("## Machine", "## Workloads", "## Burst regime", "## Sustained regime", "## Reader",
                    "## Reproduce"):
        assert heading in md, heading
    for c in CONFIGS.values():
        assert f"| {c.label} |" in md, c.label
    for model in DEFAULT_MODELS:
        assert model in md


# ---------------------------------------------------------------------------
# Pure-Python parts of the harness


def test_quantiles():
    q = quantiles([4.0, 1.0, 3.0, 2.0])
    assert q["median"] == 2.5 and q["q1"] == 1.75 and q["q3"] == 3.25 and q["n"] == 4
    assert quantiles([]) is None


@pytest.mark.parametrize("rounds,blocks", [(10, 3), (7, 7), (5, 1), (4, 9)])
def test_participation_is_spread(rounds, blocks):
    taken = [r for r in range(rounds) if participates(r, rounds, blocks)]
    assert len(taken) == min(rounds, blocks)


class _Unit:
    def __init__(self, name, fail_at=None):
        self.config = CONFIGS[name]
        self.calls = 0
        self.fail_at = fail_at

    def step(self):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("boom")
        return 0.001

    def after_step(self, sustained):
        return 0.0, {"bytes": 10, "files": 1}

    def end_block(self, sustained):
        return (0.002 if sustained else 0.0), 0.0, {}


def test_interleave_survives_a_failing_config():
    units = [_Unit("none"), _Unit("tfdbg", fail_at=3), _Unit("tfdump")]
    errors = {}
    raw = interleave(units, {"none": 6, "tfdbg": 6, "tfdump": 4}, 2, True,
                             lambda u, e: errors.setdefault(u.config.name, e))
    assert raw["none"]["steps"] == 6 and raw["tfdump"]["steps"] == 4
    assert raw["tfdbg"]["steps"] == 2 and isinstance(errors["tfdbg"], RuntimeError)
    f = summarize(raw["none"], sustained=True)
    assert f["effective_step_ms"]["median"] == pytest.approx(2.0)  # (2 x 1 ms + 2 ms) / 2 steps
    assert f["bytes_per_step"] == 10 and f["files_per_step"] == 1


def test_report_renders_errors_and_skips(tmp_path):
    args = parse_args(["--quick", "--out", str(tmp_path), "--configs", "tfdbg2", "tfdump"])
    assert args.configs == ["none", "tfdump", "tf2-none", "tfdbg2"]  # baselines added, canonical order
    ok = {"status": "ok", "steps": 3, "blocks": 3, "time_ms": quantiles([1.0, 2.0, 3.0]),
          "bytes_per_step": 5.0, "files_per_step": 1.0}
    figs = {"none": dict(ok), "tfdump": {"status": "error", "error": "RuntimeError: boom"},
            "tf2-none": dict(ok), "tfdbg2": {"status": "skipped", "reason": "not available yet"}}
    add_ratios(figs)
    results = {"meta": {"started": "t0", "finished": "t1", "wall_s": 1.0, "command": "x", "quick": True,
                        "args": vars(args)},
               "configs": {n: dataclasses.asdict(CONFIGS[n]) for n in args.configs},
               "workloads": {}, "regimes": {"burst": {"mlp": figs}}, "plans": {}, "memory": {},
               "reader": None, "children": [], "errors": [], "machine": {}, "dd": {}}
    derive(results, args)
    paths = write_outputs(results, str(tmp_path))
    assert os.path.exists(paths["png"]) or not _have_matplotlib()
    md = open(paths["markdown"]).read()
    assert "error²" in md and "skipped¹" in md and "RuntimeError: boom" in md and "not available yet" in md
    assert json.load(open(paths["json"]))["regimes"]["burst"]["mlp"]["none"]["ratio"] == 1.0


# ===========================================================================
# benchmarks.steps: steps back to back against a no-op callback floor,
# quiet and under a background load (issue #15).

STEPS_CONFIGS = ["none", "floor", "tfdump", "tfdump-nodurability"]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose (and ours are reaped: wait() in stop()).
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def steps_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("steps") / "out"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.steps", "--quick", "--out", str(out)],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(out / "results.json") as f:
        results = json.load(f)
    return out, results, proc


def test_steps_outputs(steps_run):
    out, results, proc = steps_run
    assert results["meta"]["quick"] is True
    assert results["meta"]["configs"] == STEPS_CONFIGS
    assert "ETA" in proc.stderr
    md = (out / "results.md").read_text()
    for heading in ("| workload | load | regime |", "## CPU per step", "## Engine counters"):
        assert heading in md
    assert "| rnn | quiet | short |" in md and "| rnn | loaded | sustained |" in md
    with open(out / "ratio_to_floor.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("work-*")), "the work directory is removed after the run"


def test_steps_floor_sees_the_hooks_tensors(steps_run):
    """The floor watches exactly what the hook watches and receives as many tensors."""
    _, results, _ = steps_run
    child = results["workloads"]["rnn"]
    assert "error" not in child, child.get("traceback")
    check = child["watch_check"]
    assert check["equal"] is True and check["floor_watches"] > 0
    assert check["tfdump_watches"] == check["floor_watches"] == check["tfdump-nodurability_watches"]
    for load in ("quiet", "loaded"):
        for regime in ("short", "long"):
            figs = results["summary"]["rnn"][load][regime]
            floor_tensors = figs["floor"]["tensors_per_step"]
            assert floor_tensors > 0
            for name in ("tfdump", "tfdump-nodurability"):
                eng = figs[name]["engine"]
                assert eng["tensors_per_step"] == pytest.approx(floor_tensors), (load, regime, name)
                assert eng["tensors_dropped"] == 0 and not eng["errors"]
                assert sum(eng["frames_by_codec"].values()) > 0


def test_steps_figures(steps_run):
    _, results, _ = steps_run
    summary = results["summary"]["rnn"]
    assert set(summary) == {"quiet", "loaded"}
    for load, regimes in summary.items():
        assert set(regimes) == {"short", "long", "sustained"}
        for regime, figs in regimes.items():
            assert set(figs) == set(STEPS_CONFIGS), (load, regime)
            assert figs["floor"]["ratio_to_floor"] == pytest.approx(1.0)
            for name, f in figs.items():
                where = (load, regime, name)
                assert _finite_pos(f["per_step_ms"]) and _finite_pos(f["ratio_to_floor"]), where
                assert f["min_ms"] <= f["per_step_ms"] <= f["max_ms"], where
                if regime != "sustained":
                    assert f["cpu_total_ms"] >= 0 and f["cpu_tf_ms"] >= 0, where
            for name in ("tfdump", "tfdump-nodurability"):
                f = figs[name]
                assert _finite_pos(f["bytes_per_step"]) and _finite_pos(f["disk_bound_ms"]), (load, regime, name)
                assert f["limit_ms"] >= f["disk_bound_ms"] and isinstance(f["within_limit"], bool)
    raw = results["workloads"]["rnn"]["loads"]
    for rec in raw["quiet"]["regimes"]["long"]["tfdump"]:
        assert len(rec["step_ms"]) == rec["n"] == 8
        assert rec["total_s"] >= rec["steps_s"] > 0 and rec["writer_threads"] >= 1
    assert raw["quiet"]["busy_processes"] == 0


def test_steps_background_load_is_gone(steps_run):
    _, results, _ = steps_run
    loaded = results["workloads"]["rnn"]["loads"]["loaded"]
    assert loaded["busy_processes"] == os.cpu_count() and len(loaded["busy_pids"]) == os.cpu_count()
    assert not [p for p in loaded["busy_pids"] if _alive(p)]


def test_background_load_dies_with_its_owner(tmp_path):
    """A harness killed with SIGKILL (no finally, no atexit) leaves no busy process behind."""
    import signal
    import time

    script = ("import sys, time\n"
              f"sys.path.insert(0, {REPO!r})\n"
              "from benchmarks.steps.load import BackgroundLoad\n"
              "bg = BackgroundLoad(2).start()\n"
              "print(' '.join(map(str, bg.pids())), flush=True)\n"
              "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)]


def test_background_load_stop():
    from benchmarks.steps.load import BackgroundLoad

    with BackgroundLoad(1) as bg:
        pids = bg.pids()
        assert len(pids) == 1 and _alive(pids[0])
    assert not _alive(pids[0]) and bg.pids() == []


def test_cpu_split_attributes_exited_threads_to_ours():
    from benchmarks.steps import cpu

    import threading
    main = threading.main_thread().native_id
    before = {"process": 10.0, "threads": {main: 1.0, 101: 2.0, 102: 3.0}}
    # 102 (a writer) exited in the window; 103 (a thread started in it) is not counted as TF.
    after = {"process": 16.0, "threads": {main: 1.5, 101: 4.0, 103: 0.5}}
    s = cpu.split(before, after, named=[102])
    assert s == {"total": 6.0, "main": 0.5, "tf": 2.0, "named": 3.5}
    snap = cpu.snapshot()
    assert main in snap["threads"] and snap["process"] >= snap["threads"][main] >= 0


def test_steps_summary_ratios_and_sustained():
    from benchmarks.steps.summary import summarize

    def rec(ms_steps, total_ms, nbytes=None, tensors=None):
        n = len(ms_steps)
        r = {"n": n, "step_ms": ms_steps, "per_step_ms": total_ms / n, "total_s": total_ms / 1e3,
             "finish_s": 0.01, "first_step_ms": 50.0,
             "cpu_s": {"total": 0.1 * n, "main": 0.01 * n, "tf": 0.05 * n, "named": 0.04 * n}}
        if nbytes is not None:
            r["bytes"] = nbytes
            r["stats"] = {"frames_by_codec": {"zstd:1": 3}, "codec_changes": 1, "queue_high_water": 10,
                          "tensors_dropped": 0, "tensors_accepted": tensors * (n + 1)}
        else:
            r["floor_tensors"] = tensors * n
        return r

    child = {"workload": "rnn", "loads": {"quiet": {"regimes": {
        "long": {"floor": [rec([9, 9, 10, 10], 40, tensors=5), rec([9, 9, 12, 12], 44, tensors=5)],
                 "tfdump": [rec([30, 30, 13, 13], 100, nbytes=5000, tensors=5),
                            rec([30, 30, 15, 15], 120, nbytes=5000, tensors=5)]},
    }}}}
    s = summarize(child, disk_bytes_per_s=1e6)["quiet"]
    long, sus = s["long"], s["sustained"]
    assert long["floor"]["per_step_ms"] == pytest.approx(10.5)  # median of 10 and 11
    assert long["tfdump"]["per_step_ms"] == pytest.approx(27.5)
    assert long["tfdump"]["ratio_to_floor"] == pytest.approx(27.5 / 10.5)
    assert long["tfdump"]["bytes_per_step"] == pytest.approx(1000)  # n + 1 steps in the directory
    assert long["tfdump"]["disk_bound_ms"] == pytest.approx(1.0)
    assert long["tfdump"]["limit_ms"] == pytest.approx(1.3 * 10.5)
    assert long["tfdump"]["within_limit"] is False
    assert long["tfdump"]["engine"]["tensors_per_step"] == pytest.approx(5)
    assert long["tfdump"]["engine"]["frames_by_codec"] == {"zstd:1": 6}
    # Sustained: the second half of each long measurement, median over repetitions.
    assert sus["floor"]["per_step_ms"] == pytest.approx(11.0)  # medians 10 and 12
    assert sus["tfdump"]["per_step_ms"] == pytest.approx(14.0)  # medians 13 and 15
    assert sus["tfdump"]["ratio_to_floor"] == pytest.approx(14.0 / 11.0)
    assert sus["tfdump"]["bytes_per_step"] == pytest.approx(1000)
