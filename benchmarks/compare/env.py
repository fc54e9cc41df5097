"""The harness's process environment: where the checkout is, how a process of
it finds tfdump_fast, the environment of a child, and progress on stderr."""

from __future__ import annotations

import os
import sys
from typing import Dict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def short_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()[:2000]


def ensure_tfdump_importable() -> None:
    """Lets an uninstalled checkout run (src/ layout): falls back to REPO/src."""
    try:
        import tfdump_fast as probe
        del probe
    except ImportError:
        src = os.path.join(REPO, "src")
        if os.path.isdir(os.path.join(src, "tfdump_fast")) and src not in sys.path:
            sys.path.insert(0, src)


def child_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # tfdbg v1 stops dumping after a process-wide 100 GB by default; sustained
    # runs may get near it, and a silent stop would flatter tfdbg.
    env.setdefault("TFDBG_DISK_BYTES_LIMIT", str(1 << 50))
    paths = [REPO]
    if os.path.isdir(os.path.join(REPO, "src", "tfdump_fast")):
        paths.append(os.path.join(REPO, "src"))
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env
