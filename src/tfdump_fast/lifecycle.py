"""The process around the writers: interpreter exit, SIGTERM/SIGINT, fork.

Package-internal. The writers of this process register here
(:func:`register_writer`); this module decides what happens to them when the
process ends or forks:

- **At interpreter exit** (``atexit``): every writer first stops accepting
  runs (so threads still training cannot keep a drain going forever), then
  the exit callbacks of the hook layer run (:func:`on_exit`: runs left open
  are ended as failed), then every writer is closed within a bounded time
  (:data:`EXIT_TIMEOUT_S`); what is still queued after that is left behind
  and logged, the process exits regardless.
- **On SIGTERM and SIGINT**: every writer's queued tensors are written
  (bounded: :data:`SIGNAL_FLUSH_TIMEOUT_S`), then the handler that was
  installed before ours runs. When that was the default action, the writers
  are closed (bounded) and the signal is raised again with the default
  disposition, so the exit status is what it would have been; Python's own
  SIGINT handler (``KeyboardInterrupt``) is kept. Installed only from the
  main thread, only over handlers Python can chain to.
- **After fork, in the child**: the registries are emptied, so the child's
  exit and signal handling never touch its parent's writers or the hook
  layer's temporary directories; writers check their owning process
  (:func:`owned`) before closing.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import time
import weakref
from typing import Callable, List

__all__ = ["register_writer", "unregister_writer", "open_writers", "on_exit", "owned",
           "install_signal_handlers", "EXIT_TIMEOUT_S", "SIGNAL_FLUSH_TIMEOUT_S"]

log = logging.getLogger("tfdump_fast")

# How long interpreter exit may spend closing all writers together.
EXIT_TIMEOUT_S = 5.0
# How long a SIGTERM/SIGINT handler may spend writing queued tensors.
SIGNAL_FLUSH_TIMEOUT_S = 3.0

_writers: "weakref.WeakSet" = weakref.WeakSet()
_exit_callbacks: List[Callable[[], None]] = []
_previous_handlers: dict = {}
_HANDLED_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGINT", None))
                         if s is not None)
_signal_lock = threading.Lock()


def owned(obj) -> bool:
    """Whether ``obj`` (anything with an ``owner_pid``) belongs to this process.

    False in a forked child for the objects it inherited from its parent.
    """
    return getattr(obj, "owner_pid", None) == os.getpid()


def register_writer(writer, handle_signals: bool = True) -> None:
    """Track an open writer of this process (closed at exit, flushed on signals).

    ``handle_signals``: also install the SIGTERM/SIGINT handler (once).
    """
    _writers.add(writer)
    if handle_signals:
        install_signal_handlers()


def unregister_writer(writer) -> None:
    """Forget a writer (it was closed)."""
    _writers.discard(writer)


def open_writers() -> list:
    """The open writers this process created."""
    return [w for w in list(_writers) if owned(w)]


def on_exit(callback: Callable[[], None]) -> None:
    """Run ``callback`` at interpreter exit after writers stop accepting runs
    and before they are closed (the hook layer ends its open runs there)."""
    _exit_callbacks.append(callback)


def _close_all_at_exit() -> None:
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    writers = open_writers()
    for writer in writers:
        writer.stop_accepting_runs()
    for callback in list(_exit_callbacks):
        try:
            callback()
        except Exception as exc:  # noqa: BLE001 - exit path: report, never raise
            log.error("tfdump-fast: at-exit step failed: %s", exc)
    for writer in writers:
        try:
            writer.close_at_exit(max(0.1, deadline - time.monotonic()))
        except Exception as exc:  # noqa: BLE001
            log.error("tfdump-fast: closing %s at exit failed: %s", writer.session_root, exc)


atexit.register(_close_all_at_exit)


# ------------------------------------------------------------------ signals


def install_signal_handlers() -> None:
    """Chain our SIGTERM/SIGINT handler in front of the installed ones.

    Only from the main thread (Python allows no other), once per signal, and
    only over a handler we can call or re-raise to: the default action, a
    Python callable, or Python's SIGINT handler. An ignored signal, or one
    handled outside Python (``signal.getsignal`` returns None), is left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    with _signal_lock:
        for signum in _HANDLED_SIGNALS:
            if signum in _previous_handlers:
                continue
            try:
                previous = signal.getsignal(signum)
            except (ValueError, OSError):
                continue
            if previous is None or previous == signal.SIG_IGN or previous is _on_signal:
                continue
            try:
                signal.signal(signum, _on_signal)
            except (ValueError, OSError) as exc:
                log.debug("tfdump-fast: cannot handle signal %d: %s", signum, exc)
                continue
            _previous_handlers[signum] = previous


def flush_all(timeout: float) -> None:
    """Write every open writer's queued tensors, within ``timeout`` seconds overall."""
    deadline = time.monotonic() + timeout
    for writer in open_writers():
        try:
            writer.flush_at_signal(max(0.05, deadline - time.monotonic()))
        except Exception as exc:  # noqa: BLE001 - a signal handler must not raise ours
            log.error("tfdump-fast: writing %s on a signal failed: %s", writer.session_root, exc)


def _on_signal(signum, frame) -> None:
    flush_all(SIGNAL_FLUSH_TIMEOUT_S)
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        # The program's own handler, or Python's default_int_handler
        # (KeyboardInterrupt): it decides whether the process ends.
        previous(signum, frame)
        return
    # The default action ends the process without running atexit: close the
    # writers, then die by the same signal, so the exit status is the one the
    # default action gives. The closing is done by another thread: the code
    # this handler interrupted may hold a writer's lock (it resumes meanwhile,
    # its new runs refused), and a second signal now gets the default action.
    signal.signal(signum, signal.SIG_DFL)
    for writer in open_writers():
        writer.stop_accepting_runs()

    def close_and_die() -> None:
        deadline = time.monotonic() + EXIT_TIMEOUT_S
        for writer in open_writers():
            try:
                writer.close_at_exit(max(0.1, deadline - time.monotonic()))
            except Exception as exc:  # noqa: BLE001
                log.error("tfdump-fast: closing %s on signal %d failed: %s", writer.session_root, signum, exc)
        os.kill(os.getpid(), signum)

    # Whatever happens to the closing, the signal's action is not put off
    # for longer than the exit bound.
    backstop = threading.Timer(EXIT_TIMEOUT_S + 1.0, os.kill, (os.getpid(), signum))
    backstop.daemon = True
    backstop.start()
    threading.Thread(target=close_and_die, name="tfdump-signal-close", daemon=True).start()


# --------------------------------------------------------------------- fork


def _after_fork_in_child() -> None:
    # The child inherits the parent's writers (their worker threads do not
    # survive fork) and the hook layer's state: none of it is the child's.
    _writers.clear()
    for callback in list(_after_fork_callbacks):
        try:
            callback()
        except Exception:  # noqa: BLE001 - never fail the child's fork
            pass


_after_fork_callbacks: List[Callable[[], None]] = []


def on_fork_child(callback: Callable[[], None]) -> None:
    """Run ``callback`` in a forked child (the hook layer forgets its dumpers)."""
    _after_fork_callbacks.append(callback)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
