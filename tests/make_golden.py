"""Write the golden session roots of tests/data/golden_v1 (format version 1).

The suite reads these committed files with the current reader
(tests/test_reader.py::test_golden_*), so a reader change that breaks old
dumps fails the tests. Regenerate only on purpose: a format change bumps the
version and gets a new golden directory beside this one.

    python tests/make_golden.py            # writes tests/data/golden_v1

What is written:

``writer/``
    Two writers (zstd with byte shuffle, and raw) sharing one session root:
    every numeric dtype numpy and ml_dtypes can hold, strings (with empty
    and NUL-holding elements), scalars, empty tensors, a watch key executed
    several times (a while loop), a payload shared by two keys
    (deduplication), a graph attachment, run metadata, a failed run.
``tfdbg/``
    A real tfdbg dump (``file://`` debug URLs, TensorFlow required): while
    loop, cond, strings, a resource variable, an uninitialized variable,
    TensorLists (variants) of floats, ints and strings, DebugNumericSummary.
``tfdbg_import/``
    ``tfdbg/`` imported with :func:`tfdump_fast.import_tfdbg`.
``hook/``
    What ``tfdump_fast.DumpingDebugWrapperSession`` (the TF bridge) writes
    for one training step of a small ``tf.while_loop`` with its gradient:
    TensorList accumulators stored as list blobs, partition graphs, core
    metadata.
``expected.json``
    What each store must read back as, computed from the *source* values
    (the arrays given to the writer; tfdbg's own DebugDumpDir for the
    tfdbg dump; for ``hook/``, the TensorProto digests tfdbg's own wrapper
    writes for the same step), never from the reader under test.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))

OUT = os.path.join(HERE, "data", "golden_v1")
DEVICE = "/job:localhost/replica:0/task:0/device:CPU:0"
DEVICE_GPU = "/job:localhost/replica:0/task:0/device:GPU:0"


def digest(value) -> str:
    """A canonical digest of a tensor value, independent of the reader."""
    h = hashlib.sha256()
    if isinstance(value, np.ndarray) and value.dtype == object:
        for item in value.reshape(-1).tolist():
            h.update(len(item).to_bytes(8, "little"))
            h.update(item)
    elif isinstance(value, np.ndarray):
        h.update(np.ascontiguousarray(value).tobytes())
    else:
        raise TypeError(type(value))
    return h.hexdigest()


def _bf16():
    import ml_dtypes

    return np.array([1.5, -0.0, np.inf, np.nan, 3.0e38], dtype=ml_dtypes.bfloat16)


def writer_tensors():
    """(node, slot, debug_op, device, array) written to run 1, in order."""
    rng = np.random.default_rng(7)
    arrays = [
        ("dense/kernel", 0, "DebugIdentity", DEVICE, rng.standard_normal((4, 3)).astype(np.float32)),
        ("dense/bias", 0, "DebugIdentity", DEVICE, np.array([0.5, -1.25, np.nan], dtype=np.float64)),
        ("half", 0, "DebugIdentity", DEVICE, np.array([1.0, -2.5, np.inf], dtype=np.float16)),
        ("bf16", 0, "DebugIdentity", DEVICE, _bf16()),
        ("ints/i8", 0, "DebugIdentity", DEVICE, np.array([-128, 0, 127], dtype=np.int8)),
        ("ints/i16", 0, "DebugIdentity", DEVICE, np.array([-32768, 7], dtype=np.int16)),
        ("ints/i32", 1, "DebugIdentity", DEVICE, np.arange(-3, 9, dtype=np.int32).reshape(3, 4)),
        ("ints/i64", 0, "DebugIdentity", DEVICE, np.array([-(2 ** 63), 2 ** 63 - 1], dtype=np.int64)),
        ("ints/u8", 0, "DebugIdentity", DEVICE, np.array([0, 255], dtype=np.uint8)),
        ("ints/u16", 0, "DebugIdentity", DEVICE, np.array([65535], dtype=np.uint16)),
        ("ints/u32", 0, "DebugIdentity", DEVICE, np.array([4294967295, 1], dtype=np.uint32)),
        ("ints/u64", 0, "DebugIdentity", DEVICE, np.array([18446744073709551615], dtype=np.uint64)),
        ("mask", 0, "DebugIdentity", DEVICE, np.array([[True, False], [False, True]])),
        ("c64", 0, "DebugIdentity", DEVICE, np.array([1 + 2j, -np.inf + 0j], dtype=np.complex64)),
        ("c128", 0, "DebugIdentity", DEVICE, np.array([3 - 4j], dtype=np.complex128)),
        ("words", 0, "DebugIdentity", DEVICE, np.array([b"hello", b"", b"nul\x00byte", b"\xff\xfe"],
                                                      dtype=object)),
        ("scalar", 0, "DebugIdentity", DEVICE, np.array(3.25, dtype=np.float32)),
        ("empty", 0, "DebugIdentity", DEVICE, np.zeros((0, 5), dtype=np.float32)),
        ("gpu/out", 0, "DebugIdentity", DEVICE_GPU, np.full((2, 2), 9.0, dtype=np.float32)),
        # the same bytes under another key: stored once
        ("dense/kernel_copy", 0, "DebugIdentity", DEVICE, None),
    ]
    kernel = arrays[0][4]
    arrays[-1] = ("dense/kernel_copy", 0, "DebugIdentity", DEVICE, kernel.copy())
    # a while loop: one key, five executions
    for i in range(5):
        arrays.append(("while/add", 0, "DebugIdentity", DEVICE, np.array(i, dtype=np.int32)))
    arrays.append(("dense/kernel", 0, "DebugNumericSummary", DEVICE,
                   np.arange(15, dtype=np.float64)))
    return arrays


def make_writer_store(root: str) -> dict:
    from tfdump_fast.writer import DumpWriter

    expected = {"runs": []}
    base_us = 1_700_000_000_000_000
    with DumpWriter(root, workers=2, codec="zstd", level=3, shuffle=True, frame_bytes=4096) as w:
        run = w.begin_run(metadata={"fetches": "[<tf.Tensor 'loss:0'>]", "feed_keys": "None",
                                    "global_step": 41}, capture=False)
        tensors = []
        for k, (node, slot, op, device, arr) in enumerate(writer_tensors()):
            w.write(arr, node, slot, op, device=device, run=run, wall_us=base_us + 10 * k)
            tensors.append({"watch_key": "%s:%d:%s" % (node, slot, op), "device": device,
                            "dtype": str(arr.dtype) if arr.dtype != object else "string",
                            "shape": list(arr.shape), "digest": digest(arr), "wall_us": base_us + 10 * k})
        graph = b"\x0a\x05\x0a\x03abc"  # any bytes: a stand-in partition graph
        w.end_run(run, metadata={"core_metadata": {
            "global_step": 41, "session_run_index": 3, "executor_step_index": 0,
            "input_names": ["x:0"], "output_names": ["loss:0"], "target_nodes": []}},
            attachments=[graph])
        expected["runs"].append({"name": run.run_name, "status": "complete", "tensors": tensors,
                                 "global_step": 41, "graphs": [hashlib.sha256(graph).hexdigest()]})
        failed = w.begin_run(capture=False)
        arr = np.array([np.nan, 1.0], dtype=np.float32)
        w.write(arr, "loss", run=failed, wall_us=base_us + 100_000)
        w.end_run(failed, status="failed", error="InvalidArgumentError: loss is nan")
        expected["runs"].append({"name": failed.run_name, "status": "failed",
                                 "error": "InvalidArgumentError: loss is nan",
                                 "tensors": [{"watch_key": "loss:0:DebugIdentity", "device": DEVICE,
                                              "dtype": "float32", "shape": [2], "digest": digest(arr),
                                              "wall_us": base_us + 100_000}]})
    # a second writer, raw codec, in the same root
    with DumpWriter(root, codec="raw", shuffle=False, workers=1, allow_existing=True) as w:
        run = w.begin_run(capture=False)
        arr = np.arange(6, dtype=np.int64).reshape(2, 3)
        w.write(arr, "other/x", run=run, wall_us=base_us + 200_000)
        w.end_run(run)
        expected["runs"].append({"name": run.run_name, "status": "complete", "tensors": [
            {"watch_key": "other/x:0:DebugIdentity", "device": DEVICE, "dtype": "int64", "shape": [2, 3],
             "digest": digest(arr), "wall_us": base_us + 200_000}]})
    return expected


def make_tfdbg_dump(root: str) -> None:
    """A small tfdbg dump of a graph covering the dtypes and control flow
    tfdbg treats specially. Needs TensorFlow."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from tensorflow.python.debug.lib import debug_utils

    tf1 = tf.compat.v1
    tf1.disable_eager_execution()
    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, [None, 2], name="x")
        words = tf1.placeholder(tf.string, [None], name="words")
        pred = tf1.placeholder(tf.bool, name="pred")
        v = tf1.get_variable("v", initializer=tf.constant([1.0, 2.0]), use_resource=True)
        rv = tf1.Variable([3.0], name="rv", use_resource=False)
        loop = tf.while_loop(lambda i: i < 3, lambda i: i + 1, [tf.constant(0, name="i0")], name="wl")
        cond = tf.cond(pred, lambda: x * 2.0, lambda: tf.math.log(x - 10.0), name="cd")
        tl = tf.raw_ops.TensorListFromTensor(tensor=x, element_shape=tf.constant([2]), name="tl")
        tls = tf.raw_ops.TensorListFromTensor(tensor=words, element_shape=tf.constant([], tf.int32),
                                              name="tls")
        tli = tf.raw_ops.TensorListFromTensor(tensor=tf.cast(x, tf.int32, name="xi"),
                                              element_shape=tf.constant([2]), name="tli")
        stack = tf.raw_ops.TensorListStack(input_handle=tl, element_dtype=tf.float32,
                                           element_shape=tf.constant([2]), name="stack")
        stacks = tf.raw_ops.TensorListStack(input_handle=tls, element_dtype=tf.string,
                                            element_shape=tf.constant([], tf.int32), name="stacks")
        stacki = tf.raw_ops.TensorListStack(input_handle=tli, element_dtype=tf.int32,
                                            element_shape=tf.constant([2]), name="stacki")
        joined = tf.strings.join([words, tf.constant("!")], name="joined")
        out = [loop, cond, stack, stacks, stacki, joined, v.read_value(), tf.identity(rv, name="rv_out")]
        init = tf1.global_variables_initializer()
        sess = tf1.Session(graph=g)
        opts = tf1.RunOptions()
        debug_utils.watch_graph(opts, g, debug_urls=["file://" + os.path.join(root, "run_1700000000000000_0")])
        sess.run(init, options=opts)  # rv is dumped uninitialized here
        opts = tf1.RunOptions()
        url = "file://" + os.path.join(root, "run_1700000000100000_1")
        debug_utils.watch_graph(opts, g, debug_urls=[url])
        debug_utils.watch_graph(opts, g, debug_ops=["DebugNumericSummary"], debug_urls=[url],
                                node_name_regex_allowlist=r"^cd/.*mul.*$")
        sess.run(out, feed_dict={x: [[1.5, -2.0], [3.0, 4.0]], words: [b"ab", b"", b"c\x00d"], pred: True},
                 options=opts)
        sess.close()


