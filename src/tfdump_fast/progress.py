"""Progress reporting for the long-running conversions (``convert``,
``import_tfdbg``): a tqdm bar, a caller's callback, or nothing."""

from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

__all__ = ["progress_reporter"]

Progress = Union[bool, Callable[[int, int], None]]


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
