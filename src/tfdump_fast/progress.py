"""Progress reporting for the long-running conversions (``convert``,
``import_tfdbg``): a tqdm bar, a caller's callback, or nothing."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional, Tuple, TypeVar, Union

__all__ = ["progress_reporter", "reported"]

Progress = Union[bool, Callable[[int, int], None]]
T = TypeVar("T")


def progress_reporter(progress: Progress, total: int, what: str) -> Tuple[Optional[object], Callable[[int], None]]:
    """``(bar, report)`` for the chosen progress style.

    ``report(n)`` says that ``n`` more of ``total`` items are done. ``bar`` is
    the tqdm bar to close when done (``progress=True``), else None. A callable
    ``progress`` is called as ``progress(items_done, total)``.
    """
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="tensor", desc=what, dynamic_ncols=True)
        return bar, bar.update
    if callable(progress):
        state = {"done": 0}

        def report(n):
            state["done"] += n
            progress(state["done"], total)

        return None, report
    return None, lambda n: None


def reported(items: Iterable[T], report: Callable[[int], None], every: int = 256) -> Iterator[T]:
    """Yield ``items``, calling ``report(n)`` after every ``every`` of them
    and once more for the rest when they run out (a callback per item would
    cost more than the work it reports on)."""
    done = 0
    for item in items:
        yield item
        done += 1
        if done == every:
            report(done)
            done = 0
    if done:
        report(done)
