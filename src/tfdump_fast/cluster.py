"""Which tasks of a TensorFlow cluster a debugged run may send capture URLs to.

Package-internal. A ``memcbk://`` debug URL reaches a callback only in the
process that registered it; TensorFlow CHECK-fails (aborts) a process that
runs a debug op whose key it does not know, and the client's ``Session.run``
then hangs. So for a session on a cluster target (``grpc://...``) a run may
watch only nodes that run in a process that can take the URL:

* a *local* task: its server lives in this process (the hook's own capture
  slots are registered here);
* a *served* task: its process called :func:`tfdump_fast.serve`.

:class:`ClusterCoverage` finds out which is which without harming anyone:
it runs the bridge's ``TfdumpProbe`` op (``csrc/bridge/probe.cc``) pinned to
each task's CPU, in a throw-away graph and session, never with a debug URL.
A process that has not loaded the bridge does not know the op, and the probe
run fails with an ordinary ``NotFoundError``; a process that has loaded it
answers with its random process token (equal to ours: local) and whether
``serve()`` registered the served-capture callback there. Answers are cached
per (target, task) until the session is re-created.

:class:`Placement` then decides per graph node where it runs: its explicit
``node.device`` (as ``replica_device_setter`` sets it), matched against the
cluster's tasks; a node with no job/replica/task runs where the master puts
unassigned ops (found with a probe without a device). A node whose device
matches several tasks, or that is colocated with one that may run elsewhere,
is watched only when every candidate task is covered. Unknown means not
watched.
"""

from __future__ import annotations

import itertools
import logging
import threading
import weakref
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

import tensorflow as tf

__all__ = ["ClusterCoverage", "Placement", "PROBE_OP", "SERVED_URL", "STEP_DEBUG_OP", "TaskState", "is_cluster_target",
           "local_token", "probe_task", "session_target", "task_of"]

log = logging.getLogger("tfdump_fast")

#: The op type of the bridge's cluster probe (csrc/bridge/probe.cc).
PROBE_OP = "TfdumpProbe"
#: The debug op that captures on served tasks and records the master step id
#: (csrc/bridge/served.cc), and the URL that selects served capture.
STEP_DEBUG_OP = "TfdumpIdentity"
SERVED_URL = "memcbk://tfdump_served_1"
_PROBE_PREFIX = "tfdump-probe/1"
# How long one probe may take: a task that does not answer (down, or still
# starting) is not covered for this session.
PROBE_TIMEOUT_MS = 10000

_view_serials = itertools.count(1)
_token_lock = threading.Lock()
_local_token: Optional[str] = None


class TaskState:
    """What a probe found out about one task."""

    LOCAL = "local"        # its server lives in this process
    SERVED = "served"      # another process that called tfdump_fast.serve()
    UNCOVERED = "uncovered"  # no tfdump-fast there (or it did not answer)


def session_target(session) -> str:
    """The target a (raw) ``tf.compat.v1.Session`` was created for; '' if unknown."""
    target = getattr(session, "sess_str", "")
    if isinstance(target, bytes):
        target = target.decode("utf-8", "replace")
    return target or ""


def is_cluster_target(target: str) -> bool:
    """Whether a session target is a (possibly remote) master, e.g. ``grpc://host:port``.

    ``''`` and ``'local'`` are an in-process DirectSession: every node runs
    here, the single-process path applies unchanged.
    """
    return "://" in target


def task_of(device: str) -> Optional[str]:
    """``/job:J/replica:R/task:T`` of a full device name, else None."""
    spec = tf.DeviceSpec.from_string(device or "")
    if spec.job is None or spec.replica is None or spec.task is None:
        return None
    return f"/job:{spec.job}/replica:{spec.replica}/task:{spec.task}"


