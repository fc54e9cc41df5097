"""Fuzzing of every parser (issue #10): real stores -- a DumpWriter store
with numeric and string tensors (closed cleanly, and as if killed before
close), and the golden stores, whose hook and import stores hold variants
(TensorLists, list blobs) -- damaged at random: byte flips, truncations,
duplicated, removed and swapped frames, appended garbage, zeroed ranges.

Every outcome must be correct data or a :class:`TfdumpError`: never another
exception, never a value that differs from the undamaged store's, never a
record twice, never a hang (an alarm per trial). For a cleanly closed store,
losing data silently (fewer records, nothing reported) is also a failure.
The parsers below the reader (frame and file headers, record tables,
variant structures, list blobs, string encodings) get mutated real inputs
directly. Seeded; bounded to about 30 s in all. Prints a summary of the
trials and their outcomes.
"""

import collections
import os
import random
import shutil
import signal
import time

import numpy as np
import pytest
import zstandard

from tfdump_fast import DumpReader, DumpWriter, _native
from tfdump_fast.cli import main
from tfdump_fast.errors import TfdumpError
from tfdump_fast.store import payloads as store_payloads
from tfdump_fast.store.decode import InconvertibleTensor

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "data", "golden_v1")
HDR = _native.FRAME_HEADER_SIZE
FILE_HDR = _native.FILE_HEADER_SIZE
SEED = 20261130
STORE_BUDGET_S = 4.5      # per store (five stores)
PARSER_BUDGET_S = 3.0
TRIAL_ALARM_S = 20        # a trial taking this long is a hang
MIN_TRIALS = 40


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


# ----------------------------------------------------------------- the stores

def writer_store(root):
    """Numeric tensors of several dtypes and shapes, strings, empty and
    repeated (deduplicated) payloads, two workers, small frames."""
    rng = np.random.default_rng(1)
    with DumpWriter(root, workers=2, frame_bytes=4096, queue_bytes=8 << 20) as w:
        for r in range(3):
            run = w.begin_run(capture=False)
            w.write(rng.standard_normal((8, 33)).astype(np.float32), "dense", run=run)
            w.write(np.arange(300, dtype=np.int64) * r, "ids", run=run)
            w.write(np.array([b"alpha", b"", "b\u00e9ta".encode(), bytes(range(256))], dtype=object),
                    "words", run=run)
            w.write(np.zeros((0, 3), np.float16), "empty", run=run)
            w.write(np.array(r == 1), "flag", run=run)
            w.write(np.full(700, 7, np.int32), "same", run=run)           # deduplicated across runs
            for i in range(6):
                w.write(rng.integers(0, 255, 500, dtype=np.uint8), "bytes%d" % i, run=run)
            w.end_run(run)
    return root


def drop_close_event(root):
    (meta,) = [os.path.join(root, n) for n in os.listdir(root) if n.endswith("-meta.tfds")]
    offsets = [o for o, _ in frame_spans(read(meta))]
    with open(meta, "r+b") as f:
        f.truncate(offsets[-1])
    return root


def read(path):
    with open(path, "rb") as f:
        return f.read()


def frame_spans(buf):
    """(start, end) of each complete frame of a shard file's bytes."""
    pos, out = FILE_HDR, []
    while pos + HDR <= len(buf):
        try:
            h = _native.parse_frame_header(buf[pos:pos + HDR])
        except TfdumpError:
            break
        end = pos + HDR + h["table_stored_len"] + h["data_stored_len"]
        if end > len(buf):
            break
        out.append((pos, end))
        pos = end
    return out


def canonical(value):
    """A comparable form of a value; decodes variants fully (their parsers run)."""
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return ("obj", value.shape, tuple(value.reshape(-1).tolist()))
        return (value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, InconvertibleTensor):
        inner = value.value
        if isinstance(inner, list):
            inner = tuple(
                (e.type_name, bytes(e.metadata), tuple(canonical(t) for t in e.tensors))
                if hasattr(e, "type_name") else repr(e) for e in inner)
        return ("inconvertible", value.kind, value.tf_dtype, value.shape, repr(inner), value.raw)
    return ("other", repr(value))


def read_store(root, mode):
    """{(writer, run, seq): canonical value}, problems, torn tails; raises
    only what the reader raises."""
    reader = DumpReader(root, on_corruption=mode)
    got = {}
    for run in reader.runs:
        records = run.records
        values = run.values() if len(records) % 2 else [run.value(i) for i in range(len(records))]
        for rec, value in zip(records, values):
            key = (run.writer_id, run.run_id, rec.seq)
            assert key not in got, "record %r returned twice" % (key,)
            got[key] = (rec.watch_key, canonical(value))
    problems = reader.verify()
    return got, problems, reader.torn_tails, [r.status for r in reader.runs]


# ------------------------------------------------------------------ mutations

