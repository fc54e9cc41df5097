"""How the parent runs a child and how a child reports back.

The parent writes the child's spec to a JSON file and starts
``python -m benchmarks.compare --_child KIND --_spec SPEC --_result RESULT``;
the child writes its figures to RESULT (again after every finished part, so
a crash keeps what came before) and its output goes to a log. A crash of one
child, even a segfault in native code, costs only that child's figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict

from benchmarks.compare.env import REPO, child_env

CHILD_KINDS = ("v1", "v2", "mem", "reader")


def run_child(kind: str, spec: Dict[str, Any], out_dir: str, tag: str, timeout: float) -> Dict[str, Any]:
    """Runs one child; returns {"rc", "wall_s", "result" (or None), "log", "error"}."""
    os.makedirs(os.path.join(out_dir, "logs"), exist_ok=True)
    spec_path = os.path.join(out_dir, "logs", f"{tag}.spec.json")
    result_path = os.path.join(out_dir, "logs", f"{tag}.result.json")
    log_path = os.path.join(out_dir, "logs", f"{tag}.log")
    with contextlib.suppress(OSError):
        os.unlink(result_path)
    with open(spec_path, "w") as f:
        json.dump(spec, f, indent=1)
    cmd = [sys.executable, "-m", "benchmarks.compare", "--_child", kind, "--_spec", spec_path,
           "--_result", result_path]
    t0 = time.perf_counter()
    error = None
    with open(log_path, "w") as logf:
        try:
            p = subprocess.run(cmd, cwd=REPO, env=child_env(), stdout=logf, stderr=subprocess.STDOUT,
                               timeout=timeout)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            rc = None
            error = f"child timed out after {timeout:.0f} s"
    wall = time.perf_counter() - t0
    result = None
    if os.path.exists(result_path):
        with contextlib.suppress(ValueError, OSError):
            with open(result_path) as f:
                result = json.load(f)
    if rc not in (0, None) and error is None:
        error = f"child exited with status {rc}"
    if error:
        try:
            with open(log_path) as f:
                tail = f.read()[-3000:]
        except OSError:
            tail = ""
        error = f"{error}; log {os.path.relpath(log_path, out_dir)}; tail:\n{tail}"
    return {"rc": rc, "wall_s": wall, "result": result, "log": os.path.relpath(log_path, out_dir), "error": error}


def write_result(result: Dict[str, Any], result_path: str) -> None:
    """Child side: (re)writes the result file, atomically."""
    with open(result_path + ".tmp", "w") as f:
        json.dump(result, f, indent=1, default=str)
    os.replace(result_path + ".tmp", result_path)


def child_main(kind: str, spec_path: str, result_path: str) -> None:
    """Child side: runs the child `kind` on the spec in `spec_path`."""
    with open(spec_path) as f:
        spec = json.load(f)
    if kind == "v1":
        from benchmarks.compare.child_timing import child_v1 as entry
    elif kind == "v2":
        from benchmarks.compare.child_timing import child_v2 as entry
    elif kind == "mem":
        from benchmarks.compare.child_memory import child_mem as entry
    elif kind == "reader":
        from benchmarks.compare.child_reader import child_reader as entry
    else:
        raise ValueError(f"unknown child kind {kind!r}")
    entry(spec, result_path)
