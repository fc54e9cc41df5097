"""The benchmark workloads, each as a tf.compat.v1 graph and as a tf.function twin.

Every workload is a small training step on synthetic data with fixed seeds,
sized so that a 2-core machine runs a step in well under a second:

* ``mlp``: 4 dense layers of 1024 units, ReLU, batch 256, plain SGD. Few
  large float tensors (~46 MB watched per step under tfdbg).
* ``rnn``: a ``tf.while_loop`` of 200 iterations over a 16x32 state, with
  its gradient. Built with control flow v2 inside the v1 graph (the default
  of TF 2.x even with eager execution disabled): the v1 Session lowers the
  functional While to Switch/Merge frames, and the gradient keeps its
  forward values in TensorList accumulators, whose every push/pop dumps the
  whole list (a DT_VARIANT). That is the "~17k small tensors, 1.34 GB" step
  of the reference tfdbg dump; v1 control flow (``rnn-cfv1``) dumps ~12k
  tensors but only ~16 MB because its gradient uses stacks instead.
* ``cnn``: three conv + ReLU layers on 32x32x3 images, global average pool,
  dense head. Medium tensors, NHWC.
* ``embed``: an embedding lookup with integer ids (int64 ids, int32 hashing,
  sparse IndexedSlices gradient), mean-pooled into a small head.

``scale="tiny"`` shrinks every dimension for the smoke test of the harness
(its timings mean nothing).

Variables are initialised from stateless random ops (seeded), never from
large constants, so the graph definition stays small: tfdbg v1 dumps the
partition graphs with every step and a 16 MB constant would be charged to it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List

# Models run by default, and the optional ones (``--models`` accepts both).
DEFAULT_MODELS = ("mlp", "rnn", "cnn", "embed")
ALL_MODELS = DEFAULT_MODELS + ("rnn-cfv1",)

SCALES: Dict[str, Dict[str, Dict[str, int]]] = {
    "full": {
        "mlp": dict(batch=256, width=1024, layers=4, classes=10),
        "rnn": dict(batch=16, units=32, iterations=200),
        "cnn": dict(batch=32, size=32, channels=3, filters1=32, filters2=64, filters3=64, classes=10),
        "embed": dict(batch=256, seq=32, vocab=50000, dim=64),
    },
    "tiny": {
        "mlp": dict(batch=16, width=64, layers=4, classes=10),
        "rnn": dict(batch=4, units=8, iterations=12),
        "cnn": dict(batch=4, size=8, channels=3, filters1=4, filters2=8, filters3=8, classes=10),
        "embed": dict(batch=16, seq=4, vocab=500, dim=8),
    },
}

LEARNING_RATE = 0.01


def _base_name(model: str) -> str:
    return "rnn" if model == "rnn-cfv1" else model


def params_of(model: str, scale: str = "full") -> Dict[str, int]:
    if model not in ALL_MODELS:
        raise ValueError(f"unknown model {model!r}; choose from {', '.join(ALL_MODELS)}")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose from {', '.join(SCALES)}")
    return dict(SCALES[scale][_base_name(model)])


def describe(model: str, scale: str = "full") -> str:
    p = params_of(model, scale)
    base = _base_name(model)
    if base == "mlp":
        return (f"{p['layers']} dense layers of {p['width']}, ReLU, batch {p['batch']}, "
                f"softmax head of {p['classes']}, SGD")
    if base == "rnn":
        cf = "v1 control flow" if model == "rnn-cfv1" else "control flow v2 in a v1 graph"
        return (f"tf.while_loop of {p['iterations']} iterations over a {p['batch']}x{p['units']} "
                f"state (tanh(h W)), with its gradient; {cf}")
    if base == "cnn":
        return (f"3 conv3x3+ReLU ({p['filters1']}/{p['filters2']}/{p['filters3']} filters, "
                f"strides 1/2/2) on {p['size']}x{p['size']}x{p['channels']}, batch {p['batch']}, "
                f"global avg pool, dense {p['classes']}, SGD")
    return (f"embedding lookup, vocab {p['vocab']} x dim {p['dim']}, int64 ids "
            f"[{p['batch']}, {p['seq']}] hashed in int32, mean pool, dense 1, SGD (sparse)")


# --------------------------------------------------------------------------
# Model math shared by the graph and the tf.function versions. Each builder
# takes a `var(name, shape, seed, scale)` factory (graph or eager variables)
# and returns (variables, loss_fn) where loss_fn() builds/runs one step's
# forward pass on fresh synthetic data.


def _model(model: str, p: Dict[str, int], var: Callable, seed: int):
    import tensorflow as tf

    base = _base_name(model)
    if base == "mlp":
        ws, bs = [], []
        dims = [p["width"]] * (p["layers"] + 1)
        for i in range(p["layers"]):
            ws.append(var(f"dense{i}/kernel", [dims[i], dims[i + 1]], seed + i, (2.0 / dims[i]) ** 0.5))
            bs.append(var(f"dense{i}/bias", [dims[i + 1]], None, 0.0))
        head = var("head/kernel", [p["width"], p["classes"]], seed + 100, (1.0 / p["width"]) ** 0.5)
        variables = ws + bs + [head]

        def loss_fn():
            x = tf.random.normal([p["batch"], p["width"]], seed=seed + 1000, name="x")
            y = tf.random.uniform([p["batch"]], 0, p["classes"], dtype=tf.int32, seed=seed + 1001, name="y")
            h = x
            for w, b in zip(ws, bs):
                h = tf.nn.relu(tf.matmul(h, w) + b)
            logits = tf.matmul(h, head)
            return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))

        return variables, loss_fn

    if base == "rnn":
        n, u, iters = p["batch"], p["units"], p["iterations"]
        w = var("rnn/kernel", [u, u], seed, (1.0 / u) ** 0.5)
        variables = [w]

        def loss_fn():
            h0 = tf.random.normal([n, u], seed=seed + 1000, name="h0")
            _, h = tf.while_loop(lambda i, h: i < iters,
                                 lambda i, h: (i + 1, tf.tanh(tf.matmul(h, w))),
                                 [tf.constant(0), h0], name="rnn_loop")
            return tf.reduce_mean(tf.square(h))

        return variables, loss_fn

    if base == "cnn":
        c = [p["channels"], p["filters1"], p["filters2"], p["filters3"]]
        ks = [var(f"conv{i}/kernel", [3, 3, c[i], c[i + 1]], seed + i, (2.0 / (9 * c[i])) ** 0.5)
              for i in range(3)]
        kb = [var(f"conv{i}/bias", [c[i + 1]], None, 0.0) for i in range(3)]
        head = var("head/kernel", [c[3], p["classes"]], seed + 100, (1.0 / c[3]) ** 0.5)
        variables = ks + kb + [head]

        def loss_fn():
            x = tf.random.uniform([p["batch"], p["size"], p["size"], p["channels"]], seed=seed + 1000,
                                  name="images")
            y = tf.random.uniform([p["batch"]], 0, p["classes"], dtype=tf.int32, seed=seed + 1001, name="y")
            h = x
            for k, b, s in zip(ks, kb, (1, 2, 2)):
                h = tf.nn.relu(tf.nn.conv2d(h, k, strides=s, padding="SAME") + b)
            logits = tf.matmul(tf.reduce_mean(h, axis=[1, 2]), head)
            return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))

        return variables, loss_fn

    # embed
    table = var("embedding/table", [p["vocab"], p["dim"]], seed, 0.05)
    head = var("head/kernel", [p["dim"], 1], seed + 100, (1.0 / p["dim"]) ** 0.5)
    variables = [table, head]

    def loss_fn():
        raw = tf.random.uniform([p["batch"], p["seq"]], 0, 1 << 30, dtype=tf.int64, seed=seed + 1000,
                                name="raw_ids")
        # A cheap int32 hash so the step carries integer tensors of both widths.
        ids = tf.math.floormod(tf.cast(raw, tf.int32) * 7919, p["vocab"], name="ids")
        emb = tf.nn.embedding_lookup(table, ids)
        pooled = tf.reduce_mean(emb, axis=1)
        target = tf.cast(tf.math.floormod(tf.reduce_sum(ids, axis=1), 2), tf.float32)[:, None]
        return tf.reduce_mean(tf.square(tf.matmul(pooled, head) - target))

    return variables, loss_fn


def _init_value(shape, seed, scale):
    import tensorflow as tf

    if seed is None:
        return tf.zeros(shape)
    # Stateless, so graph and eager twins start from the same weights.
    return tf.random.stateless_uniform(shape, seed=[seed, 7], minval=-scale, maxval=scale)


# --------------------------------------------------------------------------
# tf.compat.v1 graph version


@dataclasses.dataclass
class GraphWorkload:
    name: str
    scale: str
    params: Dict[str, int]
    description: str
    graph: Any          # tf.Graph
    train_op: Any       # the fetch of one training step
    loss: Any
    control_flow: str   # "v2" or "v1" (what the while loop was built with)

    def info(self) -> Dict[str, Any]:
        return {"name": self.name, "scale": self.scale, "params": self.params,
                "description": self.description, "control_flow": self.control_flow}


def build_graph(model: str, scale: str = "full", seed: int = 0) -> GraphWorkload:
    """Builds the tf.compat.v1 graph of one workload (eager mode may be on or off)."""
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util

    v1 = tf.compat.v1
    p = params_of(model, scale)
    want_v2 = model != "rnn-cfv1"
    # The control-flow flavour is a process-wide switch read while the graph
    # is built; set it for this build only (the rnn figures depend on it) and
    # restore it afterwards.
    saved = control_flow_util.ENABLE_CONTROL_FLOW_V2
    control_flow_util.ENABLE_CONTROL_FLOW_V2 = want_v2
    try:
        graph = tf.Graph()
        with graph.as_default():
            v1.set_random_seed(seed)

            def var(name, shape, vseed, vscale):
                return v1.Variable(_init_value(shape, vseed, vscale), name=name, use_resource=True)

            _, loss_fn = _model(model, p, var, seed)
            loss = loss_fn()
            train_op = v1.train.GradientDescentOptimizer(LEARNING_RATE).minimize(loss)
            # MonitoredSession needs these; created once here because the
            # harness opens several sessions on this one graph.
            v1.train.get_or_create_global_step()
    finally:
        control_flow_util.ENABLE_CONTROL_FLOW_V2 = saved
    return GraphWorkload(model, scale, p, describe(model, scale), graph, train_op, loss,
                         "v2" if want_v2 else "v1")


# --------------------------------------------------------------------------
# tf.function twin (for tfdbg v2, which only instruments eager/tf.function)


@dataclasses.dataclass
class FunctionWorkload:
    name: str
    scale: str
    params: Dict[str, int]
    description: str
    variables: List[Any]
    make_step: Callable[[], Any]   # returns a fresh (untraced) tf.function

    def info(self) -> Dict[str, Any]:
        return {"name": self.name, "scale": self.scale, "params": self.params,
                "description": self.description + " (tf.function twin)"}


def build_function(model: str, scale: str = "full", seed: int = 0) -> FunctionWorkload:
    """The eager/tf.function twin of :func:`build_graph` (requires eager mode).

    ``make_step()`` returns a new tf.function each call, so a caller can trace
    one before and one after ``enable_dump_debug_info`` (tfdbg v2 instruments
    a function when it is traced).
    """
    import tensorflow as tf

    if model == "rnn-cfv1":
        raise ValueError("rnn-cfv1 has no tf.function twin (tf.function always uses control flow v2)")
    p = params_of(model, scale)
    tf.random.set_seed(seed)

    def var(name, shape, vseed, vscale):
        return tf.Variable(_init_value(shape, vseed, vscale), name=name)

    variables, loss_fn = _model(model, p, var, seed)

    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn()
        grads = tape.gradient(loss, variables)
        for v, g in zip(variables, grads):
            if isinstance(g, tf.IndexedSlices):
                v.scatter_sub(tf.IndexedSlices(LEARNING_RATE * g.values, g.indices))
            else:
                v.assign_sub(LEARNING_RATE * g)
        return loss

    return FunctionWorkload(model, scale, p, describe(model, scale), variables,
                            lambda: tf.function(step))


def graph_mode_setup() -> None:
    """Puts TF in the mode the v1 workloads run in: eager off, control flow v2 on.

    ``disable_eager_execution`` (unlike ``disable_v2_behavior``) keeps control
    flow v2, which is what TF 2.x users of tf.compat.v1 get by default.
    """
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()



def unfinalize(graph) -> None:
    """Lets ops be added to `graph` again after a MonitoredSession finalized it.

    The harness opens several sessions on one graph (one per configuration),
    and a debug hook's ``begin()`` adds ops to it. TF has no public way back,
    so this is the one place that calls ``Graph._unsafe_unfinalize``.
    """
    if graph.finalized:
        graph._unsafe_unfinalize()  # pylint: disable=protected-access
