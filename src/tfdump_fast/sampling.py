"""Which steps a dumping hook or wrapper session debugs.

tfdbg debugs every ``Session.run``. Dumping every step of a long training job
is rarely what anyone wants, so :class:`DumpingDebugHook` and
:class:`DumpingDebugWrapperSession` take a ``sample=`` argument. A run that is
not sampled goes to TensorFlow untouched: no debug ops, no watch options, no
slot. Because TensorFlow caches one executor per (feeds, fetches, targets,
watch set + debug URL), alternating sampled and unsampled runs reuses two
cached executors and never rebuilds either.

``sample`` may be

* ``None``: every run is debugged (tfdbg's behaviour);
* an ``int`` *N* > 0: one run per window of *N* steps, see
  :class:`StepSampler` (``every_n_steps``);
* a ``range``: the runs whose step is in the range (its ``step`` is honoured,
  so ``range(0, 1000, 100)`` works);
* a callable ``predicate(step) -> bool``;
* a :class:`StepSampler`, which combines the three.

What a *step* is depends on the caller: :class:`DumpingDebugHook` uses the
graph's global step when the graph has one (read before the run) and the
0-based index of the ``Session.run`` call otherwise; see the class docs and
:func:`step_of_run` (package-internal, as is :func:`read_global_step`).

On a cluster session the hook reads the global step *inside* the debugged run
instead (:func:`in_run_global_step_read`): a separate read there is a master
step of its own, with a round trip to the parameter server that holds the
variable, for every dumped step.
"""

from __future__ import annotations

import numbers
import threading
from typing import Any, Callable, Optional, Tuple, Union

from .errors import TfdumpUsageError

__all__ = ["StepSampler", "as_sampler"]


class StepSampler:
    """Decides, step by step, whether a run is dumped.

    Every condition that is given must hold (they combine with AND).

    Parameters
    ----------
    every_n_steps : int, optional
        Dump one run per window of *N* consecutive steps: the first run whose
        step falls into a window ``[k*N, (k+1)*N)`` that has not been dumped
        yet. In a plain training loop (steps 0, 1, 2, ...) that is steps 0,
        N, 2N, ... Windows rather than ``step % N == 0`` keep the cadence when
        the step jumps (several increments per run) or repeats (evaluation
        runs at the same global step).
    start, stop : int, optional
        Only steps with ``start <= step < stop`` (either bound may be left
        out).
    predicate : callable, optional
        ``predicate(step) -> bool``; called once per candidate run, on the
        thread that calls ``Session.run``. An exception it raises propagates
        to that ``Session.run`` call.

    Examples
    --------
    >>> s = StepSampler(every_n_steps=100, start=1000)
    >>> [step for step in range(900, 1400) if s.should_sample(step)]
    [1000, 1100, 1200, 1300]
    """

    def __init__(
        self,
        every_n_steps: Optional[int] = None,
        start: Optional[int] = None,
        stop: Optional[int] = None,
        predicate: Optional[Callable[[int], bool]] = None,
    ):
        if every_n_steps is not None:
            if (
                not isinstance(every_n_steps, numbers.Integral)
                or isinstance(every_n_steps, bool)
                or every_n_steps <= 0
            ):
                raise TfdumpUsageError(
                    f"every_n_steps must be a positive int, got {every_n_steps!r}"
                )
            every_n_steps = int(every_n_steps)
        for name, value in (("start", start), ("stop", stop)):
            if value is not None and (
                not isinstance(value, numbers.Integral) or isinstance(value, bool)
            ):
                raise TfdumpUsageError(f"{name} must be an int or None, got {value!r}")
        if predicate is not None and not callable(predicate):
            raise TfdumpUsageError(
                f"predicate must be callable (step -> bool), got {type(predicate).__name__}"
            )
        self.every_n_steps = every_n_steps
        self.start = None if start is None else int(start)
        self.stop = None if stop is None else int(stop)
        self.predicate = predicate
        self._range: Optional[range] = None
        # Several threads may call Session.run through one hook.
        self._lock = threading.Lock()
        self._last_window: Optional[int] = None

    @classmethod
    def _from_range(cls, r: range) -> "StepSampler":
        s = cls(start=r.start, stop=r.stop)
        s._range = r
        return s

    def should_sample(self, step: int) -> bool:
        """Return True if the run at ``step`` is to be dumped.

        Calling this has a side effect for ``every_n_steps``: a True answer
        consumes the step's window.
        """
        step = int(step)
        if self._range is not None and step not in self._range:
            return False
        if self.start is not None and step < self.start:
            return False
        if self.stop is not None and step >= self.stop:
            return False
        if self.predicate is not None and not self.predicate(step):
            return False
        if self.every_n_steps is not None:
            window = step // self.every_n_steps
            with self._lock:
                if self._last_window is not None and window <= self._last_window:
                    return False
                self._last_window = window
        return True

    def reset(self) -> None:
        """Forget which windows were dumped (a new training session starts)."""
        with self._lock:
            self._last_window = None

    def __repr__(self) -> str:
        parts = []
        if self._range is not None:
            parts.append(f"range={self._range!r}")
        else:
            if self.start is not None:
                parts.append(f"start={self.start}")
            if self.stop is not None:
                parts.append(f"stop={self.stop}")
        if self.every_n_steps is not None:
            parts.append(f"every_n_steps={self.every_n_steps}")
        if self.predicate is not None:
            parts.append(f"predicate={self.predicate!r}")
        return f"StepSampler({', '.join(parts)})"


