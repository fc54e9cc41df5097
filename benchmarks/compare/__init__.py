"""End-to-end comparison of tfdump-fast against no hook and tfdbg v1/v2.

    python -m benchmarks.compare [--quick] [--out DIR] [--regime burst|sustained|both]
                                 [--models mlp rnn ...] [--configs none tfdump ...]

Writes to ``--out`` (default ``bench-out/``):

* ``results.json``: every figure (per-step times, per-block figures, bytes,
  files, memory, writer stats, reader timings, machine, dd bandwidth,
  errors), for the lead to paste from or re-plot;
* ``results.md``: the tables for BENCHMARKS.md;
* ``step_time_ratio.png``: step-time ratio per configuration and model;
* ``logs/``: stdout/stderr of every child process.

How it measures (the why is in BENCHMARKS.md, "Method"):

* Each workload runs in a child process (a crash of one configuration, even a
  segfault in native code, costs only that child's figures). Inside it every
  tf.compat.v1 configuration has its own MonitoredSession on the one graph,
  and the configurations take turns in round-robin blocks of steps, with the
  starting configuration rotated each round, so drift (thermal, other load,
  page-cache state) is spread over all of them.
* ``burst`` regime: a block of a few steps fits in the writer queue and the
  page cache; the figure is the per-step latency. After each block the
  harness waits (untimed) for tfdump-fast's writer to drain, so its
  background compression does not steal the CPU of the next configuration;
  the drain time is reported separately.
* ``sustained`` regime: every configuration runs enough steps to write
  ``--sustained-gib`` of raw tensor bytes; each block ends with the writer
  flushed and ``os.sync()``, *timed*, so the figure is the throughput with
  the data on disk (the effective step time of the block).
* tfdbg v2 instruments tf.function code only and is enabled process-wide, so
  it runs in its own child on the tf.function twin of each workload,
  interleaved with its own undebugged tf.function baseline.
* Peak memory: a separate child per (workload, configuration) in full runs
  (``--memory isolated``), or a sampler thread in the timing child
  (``--memory inproc``, quick mode).

A configuration that cannot run is recorded as ``skipped`` (with the reason)
or ``error`` (with the traceback) in the JSON and the tables; the comparison
goes on.

Modules, in the order of a run:

* ``cli``: the options, the run, the output files (``__main__`` calls it);
* ``config``: the configurations, targets, run sizes and a child's spec;
* ``env``: the checkout, import path and environment of a child, logging;
* ``machine``: machine description and dd bandwidth;
* ``orchestrate``: the parent, running the children in turn;
* ``children``: how a child is started and how it reports back;
* ``child_timing``, ``child_memory``, ``child_reader``: the children;
* ``runners``: one configuration each (v1 runners, the tf.function unit);
* ``schedule``: the interleaved scheduler and per-configuration summaries;
* ``measure``: disk usage, quantiles, RSS;
* ``derive``: ratios to the floor, disk-bound limits, target checks;
* ``report``, ``plot``: results.md and step_time_ratio.png.
"""