def mutate(rng, root):
    """Damage one shard of ``root`` at random; returns a description."""
    names = sorted(n for n in os.listdir(root) if n.endswith(".tfds"))
    name = rng.choice(names)
    path = os.path.join(root, name)
    buf = bytearray(read(path))
    spans = frame_spans(bytes(buf))
    op = rng.choice(["flip", "flip", "flip_frame_region", "truncate", "duplicate", "remove", "swap",
                     "garbage", "zero"])
    if op in ("duplicate", "remove", "swap") and len(spans) < 2:
        op = "truncate"
    if op == "flip" and buf:
        k = rng.randint(1, 8)
        at = [rng.randrange(len(buf)) for _ in range(k)]
        for a in at:
            buf[a] ^= rng.randint(1, 255)
        desc = "flip %d byte(s) at %s" % (k, at)
    elif op == "flip_frame_region" and spans:
        start, end = rng.choice(spans)
        region = rng.choice(["header", "body"])
        lo, hi = (start, start + HDR) if region == "header" else (start + HDR, end)
        if hi <= lo:
            lo, hi = start, end
        at = rng.randrange(lo, hi)
        buf[at] ^= 1 << rng.randrange(8)
        desc = "flip a bit of the frame at %d (%s) at %d" % (start, region, at)
    elif op == "duplicate":
        i = rng.randrange(len(spans))
        s, e = spans[i]
        j = rng.randrange(len(spans) + 1)
        insert_at = spans[j][0] if j < len(spans) else spans[-1][1]
        buf[insert_at:insert_at] = buf[s:e]
        desc = "frame %d duplicated before frame %d" % (i, j)
    elif op == "remove":
        i = rng.randrange(len(spans))
        s, e = spans[i]
        del buf[s:e]
        desc = "frame %d removed" % i
    elif op == "swap":
        i = rng.randrange(len(spans) - 1)
        (s1, e1), (s2, e2) = spans[i], spans[i + 1]
        buf[s1:e2] = buf[s2:e2] + buf[s1:e1]
        desc = "frames %d and %d swapped" % (i, i + 1)
    elif op == "garbage":
        n = rng.randint(1, 200)
        junk = bytes(rng.randrange(256) for _ in range(n))
        if rng.random() < 0.5 and spans:                   # something that starts like a frame
            junk = buf[spans[0][0]:spans[0][0] + 4] + junk
        buf += junk
        desc = "%d bytes appended" % len(junk)
    elif op == "zero" and buf:
        s = rng.randrange(len(buf))
        n = rng.randint(1, 4096)
        buf[s:s + n] = bytes(len(buf[s:s + n]))
        desc = "zeroed %d bytes at %d" % (n, s)
    else:
        n = rng.randrange(len(buf) + 1) if buf else 0
        del buf[n:]
        desc = "cut to %d bytes" % n
    changed = bytes(buf) != read(path)
    with open(path, "wb") as f:
        f.write(buf)
    return "%s: %s" % (name, desc), changed


# ---------------------------------------------------------------------- trials

def fuzz_store(pristine, work, rng, closed, budget_s, counts, capsys):
    reference, problems, torn, _ = read_store(pristine, "raise")
    assert not problems and not torn and reference
    deadline = time.monotonic() + budget_s
    trials = 0
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        while trials < MIN_TRIALS or time.monotonic() < deadline:
            trials += 1
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(pristine, work)
            desc, changed = mutate(rng, work)
            mode = rng.choice(["raise", "skip"])
            signal.alarm(TRIAL_ALARM_S)
            try:
                try:
                    got, problems, torn, _ = read_store(work, mode)
                except TfdumpError as exc:
                    counts["error: " + type(exc).__name__] += 1
                    continue
                if trials % 10 == 0:             # the command line too: exit 0/1, never a traceback
                    code = main(["verify", work, "--no-progress"])
                    out, err = capsys.readouterr()
                    assert code in (0, 1) and "Traceback" not in out + err, (desc, out, err)
                    assert (code == 0) == (not problems), (desc, out)
            except Hang:
                pytest.fail("trial %d hung (%s)" % (trials, desc))
            finally:
                signal.alarm(0)
            for key, item in got.items():      # never wrong data
                assert key in reference, "%s: a record that was never written: %r" % (desc, key)
                assert item == reference[key], "%s: wrong value for %r (%s)" % (desc, key, item[0])
            complete = len(got) == len(reference)
            if problems:
                counts["reported"] += 1
            elif torn:
                counts["torn tail only"] += 1
            elif complete:
                counts["intact" if changed else "unchanged"] += 1
            else:
                # fewer records and nothing said: only a store without a
                # trailer (a killed writer) can look like that
                assert not closed, "%s: %d of %d records lost silently" % (desc, len(reference) - len(got),
                                                                          len(reference))
                counts["silent loss (no trailer)"] += 1
    finally:
        signal.signal(signal.SIGALRM, old)
    return trials