def _parse_report(report) -> Optional[Dict[str, str]]:
    if isinstance(report, bytes):
        report = report.decode("utf-8", "replace")
    parts = report.split(" ")
    if not parts or parts[0] != _PROBE_PREFIX:
        return None
    out = {}
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if eq:
            out[key] = value
    return out if {"token", "served", "device"} <= set(out) else None


def _probe_graph(device: Optional[str]):
    graph = tf.Graph()
    with graph.as_default(), graph.device(device):
        op = graph.create_op(PROBE_OP, [], [tf.string], name="tfdump_fast_probe")
    return graph, op.outputs[0]


def local_token() -> str:
    """This process's probe token (the bridge must be loaded)."""
    global _local_token
    with _token_lock:
        if _local_token is None:
            graph, out = _probe_graph(None)
            with tf.compat.v1.Session(graph=graph) as sess:
                report = _parse_report(sess.run(out))
            if report is None:
                raise RuntimeError("the tfdump-fast bridge's probe op gave no report")
            _local_token = report["token"]
        return _local_token


def probe_task(target: str, device: Optional[str],
               device_filters: Optional[List[str]] = None) -> Optional[Dict[str, str]]:
    """Run the probe on ``device`` (None: where the master puts unassigned ops).

    ``device_filters``: the tasks the probe's session may talk to. The
    client's session usually has such filters (between-graph replication: a
    worker talks to the ps and itself); a session without them makes the
    master wait, without end, for every task of the cluster to answer, so a
    worker that is down or not started yet would hang the probe.

    Returns the parsed report, or None when the task has no tfdump-fast
    bridge, did not answer within :data:`PROBE_TIMEOUT_MS`, or the probe
    failed otherwise. Never sends a debug URL; never raises.
    """
    try:
        graph, out = _probe_graph(device)
        config = tf.compat.v1.ConfigProto(operation_timeout_in_ms=PROBE_TIMEOUT_MS,
                                          device_filters=list(device_filters or ()))
        options = tf.compat.v1.RunOptions(timeout_in_ms=PROBE_TIMEOUT_MS)
        with tf.compat.v1.Session(target, graph=graph, config=config) as sess:
            return _parse_report(sess.run(out, options=options))
    except Exception as exc:  # noqa: BLE001 - any failure means "not covered"
        log.debug("tfdump-fast: probe of %s on %s failed: %s", device, target, exc)
        return None


class ClusterView:
    """The tasks of one cluster target and what each is (one probe round)."""

    def __init__(self, target: str, tasks: Dict[str, str], master_task: Optional[str]):
        self.target = target
        self.serial = next(_view_serials)
        #: task name -> TaskState value
        self.tasks = tasks
        self.master_task = master_task
        self.uncovered = tuple(sorted(t for t, s in tasks.items() if s == TaskState.UNCOVERED))
        #: Every task runs in this process (e.g. ``tf.test.create_local_cluster``).
        self.all_local = bool(tasks) and all(s == TaskState.LOCAL for s in tasks.values())

    @classmethod
    def probe(cls, session, target: str) -> "ClusterView":
        token = local_token()
        try:
            devices = [d.name for d in session.list_devices()]
        except Exception as exc:  # noqa: BLE001 - no device list: nothing is known
            log.debug("tfdump-fast: list_devices on %s failed: %s", target, exc)
            devices = []
        names = sorted({t for t in (task_of(d) for d in devices) if t is not None})
        # The tasks the client's session sees (its device_filters applied):
        # the probes' sessions talk to those and no other.
        filters = list(names)
        tasks: Dict[str, str] = {}
        for name in names:
            report = probe_task(target, name + "/device:CPU:0", filters)
            if report is None:
                tasks[name] = TaskState.UNCOVERED
            elif report["token"] == token:
                tasks[name] = TaskState.LOCAL
            elif report["served"] == "1":
                tasks[name] = TaskState.SERVED
            else:  # the bridge is loaded there, but serve() was not called
                tasks[name] = TaskState.UNCOVERED
        master = probe_task(target, None, filters) if tasks else None
        master_task = task_of(master["device"]) if master is not None else None
        return cls(target, tasks, master_task)

    def covered(self, task: str, allow_served: bool) -> bool:
        state = self.tasks.get(task)
        return state == TaskState.LOCAL or (allow_served and state == TaskState.SERVED)

    def candidates(self, device: str) -> Optional[List[str]]:
        """The tasks a node with this requested device may run on; None: unknown."""
        spec = tf.DeviceSpec.from_string(device or "")
        if spec.job is None and spec.replica is None and spec.task is None:
            return [self.master_task] if self.master_task is not None else None
        found = []
        for name in self.tasks:
            t = tf.DeviceSpec.from_string(name)
            if ((spec.job is None or spec.job == t.job)
                    and (spec.replica is None or spec.replica == t.replica)
                    and (spec.task is None or spec.task == t.task)):
                found.append(name)
        return found or None


