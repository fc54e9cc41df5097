"""Per-step cost of tfdump-fast's hook, steps back to back, against a floor
that shares no code with it, on a quiet and on a loaded machine (issue #15).

    python -m benchmarks.steps [--quick] [--out DIR] [--workloads rnn mlp ...]
                               [--configs none floor tfdump ...] [--loads quiet loaded]

``--help`` explains the configurations, regimes and loads; BENCHMARKS.md
("Method (issue #15)") what is timed and why.

Modules, in the order of a run:

* ``cli``: options, the plan (steps and repetitions per workload), the
  children in turn, the output files (``__main__`` calls it);
* ``child``: one workload in its own process: sessions, warm-up, the
  watch-set check, the measurements, quiet then loaded;
* ``models``: the workloads (``rnn``/``mlp`` from :mod:`benchmarks.workloads`,
  ``lstm``, ``mobilenetv2``, ``resnet50``);
* ``floor``: the no-op ``memcbk://`` callback (``benchmarks/floor/``),
  compiled, cached, loaded, and the hook that watches with it;
* ``load``: the background load (one CPU-bound process per core);
* ``cpu``: CPU seconds per thread from ``/proc/self/task``;
* ``summary``: medians, ratios to the floor, disk-bound limits;
* ``report``: ``results.md`` and ``ratio_to_floor.png``.

Machine description and disk bandwidth come from
:mod:`benchmarks.compare.machine`.
"""
