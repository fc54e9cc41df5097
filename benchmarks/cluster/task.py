"""One task of the benchmark cluster (run by :mod:`benchmarks.cluster.harness`).

``python -m benchmarks.cluster.task PARAMS_JSON``. The task starts its
``tf.distribute.Server`` and then answers JSON commands read from stdin, one
per line, with JSON lines on stdout prefixed ``@@`` (anything else on stdout
is TensorFlow's or Python's and ignored).

ps
    Loads the floor's no-op callback (for the ``floor`` configuration's
    watches of ps nodes) and calls ``tfdump_fast.serve()`` (for ``ours``).
    Commands: ``counters`` (its CPU seconds, the floor's tensors, serve's
    stats), ``flush``, ``quit``.
worker
    Builds the model under ``replica_device_setter``, waits for ``session``
    (the harness creates the chief's session first, so the other worker finds
    the variables initialized and does not sleep in ``SessionManager``), and
    creates its ``MonitoredTrainingSession`` with one hook that forwards to
    the block's configuration (``benchmarks.steps.child.make_swappable_hook``).
    ``block`` runs the warm-up step(s) and answers ``ready``; ``go`` runs the
    timed steps (each timed alone), then the hook's ``end()`` (flush and
    close of our writer) inside the window, and answers with the figures.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import Any, Dict

WARMUP_STEPS = 1


def say(obj: Dict[str, Any]) -> None:
    sys.stdout.write("@@ " + json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def read_command() -> Dict[str, Any]:
    line = sys.stdin.readline()
    if not line:  # the harness is gone
        os._exit(0)
    return json.loads(line)


def process_cpu_s() -> float:
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_server(params):
    import tensorflow as tf

    spec = tf.train.ClusterSpec(params["cluster"])
    server = tf.distribute.Server(spec, job_name=params["job"], task_index=params["task"])
    return tf, spec, server


def run_ps(params) -> None:
    tf, _, server = make_server(params)
    from benchmarks.steps.floor import floor_calls, load_floor

    load_floor()
    import tfdump_fast

    served = tfdump_fast.serve(params["serve_root"], server=server)
    say({"ready": True, "pid": os.getpid()})
    while True:
        cmd = read_command()
        if cmd["cmd"] == "counters":
            stats = served.stats()
            say({"cpu_s": process_cpu_s(), "floor_calls": floor_calls(),
                 "served_tensors": stats.get("served_tensors_submitted", 0),
                 "served_no_run": stats.get("served_tensors_no_run", 0),
                 "served_failed": stats.get("served_tensors_failed", 0),
                 "served_steps": stats.get("served_steps_bound", 0),
                 "tensors_dropped": stats.get("tensors_dropped", 0)})
        elif cmd["cmd"] == "flush":
            served.flush()
            say({"flushed": True})
        elif cmd["cmd"] == "quit":
            served.close()
            say({"bye": True})
            return


def build_model(tf, spec, params):
    """A between-graph replicated MLP: variables (and their updates) on the ps."""
    p = params["model"]
    worker_device = f"/job:worker/task:{params['task']}"
    setter = tf.compat.v1.train.replica_device_setter(cluster=spec, worker_device=worker_device)
    width, batch = p["width"], p["batch"]
    with tf.compat.v1.device(setter):
        x = tf.random.uniform([batch, width], seed=params["task"] + 1, name="x")
        target = tf.random.uniform([batch, width], seed=params["task"] + 11, name="target")
        h = x
        for i in range(p["layers"]):
            w = tf.compat.v1.get_variable(f"w{i}", [width, width],
                                          initializer=tf.compat.v1.glorot_uniform_initializer(seed=i))
            b = tf.compat.v1.get_variable(f"b{i}", [width], initializer=tf.compat.v1.zeros_initializer())
            h = tf.nn.relu(tf.matmul(h, w) + b, name=f"h{i}")
        loss = tf.reduce_mean(tf.square(h - target), name="loss")
        step = tf.compat.v1.train.get_or_create_global_step()
        train = tf.compat.v1.train.GradientDescentOptimizer(0.01).minimize(loss, global_step=step)
    return train, worker_device


def _time_hook(hook) -> Dict[str, list]:
    """Seconds spent in the hook's before_run and after_run, and in its
    global-step read (a Session.run of its own: on a cluster, a master step
    that reads the ps), per call; the profile of the hook's share of a step."""
    timers: Dict[str, list] = {"before_run": [], "after_run": [], "global_step_read": []}

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                timers[name].append(time.perf_counter() - t)
        return wrapper

    hook.before_run = timed("before_run", hook.before_run)
    hook.after_run = timed("after_run", hook.after_run)
    hook._current_step = timed("global_step_read", hook._current_step)
    return timers


