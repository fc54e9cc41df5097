"""What TensorFlow publishes about a debugged run, and the directory it goes to.

Package-internal. Each debugged run's ``DebugOptions`` carries one extra
watch (:func:`add_publish_watch`): a node no graph has, with a ``file://``
URL into a private directory per capture slot. No debug op is inserted for
it, but TensorFlow publishes to every URL of the debug options what tfdbg's
own dumps get -- each new executor's partition graphs (when it is built, so
also for a run that then fails) and the run's core metadata (TF's own
``session_run_index`` and ``executor_step_index``). :class:`PublishDirectory`
owns the temporary directory; :meth:`PublishDirectory.take` reads and deletes
those small files after each run. The URL is stable per slot, so executors
stay cached.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import tensorflow as tf

__all__ = ["MIN_FREE_BYTES", "PUBLISH_NODE", "PublishDirectory", "add_publish_watch"]

log = logging.getLogger("tfdump_fast")

#: The node name of the publish watch; no graph has it.
PUBLISH_NODE = "_tfdump_fast_publish_"
#: Below this many free bytes TF is not asked to publish (see
#: :meth:`PublishDirectory.has_room`). Read at each check, so tests can lower
#: the bar.
MIN_FREE_BYTES = 64 << 20

# The file names TensorFlow's debugger gives what it publishes to a file://
# URL (tfdbg's debug_data reads the same): one core metadata file per run in
# the directory, graphs in a subdirectory per device.
_GRAPH_PREFIX = "_tfdbg_graph_"
_CORE_METADATA_PREFIX = "_tfdbg_core_metadata_"


def add_publish_watch(debug_options, publish_dir: str) -> None:
    """Add to ``debug_options`` the watch that makes TF publish into ``publish_dir``."""
    watch = debug_options.debug_tensor_watch_opts.add()
    watch.node_name, watch.output_slot = PUBLISH_NODE, 0
    watch.debug_ops.append("DebugIdentity")
    watch.debug_urls.append("file://" + publish_dir)


class PublishDirectory:
    """The temporary directory TF publishes into: one subdirectory per slot URL.

    Parameters
    ----------
    owner : str
        Class name of the hook or wrapper, for log messages.
    log_once : callable
        ``log_once(key, msg, *args)``: the owner's once-per-problem logger.
    """

    def __init__(self, owner: str, log_once: Callable[..., None]):
        self._owner = owner
        self._log_once = log_once
        self._lock = threading.Lock()
        self._root: Optional[str] = None
        self._checked = float("-inf")
        self._ok = True

    @property
    def root(self) -> Optional[str]:
        """The temporary directory; None before the first run (or after
        :meth:`remove`), "" when it could not be created."""
        return self._root

    def for_url(self, url: str) -> Optional[str]:
        """The directory TF publishes graphs and core metadata to for this slot URL."""
        with self._lock:
            if self._root is None:
                try:
                    self._root = tempfile.mkdtemp(prefix="tfdump-fast-publish-")
                except OSError as exc:
                    self._log_once("publish", "tfdump-fast: %s cannot create a temporary directory; "
                                              "runs that fail on a new executor will have no partition "
                                              "graphs: %s", self._owner, exc)
                    self._root = ""
            root = self._root
        return os.path.join(root, url.rsplit("/", 1)[-1]) if root else None

    def has_room(self) -> bool:
        """Whether TF may publish into the temporary directory for this run.

        TensorFlow fails the *run* when it cannot write what it publishes, so
        with less than :data:`MIN_FREE_BYTES` free there (checked at most
        once a second) runs go without it: partition graphs then come from
        RunMetadata (successful runs only) and the core metadata from the
        hook's own account. Switching costs one executor build each way.
        """
        now = time.monotonic()
        with self._lock:
            if now - self._checked < 1.0:
                return self._ok
            self._checked = now
            root = self._root or tempfile.gettempdir()
        try:
            st = os.statvfs(root)
            ok = st.f_bavail * st.f_frsize >= MIN_FREE_BYTES
        except OSError:
            ok = False
        if not ok:
            self._log_once("publish-room", "tfdump-fast: %s: less than %d MiB free in %s; TensorFlow's "
                                           "graphs of runs that fail on a new executor and its exact core "
                                           "metadata are not recorded until there is room (set TMPDIR to a "
                                           "roomier file system)", self._owner, MIN_FREE_BYTES >> 20, root)
        with self._lock:
            self._ok = ok
        return ok

    @staticmethod
    def take(publish_dir: Optional[str]) -> Tuple[Optional[Dict[str, Any]], List[bytes]]:
        """(core metadata, partition graphs) TF published for the run that just ended; removes them."""
        core, graphs = None, []
        if not publish_dir or not os.path.isdir(publish_dir):
            return core, graphs
        best = -1
        for entry in sorted(os.scandir(publish_dir), key=lambda e: e.name):
            try:
                if entry.is_dir():
                    for sub in sorted(os.scandir(entry.path), key=lambda e: e.name):
                        if sub.name.startswith(_GRAPH_PREFIX):
                            with open(sub.path, "rb") as f:
                                graphs.append(tf.compat.v1.Event.FromString(f.read()).graph_def)
                        os.unlink(sub.path)
                elif entry.name.startswith(_CORE_METADATA_PREFIX):
                    with open(entry.path, "rb") as f:
                        meta = json.loads(tf.compat.v1.Event.FromString(f.read()).log_message.message)
                    os.unlink(entry.path)
                    if int(meta.get("session_run_index", -1)) > best:
                        best, core = int(meta.get("session_run_index", -1)), meta
                else:
                    os.unlink(entry.path)
            except (OSError, ValueError, TypeError, AttributeError) as exc:  # never fail the run for it
                log.debug("tfdump-fast: unreadable published file %s: %s", entry.path, exc)
        return core, graphs

    def remove(self) -> None:
        """Delete the temporary directory and everything in it."""
        with self._lock:
            root, self._root = self._root, None
        if root:
            shutil.rmtree(root, ignore_errors=True)
