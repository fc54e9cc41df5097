"""The harness's process environment: where the checkout is, how a process of
it finds tfdump_fast, the environment of a child, and progress on stderr."""

from __future__ import annotations

import importlib.util
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


def _children_need_src() -> bool:
    """Whether children must import tfdump_fast from REPO/src: when this
    process does (a checkout built in place) or cannot import it at all. An
    installed package wins otherwise: an unbuilt src/ (a fresh clone that was
    `pip install`ed) has no compiled extensions."""
    src = os.path.join(REPO, "src")
    if not os.path.isdir(os.path.join(src, "tfdump_fast")):
        return False
    spec = importlib.util.find_spec("tfdump_fast")
    if spec is None or not spec.origin:
        return True
    return os.path.realpath(spec.origin).startswith(os.path.realpath(src) + os.sep)


def child_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # tfdbg v1 stops dumping after a process-wide 100 GB by default; sustained
    # runs may get near it, and a silent stop would flatter tfdbg.
    env.setdefault("TFDBG_DISK_BYTES_LIMIT", str(1 << 50))
    paths = [REPO]
    if _children_need_src():
        paths.append(os.path.join(REPO, "src"))
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env