class Placement:
    """Which nodes of one graph (version) a run may watch on one cluster view.

    A node's candidate tasks are those its requested device matches (the
    master's task when it requests none), joined with those of every node it
    must share a device with: its colocation group (``_class``) and the
    producers of its resource and reference inputs (TF's placer puts a
    variable's readers and assigners with the variable). A node that requests
    no task is also joined with its direct neighbours', because the placer
    may put such a node with its consumer (a generator) or its input (a
    shape/size op). The node is watched only when every candidate task is
    covered. ``key`` identifies the decision for caches of debug options.
    """

    def __init__(self, view: ClusterView, graph, allow_served: bool = True):
        self.view = view
        self.allow_served = allow_served
        self.key = (view.serial, graph.version, allow_served)
        ops = graph.get_operations()
        by_name = {op.name: op for op in ops}
        unknown = "?"  # a candidate that is never covered
        own: Dict[str, set] = {}
        unassigned = set()
        for op in ops:
            spec = tf.DeviceSpec.from_string(op.device or "")
            if spec.job is None and spec.replica is None and spec.task is None:
                unassigned.add(op.name)
            cands = view.candidates(op.device)
            own[op.name] = set(cands) if cands is not None else {unknown}
        # Nodes that must share a device: colocation and resource/ref inputs.
        tied: Dict[str, List[str]] = {}
        for op in ops:
            links = [n if n in by_name else None for n in _colocated_with(op)]
            for t in op.inputs:
                if t.dtype == tf.resource or t.dtype != t.dtype.base_dtype:  # a ref input
                    links.append(t.op.name)
            tied[op.name] = links
        base = {name: set(c) for name, c in own.items()}
        changed = True
        while changed:  # a fixpoint: ties are transitive
            changed = False
            for name, links in tied.items():
                cur = base[name]
                before = len(cur)
                for other in links:
                    if other is None:
                        cur.add(unknown)
                    else:
                        cur |= base[other]
                        base[other] |= cur
                if len(cur) != before:
                    changed = True
        final = {name: set(c) for name, c in base.items()}
        for name in unassigned:
            op = by_name[name]
            for t in op.inputs:
                final[name] |= base[t.op.name]
            for out in op.outputs:
                for consumer in out.consumers():
                    final[name] |= base[consumer.name]
            for ctrl in op.control_inputs:
                final[name] |= base[ctrl.name]
        local, served = set(), set()
        for name, cands in final.items():
            states = {view.tasks.get(c) for c in cands}
            if states == {TaskState.LOCAL}:
                local.add(name)
            elif allow_served and states <= {TaskState.LOCAL, TaskState.SERVED}:
                # Every candidate process has the bridge, so its TfdumpIdentity
                # op exists there; where serve() was not called (e.g. the
                # placer put the node here after all) it only forwards.
                served.add(name)
        self.local_nodes: FrozenSet[str] = frozenset(local)
        self.served_nodes: FrozenSet[str] = frozenset(served)
        self.covered_nodes: FrozenSet[str] = self.local_nodes | self.served_nodes

    def watches(self, node_name: str) -> bool:
        return node_name in self.covered_nodes

    def served(self, node_name: str) -> bool:
        """Whether the node runs in a served process (captured there, not here)."""
        return node_name in self.served_nodes


