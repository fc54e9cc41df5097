"""Screenshot of TensorBoard's Debugger V2 showing a tfdump-fast TF2 dump.

Trains a small Keras model whose batch 3 makes a NaN (``tf.math.sqrt`` of a
negative value) under ``tfdump_fast.enable_dump_debug_info``, converts the
store to tfdbg v2's DebugEvents files (``convert(layout="tfdbg2",
tensor_debug_mode="FULL_HEALTH")``), starts ``tensorboard --logdir`` on it,
opens the Debugger V2 plugin in headless Chromium (selenium), clicks the NaN
alert and then the NaN's op (Sqrt), checks the page's text (the alert, the
executions, the graph executions, the op's graph structure and creation
stack, down to this file), and saves the screenshot.

    pip install tensorboard selenium; apt-get install chromium chromium-driver
    python tools/tensorboard_screenshot.py docs/tensorboard_debugger_v2.png

Why FULL_HEALTH and not FULL_TENSOR: TensorBoard 2.21's Debugger V2 hangs on
FULL_TENSOR graph execution traces (its inf/nan monitor reads a trace while
TensorFlow's DebugDataReader holds that file's non-reentrant read lock), for
a real tfdbg v2 FULL_TENSOR dump as for ours. Exit status 0 when the page
showed what it should, 1 otherwise (the screenshot is saved either way).
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

NAN_BATCH = 3


def make_dump(root):
    import numpy as np
    import keras
    import tensorflow as tf

    import tfdump_fast

    class SqrtLayer(keras.layers.Layer):
        def call(self, x):
            return tf.math.sqrt(x)   # the NaN's creation line

    rng = np.random.default_rng(0)
    x = rng.uniform(0.5, 1.0, size=(5 * 4, 3)).astype("float32")
    x[NAN_BATCH * 4 + 1, 2] = -1.0
    y = rng.uniform(size=(5 * 4, 1)).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), SqrtLayer(), keras.layers.Dense(2, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    tfdump_fast.enable_dump_debug_info(root)
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0,
              callbacks=[tfdump_fast.tf2.keras_callback()])
    tfdump_fast.disable_dump_debug_info()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:   # noqa: BLE001 - the page is still loading
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def screenshot(logdir, out, width, height, timeout, chromium="/usr/bin/chromium",
               chromedriver="/usr/bin/chromedriver"):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    port = free_port()
    tb = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--port", str(port),
                           "--host", "127.0.0.1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    driver = None
    try:
        import urllib.request

        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugins_listing", timeout=2),
                 120, "tensorboard to answer")
        opts = webdriver.ChromeOptions()
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    f"--window-size={width},{height}"):
            opts.add_argument(arg)
        opts.binary_location = chromium
        driver = webdriver.Chrome(options=opts, service=Service(chromedriver))
        driver.get(f"http://127.0.0.1:{port}/#debugger-v2")
        body = lambda: driver.find_element(By.TAG_NAME, "body").text   # noqa: E731
        wait_for(lambda: "NaN" in body() and "Sqrt" in body(), timeout, "the NaN alert")
        # open the alert: the graph execution of the NaN (the Sqrt op) and its stack trace
        def click(selector):   # found again on each try: the tables re-render (stale elements)
            driver.find_element(By.CSS_SELECTOR, selector).click()
            return True

        wait_for(lambda: click(".alerts-breakdown-type"), 30, "the alert button")
        wait_for(lambda: "Graph Executions" in body(), timeout, "the graph executions panel")
        # the NaN's op: its graph neighborhood and its creation stack
        wait_for(lambda: click("button.tensor-name[title$='/Sqrt:0']"), 30, "the Sqrt tensor")
        wait_for(lambda: os.path.basename(__file__) in body(), timeout, "the Sqrt op's stack trace")
        time.sleep(2)   # let the panes finish rendering
        text = body()
        driver.save_screenshot(out)
        return text
    finally:
        if driver is not None:
            driver.quit()
        tb.terminate()
        try:
            tb.wait(10)
        except subprocess.TimeoutExpired:
            tb.kill()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", default="docs/tensorboard_debugger_v2.png")
    ap.add_argument("--workdir", help="keep the dump and converted files here (default: a temp dir)")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=900)
    ap.add_argument("--timeout", type=float, default=120)
    args = ap.parse_args(argv)

    import tfdump_fast

    work = args.workdir or tempfile.mkdtemp(prefix="tfdump_tb_")
    root, logdir = os.path.join(work, "dump"), os.path.join(work, "tfdbg2")
    make_dump(root)
    tfdump_fast.convert(root, logdir, layout="tfdbg2", tensor_debug_mode="FULL_HEALTH", overwrite=True)
    try:
        text = screenshot(logdir, args.out, args.width, args.height, args.timeout)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    wanted = {"the NaN alert": "NaN/∞", "the NaN's op": "sqrt_layer_1/Sqrt:0",
              "the executions": "Python Execution Timeline", "the graph executions": "Graph Executions",
              "the graph structure": "Graph Structure", "the creation stack": os.path.basename(__file__)}
    missing = [what for what, s in wanted.items() if s.lower() not in text.lower()]
    print(f"saved {args.out} ({os.path.getsize(args.out)} bytes)"
          + (f"; dump {root}, tfdbg v2 files {logdir}" if args.workdir else ""))
    if missing:
        print("the page did not show: " + ", ".join(missing) + "\n--- page text ---\n" + text)
        return 1
    print("the page shows: " + ", ".join(wanted))
    return 0


if __name__ == "__main__":
    sys.exit(main())
