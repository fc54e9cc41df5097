"""Builds, caches and loads the TensorFlow capture bridge.

The bridge (``csrc/bridge/``, its files listed in ``csrc/bridge/SOURCES``) is
C++ that uses TensorFlow's own C++ API
(``DebugCallbackRegistry``, ``tensorflow::Tensor``), whose ABI changes between
TensorFlow releases. So it is not shipped prebuilt: it is compiled on first
use against the TensorFlow that is imported, with the flags from
``tf.sysconfig``, into a per-TF-version cache directory, and reused from
there afterwards::

    $TFDUMP_FAST_CACHE_DIR (default ~/.cache/tfdump_fast)/
        bridge-tf2.21.0-<hash of sources + flags>/libtfdump_tf_bridge.so

Environment
-----------
TFDUMP_FAST_BRIDGE_LIB
    Path of a prebuilt bridge library to load instead (nothing is compiled).
TFDUMP_FAST_CACHE_DIR
    Cache root (default ``~/.cache/tfdump_fast``).
CXX
    The C++ compiler (default ``g++``, else ``c++``).

Command line::

    python -m tfdump_fast.bridge [--rebuild] [--print-path]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from tfdump_fast.errors import TfdumpBridgeError

__all__ = ["get_bridge", "build_bridge", "bridge_cache_path", "load_bridge_library", "main"]

LIB_NAME = "libtfdump_tf_bridge.so"
ENV_LIB = "TFDUMP_FAST_BRIDGE_LIB"
ENV_CACHE = "TFDUMP_FAST_CACHE_DIR"
REBUILD_HINT = "python -m tfdump_fast.bridge --rebuild"
# The bridge's one source list (also read by setup.py), relative to the
# source directory.
_SOURCE_LIST = "bridge/SOURCES"
_COMPILE_FLAGS = (
    "-std=c++17",
    "-O2",
    "-fPIC",
    "-fvisibility=hidden",
    # TF's headers trip these; the bridge's own code is warning-clean.
    "-Wno-deprecated-declarations",
    "-Wno-ignored-attributes",
)
_COMPILE_TIMEOUT_S = 900

_lock = threading.Lock()
_bridge = None


def _source_dir() -> Path:
    """Where the bridge's C++ sources are: in the installed package, else the repo."""
    packaged = Path(__file__).resolve().parent / "_bridge_src"
    if (packaged / _SOURCE_LIST).is_file():
        return packaged
    in_tree = Path(__file__).resolve().parents[2] / "csrc"
    if (in_tree / _SOURCE_LIST).is_file():
        return in_tree
    raise TfdumpBridgeError(
        "the TensorFlow bridge sources are missing: expected "
        f"{packaged}/{_SOURCE_LIST} (installed package) or {in_tree}/{_SOURCE_LIST} "
        "(source checkout); reinstall tfdump-fast"
    )


def _source_files(src_dir: Path) -> list[str]:
    """The bridge's files as ``bridge/SOURCES`` lists them, relative to ``src_dir``."""
    lines = (src_dir / _SOURCE_LIST).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def _tf():
    try:
        import tensorflow as tf
    except ImportError as e:  # pragma: no cover - TF is required for capture
        raise TfdumpBridgeError(
            f"capturing TensorFlow tensors needs TensorFlow, which cannot be imported: {e}"
        ) from e
    return tf


def _version_defines(tf_version: str) -> list[str]:
    """-D flags that make TF_VERSION_STRING equal ``tf_version``.

    Recent TF wheels do not write their version numbers into the headers (TF's
    own build passes them as -D flags), so we pass the version of the wheel
    whose headers we compile against.
    """
    m = re.match(r"^(\d+)\.(\d+)\.(\d+)(.*)$", tf_version)
    if not m:
        raise TfdumpBridgeError(f"cannot parse the TensorFlow version {tf_version!r}")
    major, minor, patch, suffix = m.groups()
    return [
        f"-DTF_MAJOR_VERSION={major}",
        f"-DTF_MINOR_VERSION={minor}",
        f"-DTF_PATCH_VERSION={patch}",
        f"-DTF_VERSION_SUFFIX={_c_string(suffix)}",
    ]


