"""Distributed TF1: clusters of tf.distribute.Server processes on localhost.

Every task is a real process (real TensorFlow, real gRPC); every process a
test starts is killed by the ``cluster`` fixture. Before tfdump-fast knew
about clusters, a debugged run sent ``memcbk://tfdump_slot_<i>`` URLs to
every task: a task without our callbacks CHECK-failed ("No callback
registered for: tfdump_slot_0", SIGABRT) and the client's Session.run hung.
"""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import tfdump_fast
from conftest import PKG_PARENT

# How long one client program may take (TF import, cluster start-up, a few
# steps) on a loaded 2-core machine. Not a timing assertion: a client that
# hangs (the old behaviour) is killed and reported.
CLIENT_TIMEOUT_S = 150
SERVER_READY_TIMEOUT_S = 90

SERVER = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cluster, job, task, serve_root = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    server = tf.distribute.Server(tf.train.ClusterSpec(cluster), job_name=job, task_index=task)
    if serve_root:
        import tfdump_fast
        tfdump_fast.serve(serve_root, server=server)
    print("ready", flush=True)
    server.join()
""")

# A deterministic between-graph-replicated model: variables on the ps (by
# replica_device_setter), the rest on the worker. argv: cluster, mode
# (hook|wrapper), session root, local job, local task ("" "" for a client
# without a server of its own, on the first worker's target), steps.
CLIENT = textwrap.dedent("""
    import json, logging, sys
    import numpy as np
    import tensorflow as tf
    tf.compat.v1.disable_eager_execution()
    logging.basicConfig(level=logging.WARNING, format="LOG %(levelname)s %(message)s")
    import tfdump_fast
    cluster, mode, root, job, task, steps = (json.loads(sys.argv[1]), sys.argv[2], sys.argv[3],
                                             sys.argv[4], sys.argv[5], int(sys.argv[6]))
    go_file = sys.argv[7] if len(sys.argv) > 7 else ""
    is_chief = task in ("", "0")
    spec = tf.train.ClusterSpec(cluster)
    if job:
        server = tf.distribute.Server(spec, job_name=job, task_index=int(task))
        target = server.target
        worker_device = f"/job:{job}/task:{task}"
    else:
        target = "grpc://" + cluster["worker"][0]
        worker_device = "/job:worker/task:0"
    setter = (tf.compat.v1.train.replica_device_setter(cluster=spec, worker_device=worker_device)
              if "ps" in cluster else None)
    with tf.compat.v1.device(setter):
        w = tf.compat.v1.get_variable("w", initializer=tf.constant([1.0, 2.0, 3.0]))
        x = tf.compat.v1.placeholder(tf.float32, [3], name="x")
        y = tf.identity(w * x, name="y")
        loss = tf.reduce_sum(tf.square(y), name="loss")
        step = tf.compat.v1.train.get_or_create_global_step()
        train = tf.compat.v1.train.GradientDescentOptimizer(0.01).minimize(loss, global_step=step)
    outputs = []
    if mode in ("hook", "tfdbg"):
        if mode == "hook":
            hook = tfdump_fast.DumpingDebugHook(root)
        else:  # tfdbg's own hook: file:// dumps written by every task
            from tensorflow.python import debug as tf_debug
            hook = tf_debug.DumpingDebugHook(root)
        # Between-graph replication: a worker talks to the ps and itself
        # only (so it does not wait for the other workers to start).
        config = (tf.compat.v1.ConfigProto(device_filters=["/job:ps", worker_device])
                  if "ps" in cluster else None)
        with tf.compat.v1.train.MonitoredTrainingSession(master=target, is_chief=is_chief,
                                                         hooks=[hook], config=config) as sess:
            if go_file:  # wait until every worker has its session: steps run concurrently
                print("SESSION", flush=True)
                import os, time
                while not os.path.exists(go_file):
                    time.sleep(0.05)
            for i in range(steps):
                out = sess.run({"y": y, "loss": loss, "train": train},
                               feed_dict={x: np.full(3, i + 1, np.float32)})
                outputs.append([out["y"].tolist(), float(out["loss"])])
                if go_file:
                    print(f"STEP {i}", flush=True)
    elif mode == "capture":  # the low-level path: our writer, the caller's watches
        from tensorflow.python.debug.lib import debug_utils
        raw = tf.compat.v1.Session(target)
        raw.run(tf.compat.v1.global_variables_initializer())
        writer = tfdump_fast.DumpWriter(root)
        for i in range(steps):
            run = writer.begin_run()
            options = tf.compat.v1.RunOptions()
            debug_utils.watch_graph(options, raw.graph, debug_urls=run.debug_urls)
            with tfdump_fast.capture_run(writer, run, raw, options) as captured:
                out = raw.run({"y": y, "loss": loss, "train": train},
                              feed_dict={x: np.full(3, i + 1, np.float32)},
                              options=captured.run_options, run_metadata=captured.run_metadata)
            outputs.append([out["y"].tolist(), float(out["loss"])])
        writer.close()
    else:
        raw = tf.compat.v1.Session(target)
        raw.run(tf.compat.v1.global_variables_initializer())
        sess = tfdump_fast.DumpingDebugWrapperSession(raw, root)
        for i in range(steps):
            out = sess.run({"y": y, "loss": loss, "train": train},
                           feed_dict={x: np.full(3, i + 1, np.float32)})
            outputs.append([out["y"].tolist(), float(out["loss"])])
        sess.close()
    print("OUTPUTS " + json.dumps(outputs), flush=True)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env():
    return dict(os.environ, PYTHONPATH=PKG_PARENT, TF_CPP_MIN_LOG_LEVEL="2")


