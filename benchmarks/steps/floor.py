"""The floor: a no-op ``memcbk://`` callback that shares no code with tfdump-fast.

:func:`load_floor` compiles ``benchmarks/floor/noop_callback.cc`` with the
system C++ compiler against TensorFlow's headers and libraries
(``tf.sysconfig``), caches the library under
``~/.cache/tfdump_fast_bench/`` by a hash of the source and the compile
command, and loads it with ctypes. :class:`FloorHook` puts tfdbg's own
watches on a session's runs (``debug_utils.watch_graph``, the same node set
and debug op as the hook's default watches) with the callback's URL, so a
floor step is a step with TensorFlow's debug ops and nothing of ours.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
from typing import FrozenSet, Optional, Tuple

SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "floor", "noop_callback.cc")
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "tfdump_fast_bench")
FLOOR_KEY = "tfdump_bench_floor"
FLOOR_URL = "memcbk://" + FLOOR_KEY

_lib: Optional[ctypes.CDLL] = None


def _command(output: str):
    import tensorflow as tf

    lib_dir = tf.sysconfig.get_lib()
    return [os.environ.get("CXX", "g++"), "-shared", "-fPIC", "-O2", *tf.sysconfig.get_compile_flags(),
            SOURCE, "-o", output, *tf.sysconfig.get_link_flags(), "-l:libtensorflow_cc.so.2",
            f"-Wl,-rpath,{lib_dir}", "-Wl,--no-undefined"]


def library_path() -> str:
    """The cached library for this source and TensorFlow, compiled if missing (~15-20 s)."""
    with open(SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read())
    digest.update(" ".join(_command("OUT")).encode())
    path = os.path.join(CACHE_DIR, f"noop_callback-{digest.hexdigest()[:16]}.so")
    if os.path.exists(path):
        return path
    os.makedirs(CACHE_DIR, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=CACHE_DIR)
    os.close(fd)
    try:
        proc = subprocess.run(_command(tmp), capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"compiling the floor callback failed:\n{proc.stderr[-3000:]}")
        os.replace(tmp, path)  # atomic: a concurrent harness sees all or nothing
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_floor() -> ctypes.CDLL:
    """Loads the floor library (TensorFlow must be imported) and registers its callback."""
    global _lib
    if _lib is None:
        import tensorflow  # noqa: F401 - the library resolves against the loaded TF
        lib = ctypes.CDLL(library_path(), mode=ctypes.RTLD_LOCAL)
        lib.floor_register.argtypes = [ctypes.c_char_p]
        lib.floor_register.restype = None
        lib.floor_calls.argtypes = []
        lib.floor_calls.restype = ctypes.c_uint64
        lib.floor_register(FLOOR_KEY.encode())
        _lib = lib
    return _lib


def floor_calls() -> int:
    """Tensors the floor callback has received in this process."""
    return int(load_floor().floor_calls())


WatchKey = Tuple[str, int, Tuple[str, ...]]


def watch_keys(debug_options, skip_nodes=()) -> FrozenSet[WatchKey]:
    """(node, output slot, debug ops) of every watch in ``DebugOptions``."""
    return frozenset((w.node_name, w.output_slot, tuple(w.debug_ops)) for w in debug_options.debug_tensor_watch_opts
                     if w.node_name not in skip_nodes)


def floor_run_options(graph, debug_ops=("DebugIdentity",)):
    """RunOptions with tfdbg's watches (``watch_graph``) of every tensor, to the floor's URL."""
    import tensorflow as tf
    from tensorflow.python.debug.lib import debug_utils

    load_floor()
    options = tf.compat.v1.RunOptions()
    debug_utils.watch_graph(options, graph, debug_ops=list(debug_ops), debug_urls=[FLOOR_URL], global_step=-1,
                            reset_disk_byte_usage=False)
    return options


def make_floor_hook(graph):
    """A SessionRunHook that adds the floor's watches to every run."""
    import tensorflow as tf

    options = floor_run_options(graph)

    class FloorHook(tf.compat.v1.train.SessionRunHook):
        run_options = options

        def before_run(self, run_context):
            return tf.compat.v1.train.SessionRunArgs(None, options=options)

    return FloorHook()