def _c_string(s: str) -> str:
    """A C string literal for a -D flag (passed without a shell)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _compiler() -> str:
    for cand in filter(None, (os.environ.get("CXX"), "g++", "c++")):
        path = shutil.which(cand)
        if path:
            return path
    raise TfdumpBridgeError(
        "tfdump-fast needs a C++ compiler to build its TensorFlow bridge once per "
        "TensorFlow version, and none was found (tried $CXX, g++, c++). Install "
        "one (e.g. `apt-get install g++`), or point TFDUMP_FAST_BRIDGE_LIB at a "
        "bridge built elsewhere for the same TensorFlow."
    )


def _build_commands(src_dir: Path, output: Path, obj_dir: Path, extra_flags=(), compiler=None):
    """The commands that build the bridge into ``output``.

    Returns
    -------
    tuple of (list of list of str, list of str)
        One compile per ``.cc`` file of the source list, writing objects to
        ``obj_dir`` (independent: they run in parallel), then the link.
    """
    tf = _tf()
    lib_dir = tf.sysconfig.get_lib()
    cc_lib = Path(lib_dir) / "libtensorflow_cc.so.2"
    if not cc_lib.exists():
        raise TfdumpBridgeError(
            f"TensorFlow {tf.__version__} at {lib_dir} has no libtensorflow_cc.so.2, "
            "which the bridge links against (it exports DebugCallbackRegistry); "
            "this TensorFlow build is not supported"
        )
    cxx = compiler or _compiler()
    flags = [
        *_COMPILE_FLAGS,
        *tf.sysconfig.get_compile_flags(),
        *_version_defines(tf.__version__),
        f"-DTFDUMP_TF_GIT_VERSION={_c_string(str(getattr(tf.version, 'GIT_VERSION', '')))}",
        *extra_flags,
        f"-I{src_dir}",
    ]
    sources = [name for name in _source_files(src_dir) if name.endswith(".cc")]
    objects = [str(obj_dir / (name[: -len(".cc")].replace("/", "_") + ".o")) for name in sources]
    compiles = [[cxx, *flags, "-c", str(src_dir / name), "-o", obj] for name, obj in zip(sources, objects)]
    link = [
        cxx,
        "-shared",
        *objects,
        "-o",
        str(output),
        *tf.sysconfig.get_link_flags(),
        "-l:libtensorflow_cc.so.2",
        f"-Wl,-rpath,{lib_dir}",
        # Fail at build time, not at dlopen, if a symbol is missing.
        "-Wl,--no-undefined",
    ]
    return compiles, link


def bridge_cache_path() -> Path:
    """The library path for the imported TensorFlow (it may not exist yet).

    The directory name carries the TF version and a hash of the bridge
    sources and of the full compile command, so an upgrade of either builds a
    new library instead of loading a stale one.
    """
    tf = _tf()
    src_dir = _source_dir()
    h = hashlib.sha256()
    for name in (_SOURCE_LIST, *_source_files(src_dir)):
        h.update(name.encode() + b"\0" + (src_dir / name).read_bytes() + b"\0")
    # The commands without the output paths (derived from the hash) or the
    # compiler's location (a loaded cache must not need a compiler).
    compiles, link = _build_commands(src_dir, Path("OUT"), Path("OBJ"), compiler="CXX")
    for cmd in (*compiles, link):
        h.update("\0".join(cmd).encode() + b"\0\0")
    root = Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "tfdump_fast")
    safe_version = re.sub(r"[^A-Za-z0-9._-]", "_", tf.__version__)
    return root / f"bridge-tf{safe_version}-{h.hexdigest()[:16]}" / LIB_NAME


def _run_compiler(cmd: list[str]) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S)
    except OSError as e:
        raise TfdumpBridgeError(
            f"could not run the C++ compiler for the TensorFlow bridge: {e}\ncommand: {' '.join(cmd)}"
        ) from e
    except subprocess.TimeoutExpired as e:
        raise TfdumpBridgeError(
            f"compiling the TensorFlow bridge took over {_COMPILE_TIMEOUT_S} s and was stopped\n"
            f"command: {' '.join(cmd)}"
        ) from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-25:])
        raise TfdumpBridgeError(
            f"compiling the TensorFlow bridge failed (exit code {proc.returncode}).\n"
            f"command: {' '.join(cmd)}\n"
            f"compiler output (last lines):\n{tail}"
        )


def build_bridge(output, *, extra_flags=(), quiet=False) -> Path:
    """Compile the bridge for the imported TensorFlow into ``output``.

    The library is written to a temporary file in the same directory and
    moved into place atomically, so a concurrent reader never sees a partial
    file. No locking here; :func:`get_bridge` serializes builds.

    Parameters
    ----------
    output : str or os.PathLike
        Where the library goes (parent directories are created).
    extra_flags : sequence of str
        Additional flags for each compile, not the link (tests use
        ``-DTFDUMP_FAKE_TF_VERSION=...``).
    quiet : bool
        Do not print the one-line "compiling" notice to stderr.

    Returns
    -------
    pathlib.Path
        ``output``.

    Raises
    ------
    TfdumpBridgeError
        No compiler, or the compile failed (the message carries the command
        and the tail of the compiler's output).
    """
    tf = _tf()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    src_dir = _source_dir()
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".so", dir=output.parent)
    os.close(fd)
    try:
        with tempfile.TemporaryDirectory(prefix=".tmp-", dir=output.parent) as obj_dir:
            compiles, link = _build_commands(src_dir, Path(tmp), Path(obj_dir), extra_flags)
            if not quiet:
                print(
                    f"tfdump-fast: compiling the TensorFlow bridge for TF {tf.__version__} (once, ~20 s)...",
                    file=sys.stderr,
                    flush=True,
                )
            # The translation units compile in parallel: each parses TF's
            # headers, which takes most of the time.
            workers = min(len(compiles), os.cpu_count() or 1)
            with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
                for _ in pool.map(_run_compiler, compiles):
                    pass
            _run_compiler(link)
        os.chmod(tmp, 0o755)
        os.replace(tmp, output)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return output


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive flock so that concurrent processes build only once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _ensure_built(rebuild: bool = False) -> Path:
    lib = bridge_cache_path()
    if lib.is_file() and not rebuild:
        return lib
    with _file_lock(lib.parent.with_name(lib.parent.name + ".lock")):
        # Another process may have built it while we waited for the lock.
        if lib.is_file() and not rebuild:
            return lib
        return build_bridge(lib)


def load_bridge_library(path):
    """Load a bridge library and check it was built for the imported TF.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    tfdump_fast._bridge.BridgeLibrary

    Raises
    ------
    TfdumpBridgeError
        The library cannot be loaded (e.g. undefined symbols because it was
        built for another TensorFlow) or was built for another TF version.
    """
    tf = _tf()
    from tfdump_fast import _bridge

    from_env = os.environ.get(ENV_LIB)
    fix = (
        f"unset {ENV_LIB} (or point it at a bridge built for TF {tf.__version__})"
        if from_env
        else f"rebuild it with `{REBUILD_HINT}`"
    )
    try:
        lib = _bridge.load(path)
    except ImportError as e:
        raise TfdumpBridgeError(
            f"the tfdump-fast TensorFlow bridge {path} cannot be loaded into TensorFlow "
            f"{tf.__version__}; it was probably built for another TensorFlow. "
            f"To fix: {fix}.\nDetails: {e}"
        ) from e
    if lib.tf_version != tf.__version__:
        raise TfdumpBridgeError(
            f"the tfdump-fast TensorFlow bridge {path} was built for TensorFlow "
            f"{lib.tf_version}, but TensorFlow {tf.__version__} is running. To fix: {fix}."
        )
    return lib


def get_bridge():
    """Return the bridge for the imported TensorFlow, building it on first use.

    Loads ``$TFDUMP_FAST_BRIDGE_LIB`` if set, else the cached build for this
    TF version (compiling it once, ~20 s, under a file lock shared by
    concurrent processes). The result is cached for the process;
    thread-safe.

    Returns
    -------
    tfdump_fast._bridge.BridgeLibrary

    Raises
    ------
    TfdumpBridgeError
        (an ``ImportError``) with the reason and the fix: no compiler, a
        compile error, or a library built for another TensorFlow.
    """
    global _bridge
    if _bridge is not None:
        return _bridge
    with _lock:
        if _bridge is None:
            explicit = os.environ.get(ENV_LIB)
            if explicit:
                if not Path(explicit).is_file():
                    raise TfdumpBridgeError(
                        f"{ENV_LIB}={explicit} does not exist; unset it to let "
                        "tfdump-fast build the bridge itself"
                    )
                path = Path(explicit)
            else:
                path = _ensure_built()
            _bridge = load_bridge_library(path)
    return _bridge


def main(argv=None) -> int:
    """``python -m tfdump_fast.bridge``: build / locate the bridge."""
    parser = argparse.ArgumentParser(
        prog="python -m tfdump_fast.bridge",
        description=(
            "Build (once per TensorFlow version) and check the tfdump-fast "
            "TensorFlow bridge library."
        ),
    )
    parser.add_argument(
        "--rebuild", action="store_true", help="compile the bridge again even if a cached build exists"
    )
    parser.add_argument(
        "--print-path", action="store_true", help="print only the path of the library that would be loaded"
    )
    args = parser.parse_args(argv)
    try:
        if args.rebuild:
            if os.environ.get(ENV_LIB):
                print(
                    f"tfdump-fast: note: {ENV_LIB} is set and takes precedence over the "
                    "cached build being rebuilt",
                    file=sys.stderr,
                )
            path = _ensure_built(rebuild=True)
        else:
            path = Path(os.environ.get(ENV_LIB) or _ensure_built())
        lib = load_bridge_library(path)
    except TfdumpBridgeError as e:
        print(f"tfdump-fast: error: {e}", file=sys.stderr)
        return 1
    if args.print_path:
        print(path)
    else:
        print(f"bridge: {path}")
        print(f"built for TensorFlow {lib.tf_version} ({lib.tf_git_version or 'unknown git version'})")
        print(f"capture slots: {lib.max_slots}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
