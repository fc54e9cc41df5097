"""The workloads of ``benchmarks.steps``: the existing ``rnn`` and ``mlp``
(:mod:`benchmarks.workloads`) and real models in TF1 graph mode.

* ``lstm``: an LSTM (hand-written cell: ``tf.compat.v1.nn.rnn_cell`` needs
  Keras 2) unrolled by ``tf.compat.v1.nn.dynamic_rnn`` (a while loop), with
  its gradient and SGD.
* ``mobilenetv2`` / ``resnet50``: ``keras.applications`` with
  ``weights=None``, called in training mode on a small synthetic batch, with
  a softmax loss and ``GradientDescentOptimizer``.

Each builder returns a :class:`benchmarks.workloads.GraphWorkload`.
"""

from __future__ import annotations

from typing import Dict

from benchmarks.workloads import GraphWorkload, build_graph

WORKLOADS = ("rnn", "mlp", "lstm", "mobilenetv2", "resnet50")
KERAS_APPS = {"mobilenetv2": "MobileNetV2", "resnet50": "ResNet50"}

PARAMS: Dict[str, Dict[str, Dict[str, int]]] = {
    "full": {
        "lstm": dict(batch=8, steps=50, features=32, units=64),
        "mobilenetv2": dict(batch=4, size=64, classes=10),
        "resnet50": dict(batch=4, size=64, classes=10),
    },
    "tiny": {
        "lstm": dict(batch=2, steps=6, features=4, units=8),
        "mobilenetv2": dict(batch=1, size=32, classes=4),
        "resnet50": dict(batch=1, size=32, classes=4),
    },
}


class _LSTMCell:
    """The minimal RNNCell interface ``dynamic_rnn`` uses; state is (c, h)."""

    def __init__(self, units: int):
        self.units = units
        self.state_size = (units, units)
        self.output_size = units
        self.kernel = self.bias = None

    def zero_state(self, batch_size, dtype):
        import tensorflow as tf

        return tf.zeros([batch_size, self.units], dtype), tf.zeros([batch_size, self.units], dtype)

    def __call__(self, x, state):
        import tensorflow as tf

        v1 = tf.compat.v1
        c, h = state
        if self.kernel is None:
            self.kernel = v1.get_variable("lstm/kernel", [int(x.shape[-1]) + self.units, 4 * self.units],
                                          initializer=v1.glorot_uniform_initializer(seed=1))
            self.bias = v1.get_variable("lstm/bias", [4 * self.units], initializer=v1.zeros_initializer())
        z = tf.matmul(tf.concat([x, h], 1), self.kernel) + self.bias
        i, j, f, o = tf.split(z, 4, axis=1)
        c = tf.sigmoid(f + 1.0) * c + tf.sigmoid(i) * tf.tanh(j)
        h = tf.sigmoid(o) * tf.tanh(c)
        return h, (c, h)


def describe(name: str, scale: str) -> str:
    if name in ("rnn", "mlp"):
        from benchmarks.workloads import describe as base_describe

        return base_describe(name, scale)
    p = PARAMS[scale][name]
    if name == "lstm":
        return (f"LSTM of {p['units']} units over {p['steps']} time steps (tf.compat.v1.nn.dynamic_rnn), "
                f"batch {p['batch']}, {p['features']} features, SGD")
    return (f"keras.applications.{KERAS_APPS[name]}(weights=None), {p['size']}x{p['size']}x3, batch {p['batch']}, "
            f"{p['classes']} classes, training mode, SGD")


def build(name: str, scale: str = "full", seed: int = 0) -> GraphWorkload:
    """The tf.compat.v1 graph of one workload (eager execution must be off)."""
    if name in ("rnn", "mlp"):
        return build_graph(name, scale, seed)
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    import tensorflow as tf

    v1 = tf.compat.v1
    p = PARAMS[scale][name]
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(seed)
        if name == "lstm":
            x = tf.random.uniform([p["batch"], p["steps"], p["features"]], seed=seed + 1, name="x")
            out, _ = v1.nn.dynamic_rnn(_LSTMCell(p["units"]), x, dtype=tf.float32)
            loss = tf.reduce_mean(tf.square(out[:, -1]))
        else:
            import keras

            model = getattr(keras.applications, KERAS_APPS[name])(
                weights=None, input_shape=(p["size"], p["size"], 3), classes=p["classes"])
            x = tf.random.uniform([p["batch"], p["size"], p["size"], 3], seed=seed + 1, name="images")
            y = tf.random.uniform([p["batch"]], 0, p["classes"], dtype=tf.int32, seed=seed + 2, name="labels")
            logits = model(x, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        train_op = v1.train.GradientDescentOptimizer(0.01).minimize(loss)
        v1.train.get_or_create_global_step()
    return GraphWorkload(name, scale, dict(p), describe(name, scale), graph, train_op, loss, "v2")