def _colocated_with(op) -> List[str]:
    try:
        groups = op.get_attr("_class")
    except ValueError:
        return []
    out = []
    for g in groups:
        g = g.decode("utf-8", "replace") if isinstance(g, bytes) else g
        if g.startswith("loc:@"):
            out.append(g[len("loc:@"):])
    return out


class ClusterCoverage:
    """Probe results per cluster target, and the once-per-target warning."""

    def __init__(self, owner: str):
        self.owner = owner
        self._lock = threading.Lock()
        self._views: Dict[str, ClusterView] = {}
        self._placements: "weakref.WeakKeyDictionary[Any, Dict[Tuple, Placement]]" = \
            weakref.WeakKeyDictionary()
        self._warned: set = set()

    def forget(self) -> None:
        """Probe again on the next run (a session was re-created: tasks may have restarted)."""
        with self._lock:
            self._views.clear()
            self._placements.clear()

    def placement(self, session, graph, allow_served: bool = True) -> Optional[Placement]:
        """None for a local (DirectSession) target; else the run's :class:`Placement`."""
        target = session_target(session)
        if not is_cluster_target(target):
            return None
        with self._lock:
            view = self._views.get(target)
            if view is None:
                view = self._views[target] = ClusterView.probe(session, target)
                self._warn(view, allow_served)
            per_graph = self._placements.setdefault(graph, {})
            key = (target, allow_served)
            placement = per_graph.get(key)
            if placement is None or placement.view is not view or placement.key[1] != graph.version:
                placement = per_graph[key] = Placement(view, graph, allow_served)
        return placement

    def _warn(self, view: ClusterView, allow_served: bool) -> None:
        if allow_served and view.tasks and TaskState.LOCAL not in view.tasks.values() \
                and TaskState.SERVED in view.tasks.values():
            self._warn_unjoined(view)
        missing = [t for t in sorted(view.tasks) if not view.covered(t, allow_served)]
        if view.master_task is None:
            missing_text = "the session's master (it has no tfdump-fast)"
        else:
            missing_text = ", ".join(missing)
        if not missing and view.master_task is not None:
            return
        key = (view.target, tuple(missing), view.master_task)
        if key in self._warned:
            return
        self._warned.add(key)
        log.warning(
            "tfdump-fast: %s: tasks of %s not covered: %s. Tensors of ops that run there are not "
            "watched (their process has no tfdump-fast capture; sending it a memcbk:// URL would "
            "abort it). To cover a task, call tfdump_fast.serve(session_root) in its process "
            "before server.join() or training.", self.owner, view.target, missing_text)

    def _warn_unjoined(self, view: ClusterView) -> None:
        """A client with no task of its own: served runs cannot be joined to its runs.

        The master step id that joins a client's run to the served runs of
        the same ``Session.run`` is recorded by a debug op on one of the
        client's own partitions; a process that hosts no task of the cluster
        has none. Its runs keep fetches, feeds and partition graphs; the
        tensors are in the served runs, grouped per master step.
        """
        key = ("unjoined", view.target)
        if key in self._warned:
            return
        self._warned.add(key)
        log.warning(
            "tfdump-fast: %s: this process hosts no task of %s, so its runs cannot be joined to the "
            "runs that served tasks capture for them (the step id that joins them is only seen by a "
            "partition of the client's own process). The tensors are stored by the served tasks, one "
            "run per master step (DumpReader.step_runs(served_run); `convert` writes one directory per "
            "step); this process's runs hold fetches, feeds and partition graphs but no tensors. To "
            "join them, run the client in a task's process: start a tf.distribute.Server there and "
            "use its target (MonitoredTrainingSession(master=server.target)).",
            self.owner, view.target)
