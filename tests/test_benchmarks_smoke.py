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
