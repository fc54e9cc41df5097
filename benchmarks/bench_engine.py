"""pytest-benchmark microbenchmarks of the tfdump-fast engine.

    pytest benchmarks/bench_engine.py                       # all
    pytest benchmarks/bench_engine.py -k small              # records/s, small tensors
    pytest benchmarks/bench_engine.py --benchmark-json=engine.json

Not collected by a plain ``pytest`` run (``testpaths = tests``), so CI does
not pay for them.

* ``test_small_records``: records/s for many small tensors (64 float32 each)
  through ``DumpWriter.write`` + ``flush``, per codec: this is the per-record
  path (Python ``write`` call, engine accept, framing, table encoding).
* ``test_large_tensors``: MB/s for 4 MiB tensors, per codec, on two kinds of
  data: ``weights`` (normal floats, hardly compressible) and
  ``activations`` (ReLU outputs: half zeros).
* ``test_capture_cost_per_tensor``: the cost of the TF capture path per
  tensor: a graph of 2000 tiny ops run under the tfdump-fast hook (capture
  floor ``sink="null"``, and the default writer) against the same graph
  without a hook; needs TensorFlow and the bridge.

Every round writes fresh data (made in the untimed setup), because the engine
deduplicates payloads: re-writing the same array would measure the dedup
hit path, not the codec. Codec variants pin ``backoff=False`` so the codec
under test is the one used for every frame.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from benchmarks.compare.env import ensure_tfdump_importable  # noqa: E402
from benchmarks.workloads import unfinalize  # noqa: E402

ensure_tfdump_importable()
pytest.importorskip("pytest_benchmark")
writer_mod = pytest.importorskip("tfdump_fast.writer")
DumpWriter = writer_mod.DumpWriter

CODECS = {
    "raw": dict(codec="raw"),
    "zstd-1-shuffle": dict(codec="zstd", level=1, shuffle=True),     # the default
    "zstd-1-noshuffle": dict(codec="zstd", level=1, shuffle=False),
    "zstd-3-shuffle": dict(codec="zstd", level=3, shuffle=True),
    "zstd-neg1-shuffle": dict(codec="zstd", level=-1, shuffle=True),
}

SMALL_COUNT = 2000
SMALL_ELEMS = 64
LARGE_COUNT = 8
LARGE_ELEMS = 1 << 20  # 4 MiB of float32


@pytest.fixture
def writer_factory():
    roots, writers = [], []

    def make(**options):
        root = tempfile.mkdtemp(prefix="tfdump-bench-")
        roots.append(root)
        w = DumpWriter(os.path.join(root, "dump"), backoff=False, **options)
        writers.append(w)
        return w

    yield make
    for w in writers:
        try:
            w.close()
        except Exception:  # noqa: BLE001 - cleanup only
            pass
    for r in roots:
        shutil.rmtree(r, ignore_errors=True)


def _fresh(rng: np.random.Generator, count: int, elems: int, kind: str):
    data = rng.standard_normal((count, elems), dtype=np.float32)
    if kind == "activations":
        np.maximum(data, 0, out=data)
    return [data[i] for i in range(count)]


def _write_all(w, arrays):
    for i, a in enumerate(arrays):
        w.write(a, f"layer{i % 50}/out", output_slot=i // 50)
    w.flush()


@pytest.mark.parametrize("codec", list(CODECS))
def test_small_records(benchmark, writer_factory, codec):
    w = writer_factory(**CODECS[codec])
    rng = np.random.default_rng(0)
    benchmark.pedantic(_write_all, setup=lambda: ((w, _fresh(rng, SMALL_COUNT, SMALL_ELEMS, "weights")), {}),
                       rounds=10, warmup_rounds=1)
    mean = benchmark.stats.stats.mean
    benchmark.extra_info.update(
        records=SMALL_COUNT, record_bytes=SMALL_ELEMS * 4, records_per_s=SMALL_COUNT / mean,
        stats=_stats(w))


@pytest.mark.parametrize("kind", ["weights", "activations"])
@pytest.mark.parametrize("codec", list(CODECS))
def test_large_tensors(benchmark, writer_factory, codec, kind):
    w = writer_factory(**CODECS[codec])
    rng = np.random.default_rng(1)
    benchmark.pedantic(_write_all, setup=lambda: ((w, _fresh(rng, LARGE_COUNT, LARGE_ELEMS, kind)), {}),
                       rounds=5, warmup_rounds=1)
    mean = benchmark.stats.stats.mean
    nbytes = LARGE_COUNT * LARGE_ELEMS * 4
    s = _stats(w)
    benchmark.extra_info.update(
        bytes_per_round=nbytes, mb_per_s=nbytes / mean / 1e6, stats=s,
        compression_ratio=(s.get("bytes_accepted", 0) / s["bytes_written"]) if s.get("bytes_written") else None)


def _stats(w):
    s = w.stats()
    keep = ("tensors_accepted", "bytes_accepted", "bytes_written", "payload_bytes_stored",
            "payload_bytes_deduped", "queue_high_water", "frames_by_codec", "tensors_dropped")
    return {k: s.get(k) for k in keep}


# ---------------------------------------------------------------------------
# The TF capture path


CHAIN = 2000


@pytest.fixture(scope="module")
def chain_graph():
    tf = pytest.importorskip("tensorflow")
    try:
        from tfdump_fast.bridge import get_bridge
        get_bridge()
        import tfdump_fast
        tfdump_fast.DumpingDebugHook  # noqa: B018 - availability check
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"tfdump-fast hook or bridge not available: {exc}")
    graph = tf.Graph()
    with graph.as_default():
        v = tf.compat.v1.Variable(tf.ones([16]), use_resource=True)
        h = v.read_value()
        for _ in range(CHAIN):
            h = tf.sin(h)
        out = tf.reduce_sum(h)
    # Grappler would fuse the chain of unary ops into one op; switched off so
    # every one of the CHAIN outputs exists, and is captured, at run time.
    config = tf.compat.v1.ConfigProto()
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    return tf, graph, out, config


def _median_step(sess, out, n=30):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        sess.run(out)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


@pytest.mark.parametrize("mode", ["floor", "tfdump", "tfdbg"])
def test_capture_cost_per_tensor(benchmark, chain_graph, mode, tmp_path):
    """Per-tensor cost = (median hooked step - median plain step) / tensors per step."""
    tf, graph, out, config = chain_graph
    import tfdump_fast
    from tensorflow.python import debug as tf_debug

    root = str(tmp_path / "dump")
    if mode == "tfdbg":  # one file per tensor: fewer rounds, cleaned after each
        hook, rounds = tf_debug.DumpingDebugHook(root), 5
    else:
        options = {"sink": "null"} if mode == "floor" else {}
        hook, rounds = tfdump_fast.DumpingDebugHook(root, log_usage=False, **options), 30
    with graph.as_default():
        unfinalize(graph)
        creator = tf.compat.v1.train.ChiefSessionCreator(config=config)
        with tf.compat.v1.train.MonitoredSession(session_creator=creator) as plain:
            for _ in range(3):
                plain.run(out)
            base = _median_step(plain, out)
        unfinalize(graph)
        creator = tf.compat.v1.train.ChiefSessionCreator(config=config)
        with tf.compat.v1.train.MonitoredSession(session_creator=creator, hooks=[hook]) as sess:
            for _ in range(2):
                sess.run(out)
            if mode == "tfdbg":
                counted = []

                def clean():
                    for d in os.listdir(root):
                        counted.append(sum(len(f) for _, _, f in os.walk(os.path.join(root, d))))
                        shutil.rmtree(os.path.join(root, d))
                    return (), {}

                benchmark.pedantic(lambda: sess.run(out), setup=clean, rounds=rounds, warmup_rounds=0)
                clean()
                tensors = float(np.median(counted[1:])) if len(counted) > 1 else None
            else:
                hook.flush()
                before = hook.writer.stats()["tensors_accepted"]
                benchmark.pedantic(lambda: sess.run(out), rounds=rounds, warmup_rounds=0)
                hook.flush()
                tensors = (hook.writer.stats()["tensors_accepted"] - before) / rounds
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(
        tensors_per_step=tensors, baseline_step_s=base,
        per_tensor_us=(median - base) / tensors * 1e6 if tensors else None)
