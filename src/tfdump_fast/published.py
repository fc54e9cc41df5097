"""What TensorFlow publishes about a debugged run, kept in memory.

Package-internal. Each debugged run's ``DebugOptions`` carries one extra
watch (:func:`add_publish_watch`): a node no graph has, with a ``file://``
URL into TensorFlow's in-memory ``ram://`` file system, one directory per
capture slot. No debug op is inserted for it, but TensorFlow publishes to
every URL of the debug options what tfdbg's own dumps get -- each new
executor's partition graphs (when it is built, so also for a run that then
fails) and the run's core metadata (TF's own ``session_run_index`` and
``executor_step_index``). :class:`PublishDirectory` owns one such directory
tree; :meth:`PublishDirectory.take` reads and deletes those few small
"files" after each run. The URL is stable per slot, so executors stay
cached.

Why ``ram://``: TensorFlow's ``file://`` writer CHECK-fails (aborts the
process) when it cannot create or close a file, and fails the run when it
cannot create a directory. On a disk that is full, read-only or gone, that
kills the training job. ``ram://`` files are strings in TF's memory: there
is no ENOSPC, EACCES or EROFS. Its one hazard is TensorFlow's recursive
directory creation, which never ends (a stack overflow) when the URL's
top-level directory does not exist; so before every run that carries the
watch, :meth:`PublishDirectory.for_url` checks that the slot directory
exists (one in-memory lookup) and creates it if not, and the top-level
directory (:data:`RAM_ROOT`) is never removed.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

import tensorflow as tf

__all__ = ["CORE_METADATA_KEYS", "PUBLISH_NODE", "RAM_ROOT", "PublishDirectory", "add_publish_watch"]

log = logging.getLogger("tfdump_fast")

#: The node name of the publish watch; no graph has it.
PUBLISH_NODE = "_tfdump_fast_publish_"
#: The fields of TF's core metadata (tfdbg's ``_tfdbg_core_metadata_``) a run records.
CORE_METADATA_KEYS = ("global_step", "session_run_index", "executor_step_index", "input_names",
                      "output_names", "target_nodes")
#: The top-level directory of every publish directory in TF's ``ram://``
#: file system. Created once, never removed (see the module docstring).
RAM_ROOT = "ram://tfdump-fast"

# The file names TensorFlow's debugger gives what it publishes to a file://
# URL (tfdbg's debug_data reads the same): one core metadata file per run in
# the directory, graphs in a subdirectory per device.
_GRAPH_PREFIX = "_tfdbg_graph_"
_CORE_METADATA_PREFIX = "_tfdbg_core_metadata_"
_DEVICE_DIR_PREFIX = "_tfdbg_device_"
# ram:// treats a name as a directory when any file name starts with it, so
# no name of ours may be a prefix of another ("slot_1" of "slot_10"): each
# ends in this suffix.
_SUFFIX = ".pub"
_instances = itertools.count(1)
_gfile = tf.io.gfile

#: What the log line and the store say when publishing is unavailable.
UNAVAILABLE_FIX = ("runs that fail on a new executor have no partition graphs and the core metadata "
                   "is tfdump-fast's own account, not TensorFlow's; fix: use a TensorFlow build that "
                   "has its in-memory ram:// file system (any standard TensorFlow 2.x)")


def add_publish_watch(debug_options, publish_dir: str) -> None:
    """Add to ``debug_options`` the watch that makes TF publish into ``publish_dir``.

    ``publish_dir`` is a ``ram://`` directory from :meth:`PublishDirectory.for_url`.
    """
    watch = debug_options.debug_tensor_watch_opts.add()
    watch.node_name, watch.output_slot = PUBLISH_NODE, 0
    watch.debug_ops.append("DebugIdentity")
    watch.debug_urls.append("file://" + publish_dir)


class PublishDirectory:
    """A ``ram://`` directory TF publishes into: one subdirectory per slot URL.

    Parameters
    ----------
    owner : str
        Who publishes there (the hook or wrapper class name, ...), for log messages.
    log_once : callable
        ``log_once(key, msg, *args)``: the owner's once-per-problem logger.

    Attributes
    ----------
    unavailable : str or None
        Why TF cannot publish (set by the first :meth:`for_url` that found
        ``ram://`` unusable); None while it works.
    """

    def __init__(self, owner: str, log_once: Callable[..., None]):
        self._owner = owner
        self._log_once = log_once
        self._lock = threading.Lock()
        # Unique in the process (a forked child has its own ram:// copy).
        self._root = f"{RAM_ROOT}/{os.getpid()}-{next(_instances)}{_SUFFIX}"
        self._created = False
        # Directories for_url made or found, so later runs skip the check (a
        # file-system call per run); forgotten when remove() deletes them.
        self._known: set = set()
        self.unavailable: Optional[str] = None

    @property
    def root(self) -> str:
        """The ``ram://`` directory of this instance (exists once a run used it)."""
        return self._root

    def for_url(self, url: str) -> Optional[str]:
        """The directory TF is to publish to for this slot URL, or None when it cannot.

        Ensures the directory exists, so TF's own directory creation never
        has to walk up to the root of ``ram://``.
        """
        if self.unavailable is not None:
            return None
        path = f"{self._root}/{url.rsplit('/', 1)[-1]}{_SUFFIX}"
        if path in self._known:
            return path
        try:
            if not _gfile.isdir(path):
                _gfile.makedirs(path)
                if not _gfile.isdir(path):
                    raise OSError(f"{path} does not exist after creating it")
            with self._lock:
                self._created = True
                self._known.add(path)
            return path
        except (tf.errors.OpError, OSError) as exc:
            self.unavailable = f"TensorFlow's ram:// file system is unusable ({exc})"
            self._log_once("publish", "tfdump-fast: %s: %s; %s", self._owner, self.unavailable,
                           UNAVAILABLE_FIX)
            return None

    @staticmethod
    def take(publish_dir: Optional[str]) -> Tuple[Optional[Dict[str, Any]], List[bytes]]:
        """(core metadata, partition graphs) TF published for the run that just ended; removes them.

        The graphs are serialized ``GraphDef`` s, as TF published them.
        """
        core, graphs = None, []
        if not publish_dir:
            return core, graphs
        try:
            names = _gfile.listdir(publish_dir)
        except (tf.errors.OpError, OSError):
            return core, graphs
        best = -1
        for name in sorted(names):
            path = f"{publish_dir}/{name}"
            try:
                if name.startswith(_DEVICE_DIR_PREFIX):
                    for sub in sorted(_gfile.listdir(path)):
                        if sub.startswith(_GRAPH_PREFIX):
                            graphs.append(tf.compat.v1.Event.FromString(_read(f"{path}/{sub}")).graph_def)
                            _gfile.remove(f"{path}/{sub}")
                elif name.startswith(_CORE_METADATA_PREFIX):
                    data = _read(path)
                    _gfile.remove(path)
                    meta = json.loads(tf.compat.v1.Event.FromString(data).log_message.message)
                    if int(meta.get("session_run_index", -1)) > best:
                        best, core = int(meta.get("session_run_index", -1)), meta
            except (tf.errors.OpError, OSError, ValueError, TypeError, AttributeError) as exc:
                # Never fail the run for it (ram:// lists a name that only
                # starts like ours as a child, for one).
                log.debug("tfdump-fast: unreadable published file %s: %s", path, exc)
        return core, graphs

    def remove(self) -> None:
        """Delete what this instance left in ``ram://`` (the tree below :attr:`root`)."""
        with self._lock:
            created, self._created = self._created, False
            self._known = set()
        if created:
            try:
                _gfile.rmtree(self._root)
            except (tf.errors.OpError, OSError) as exc:
                log.debug("tfdump-fast: could not remove %s: %s", self._root, exc)


def _read(path: str) -> bytes:
    with _gfile.GFile(path, "rb") as f:
        return f.read()