def run_worker(params) -> None:
    tf, spec, server = make_server(params)
    tf.compat.v1.disable_eager_execution()
    import tfdump_fast
    from tensorflow.python import debug as tf_debug

    from benchmarks.compare.measure import du
    from benchmarks.steps import cpu
    from benchmarks.steps.child import make_swappable_hook
    from benchmarks.steps.floor import floor_calls, make_floor_hook

    graph = tf.compat.v1.get_default_graph()
    train, worker_device = build_model(tf, spec, params)
    # What DumpingDebugHook.begin() adds when MonitoredTrainingSession calls
    # it (before finalizing the graph): the node that reads the global step
    # inside a debugged run on a cluster. The benchmark swaps hooks in after
    # the graph is finalized, so it is added here, as the hook would.
    from tfdump_fast.sampling import in_run_global_step_read
    in_run_global_step_read(graph, tf.compat.v1.train.get_global_step())
    swap = make_swappable_hook()
    say({"built": True, "pid": os.getpid()})
    cmd = read_command()
    assert cmd["cmd"] == "session", cmd
    # Between-graph replication: a worker talks to the ps and itself only.
    config = tf.compat.v1.ConfigProto(device_filters=["/job:ps", worker_device])
    sess = tf.compat.v1.train.MonitoredTrainingSession(
        master=server.target, is_chief=params["task"] == 0, hooks=[swap], config=config,
        save_checkpoint_secs=None, save_summaries_steps=None, save_summaries_secs=None,
        log_step_count_steps=None)
    # After the session exists: MonitoredTrainingSession adds its own ops
    # (init, ready checks, saver) to the graph; the floor watches what the
    # hook watches, which is the graph as it is at the first run.
    floor_hook = make_floor_hook(graph)
    # watch_graph adds a wildcard watch (node "*", slot -1) that makes every
    # partition also dump the Recv nodes TF's partitioning adds (copies of
    # tensors sent from another task). Our hook leaves it out on a cluster (a
    # wildcard would reach tasks it cannot place), so the floor does too:
    # both watch the same tensors.
    opts = floor_hook.run_options.debug_options
    # Nor does it watch its own in-run global-step read (never in the floor's runs anyway).
    kept = [w for w in opts.debug_tensor_watch_opts
            if w.node_name != "*" and not w.node_name.startswith("tfdump_fast_internal/")]
    del opts.debug_tensor_watch_opts[:]
    opts.debug_tensor_watch_opts.extend(kept)
    say({"session": True})
    keep_alive = []  # tfdbg's hooks wrap the session; their __del__ would close it
    while True:
        cmd = read_command()
        if cmd["cmd"] == "quit":
            sess.close()
            say({"bye": True})
            return
        assert cmd["cmd"] == "block", cmd
        name, root, steps = cmd["config"], cmd["root"], int(cmd["steps"])
        if name == "floor":
            inner = floor_hook
        elif name == "tfdbg":
            inner = tf_debug.DumpingDebugHook(root)
            keep_alive.append(inner)
        elif name in ("ours", "ours-separate-read", "ours-ps-off", "ours-no-step-read", "ours-raw",
                      "ours-null-sink"):
            # Profile configurations: the workers' writers without compression,
            # or discarding what they capture (no hash, compression, writes).
            engine = {"ours-raw": {"codec": "raw"}, "ours-null-sink": {"sink": "null"}}.get(name, {})
            inner = tfdump_fast.DumpingDebugHook(root, log_usage=False, **engine)
            if name == "ours-ps-off":
                # What the workers do when the ps did not call serve(): the
                # ps is not covered (benchmark-only switch of the probe's
                # answer, so one ps process serves both configurations).
                cluster = inner._dumper.cluster
                placement = cluster.placement
                cluster.placement = lambda s, g, allow_served=True: placement(s, g, allow_served=False)
            if name == "ours-separate-read":
                # Before: the global step read with a Session.run of its own
                # (a master step reading the ps) before every dumped run.
                inner._reads_step_in_run = lambda session: False
            if name == "ours-no-step-read":
                # Profile only: no global step at all (neither the in-run
                # fetch nor a separate read), replaced by the call count, to
                # measure what recording it costs.
                inner._current_step = lambda session, call: (call - 1, None)
                inner._reads_step_in_run = lambda session: False
        else:
            inner = None
        timers = _time_hook(inner) if isinstance(inner, tfdump_fast.DumpingDebugHook) else None
        swap.swap(inner)
        t = time.perf_counter()
        for _ in range(WARMUP_STEPS):
            sess.run(train)
        first_ms = (time.perf_counter() - t) * 1e3 / WARMUP_STEPS
        if hasattr(inner, "flush"):
            inner.flush()
        options = swap.first_options
        watches = sorted({f"{w.node_name}:{w.output_slot}" for w in options.debug_tensor_watch_opts}) \
            if options is not None else []
        say({"ready": True})
        cmd = read_command()
        assert cmd["cmd"] == "go", cmd
        if timers is not None:
            for v in timers.values():
                v.clear()  # the warm-up step is not in the profile
        floor0, cpu0, snap0 = floor_calls(), process_cpu_s(), cpu.snapshot()
        step_ms = []
        t0 = time.perf_counter()
        for _ in range(steps):
            ts = time.perf_counter()
            sess.run(train)
            step_ms.append((time.perf_counter() - ts) * 1e3)
        t1 = time.perf_counter()
        if isinstance(inner, tfdump_fast.DumpingDebugHook):
            inner.end(None)  # what MonitoredSession calls at the end: flush, close
        t2 = time.perf_counter()
        cpu_s = process_cpu_s() - cpu0
        # main: the Python thread (hooks); tf: TensorFlow's threads (kernels,
        # debug ops, gRPC); named: our writer threads (hash, compress, write)
        split = cpu.split(snap0, cpu.snapshot(), cpu.thread_ids(("tfdump-",)))
        floor_tensors = floor_calls() - floor0
        stats = None
        if isinstance(inner, tfdump_fast.DumpingDebugHook):
            s = inner.stats()
            stats = {k: s.get(k) for k in ("tensors_accepted", "tensors_dropped", "runs_debugged",
                                           "payload_bytes", "bytes_written")}
        swap.swap(None)
        files, nbytes = du(root)
        if not params.get("keep_dumps"):
            shutil.rmtree(root, ignore_errors=True)
        say({"step_ms": step_ms, "steps_s": t1 - t0, "window_s": t2 - t0, "first_ms": first_ms,
             "cpu_s": cpu_s, "cpu_split_ms": {k: v * 1e3 / steps for k, v in split.items()},
             "floor_tensors": floor_tensors, "stats": stats, "files": files,
             "bytes": nbytes, "watches": watches,
             "hook_ms": {k: sum(v) * 1e3 / steps for k, v in timers.items()} if timers else None})


def main(argv=None) -> int:
    params = json.loads((argv or sys.argv[1:])[0])
    if params["job"] == "ps":
        run_ps(params)
    else:
        run_worker(params)
    sys.stdout.flush()
    os._exit(0)  # servers have no clean shutdown; the harness waits for this exit


if __name__ == "__main__":
    sys.exit(main())