SampleSpec = Union[None, int, range, Callable[[int], bool], StepSampler]


def as_sampler(sample: SampleSpec) -> Optional[StepSampler]:
    """Normalise a ``sample=`` argument to a :class:`StepSampler` (or None).

    Raises
    ------
    TfdumpUsageError
        If ``sample`` is of none of the accepted kinds.
    """
    if sample is None:
        return None
    if isinstance(sample, StepSampler):
        return sample
    if isinstance(sample, bool):
        raise TfdumpUsageError(
            "sample=True/False is ambiguous: pass None to dump every run, an int N "
            "to dump every N steps, a range, a predicate(step) -> bool or a StepSampler"
        )
    if isinstance(sample, numbers.Integral):
        return StepSampler(every_n_steps=int(sample))
    if isinstance(sample, range):
        return StepSampler._from_range(sample)
    if callable(sample):
        return StepSampler(predicate=sample)
    raise TfdumpUsageError(
        f"sample must be None, an int N (every N steps), a range, a predicate "
        f"(step -> bool) or a StepSampler; got {type(sample).__name__}"
    )


def read_global_step(session, tensor) -> Optional[int]:
    """The global step's value now, via a plain (undebugged) run; None if unreadable.

    Package-internal. The session keeps a callable for it
    (``Session.make_callable`` skips most of ``Session.run``'s Python work:
    40 us instead of 100 us measured), as an attribute, so it lives and dies
    with the session. Unsampled steps pay this read and nothing else.
    """
    try:
        cached = getattr(session, "_tfdump_global_step_reader", None)
        if cached is None or cached[0] is not tensor:
            try:
                cached = (tensor, session.make_callable(tensor))
                session._tfdump_global_step_reader = cached
            except (AttributeError, TypeError):
                return int(session.run(tensor))
        return int(cached[1]())
    except Exception:  # noqa: BLE001 - e.g. not initialised yet; caller falls back
        return None


#: Name scope of the nodes tfdump-fast adds to a graph (only the hook's
#: in-run global-step read): never watched, and stripped from the output
#: names of the core metadata a run records, so the dump holds what tfdbg's
#: would.
INTERNAL_SCOPE = "tfdump_fast_internal"
IN_RUN_STEP_NAME = INTERNAL_SCOPE + "/global_step"


def is_internal_name(name: str) -> bool:
    """Whether a node or tensor name is one of tfdump-fast's own nodes."""
    return name.startswith(INTERNAL_SCOPE + "/")


def in_run_global_step_read(graph, global_step) -> Any:
    """A tensor that reads ``global_step`` when fetched with a run; None if impossible.

    Package-internal. Added to ``graph`` once (``tfdump_fast_internal/global_step``,
    an ``Identity`` of the variable's value, placed with the variable) and
    reused after; None when the graph is finalized and lacks it, or when
    ``global_step`` is None. Fetched together with a training step, it
    usually reads the value the step began with: nothing in it waits for the
    step's own computation, while the step's increment waits for the
    gradients (TensorFlow's ``StopAtStepHook`` and ``CheckpointSaverHook``
    rely on the same order when they fetch the global step with the step).
    TensorFlow does not guarantee that order: under load the read may run
    after the increment (one more), which the docs say.
    """
    if global_step is None:
        return None
    try:
        return graph.get_tensor_by_name(IN_RUN_STEP_NAME + ":0")
    except (KeyError, ValueError):
        pass
    if graph.finalized:
        return None
    import tensorflow as tf  # only the hook gets here; the reader never imports TensorFlow

    try:
        op = global_step.op
        # Every node it needs (a resource variable's ReadVariableOp too)
        # goes under the internal scope, at the root of the graph's names.
        with graph.as_default(), graph.name_scope(INTERNAL_SCOPE + "/"), \
                graph.colocate_with(op, ignore_existing=True):
            read = tf.identity(global_step, name="global_step")
    except Exception:  # noqa: BLE001 - no in-run read: the hook falls back to a separate read
        return None
    return read if read.name == IN_RUN_STEP_NAME + ":0" else None


def step_of_run(session: Any, global_step_tensor: Any, call: int) -> Tuple[int, Optional[int]]:
    """(step, global step) of the run about to start, for the sampler.

    Package-internal. The step is the global step's value when there is a
    global step tensor and ``session`` (a plain ``tf.compat.v1.Session``) can
    read it, else ``call - 1``, the 0-based index of the ``Session.run`` call
    (``call`` is 1-based); the global step is None then.
    """
    if global_step_tensor is not None and session is not None:
        value = read_global_step(session, global_step_tensor)
        if value is not None:
            return value, value
    return call - 1, None
