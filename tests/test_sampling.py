"""Sampling: dump only some steps, leave the others untouched by the debugger."""

import pytest

from tfdump_fast.errors import TfdumpUsageError
from tfdump_fast.sampling import StepSampler, as_sampler

# ---------------------------------------------------------------- the sampler


def sampled(sampler, steps):
    return [s for s in steps if sampler.should_sample(s)]


def test_every_n_steps():
    assert sampled(StepSampler(every_n_steps=3), range(10)) == [0, 3, 6, 9]


def test_every_n_steps_survives_jumps_and_repeats():
    # Steps that repeat (eval runs at one global step) or jump (several
    # increments per run) still give one dump per window of N.
    assert sampled(StepSampler(every_n_steps=10), [0, 0, 4, 9, 12, 12, 13, 31, 35, 40]) == [0, 12, 31, 40]


def test_start_stop_and_predicate_combine():
    s = StepSampler(every_n_steps=100, start=1000, stop=1300)
    assert sampled(s, range(900, 1400)) == [1000, 1100, 1200]
    s = StepSampler(start=5, predicate=lambda step: step % 2 == 1)
    assert sampled(s, range(10)) == [5, 7, 9]


def test_reset_forgets_windows():
    s = StepSampler(every_n_steps=5)
    assert sampled(s, [0, 1]) == [0]
    s.reset()
    assert sampled(s, [1]) == [1]


def test_as_sampler_kinds():
    assert as_sampler(None) is None
    assert sampled(as_sampler(4), range(9)) == [0, 4, 8]
    assert sampled(as_sampler(range(2, 20, 5)), range(20)) == [2, 7, 12, 17]
    assert sampled(as_sampler(lambda s: s in (3, 4)), range(9)) == [3, 4]
    s = StepSampler(every_n_steps=2)
    assert as_sampler(s) is s
    assert "every_n_steps=2" in repr(s)


@pytest.mark.parametrize("bad, message", [
    (0, "every_n_steps must be a positive int"),
    (-3, "every_n_steps must be a positive int"),
    (True, "ambiguous"),
    ("10", "sample must be None, an int N"),
    (2.5, "sample must be None, an int N"),
])
def test_as_sampler_rejects(bad, message):
    with pytest.raises(TfdumpUsageError, match=message):
        as_sampler(bad)


def test_sampler_argument_checks():
    with pytest.raises(TfdumpUsageError, match="start must be an int"):
        StepSampler(start=1.5)
    with pytest.raises(TfdumpUsageError, match="predicate must be callable"):
        StepSampler(predicate=3)


# ------------------------------------------------------ with real TF sessions

tf = pytest.importorskip("tensorflow")
tf1 = tf.compat.v1

from tfdump_fast.bridge import get_bridge  # noqa: E402
from tfdump_fast.hooks import DumpingDebugHook, DumpingDebugWrapperSession  # noqa: E402
from tfdump_fast.reader import DumpReader  # noqa: E402


def training_graph():
    g = tf.Graph()
    with g.as_default():
        w = tf1.get_variable("w", initializer=tf.constant([1.0, 2.0]), use_resource=True)
        loss = tf.reduce_sum(tf.square(w), name="loss")
        gs = tf1.train.get_or_create_global_step()
        train = tf1.train.GradientDescentOptimizer(0.1).minimize(loss, global_step=gs)
    return g, loss, train


def test_hook_samples_by_global_step(tmp_path):
    g, loss, train = training_graph()
    hook = DumpingDebugHook(str(tmp_path), sample=3)
    forwarded = []
    with g.as_default():
        with tf1.train.MonitoredSession(hooks=[hook]) as sess:
            for _ in range(7):
                before = get_bridge().stats()["tensors_forwarded"]
                sess.run(train)
                forwarded.append(get_bridge().stats()["tensors_forwarded"] - before)
    runs = DumpReader(str(tmp_path)).runs
    assert [r.metadata["global_step"] for r in runs] == [0, 3, 6]
    assert [r.metadata["step"] for r in runs] == [0, 3, 6]
    # Unsampled steps ran without any debug op: nothing reached the bridge.
    assert [n > 0 for n in forwarded] == [True, False, False, True, False, False, True]
    # Switching between sampled and unsampled runs keeps the debug executor:
    # the partition graphs were needed once, the executor's step count goes on.
    assert ["attachment_hashes" in r.metadata for r in runs] == [True, False, False]
    assert [r.core_metadata["executor_step_index"] for r in runs] == [0, 1, 2]


def test_hook_sample_range_and_predicate(tmp_path):
    g, loss, train = training_graph()
    hook_a = DumpingDebugHook(str(tmp_path / "a"), sample=range(2, 4))
    hook_b = DumpingDebugHook(str(tmp_path / "b"), sample=lambda step: step in (1, 5))
    with g.as_default():
        with tf1.train.MonitoredSession(hooks=[hook_a, hook_b]) as sess:
            for _ in range(6):
                sess.run(train)
    assert [r.metadata["global_step"] for r in DumpReader(str(tmp_path / "a")).runs] == [2, 3]
    assert [r.metadata["global_step"] for r in DumpReader(str(tmp_path / "b")).runs] == [1, 5]


def test_hook_without_global_step_samples_by_run_index(tmp_path):
    g = tf.Graph()
    with g.as_default():
        c = tf.constant([1.0, 2.0], name="c")
        y = tf.multiply(c, 2.0, name="y")
    hook = DumpingDebugHook(str(tmp_path), sample=2)
    with g.as_default():
        with tf1.train.MonitoredSession(hooks=[hook]) as sess:
            for _ in range(5):
                sess.run(y)
    runs = DumpReader(str(tmp_path)).runs
    assert [r.metadata["step"] for r in runs] == [0, 2, 4]
    assert all(r.metadata["global_step"] is None for r in runs)


def test_wrapper_samples(tmp_path):
    g, loss, train = training_graph()
    with g.as_default():
        init = tf1.global_variables_initializer()
    sess = tf1.Session(graph=g)
    sess.run(init)
    wrapped = DumpingDebugWrapperSession(sess, str(tmp_path), sample=StepSampler(start=2, stop=4))
    for _ in range(6):
        wrapped.run(train)
    wrapped.close()
    assert [r.metadata["global_step"] for r in DumpReader(str(tmp_path)).runs] == [2, 3]


def test_sample_argument_is_checked(tmp_path):
    with pytest.raises(TfdumpUsageError, match="sample must be"):
        DumpingDebugHook(str(tmp_path), sample="often")


def test_stats_count_calls_and_debugged_runs(tmp_path):
    g, loss, train = training_graph()
    hook = DumpingDebugHook(str(tmp_path), sample=2)
    with g.as_default():
        with tf1.train.MonitoredSession(hooks=[hook]) as sess:
            for _ in range(5):
                sess.run(train)
            stats = hook.stats()
    assert stats["session_run_calls"] == 5 and stats["runs_debugged"] == 3
    assert stats["tensors_accepted"] > 0
