"""A small Keras model trained with fit, with a NaN at a known step; run as a
script by tests/test_tf2.py (``python tf2_keras_model.py {ours,tfdbg} ROOT [STEPS [MODE]]``),
under tfdump-fast's TF2 capture or tfdbg v2 (MODE, default FULL_TENSOR; no circular buffer)."""
import json
import os
import sys

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
import tensorflow as tf
import keras

NAN_STEP = 3

class SqrtLayer(keras.layers.Layer):
    def call(self, x):
        return tf.math.sqrt(x)  # NaN_LINE

def data():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.5, 1.0, size=(6 * 4, 3)).astype("float32")
    x[NAN_STEP * 4 + 1, 2] = -1.0          # only batch NAN_STEP has a negative value
    y = rng.uniform(size=(6 * 4, 1)).astype("float32")
    return x, y

def model():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((3,)), SqrtLayer(), keras.layers.Dense(2, activation="relu"),
                          keras.layers.Dense(1)])
    m.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return m

def fit_under(which, root, steps, mode, **options):
    """Train a fresh model (Keras names reset) under one tool; our TF2 counters or None."""
    keras.backend.clear_session()
    x, y = data()
    m = model()
    if which == "ours":
        from tfdump_fast import tf2
        tf2.enable_dump_debug_info(root, tensor_debug_mode=mode, **options)
        m.fit(x[:steps*4], y[:steps*4], batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[tf2.keras_callback()])
        return tf2.disable_dump_debug_info()
    tf.debugging.experimental.enable_dump_debug_info(root, tensor_debug_mode=mode, circular_buffer_size=-1)
    m.fit(x[:steps*4], y[:steps*4], batch_size=4, epochs=1, shuffle=False, verbose=0)
    tf.debugging.experimental.disable_dump_debug_info()
    return None

if __name__ == "__main__" and sys.argv[1] == "modes":
    # python tf2_keras_model.py modes ROOT STEPS MODE...: ROOT/<MODE>/{ours,tfdbg}, one process
    root, steps = sys.argv[2], int(sys.argv[3])
    stats = {}
    for mode in sys.argv[4:]:
        stats[mode] = fit_under("ours", os.path.join(root, mode, "ours"), steps, mode)
        fit_under("tfdbg", os.path.join(root, mode, "tfdbg"), steps, mode)
    print(json.dumps(stats))
elif __name__ == "__main__":
    which, root = sys.argv[1], sys.argv[2]
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 6
    mode = sys.argv[4] if len(sys.argv) > 4 else "FULL_TENSOR"
    x, y = data()
    m = model()
    if which == "ours":
        from tfdump_fast import tf2
        tf2.enable_dump_debug_info(root, tensor_debug_mode=mode)
        m.fit(x[:steps*4], y[:steps*4], batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[tf2.keras_callback()])
        print(json.dumps(tf2.disable_dump_debug_info()))
    else:
        tf.debugging.experimental.enable_dump_debug_info(root, tensor_debug_mode=mode, circular_buffer_size=-1)
        m.fit(x[:steps*4], y[:steps*4], batch_size=4, epochs=1, shuffle=False, verbose=0)
        tf.debugging.experimental.disable_dump_debug_info()
