"""Smoke test of the cluster benchmark (``python -m benchmarks.cluster --quick``).

Runs the harness end to end on a tiny model: a real 1 ps + 2 workers cluster
of localhost processes, every configuration, one round of a few steps. It
checks the outputs and the accounting (the floor and ours watch and receive
the same tensors; the ps captures only when it is covered), never timings.
"""

import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.cluster.harness import CONFIGS  # noqa: E402
from benchmarks.compare.env import child_env  # noqa: E402


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("cluster") / "out"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.cluster", "--quick", "--out", str(out)],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(out / "results.json") as f:
        return out, json.load(f)


def _pos(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_every_configuration_measured(quick):
    out, results = quick
    summary = results["summary"]
    assert results["meta"]["configs"] == list(CONFIGS)
    for name in CONFIGS:
        f = summary[name]
        t = f["time_ms"]
        assert t["n"] == 2 * results["meta"]["steps"], name  # both workers, every timed step
        assert t["min"] <= t["q1"] <= t["median"] <= t["q3"] <= t["max"] and _pos(t["median"]), name
        assert _pos(f["ratio_to_floor"]) and _pos(f["window_ms_per_step"]), name
    assert summary["floor"]["ratio_to_floor"] == pytest.approx(1.0)
    assert _pos(summary["ps_capture_cost"]["ours_over_ps_off"])
    assert isinstance(results["target"]["met"], bool)
    md = (out / "results.md").read_text()
    assert "| ours |" in md and "Capture on the ps costs the workers" in md and "global-step read" in md


def test_floor_and_ours_see_the_same_tensors(quick):
    _, results = quick
    summary, check = results["summary"], results["watch_check"]
    assert check["equal"] is True and check["floor_watches"] > 0
    ours = summary["ours"]
    # The floor counts every tensor of a step in the workers and the ps;
    # ours captures them on the worker (its hook) and the ps (serve()).
    assert ours["ps_tensors_per_step"] > 0
    assert summary["floor"]["tensors_per_step"] == pytest.approx(
        ours["worker_tensors_per_step"] + ours["ps_tensors_per_step"])
    assert ours["tensors_dropped"] == 0 and _pos(ours["ps_bytes_per_step"])
    assert ours["hook_ms_per_step"]["global_step_read"] >= 0
    # The ps not covered: nothing captured there, fewer watches on the workers.
    off = summary["ours-ps-off"]
    assert off["ps_tensors_per_step"] == 0 and check["ours_ps_off_watches"] < check["ours_watches"]
    assert summary["ours-no-step-read"]["hook_ms_per_step"]["global_step_read"] == pytest.approx(0, abs=0.05)
    # On a cluster the hook fetches the global step in the debugged run: no
    # separate read at all (the timer never ran); the old way still makes one.
    assert ours["hook_ms_per_step"]["global_step_read"] == 0
    assert summary["ours-separate-read"]["hook_ms_per_step"]["global_step_read"] > 0
    assert summary["tfdbg"]["worker_files_per_step"] >= 1