class Cluster:
    """Processes of one test; every one is killed at teardown."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.procs = []
        (tmp_path / "server.py").write_text(SERVER)
        (tmp_path / "client.py").write_text(CLIENT)

    def spec(self, **jobs):
        return {job: [f"localhost:{_free_port()}" for _ in range(n)] for job, n in jobs.items()}

    def start_server(self, spec, job, task, serve_root=""):
        proc = subprocess.Popen([sys.executable, str(self.tmp_path / "server.py"), json.dumps(spec), job,
                                 str(task), str(serve_root)], env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        self.procs.append(proc)
        deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.strip() == "ready":
                return proc
        proc.kill()
        pytest.fail(f"server {job}:{task} did not start: {proc.stdout.read()}")

    def start_client(self, spec, mode, root, job="", task="", steps=3, go_file=""):
        proc = subprocess.Popen([sys.executable, str(self.tmp_path / "client.py"), json.dumps(spec), mode,
                                 str(root), job, str(task), str(steps), str(go_file)], env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.procs.append(proc)
        # A thread reads the output, so waiting for a line never blocks past its deadline.
        proc.lines = queue.Queue()
        proc.seen = []
        proc.reader = threading.Thread(target=self._read, args=(proc,), daemon=True)
        proc.reader.start()
        return proc

    @staticmethod
    def _read(proc):
        for line in proc.stdout:
            proc.seen.append(line)
            proc.lines.put(line)
        proc.lines.put(None)

    def wait_for_line(self, proc, text):
        """Wait until ``proc`` printed a line ``text`` (fails the test if it never does)."""
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while True:
            try:
                line = proc.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                proc.kill()
                pytest.fail(f"no {text!r} line:\n{''.join(proc.seen)[-3000:]}")
            if line.strip() == text:
                return

    def finish(self, proc):
        try:
            proc.wait(timeout=CLIENT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.reader.join(timeout=10)
            pytest.fail(f"a client hung (killed after {CLIENT_TIMEOUT_S} s):\n{''.join(proc.seen)[-3000:]}")
        proc.reader.join(timeout=10)
        return proc.returncode, "".join(proc.seen)

    def run_client(self, spec, mode, root, job="", task="", steps=3):
        return self.finish(self.start_client(spec, mode, root, job, task, steps))

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


def _outputs(out):
    lines = [ln for ln in out.splitlines() if ln.startswith("OUTPUTS ")]
    assert lines, out[-3000:]
    return json.loads(lines[-1][len("OUTPUTS "):])


def _expected_outputs(steps):
    """The same model, in this process, without a cluster or a debugger."""
    w = np.array([1.0, 2.0, 3.0], np.float32)
    out = []
    for i in range(steps):
        x = np.full(3, i + 1, np.float32)
        y = w * x
        out.append([y.tolist(), float(np.sum(y * y))])
        w = w - np.float32(0.01) * (2 * y * x)
    return out


def _warnings(out):
    return [ln for ln in out.splitlines() if ln.startswith("LOG WARNING") and "not covered" in ln]


def test_remote_worker_without_tfdump_is_never_sent_a_capture_url(cluster, tmp_path):
    # The client has no server; its session's master is a worker in another
    # process that has no tfdump-fast. Before: that worker aborted and the
    # client hung. The hook, the wrapper and capture_run, against the same worker.
    spec = cluster.spec(worker=1)
    worker = cluster.start_server(spec, "worker", 0)
    # Meanwhile, on a cluster of its own: the same client against a worker
    # that called serve(). Its tensors are captured there, but the client
    # hosts no task, so its runs cannot be joined to them: it says so once.
    served_spec = cluster.spec(worker=1)
    served_root = tmp_path / "served_worker"
    served_worker = cluster.start_server(served_spec, "worker", 0, serve_root=served_root)
    pure_client = cluster.start_client(served_spec, "hook", tmp_path / "pure_client")
    for mode in ("hook", "wrapper", "capture"):
        root = tmp_path / f"{mode}_dump"
        rc, out = cluster.run_client(spec, mode, root)
        assert rc == 0, out[-3000:]
        assert worker.poll() is None, "the worker died"
        np.testing.assert_allclose(np.array(_outputs(out), dtype=object)[:, 1].astype(float),
                                   [o[1] for o in _expected_outputs(3)], rtol=1e-5)
        warnings = _warnings(out)
        assert len(warnings) == 1, out[-3000:]
        assert "tfdump_fast.serve(" in warnings[0] and "master" in warnings[0]
        assert "Check failed" not in out
        reader = tfdump_fast.DumpReader(root)
        assert len(reader.runs) == 3
        for run in reader.runs:
            assert run.status == "complete"
            assert len(run.records) == 0  # nothing ran in a process that can take our URLs
    rc, out = cluster.finish(pure_client)
    assert rc == 0, out[-3000:]
    assert served_worker.poll() is None and "Check failed" not in out
    assert not _warnings(out), out[-3000:]  # the served worker is covered
    unjoined = [ln for ln in out.splitlines() if "hosts no task" in ln]
    assert len(unjoined) == 1 and "server.target" in unjoined[0], out[-3000:]
    client_runs = tfdump_fast.DumpReader(tmp_path / "pure_client").runs
    assert client_runs and all(r.master_step_id is None and len(r) == 0 for r in client_runs)
    deadline = time.monotonic() + 60
    while True:  # served runs end once their step is idle (serve's idle_s)
        served = [r for r in tfdump_fast.DumpReader(served_root).runs if r.served_task]
        if sum(any(rec.node_name == "y" for rec in r.records) for r in served) >= 3 or \
                time.monotonic() > deadline:
            break
        time.sleep(0.5)
    train = [r for r in served if any(rec.node_name == "y" for rec in r.records)]
    assert len(train) == 3 and all(r.served_task == "/job:worker/replica:0/task:0" for r in train)
    expected = _expected_outputs(3)
    for run, (y, _) in zip(train, expected):
        np.testing.assert_allclose(run.get("y")[0], y, rtol=1e-5)
    # convert: one directory per step, from the served runs alone
    dirs = tfdump_fast.convert(served_root, tmp_path / "served_converted")
    assert len(dirs) == len({r.master_step_id for r in served})


def test_ps_without_serve_keeps_running_and_worker_tensors_are_captured(cluster, tmp_path):
    # replica_device_setter puts the variables on a ps in another process
    # without tfdump-fast; the worker's server lives in the client process.
    # Before: the ps aborted; the wrapper got UnavailableError, the hook hung.
    # The hook (whose chief initializes the variables), then the wrapper
    # (which initializes them again), against the same ps.
    spec = cluster.spec(ps=1, worker=1)
    ps = cluster.start_server(spec, "ps", 0)
    for mode in ("hook", "wrapper"):
        _check_ps_without_serve(cluster, tmp_path, spec, ps, mode)


def _check_ps_without_serve(cluster, tmp_path, spec, ps, mode):
    root = tmp_path / f"{mode}_dump"
    rc, out = cluster.run_client(spec, mode, root, "worker", 0)
    assert rc == 0, out[-3000:]
    assert ps.poll() is None, "the ps died"
    expected = _expected_outputs(3)
    got = _outputs(out)
    for (gy, gl), (ey, el) in zip(got, expected):
        np.testing.assert_allclose(gy, ey, rtol=1e-5)
        np.testing.assert_allclose(gl, el, rtol=1e-5)
    warnings = _warnings(out)
    assert len(warnings) == 1 and "/job:ps/replica:0/task:0" in warnings[0], out[-3000:]
    assert "/job:worker" not in warnings[0]
    reader = tfdump_fast.DumpReader(root)
    runs = [r for r in reader.runs if r.metadata.get("cluster_tasks")]
    assert len(runs) >= 3
    train_runs = [r for r in runs if any(rec.node_name == "y" for rec in r.records)]
    assert len(train_runs) == 3
    for i, run in enumerate(train_runs):
        assert run.metadata["cluster_tasks"] == {"/job:ps/replica:0/task:0": "uncovered",
                                                 "/job:worker/replica:0/task:0": "local"}
        devices = {rec.device for rec in run.records}
        assert devices == {"/job:worker/replica:0/task:0/device:CPU:0"}, devices
        np.testing.assert_allclose(run.get("y")[0], expected[i][0], rtol=1e-5)
        np.testing.assert_allclose(run.get("loss")[0], expected[i][1], rtol=1e-5)
        # Nodes on the ps, and those tied to its variable, are not watched.
        names = {rec.node_name for rec in run.records}
        assert "w" not in names and "w/Read/ReadVariableOp" not in names
    # Every dumped run has the exact global step it began with, fetched in
    # the run itself (no master step of its own) by the hook and the wrapper.
    # The read node is never watched nor listed among the run's outputs (the
    # dump is what tfdbg's would be).
    assert [r.global_step for r in train_runs] == [0, 1, 2]
    for run in train_runs:
        assert run.metadata.get("global_step_read") == "in_run"
        assert not [n for n in run.core_metadata["output_names"] if n.startswith("tfdump_fast_internal/")]
        assert not [rec for rec in run.records if rec.node_name.startswith("tfdump_fast_internal/")]


def _wait_for_served_steps(ps_root, client_roots, timeout_s=60):
    """A served step's run ends once the step is idle (serve's idle_s): poll
    the served store until it holds a run of every master step the clients'
    runs recorded (or give up; the test's assertions then say what is missing)."""
    wanted = set()
    for root in client_roots:
        wanted |= {r.master_step_id for r in tfdump_fast.DumpReader(root).runs if r.master_step_id}
    assert wanted
    deadline = time.monotonic() + timeout_s
    while True:
        have = {r.master_step_id for r in tfdump_fast.DumpReader(ps_root).runs if r.served_task}
        if wanted <= have or time.monotonic() > deadline:
            return
        time.sleep(0.5)


def _gather(roots, dest):
    """What README "Distributed" says to do with the stores of N hosts: copy
    every shard into one folder (shard names are unique per writer)."""
    import shutil
    dest.mkdir()
    for root in roots:
        for name in os.listdir(root):
            if name.endswith(".tfds"):
                shutil.copy2(os.path.join(root, name), dest / name)
    return dest


def test_two_workers_concurrent_steps_on_a_served_ps_are_never_mixed(cluster, tmp_path, capsys):
    # 1 ps (serve()) + 2 workers, between-graph replication with
    # MonitoredTrainingSession, steps of both workers running at the same
    # time against the one ps. Each ps run must hold exactly the tensors of
    # the one worker step it is joined to.
    steps = 12
    spec = cluster.spec(ps=1, worker=2)
    ps_root = tmp_path / "ps_dump"
    ps = cluster.start_server(spec, "ps", 0, serve_root=ps_root)
    go = tmp_path / "go"
    roots = [tmp_path / "w0_dump", tmp_path / "w1_dump"]
    chief = cluster.start_client(spec, "hook", roots[0], "worker", 0, steps, go)
    cluster.wait_for_line(chief, "SESSION")
    other = cluster.start_client(spec, "hook", roots[1], "worker", 1, steps, go)
    cluster.wait_for_line(other, "SESSION")
    go.write_text("go")
    for proc in (chief, other):
        rc, out = cluster.finish(proc)
        assert rc == 0, out[-3000:]
        assert not _warnings(out), out[-3000:]
    assert ps.poll() is None
    _wait_for_served_steps(ps_root, roots)
    reader = tfdump_fast.DumpReader(_gather([ps_root, *roots], tmp_path / "all"))
    assert set(reader.tasks()) == {"/job:ps/replica:0/task:0", "/job:worker/replica:0/task:0",
                                   "/job:worker/replica:0/task:1"}
    # The tasks' roots given as several roots read as the gathered folder does.
    several = tfdump_fast.DumpReader([ps_root, *roots])
    assert several.tasks() == reader.tasks()
    assert [(r.key, r.master_step_id, len(r)) for r in several.runs] == \
        [(r.key, r.master_step_id, len(r)) for r in reader.runs]
    with pytest.raises(tfdump_fast.TfdumpUsageError, match="in both"):
        tfdump_fast.DumpReader([ps_root, tmp_path / "all"])
    from tfdump_fast import cli
    capsys.readouterr()
    assert cli.main(["ls", str(tmp_path / "all")]) == 0
    assert ("tasks: /job:ps/replica:0/task:0, /job:worker/replica:0/task:0, "
            "/job:worker/replica:0/task:1") in capsys.readouterr().out
    joined = 0
    for task, root in enumerate(roots):
        device = f"/job:worker/replica:0/task:{task}/device:CPU:0"
        worker_runs = [r for r in reader.runs
                       if any(rec.node_name == "y" and rec.device == device for rec in r.records)]
        assert len(worker_runs) == steps
        for i, run in enumerate(worker_runs):
            group = reader.step_runs(run)
            ps_runs = [r for r in group if r.served_task == "/job:ps/replica:0/task:0"]
            # A step's tensors on the ps may be in more than one served run
            # (a pause longer than serve's idle_s), never in another step's.
            assert ps_runs, (task, i, run.master_step_id)
            ps_records = [rec for r in ps_runs for rec in r.records]
            names = [rec.node_name for rec in ps_records]
            assert len(names) == len(set(names)), names  # one step's tensors, once each
            assert {rec.device for rec in ps_records} == {"/job:ps/replica:0/task:0/device:CPU:0"}
            ps_run = next(r for r in ps_runs if any(rec.node_name == "ReadVariableOp" for rec in r.records))
            # The w this worker multiplied by x = i + 1 is the w read on the ps in this step.
            w_worker = np.asarray(run.get("mul")[0]) / np.float32(i + 1)
            np.testing.assert_allclose(ps_run.get("ReadVariableOp")[0], w_worker, rtol=1e-5)
            joined += 1
        # Each worker's steps read ever larger global steps (the other
        # worker's steps come in between), read in the run itself. Not
        # strictly: TF does not order the read before the step's own
        # increment, and under load a step may read the value after it,
        # which the next step reads too (seen once: [.., 11, 11]).
        gsteps = [r.global_step for r in worker_runs]
        assert all(r.metadata.get("global_step_read") == "in_run" for r in worker_runs)
        assert all(isinstance(g, int) and 0 <= g <= 2 * steps for g in gsteps), gsteps
        assert gsteps == sorted(gsteps) and gsteps[-1] > gsteps[0], gsteps
    assert joined == 2 * steps


def test_worker_killed_mid_run_others_go_on_and_stores_read(cluster, tmp_path):
    # Worker 1 is SIGKILLed while it is running steps; worker 0 (the chief)
    # and the served ps go on; every store opens.
    spec = cluster.spec(ps=1, worker=2)
    ps_root = tmp_path / "ps_dump"
    ps = cluster.start_server(spec, "ps", 0, serve_root=ps_root)
    go = tmp_path / "go"
    roots = [tmp_path / "w0_dump", tmp_path / "w1_dump"]
    chief = cluster.start_client(spec, "hook", roots[0], "worker", 0, 30, go)
    cluster.wait_for_line(chief, "SESSION")
    victim = cluster.start_client(spec, "hook", roots[1], "worker", 1, 100000, go)
    cluster.wait_for_line(victim, "SESSION")
    go.write_text("go")
    cluster.wait_for_line(victim, "STEP 3")
    victim.kill()
    victim.wait(timeout=30)
    rc, out = cluster.finish(chief)
    assert rc == 0, out[-3000:]
    assert ps.poll() is None
    _wait_for_served_steps(ps_root, roots[:1])
    reader = tfdump_fast.DumpReader(_gather([ps_root, *roots], tmp_path / "all"))
    device0 = "/job:worker/replica:0/task:0/device:CPU:0"
    chief_runs = [r for r in reader.runs
                  if any(rec.node_name == "y" and rec.device == device0 for rec in r.records)]
    assert len(chief_runs) == 30 and all(r.status == "complete" for r in chief_runs)
    for run in chief_runs:
        assert any(r.served_task == "/job:ps/replica:0/task:0" for r in reader.step_runs(run))
    # The killed worker's own store opens (what its writer had on disk: a
    # SIGKILL within 2 s of its first steps may leave no run); the ps, still
    # serving, captured that worker's steps too.
    victim_reader = tfdump_fast.DumpReader(roots[1])
    assert all(r.status in ("complete", "truncated", "failed") for r in victim_reader.runs)
    chief_steps = {r.master_step_id for r in chief_runs}
    assert any(r.served_task and r.master_step_id not in chief_steps for r in reader.runs)


def test_keys_and_values_match_tfdbgs_per_task_dumps(cluster, tmp_path):
    # The same deterministic job twice, each on a fresh 1 ps + 1 worker
    # cluster: once with tfdbg's DumpingDebugHook (file:// dumps written by
    # each task), once with ours and a served ps. Per step and device, the
    # watch keys and values must agree.
    from tensorflow.python.debug.lib import debug_data

    from tfdump_fast.conversion import run_dir_name

    def start_job(mode):
        spec = cluster.spec(ps=1, worker=1)
        root = tmp_path / f"{mode}_dump"
        ps_root = tmp_path / f"{mode}_ps"
        ps = cluster.start_server(spec, "ps", 0, serve_root=ps_root if mode == "hook" else "")
        return ps, cluster.start_client(spec, mode, root, "worker", 0), root, ps_root

    def finish_job(ps, client, root, ps_root):
        rc, out = cluster.finish(client)
        assert rc == 0, out[-3000:]
        assert ps.poll() is None
        return root, ps_root

    # Two clusters at once (each its own ports): the jobs do not interact.
    jobs = [start_job("tfdbg"), start_job("hook")]
    (tfdbg_root, _), (ours_root, ours_ps) = [finish_job(*job) for job in jobs]
    _wait_for_served_steps(ours_ps, [ours_root])
    reader = tfdump_fast.DumpReader(_gather([ours_root, ours_ps], tmp_path / "all"))
    ours = [r for r in reader.runs if any(rec.node_name == "y" for rec in r.records)]
    theirs = []
    for name in sorted(os.listdir(tfdbg_root)):
        dump = debug_data.DebugDumpDir(os.path.join(tfdbg_root, name))
        if any(d.node_name == "y" for d in dump.dumped_tensor_data):
            theirs.append(dump)
    assert len(ours) == len(theirs) == 3

    def short(device):  # tfdbg and TF spell devices alike; compare job/task/device
        return device.replace("/replica:0", "")

    for run, dump in zip(ours, theirs):
        mine = {}
        for r in reader.step_runs(run):
            for rec, value in zip(r.records, r.values()):
                mine[(short(rec.device), rec.node_name, rec.output_slot)] = value
        # tfdbg also lists the Recv nodes TF's partitioning adds
        # (`<tensor>_S<n>`, `_recv_<feed>_0`), which no client graph has
        # and no watch names; they repeat values sent from another task.
        want = {(short(d.device_name), d.node_name, d.output_slot): d.get_tensor()
                for d in dump.dumped_tensor_data if d.debug_op == "DebugIdentity"
                and not re.search(r"_S\d+$", d.node_name) and not d.node_name.startswith("_recv_")}
        assert set(mine) == set(want), (sorted(set(want) - set(mine)), sorted(set(mine) - set(want)))
        compared = 0
        for key, value in want.items():
            if isinstance(value, debug_data.InconvertibleTensorProto):  # resource handles
                assert not isinstance(mine[key], np.ndarray), key
                continue
            np.testing.assert_array_equal(np.asarray(mine[key]), np.asarray(value), err_msg=str(key))
            compared += 1
        assert compared >= 10 and any(k[0].startswith("/job:ps") for k in want)

    # convert writes one tfdbg dump per master step, merging the step's runs
    # of every task, with one _tfdbg_device_* folder per device: tfdbg's own
    # distributed layout (same folders, same dump files but for the Recv
    # nodes), which tfdbg's DebugDumpDir reads with the same values.
    converted = tfdump_fast.convert(reader, tmp_path / "converted")
    assert len(converted) == len([r for r in reader.runs if r.served_task is None])  # no served run alone

    def layout(run_dir):
        out = set()
        for dirpath, _, files in os.walk(run_dir):
            rel = os.path.relpath(dirpath, run_dir)
            if not rel.startswith("_tfdbg_device_"):
                continue
            for name in files:
                if name.startswith("_tfdbg_graph_"):
                    out.add((rel.split(os.sep)[0], "graph"))
                    continue
                stem = re.sub(r"_\d+(-\d+)?$", "", name)  # the wall-time suffix
                if re.search(r"_S\d+_\d+_DebugIdentity$", stem) or name.startswith("_recv_"):
                    continue
                out.add((rel, stem))
        return out

    by_name = {os.path.basename(p): p for p in converted}
    theirs_dirs = [d for d in sorted(os.listdir(tfdbg_root))
                   if any(x.node_name == "y" for x in debug_data.DebugDumpDir(
                       os.path.join(tfdbg_root, d)).dumped_tensor_data)]
    for run, theirs_dir in zip(ours, theirs_dirs):
        mine_dir = by_name[run_dir_name(run)]
        want_layout = layout(os.path.join(tfdbg_root, theirs_dir))
        assert {d.split(os.sep)[0] for d, _ in want_layout} == {d.split(os.sep)[0] for d, _ in layout(mine_dir)} == {
            "_tfdbg_device_,job_ps,replica_0,task_0,device_CPU_0",
            "_tfdbg_device_,job_worker,replica_0,task_0,device_CPU_0"}
        assert layout(mine_dir) == want_layout, (sorted(want_layout ^ layout(mine_dir))[:10])
        stored = {}
        for r in reader.step_runs(run):
            for rec, value in zip(r.records, r.values()):
                stored[(short(rec.device), rec.node_name, rec.output_slot)] = value
        dump = debug_data.DebugDumpDir(mine_dir)
        got = {(short(d.device_name), d.node_name, d.output_slot): d.get_tensor()
               for d in dump.dumped_tensor_data}
        assert set(got) == set(stored) and any(k[0].startswith("/job:ps") for k in got)
        for key, value in got.items():
            if isinstance(value, debug_data.InconvertibleTensorProto):
                continue
            np.testing.assert_array_equal(np.asarray(value), np.asarray(stored[key]), err_msg=str(key))


def test_hook_shares_the_root_of_its_own_process_serve(tmp_path):
    # A worker process that calls serve(root) and trains with a hook on the
    # same root: no allow_existing needed; both writers' shards read as one.
    # A root another process wrote into (a shared file system) still needs
    # allow_existing, and the error says so.
    import tensorflow as tf

    import tfdump_fast.hooks  # noqa: F401 - imports the served-capture module
    assert callable(tfdump_fast.serve)  # still the function, not a module of that name
    root = tmp_path / "shared"
    served = tfdump_fast.serve(root)
    try:
        assert any(n.endswith(".tfds") for n in os.listdir(root))
        graph = tf.Graph()
        with graph.as_default():
            y = tf.identity(tf.constant([1.0, 2.0]) * 3.0, name="y")
            hook = tfdump_fast.DumpingDebugHook(root)
            with tf.compat.v1.train.MonitoredSession(hooks=[hook]) as sess:
                sess.run(y)
    finally:
        served.close()
    reader = tfdump_fast.DumpReader(root)
    assert len(reader.writers) == 2
    np.testing.assert_allclose(reader.runs[-1].get("y")[0], [3.0, 6.0])
    with pytest.raises(tfdump_fast.TfdumpUsageError, match="allow_existing=True to every hook sharing it"):
        tfdump_fast.DumpingDebugHook(root)


def test_a_worker_that_is_down_does_not_stall_the_probes(cluster, tmp_path):
    # Between-graph replication: the chief's session talks to the ps and
    # itself only (device_filters), so it trains while worker 1 is not up.
    # The probes' sessions must keep to the same tasks: a session without
    # the filters waits for every task of the cluster, without end.
    spec = cluster.spec(ps=1, worker=2)  # worker 1 never starts
    ps_root = tmp_path / "ps_dump"
    ps = cluster.start_server(spec, "ps", 0, serve_root=ps_root)
    root = tmp_path / "w0_dump"
    rc, out = cluster.run_client(spec, "hook", root, "worker", 0)
    assert rc == 0, out[-3000:]
    assert ps.poll() is None
    assert not _warnings(out), out[-3000:]  # the ps was probed and found served
    runs = [r for r in tfdump_fast.DumpReader(root).runs if any(rec.node_name == "y" for rec in r.records)]
    assert len(runs) == 3 and all(r.master_step_id for r in runs)
    assert runs[0].metadata["cluster_tasks"] == {"/job:ps/replica:0/task:0": "served",
                                                 "/job:worker/replica:0/task:0": "local"}