def test_fuzz_stores(tmp_path, capsys):
    rng = random.Random(SEED)
    stores = {}
    stores["writer (closed)"] = writer_store(str(tmp_path / "closed"))
    killed = str(tmp_path / "killed")
    shutil.copytree(stores["writer (closed)"], killed)
    stores["writer (killed)"] = drop_close_event(killed)
    for name in ("writer", "hook", "tfdbg_import"):
        dst = str(tmp_path / ("golden_" + name))
        shutil.copytree(os.path.join(GOLDEN, name), dst)
        stores["golden " + name] = dst
    summary = []
    total = collections.Counter()
    n_all = 0
    for label, root in stores.items():
        counts = collections.Counter()
        n = fuzz_store(root, str(tmp_path / "work"), rng, label == "writer (closed)", STORE_BUDGET_S,
                       counts, capsys)
        n_all += n
        total.update(counts)
        summary.append("  %-22s %5d trials: %s" % (label, n, ", ".join(
            "%s %d" % kv for kv in sorted(counts.items()))))
    with capsys.disabled():
        print("\nfuzz (seed %d): %d trials on %d stores; outcomes: %s" % (
            SEED, n_all, len(stores), ", ".join("%s %d" % kv for kv in sorted(total.items()))))
        print("\n".join(summary))
    assert n_all >= MIN_TRIALS * len(stores)


# ----------------------------------------------------------- parsers directly

def parser_inputs():
    """Real inputs of each parser, from the golden stores: (parser, bytes)."""
    out = []
    dctx = zstandard.ZstdDecompressor()
    for name in ("writer", "hook", "tfdbg_import"):
        root = os.path.join(GOLDEN, name)
        for shard in sorted(os.listdir(root)):
            buf = read(os.path.join(root, shard))
            out.append(("file_header", buf[:FILE_HDR]))
            for s, e in frame_spans(buf):
                h = _native.parse_frame_header(buf[s:s + HDR])
                out.append(("frame_header", buf[s:s + HDR]))
                table = buf[s + HDR:s + HDR + h["table_stored_len"]]
                if h["codec"] == _native.CODEC_ZSTD:
                    table = dctx.decompress(table)
                out.append(("table:%d" % h["n_entries"], table))
        reader = DumpReader(root)
        t = reader.index.tensors
        for g in range(len(t)):
            flags = int(t["flags"][g])
            stored = reader.decoder.stored(g)
            if flags & _native.FLAG_VARIANT and stored.payload:
                out.append(("variant:%d" % len(stored.blob_hashes), bytes(stored.payload)))
                for h in stored.blob_hashes:
                    out.append(("list_blob", bytes(reader.payloads.payload(int(reader.index.writer_of[g]), h))))
            elif flags & (_native.FLAG_STRING | _native.FLAG_RESOURCE) and stored.payload:
                out.append(("strings", bytes(stored.payload)))
    return out


def run_parser(kind, data):
    if kind == "file_header":
        return _native.parse_file_header(data)
    if kind == "frame_header":
        return _native.parse_frame_header(data)
    if kind.startswith("table:"):
        return _native.parse_table(data, int(kind.split(":")[1]))
    if kind.startswith("variant:"):
        return store_payloads.parse_variant_structure(data, int(kind.split(":")[1]))
    if kind == "list_blob":
        return store_payloads.parse_list_blob(data)
    if kind == "strings":
        return store_payloads.decode_strings(data)
    raise AssertionError(kind)


def test_fuzz_parsers():
    rng = random.Random(SEED + 1)
    inputs = parser_inputs()
    kinds = collections.Counter(k.split(":")[0] for k, _ in inputs)
    assert {"file_header", "frame_header", "table", "variant", "list_blob", "strings"} <= set(kinds)
    for kind, data in inputs:                      # the unmutated inputs parse
        if kind not in ("list_blob",):             # not every blob of a variant is a list blob
            run_parser(kind, data)
    outcomes = collections.Counter()
    deadline = time.monotonic() + PARSER_BUDGET_S
    trials = 0
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        while trials < 500 or time.monotonic() < deadline:
            trials += 1
            kind, data = rng.choice(inputs)
            buf = bytearray(data)
            op = rng.choice(["flip", "truncate", "extend", "splice"])
            if op == "flip" and buf:
                for _ in range(rng.randint(1, 4)):
                    buf[rng.randrange(len(buf))] ^= rng.randint(1, 255)
            elif op == "truncate":
                del buf[rng.randrange(len(buf) + 1):]
            elif op == "extend":
                buf += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
            elif buf:
                a = rng.randrange(len(buf))
                buf[a:a + 8] = (0xFFFFFFFF).to_bytes(4, "little") * 2  # huge lengths and counts
            signal.alarm(TRIAL_ALARM_S)
            try:
                run_parser(kind, bytes(buf))
                outcomes["parsed"] += 1
            except TfdumpError as exc:
                outcomes["error: " + type(exc).__name__] += 1
            except Hang:
                pytest.fail("parser %s hung on a mutated input" % kind)
            finally:
                signal.alarm(0)
    finally:
        signal.signal(signal.SIGALRM, old)
    print("\nparser fuzz (seed %d): %d trials over %d inputs (%s); outcomes: %s" % (
        SEED + 1, trials, len(inputs), dict(kinds), ", ".join("%s %d" % kv for kv in sorted(outcomes.items()))))