def tfdbg_expected(root: str) -> dict:
    """Expected values of the tfdbg dump, from tfdbg's own reader."""
    from tensorflow.python.debug.lib import debug_data

    runs = []
    for name in sorted(os.listdir(root)):
        dd = debug_data.DebugDumpDir(os.path.join(root, name))
        tensors = []
        for datum in dd.dumped_tensor_data:
            value = datum.get_tensor()
            entry = {"watch_key": datum.watch_key, "device": datum.device_name,
                     "timestamp": datum.timestamp, "extended_timestamp": datum.extended_timestamp}
            if isinstance(value, debug_data.InconvertibleTensorProto):
                entry["inconvertible"] = True
                entry["initialized"] = bool(value.initialized)
                entry["dtype"] = int(value._tensor_proto.dtype)
            else:
                entry["dtype"] = str(value.dtype) if value.dtype != object else "string"
                entry["shape"] = list(value.shape)
                entry["digest"] = digest(value)
            tensors.append(entry)
        runs.append({"name": name, "size": dd.size, "tensors": tensors})
    return {"runs": runs}


def _loop_graph():
    import tensorflow as tf

    tf1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        x = tf.constant(np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), name="x")
        w = tf1.Variable(np.eye(4, dtype=np.float32) * 0.5 + 0.1, name="w", use_resource=True)

        def body(i, h):
            return i + 1, tf.tanh(tf.matmul(h, w))

        _, h = tf.while_loop(lambda i, h: i < 4, body, [tf.constant(0), x], name="rnn")
        loss = tf.reduce_sum(h, name="loss")
        train = tf1.train.GradientDescentOptimizer(0.1).minimize(loss, name="train")
        init = tf1.global_variables_initializer()
    return g, train, init


