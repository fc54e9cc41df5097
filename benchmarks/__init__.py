"""Benchmark suite of tfdump-fast.

* ``benchmarks.workloads``: the four TensorFlow workloads (``mlp``, ``rnn``,
  ``cnn``, ``embed``) as tf.compat.v1 graphs and as tf.function twins.
* ``benchmarks.compare``: ``python -m benchmarks.compare`` runs the
  end-to-end comparison (no hook, capture floor, tfdump-fast, tfdbg v1/v2)
  and writes Markdown, JSON and a PNG plot (a package: its docstring lists
  its modules).
* ``benchmarks/bench_engine.py``: pytest-benchmark microbenchmarks of the
  capture engine (``pytest benchmarks/bench_engine.py``); the reader has its
  own in ``benchmarks/bench_reader.py``.

See BENCHMARKS.md for how to run them and how to read the results.
"""
