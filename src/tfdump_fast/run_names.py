"""Names of a run's feeds, fetches and targets, as TensorFlow's core metadata lists them.

Package-internal. The names are sorted, like the executor's
``CallableOptions``; together with the watch set and slot URL they identify
the TensorFlow executor a ``Session.run`` uses (see :mod:`tfdump_fast.dumper`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Dict, List, Optional, Tuple

from tfdump_fast import _tf_private

__all__ = ["IoNames", "NamesCache", "feed_keys_repr", "run_io_names"]

#: (input names, output names, target names), each sorted.
IoNames = Tuple[List[str], List[str], List[str]]


def run_io_names(graph, fetches, feed_dict) -> Optional[IoNames]:
    """The names ``Session.run(fetches, feed_dict)`` feeds, fetches and runs; None if unknown."""
    try:
        feeds = {}
        inputs = []
        if feed_dict:
            for sub, sub_value in _tf_private.session_feeds(feed_dict):
                tensor = graph.as_graph_element(sub, allow_tensor=True, allow_operation=False)
                feeds[tensor.ref()] = sub_value
                inputs.append(tensor.name)
        outputs, targets = _tf_private.fetch_and_target_names(graph, fetches, feeds)
        return sorted(set(inputs)), sorted(set(outputs)), sorted(set(targets))
    except Exception:  # noqa: BLE001 - metadata only; Session.run reports real errors
        return None


def _structure_key(obj, leaves: list):
    """A hashable key for a fetch structure; leaves are keyed by identity.

    The leaves are appended to ``leaves`` so the caller can keep them alive
    (an id stays unique only while its object lives).
    """
    if isinstance(obj, str):
        return ("s", obj)
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__,) + tuple(_structure_key(o, leaves) for o in obj)
    if isinstance(obj, Mapping):
        return ("d",) + tuple((_structure_key(k, leaves), _structure_key(v, leaves))
                              for k, v in obj.items())
    leaves.append(obj)
    return id(obj)


class NamesCache:
    """Caches :func:`run_io_names`: a training loop runs the same fetches and
    feed keys every step, and working the names out costs ~0.1 ms."""

    _MAX = 256

    def __init__(self):
        self._lock = threading.Lock()
        self._cache: Dict[Any, Tuple[Any, list]] = {}

    def names(self, graph, fetches, feed_dict) -> Optional[IoNames]:
        """:func:`run_io_names`, from the cache when this graph version ran these fetches and feed keys before."""
        leaves: list = [graph]
        try:
            key = (id(graph), graph.version, _structure_key(fetches, leaves),
                   _structure_key(list(feed_dict) if feed_dict else None, leaves))
            hash(key)
        except (TypeError, RecursionError):
            return run_io_names(graph, fetches, feed_dict)
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None:
            return hit[0]
        names = run_io_names(graph, fetches, feed_dict)
        with self._lock:
            if len(self._cache) >= self._MAX:
                self._cache.clear()
            self._cache[key] = (names, leaves)  # leaves kept alive: ids stay valid
        return names



def feed_keys_repr(feed_dict) -> str:
    """What tfdbg's ``DumpingDebugWrapperSession`` stores as a run's feed keys."""
    return repr(feed_dict.keys()) if feed_dict else repr(feed_dict)
