"""A run is ended exactly once, whichever threads race to end it.

A training thread's ``end_run`` (the hook's after_run) can race the exit path
(``close_at_exit``, run by the interpreter's at-exit handler, or ``close``)
for the same run. Real threads, many iterations, a real store: each run has
exactly one ``run_end`` record, and the losers of the race are told the run
was already ended (or, on the exit path, skip it).
"""

import sys
import threading

import numpy as np

from conftest import scan_store
from tfdump_fast import DumpWriter
from tfdump_fast.errors import TfdumpUsageError
from tfdump_fast.reader import DumpReader


def run_end_counts(root):
    _, events = scan_store(root)
    counts = {}
    for e in events:
        if e["event"] == "run_end":
            counts[e["run_id"]] = counts.get(e["run_id"], 0) + 1
    return counts


def race(target_calls, switch=1e-6):
    """Start every call at once (a barrier), return what each raised."""
    barrier = threading.Barrier(len(target_calls))
    outcomes = [None] * len(target_calls)

    def call(k, fn):
        barrier.wait()
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - collected for the test
            outcomes[k] = exc

    old = sys.getswitchinterval()
    sys.setswitchinterval(switch)  # interleave the threads as finely as Python allows
    try:
        threads = [threading.Thread(target=call, args=(k, fn)) for k, fn in enumerate(target_calls)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        sys.setswitchinterval(old)
    return outcomes


def test_threads_ending_one_run_write_one_run_end(tmp_path):
    root = str(tmp_path / "d")
    losers = 0
    with DumpWriter(root) as w:
        for _ in range(150):
            run = w.begin_run(capture=False)
            w.write(np.arange(8.0), "x", run=run)
            outcomes = race([lambda: w.end_run(run) for _ in range(4)])
            winners = [o for o in outcomes if o is None]
            assert len(winners) == 1, outcomes
            for o in outcomes:
                if o is not None:
                    assert isinstance(o, TfdumpUsageError) and "already ended" in str(o), repr(o)
                    losers += 1
    counts = run_end_counts(root)
    assert len(counts) == 150 and set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}
    assert losers == 150 * 3
    assert all(r.status == "complete" for r in DumpReader(root).runs)


def test_training_thread_and_exit_path_race(tmp_path):
    """The exit path (close_at_exit, as the at-exit handler calls it) and a
    training thread ending its run at the same moment: one run_end each."""
    for trial in range(40):
        root = str(tmp_path / f"d{trial}")
        w = DumpWriter(root)
        runs = [w.begin_run(capture=False) for _ in range(4)]
        for run in runs:
            w.write(np.arange(4.0), "x", run=run)
        calls = [lambda run=run: w.end_run(run) for run in runs] + [lambda: w.close_at_exit(10.0)]
        outcomes = race(calls)
        for o in outcomes[:-1]:
            assert o is None or (isinstance(o, TfdumpUsageError) and "already ended" in str(o)), repr(o)
        assert outcomes[-1] is None, repr(outcomes[-1])
        assert w.closed
        counts = run_end_counts(root)
        assert counts == {run.run_id: 1 for run in runs}, (trial, counts)
        statuses = {r.run_id: r.status for r in DumpReader(root).runs}
        # Ended by the training thread (complete) or by the exit path (failed).
        assert set(statuses.values()) <= {"complete", "failed"}, statuses
