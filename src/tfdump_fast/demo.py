"""A small but real training run with the dumping hook, then the dump read back.

Run it with::

    python -m tfdump_fast.demo [--session-root DIR] [--steps N] [--every K]

What it does:

1. Builds a TF1-style graph: a two-layer MLP classifying points of two
   interleaved spirals, trained with Adam, plus a ``tf.while_loop`` that
   estimates the spectral norm of the first weight matrix by power iteration
   (a typical "monitoring" loop: its iterations are dumped one by one).
2. Trains for ``--steps`` steps in a ``MonitoredSession`` with
   :class:`tfdump_fast.DumpingDebugHook`, dumping every ``--every``-th global
   step (``sample=``); the other steps run with no debug ops at all.
3. Evaluates once on a batch that holds a corrupt (NaN) value, also dumped.
4. Reads the dump back with :class:`tfdump_fast.DumpReader` and prints what
   it holds: runs, tensors, bytes, one tensor's values across runs, the loop's
   iterations, and the first tensor with an inf or nan, found the way tfdbg's
   ``has_inf_or_nan`` filter would find it.

It takes a few seconds on two cores (plus, the very first time, the one-off
compilation of the TensorFlow bridge).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m tfdump_fast.demo",
        description="Train a small MLP (with a tf.while_loop) under tfdump_fast.DumpingDebugHook "
                    "in a MonitoredSession, then read the dump back and summarise it.")
    parser.add_argument("--session-root", metavar="DIR",
                        help="where to write the dump (must not exist or be empty); "
                             "default: a fresh temporary directory, printed")
    parser.add_argument("--steps", type=int, default=40, metavar="N",
                        help="training steps (default: %(default)s)")
    parser.add_argument("--every", type=int, default=10, metavar="K",
                        help="dump every K-th global step; 1 dumps every step (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.every < 1:
        parser.error("--every must be at least 1")
    return args


def _spirals(n, rng):
    """Two interleaved spirals: a classic problem a linear model cannot solve."""
    import numpy as np

    t = np.sqrt(rng.uniform(0.05, 1.0, n)) * 3.0 * np.pi
    label = rng.integers(0, 2, n)
    angle = t + np.pi * label
    points = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1) / (3.0 * np.pi)
    points += rng.normal(0.0, 0.02, points.shape)
    return points.astype(np.float32), label.astype(np.int64)


def _build_graph(tf):
    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(1234)
        x = tf1.placeholder(tf.float32, [None, 2], name="x")
        labels = tf1.placeholder(tf.int64, [None], name="labels")
        init = tf1.glorot_uniform_initializer(seed=7)
        with tf1.variable_scope("mlp"):
            w1 = tf1.get_variable("w1", [2, 32], initializer=init)
            b1 = tf1.get_variable("b1", [32], initializer=tf1.zeros_initializer())
            w2 = tf1.get_variable("w2", [32, 2], initializer=init)
            b2 = tf1.get_variable("b2", [2], initializer=tf1.zeros_initializer())
            hidden = tf.nn.relu(tf.matmul(x, w1) + b1, name="hidden")
            logits = tf.add(tf.matmul(hidden, w2), b2, name="logits")
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits), name="loss")
        accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1), labels), tf.float32),
                                  name="accuracy")
        global_step = tf1.train.get_or_create_global_step()
        train_op = tf1.train.AdamOptimizer(0.05).minimize(loss, global_step=global_step)

        # Power iteration for ||w1||_2: a while loop whose iterations the dump
        # keeps one by one (tfdbg dumps every execution of a watched tensor).
        def body(i, v, sigma):
            u = tf.linalg.matvec(w1, v)
            v_next = tf.linalg.matvec(w1, u, transpose_a=True)
            v_next = tf.math.l2_normalize(v_next, name="v_next")
            return i + 1, v_next, tf.norm(u, name="sigma_estimate")

        with tf1.name_scope("spectral_norm"):
            _, _, sigma = tf.while_loop(
                lambda i, v, s: i < 8, body,
                [tf.constant(0), tf.math.l2_normalize(tf.ones([32])), tf.constant(0.0)],
                name="power_iteration")
    return graph, x, labels, loss, accuracy, train_op, sigma


def _human(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0


def main(argv=None) -> int:
    args = _parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    root = args.session_root or os.path.join(tempfile.mkdtemp(prefix="tfdump_demo_"), "dump")
    print(f"tfdump-fast demo: dumping to {root}")

    import numpy as np
    import tensorflow as tf

    import tfdump_fast
    from tfdump_fast.reader import has_inf_or_nan

    tf1 = tf.compat.v1
    rng = np.random.default_rng(0)
    train_x, train_y = _spirals(512, rng)
    eval_x, eval_y = _spirals(128, rng)
    eval_x[5, 1] = np.nan  # a corrupt value in the evaluation batch

    graph, x, labels, loss, accuracy, train_op, sigma = _build_graph(tf)
    try:
        hook = tfdump_fast.DumpingDebugHook(root, sample=args.every)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    with graph.as_default():
        with tf1.train.MonitoredSession(hooks=[hook]) as sess:
            for step in range(args.steps):
                idx = rng.choice(len(train_x), 64, replace=False)
                loss_value, _, sigma_value = sess.run(
                    [loss, train_op, sigma], feed_dict={x: train_x[idx], labels: train_y[idx]})
                if step % max(1, args.steps // 4) == 0 or step == args.steps - 1:
                    print(f"  step {step:3d}  loss {loss_value:.4f}  ||w1|| ~ {sigma_value:.3f}")
            eval_loss, eval_acc = sess.run([loss, accuracy], feed_dict={x: eval_x, labels: eval_y})
            print(f"  eval on a batch with a NaN: loss {eval_loss}, accuracy {eval_acc:.3f}")
    # MonitoredSession.__exit__ called hook.end(): the dump is flushed and closed.
    print(f"trained {args.steps} steps in {time.perf_counter() - t0:.1f} s "
          f"(the first run also builds the debug executor)")

    reader = tfdump_fast.DumpReader(root)
    runs = reader.runs
    storage = reader.storage()
    n_tensors = sum(len(r) for r in runs)
    raw = sum(r.payload_bytes for r in runs)
    print(f"\nThe dump: {len(runs)} runs, {n_tensors} tensors, {_human(raw)} of tensor data "
          f"in {_human(storage['files'])} on disk "
          f"({len(reader.keys())} distinct watch keys)")
    for r in runs:
        print(f"  {r.name}  global step {r.metadata.get('global_step')!s:>4}  {len(r):4d} tensors  "
              f"{_human(r.payload_bytes):>9}  {r.status}")

    train_runs = [r for r in runs if _has(r, "Adam")]
    last_train = train_runs[-1] if train_runs else runs[0]
    print("\nThe loss, read back from the dump of each dumped training step:")
    print("  " + "  ".join(f"step {r.metadata.get('global_step')}: {float(r.get('loss')[0]):.4f}"
                           for r in train_runs if _has(r, "loss")))

    logits = last_train.select("mlp/logits")[0]
    print(f"\nA tensor: {logits.watch_key} in {last_train.name}, shape {logits.shape}, "
          f"{logits.dtype_name}; first rows:")
    print(np.array2string(np.asarray(logits.value)[:3], precision=4, suppress_small=True))

    sigma_keys = [k for k in last_train.watch_keys if "sigma_estimate" in k.node]
    sigma_keys.sort(key=lambda k: not k.node.endswith("/Sqrt"))
    if sigma_keys:
        k = sigma_keys[0]
        values = [float(np.asarray(v).reshape(-1)[0])
                  for v in last_train.get(k.node, k.output_slot, k.debug_op)]
        print(f"\nThe while loop ran {len(values)} iterations in {last_train.name}; "
              f"{k.tensor_name} in each:")
        print("  " + "  ".join(f"{v:.4f}" for v in values))

    print("\nLooking for inf/nan with tfdbg's has_inf_or_nan filter:")
    found_any = False
    for r in runs:
        hits = r.find(has_inf_or_nan)
        if hits:
            found_any = True
            nodes = sorted({h.node_name for h in hits})
            print(f"  {r.name}: {len(hits)} tensor{'s' if len(hits) > 1 else ''}; "
                  f"the first is {hits[0].watch_key} "
                  f"(execution #{hits[0].seq} of the run)")
            print(f"    all of them: {', '.join(nodes)}")
    if not found_any:
        print("  none")
    else:
        print("  (the evaluation loss printed above looked fine: the ReLU swallowed the NaN; "
              "the dump shows where it entered)")
    print(f"\nConvert to tfdbg's layout with: python -c \"import tfdump_fast; "
          f"tfdump_fast.convert({root!r}, '/tmp/tfdbg_layout')\"")
    return 0


def _has(run, node):
    """Whether the run dumped any tensor of ``node`` (or, for a scope, under it)."""
    return any(k.node == node or k.node.startswith(node + "/") for k in run.watch_keys)


if __name__ == "__main__":
    sys.exit(main())
