"""The tfdump-fast command line: every command, its help, exit status and
error messages. Runs in-process through cli.main (one test runs the module
as a program)."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tfdump_fast import DumpReader, DumpWriter
from tfdump_fast.cli import build_parser, main

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "data", "golden_v1")
from conftest import PKG_PARENT as SRC  # noqa: E402  (the package under test)
COMMANDS = ["ls", "show", "find", "trace", "history", "diff", "plot", "convert", "import", "stats", "verify"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.fixture
def store(session_root):
    with DumpWriter(session_root) as w:
        run1 = w.begin_run(capture=False, metadata={"fetches": "['loss']", "global_step": 7})
        w.write(np.arange(12, dtype=np.float32).reshape(3, 4), "dense/MatMul", run=run1)
        for i in range(3):
            w.write(np.array(i, dtype=np.int32), "while/add", run=run1)
        w.write(np.array([1.0, np.nan, np.inf], dtype=np.float32), "loss/log", run=run1)
        w.write(np.array([b"a", b"bc"], dtype=object), "words", run=run1)
        w.end_run(run1)
        run2 = w.begin_run(capture=False)
        w.write(np.ones(4, dtype=np.float64), "ok", run=run2)
        w.end_run(run2, status="failed", error="ResourceExhaustedError: OOM\nmore lines")
    return session_root


def test_help_of_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert all(c in out for c in COMMANDS) and "Exit status" in out
    for command in COMMANDS:
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: tfdump-fast " + command) and len(out.splitlines()) > 4


def test_usage_errors_exit_2(capsys):
    for argv in ([], ["frobnicate"], ["ls"], ["show"], ["convert", "x"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        assert "usage:" in capsys.readouterr().err


def test_ls(store, capsys):
    code, out, _ = run(capsys, "ls", store)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["#", "run", "status", "tensors", "dropped", "payload", "step", "started"]
    assert " complete " in lines[1] and " 6 " in lines[1] and " 7 " in lines[1]
    assert " failed " in lines[2]
    assert "2 run(s) from 1 writer(s)" in out
    assert "failed: ResourceExhaustedError: OOM" in out and "more lines" not in out


def test_show_watch_keys_and_tensors(store, capsys):
    code, out, _ = run(capsys, "show", store, "0")
    assert code == 0 and "6 tensors, 4 watch keys" in out
    assert "while/add:0:DebugIdentity" in out and "fetches: ['loss']" in out
    code, out, _ = run(capsys, "show", store, "0", "dense/MatMul")
    assert code == 0 and "float32, shape [3,4]" in out and "min=0 max=11" in out and "[ 8.,  9., 10., 11.]" in out
    code, out, _ = run(capsys, "show", store, "0", "while/add:0", "--all")
    assert out.count("while/add:0:DebugIdentity  (execution") == 3
    code, out, _ = run(capsys, "show", store, "0", "while/add", "--index", "-1")
    assert "execution 3 of 3" in out and "(3 executions" in out
    code, out, _ = run(capsys, "show", store, "0", "loss/log")
    assert "nan=1 inf=1" in out
    code, out, _ = run(capsys, "show", store, "0", "words")
    assert "b'bc'" in out
    # a lone tensor name means that tensor of the last run
    code, out, _ = run(capsys, "show", store, "ok")
    assert code == 0 and "ok:0:DebugIdentity" in out
    code, _, err = run(capsys, "show", store, "0", "while/add", "--index", "9")
    assert code == 2 and "out of range: while/add ran 3 time(s)" in err
    code, _, err = run(capsys, "show", store, "0", "dense/MatMu")
    assert code == 2 and "did you mean dense/MatMul" in err


def test_find_inf_nan(store, capsys):
    code, out, _ = run(capsys, "find", store, "--inf-nan")
    assert code == 1 and "loss/log:0:DebugIdentity" in out and "float32" in out
    code, out, _ = run(capsys, "find", store, "--inf-nan", "--exclude", "^loss/")
    assert code == 0 and "no tensor with inf or nan in 2 run(s)" in out
    code, out, _ = run(capsys, "find", store, "1", "--inf-nan")
    assert code == 0
    # --inf-nan is the default (issue 13): `find ROOT` searches for inf/nan
    code, out, err = run(capsys, "find", store)
    assert code == 1 and "loss/log:0:DebugIdentity" in out and err == ""


def test_convert_and_import(store, tmp_path, capsys):
    dest = tmp_path / "tfdbg"
    code, out, err = run(capsys, "convert", store, dest, "--no-progress")
    assert code == 0 and len(out.splitlines()) == 2 and "DebugDumpDir" in err
    assert all(os.path.isdir(line) for line in out.splitlines())
    code, out, _ = run(capsys, "convert", store, tmp_path / "one", "--run", "0", "--no-progress")
    assert code == 0 and len(out.splitlines()) == 1
    code, _, err = run(capsys, "convert", store, dest, "--no-progress")
    assert code == 2 and "already exists" in err
    code, out, _ = run(capsys, "import", dest, tmp_path / "back", "--no-progress")
    assert code == 0 and "imported 2 run(s)" in out
    back = DumpReader(str(tmp_path / "back"))
    assert [len(r) for r in back.runs] == [6, 1]
    code, _, err = run(capsys, "import", tmp_path / "nothing", tmp_path / "x", "--no-progress")
    assert code == 2 and "not a directory" in err


def test_stats(store, capsys):
    code, out, _ = run(capsys, "stats", store, "--top", "3")
    assert code == 0
    for text in ("codecs: zstd", "tensor payloads:", "dedup", "bytes per node (top 3)", "bytes per debug op",
                 "largest tensors (top 3)", "dense/MatMul:0:DebugIdentity", "runs: 2, tensors: 7, dropped: 0"):
        assert text in out, text


def test_stats_shows_op_types_when_graphs_are_stored(capsys):
    code, out, _ = run(capsys, "stats", os.path.join(GOLDEN, "tfdbg_import"), "--top", "5")
    assert code == 0 and "bytes per op type" in out and "Const" in out


def test_verify(store, capsys):
    code, out, _ = run(capsys, "verify", store, "--no-progress")
    assert code == 0 and out.startswith("OK: ") and "7 tensor(s) in 2 run(s)" in out


def test_errors_are_one_line_without_traceback(tmp_path, capsys):
    code, out, err = run(capsys, "ls", tmp_path / "missing")
    assert code == 2 and err == "tfdump-fast: error: session root %s does not exist\n" % (tmp_path / "missing")
    code, _, err = run(capsys, "stats", os.path.join(GOLDEN, "tfdbg"))
    assert code == 2 and "tfdump-fast import" in err


def test_module_runs_as_a_program(tmp_path):
    root = str(tmp_path / "g")
    shutil.copytree(os.path.join(GOLDEN, "writer"), root)
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "tfdump_fast.cli", "ls", root], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0 and "run_" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "tfdump_fast.cli", "ls", str(tmp_path / "nope")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("tfdump-fast: error:")
    script = shutil.which("tfdump-fast")
    if script:  # installed with pip: the console script is the same entry point
        proc = subprocess.run([script, "verify", root, "--no-progress"], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr


def test_parser_is_complete():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS)
