"""The machine a run is on: its description and the write bandwidth of the
dump disk as dd sees it."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

from benchmarks.compare.env import REPO, ensure_tfdump_importable, short_error


def _run_text(cmd: List[str], timeout: float = 30) -> Optional[str]:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return (p.stdout or p.stderr).strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(workdir: str) -> Dict[str, Any]:
    info: Dict[str, Any] = {
        "hostname": platform.node(), "platform": platform.platform(), "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
    }
    lscpu = _run_text(["lscpu"])
    info["lscpu"] = lscpu
    if lscpu:
        for line in lscpu.splitlines():
            k, _, v = line.partition(":")
            if k.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Hypervisor vendor", "L2 cache",
                             "L3 cache"):
                info[k.strip()] = v.strip()
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(("MemTotal", "MemAvailable")):
                    k, v = line.split(":")
                    info[k] = v.strip()
    except OSError:
        pass
    for k in ("dirty_ratio", "dirty_background_ratio", "dirty_bytes", "dirty_background_bytes"):
        with contextlib.suppress(OSError):
            with open(f"/proc/sys/vm/{k}") as f:
                info[f"vm.{k}"] = f.read().strip()
    info["df"] = _run_text(["df", "-h", workdir])
    info["mount"] = _run_text(["findmnt", "-n", "-T", workdir]) or None
    info["lsblk"] = _run_text(["lsblk", "-d", "-o", "NAME,SIZE,ROTA,MODEL"])
    # Distribution metadata, so the parent never imports TensorFlow itself.
    from importlib import metadata
    vers = {}
    for dists in (("numpy",), ("zstandard",), ("tensorflow", "tensorflow-cpu", "tf-nightly"),
                  ("tfdump-fast",), ("matplotlib",), ("psutil",)):
        for d in dists:
            try:
                vers[dists[0]] = metadata.version(d)
                break
            except metadata.PackageNotFoundError:
                continue
        else:
            vers[dists[0]] = "not installed"
    if vers["tfdump-fast"] == "not installed":
        ensure_tfdump_importable()
        with contextlib.suppress(Exception):
            import tfdump_fast
            vers["tfdump-fast"] = f"{tfdump_fast.__version__} (source tree {os.path.dirname(tfdump_fast.__file__)})"
    info["versions"] = vers
    info["git_commit"] = _run_text(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
    info["git_dirty"] = bool(_run_text(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"]))
    return info


def measure_dd(workdir: str, mib: int) -> Dict[str, Any]:
    """Sequential write bandwidth of the dump disk, as dd sees it.

    Two ways: O_DIRECT (the device, no page cache) and buffered writes ended by
    fdatasync (the path a buffered writer such as ours or tfdbg's takes). The
    disk-bound limit uses the fdatasync figure; both are reported.
    """
    out: Dict[str, Any] = {"mib": mib}
    target = os.path.join(workdir, "dd.tmp")
    bs = 4  # MiB
    count = max(1, mib // bs)
    for name, flag in (("direct", "oflag=direct"), ("fdatasync", "conv=fdatasync")):
        try:
            t0 = time.perf_counter()
            p = subprocess.run(["dd", "if=/dev/zero", f"of={target}", f"bs={bs}M", f"count={count}", flag],
                               capture_output=True, text=True, timeout=600)
            wall = time.perf_counter() - t0
            m = re.search(r"(\d+) bytes.*copied, ([\d.]+) s", p.stderr)
            if p.returncode != 0 or not m:
                out[name] = {"error": (p.stderr or "").strip()[-500:]}
            else:
                nbytes, secs = int(m.group(1)), float(m.group(2))
                out[name] = {"bytes": nbytes, "seconds": secs, "bytes_per_s": nbytes / secs, "wall_s": wall,
                             "dd_line": p.stderr.strip().splitlines()[-1]}
        except (OSError, subprocess.SubprocessError) as exc:
            out[name] = {"error": short_error(exc)}
        finally:
            with contextlib.suppress(OSError):
                os.unlink(target)
    fd = out.get("fdatasync", {}).get("bytes_per_s")
    di = out.get("direct", {}).get("bytes_per_s")
    out["limit_bytes_per_s"] = fd or di
    out["limit_source"] = "fdatasync" if fd else ("direct" if di else None)
    return out