def _one_step(wrapper_factory):
    import tensorflow as tf

    g, train, init = _loop_graph()
    with g.as_default():
        sess = tf.compat.v1.Session(graph=g)
        sess.run(init)
        wrapped = wrapper_factory(sess)
        wrapped.run(train)
        if hasattr(wrapped, "close"):
            wrapped.close()
        sess.close()


def make_hook_store(root: str, scratch: str) -> dict:
    """Our wrapper's store of one step, and the digests of the TensorProtos
    tfdbg's wrapper writes for the same step (watch key -> executions)."""
    from tensorflow.python import debug as tf_debug

    from tfdump_fast import _tfproto as P
    from tfdump_fast.hooks import DumpingDebugWrapperSession

    _one_step(lambda sess: tf_debug.DumpingDebugWrapperSession(sess, scratch))
    _one_step(lambda sess: DumpingDebugWrapperSession(sess, root))
    (run_dir,) = [os.path.join(scratch, n) for n in os.listdir(scratch)]
    protos = {}
    for folder, _, files in os.walk(run_dir):
        for name in files:
            if name.startswith("_tfdbg_"):
                continue
            with open(os.path.join(folder, name), "rb") as f:
                event = P.decode_event(f.read())
            ts, _, k = name.rsplit("_", 1)[1].partition("-")
            protos.setdefault(event["node_name"], []).append(
                ((int(ts), int(k or 0)), hashlib.sha256(event["tensor"]).hexdigest()))
    return {"tensor_protos": {key: [d for _, d in sorted(v)] for key, v in sorted(protos.items())}}


def main() -> None:
    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    expected = {"format_version": 1, "writer": make_writer_store(os.path.join(OUT, "writer"))}
    make_tfdbg_dump(os.path.join(OUT, "tfdbg"))
    expected["tfdbg"] = tfdbg_expected(os.path.join(OUT, "tfdbg"))
    from tfdump_fast.importer import import_tfdbg

    import_tfdbg(os.path.join(OUT, "tfdbg"), os.path.join(OUT, "tfdbg_import"))
    scratch = os.path.join(OUT, "_scratch")
    expected["hook"] = make_hook_store(os.path.join(OUT, "hook"), scratch)
    shutil.rmtree(scratch)
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
    total = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(OUT) for n in ns)
    print("wrote %s (%d bytes)" % (OUT, total))


if __name__ == "__main__":
    main()
