"""A small Keras model trained with fit, with a NaN at a known step; run as a
script by tests/test_tf2.py (``python tf2_keras_model.py {ours,tfdbg} ROOT [STEPS]``),
under tfdump-fast's TF2 capture or tfdbg v2 (FULL_TENSOR, no circular buffer)."""
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

if __name__ == "__main__":
    which, root = sys.argv[1], sys.argv[2]
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 6
    x, y = data()
    m = model()
    if which == "ours":
        from tfdump_fast import tf2
        tf2.enable_dump_debug_info(root)
        m.fit(x[:steps*4], y[:steps*4], batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[tf2.keras_callback()])
        print(json.dumps(tf2.disable_dump_debug_info()))
    else:
        tf.debugging.experimental.enable_dump_debug_info(root, tensor_debug_mode="FULL_TENSOR", circular_buffer_size=-1)
        m.fit(x[:steps*4], y[:steps*4], batch_size=4, epochs=1, shuffle=False, verbose=0)
        tf.debugging.experimental.disable_dump_debug_info()
