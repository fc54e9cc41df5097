"""Graph-aware questions about a dump, without TensorFlow.

* :func:`resolve_tensor`: a tensor by exact name, by the graph name of a fed
  input (``x`` for ``_arg_x_0_1``), by substring or by regular expression,
  with suggestions when nothing matches.
* :func:`trace`: from the first tensor holding inf or nan, upstream through
  its inputs to the origin op (the first op whose inputs are finite and
  whose outputs are not).
* :func:`history`: one tensor's statistics over runs (global steps).
* :func:`diff`: which tensors changed between two runs, and by how much.

Each returns plain dicts and lists (what ``tfdump-fast ... --json`` prints).
"""

from __future__ import annotations

import difflib
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tfdump_fast.errors import TfdumpNotFoundError, TfdumpUsageError
from tfdump_fast.graph import split_tensor
from tfdump_fast.reader import has_inf_or_nan
from tfdump_fast.tensor_stats import max_abs_diff, nonfinite_elements, tensor_stats

__all__ = ["resolve_tensor", "trace", "history", "diff", "record_summary"]

_MAX_PASS_THROUGH = 8   # undumped nodes a trace looks through to reach dumped inputs
_VALUE_OP = "DebugIdentity"
#: what the command line's --exclude matches: node, node:slot and op type
EXCLUDE_BY = ("node", "tensor", "op")


# ---------------------------------------------------------------- lookup

def resolve_tensor(run, text: str, *, regex: bool = False, device: Optional[str] = None):
    """The records of the tensor ``text`` names in ``run``, and the name it resolved to.

    Tried in order: the exact name (``node``, ``node:slot``,
    ``node:slot:debug_op``); the graph name of a fed input (``x`` or ``x:0``
    stored as ``_arg_x_0_1``); then, if ``regex``, a regular expression
    searched in ``node:slot:debug_op`` names, else whole name scopes of
    them (``sigma_estimate`` for ``model/sigma_estimate/Mean:0``). A pattern
    matching one tensor selects it.

    Raises
    ------
    TfdumpNotFoundError
        Nothing matches (the message suggests close names).
    TfdumpUsageError
        Several tensors match (the message lists them), or a bad regex.
    """
    if not regex:
        found = _exact_or_fed(run, text, device)
        if found is not None:
            return found
    names = sorted({k.watch_key for k in run.watch_keys if device is None or k.device == device})
    if regex:
        try:
            pattern = re.compile(text)
        except re.error as exc:
            raise TfdumpUsageError("bad regular expression %r: %s" % (text, exc)) from None
        hits = [n for n in names if pattern.search(n)]
    else:
        hits = [n for n in names if _contains_scopes(n, text)]
    tensors = sorted({n.rsplit(":", 1)[0] for n in hits})
    if len(tensors) == 1:
        return run.select(tensors[0], device=device), tensors[0]
    if len(tensors) > 1:
        shown = ", ".join(tensors[:10]) + (", ..." if len(tensors) > 10 else "")
        raise TfdumpUsageError("%d tensors of run %s match %r: %s; name one exactly" % (
            len(tensors), run.name, text, shown))
    candidates = sorted({n.rsplit(":", 1)[0] for n in names} | {n.split(":", 1)[0] for n in names})
    close = difflib.get_close_matches(text, candidates, n=3, cutoff=0.5)
    raise TfdumpNotFoundError("run %s has no dumped tensor matching %r%s" % (
        run.name, text, (" (did you mean %s?)" % ", ".join(close)) if close else
        " (list the run's tensors with `tfdump-fast show ROOT RUN`)"))


def _exact_or_fed(run, text: str, device: Optional[str]):
    """(records, resolved name) of the exact tensor ``text``, or of the fed
    input it names by its graph name; None when neither was dumped."""
    try:
        return run.select(text, device=device), text
    except TfdumpNotFoundError:
        pass
    node, slot = split_tensor(text)
    for arg in run.graph().arg_nodes_of("%s:%d" % (node, slot)):
        try:
            return run.select(arg, 0, device=device), "%s (fed as %s)" % (text, arg)
        except TfdumpNotFoundError:
            continue
    return None


def _contains_scopes(watch_key: str, text: str) -> bool:
    """True when ``text``'s name scopes (``a/b``, optionally ``:slot``) are
    consecutive whole scopes of the watch key's node: ``sigma_estimate``
    finds ``model/sigma_estimate/Mean``; a typo (``dense/MatMu``) finds
    nothing and gets suggestions instead."""
    node, slot, _ = watch_key.rsplit(":", 2)
    want, want_slot = split_tensor(text) if re.search(r":\d+$", text) else (text, None)
    if want_slot is not None and want_slot != int(slot):
        return False
    have, parts = node.split("/"), want.split("/")
    n = len(parts)
    return any(have[i:i + n] == parts for i in range(len(have) - n + 1))


def record_summary(rec, run=None, *, nonfinite_limit: int = 10) -> dict:
    """What ``show`` and ``trace`` say about one dumped tensor."""
    run = run or rec.run
    value = rec.value
    count, where = nonfinite_elements(value, nonfinite_limit)
    return {
        "index": rec.index, "watch_key": rec.watch_key, "tensor": rec.tensor_name, "device": rec.device,
        "dtype": rec.dtype_name, "shape": list(rec.shape), "nbytes": rec.nbytes,
        "t_ms": (rec.wall_us - run.t0) / 1000.0 if run.t0 is not None else None,
        "stats": tensor_stats(value),
        "nonfinite": {"count": count, "first": [{"index": list(i), "value": v} for i, v in where]},
    }


# ---------------------------------------------------------------- trace

def _value_record(run, tensor: str, before: int):
    """The DebugIdentity dump of ``tensor`` last executed before position
    ``before`` (else its first), or None when it was not dumped."""
    node, slot = split_tensor(tensor)
    try:
        recs = run.select(node, slot, _VALUE_OP)
    except (TfdumpNotFoundError, TfdumpUsageError):
        return None
    earlier = [r for r in recs if r.index < before]
    return earlier[-1] if earlier else recs[0]


def _bad(rec) -> Optional[bool]:
    st = tensor_stats(rec.value)
    if st is None:
        return None
    return bool(st["nan"] or st["inf"])


def trace(run, *, start: Optional[str] = None, exclude: Optional[Sequence[str]] = None,
          include_scratch: bool = False) -> Optional[dict]:
    """Walk from a bad tensor upstream to the op where inf/nan first appear.

    Parameters
    ----------
    run : Run
    start : str, optional
        Tensor to start from (any name :func:`resolve_tensor` takes); its
        first execution holding inf or nan. Default: the run's first tensor
        holding inf or nan (:meth:`Run.find`).
    exclude, include_scratch
        As for :meth:`Run.find` (used when ``start`` is not given);
        ``exclude`` matches node, ``node:slot`` and op type (:data:`EXCLUDE_BY`).

    Returns
    -------
    dict or None
        None when the run holds no bad tensor. Else ``run``, ``first_bad``
        (the start's summary), ``path`` (one step per op from the start to
        the origin: ``tensor``, ``op``, ``device``, ``record`` summary,
        ``inputs`` -- each with ``tensor``, ``op``, ``fed_as`` / ``feed``,
        ``dumped``, ``bad``, ``stats``; ``created_at``: where the user's code
        created the op, ``file``, ``line``, ``function``, or None when the
        store did not record it), ``origin`` (the last step) and
        ``graphs`` (False when the run stored none: the path then stops at
        the start).
    """
    if start is not None:
        recs, _ = resolve_tensor(run, start)
        bad = [r for r in recs if r.debug_op == _VALUE_OP and _bad(r)]
        if not bad:
            raise TfdumpNotFoundError("%s holds no inf or nan in run %s" % (start, run.name))
        rec = bad[0]
    else:
        hits = run.find(has_inf_or_nan, first_n=1, exclude=exclude, include_scratch=include_scratch,
                        exclude_by=EXCLUDE_BY)
        if not hits:
            return None
        rec = hits[0]
    graph = run.graph()
    first = record_summary(rec, run)
    path: List[dict] = []
    seen = set()
    while rec is not None:
        node = rec.node_name
        seen.add(node)
        info = graph.nodes.get(node)
        step = {"tensor": rec.tensor_name, "op": info.op if info else None,
                "device": info.device if info else rec.device, "record": record_summary(rec, run),
                "fed_as": graph.feed_of(node), "created_at": created_at(run, node, graph.feed_of(node)),
                "inputs": []}
        path.append(step)
        nxt = None
        if info is not None:
            for inp in graph.data_inputs(node):
                entry, upstream = _input_entry(run, graph, inp, rec.index)
                step["inputs"].append(entry)
                if nxt is None and upstream is not None and upstream.node_name not in seen:
                    nxt = upstream
        rec = nxt
    return {"run": run.name, "global_step": run.global_step, "first_bad": first, "path": path,
            "origin": path[-1], "graphs": bool(len(graph))}


def created_at(run, node: str, fed_as: Optional[str] = None) -> Optional[dict]:
    """``{"file", "line", "function"}`` of the user code that created
    ``node`` (for a fed ``_arg_`` node: the fed tensor's op), else None."""
    site = run.creation_site(node)
    if site is None and fed_as:
        site = run.creation_site(fed_as)
    if site is None:
        return None
    return {"file": site[0], "line": site[1], "function": site[2]}


def _input_entry(run, graph, tensor: str, before: int) -> Tuple[dict, Optional[object]]:
    """One input of a traced op: its statistics, and the bad record to walk
    to (looking through up to a few undumped nodes, e.g. unwatched Identity)."""
    src = split_tensor(tensor)[0]
    entry = {"tensor": tensor, "op": graph.op_type(src), "feed": graph.feed_of(src),
             "dumped": False, "bad": None, "stats": None}
    rec = _value_record(run, tensor, before)
    if rec is not None:
        entry.update(dumped=True, stats=tensor_stats(rec.value), bad=_bad(rec))
        return entry, rec if entry["bad"] else None
    # not dumped: the first dumped bad tensor upstream of it, if any
    frontier, visited = [tensor], set()
    for _ in range(_MAX_PASS_THROUGH):
        nxt = []
        for t in frontier:
            n = split_tensor(t)[0]
            if n in visited or n not in graph:
                continue
            visited.add(n)
            for up in graph.data_inputs(n):
                r = _value_record(run, up, before)
                if r is None:
                    nxt.append(up)
                elif _bad(r):
                    entry["bad"] = True
                    entry["via"] = up
                    return entry, r
        frontier = nxt
        if not frontier:
            break
    return entry, None


# ---------------------------------------------------------------- across runs

def history(runs, tensor: str, *, execution: int = 0, device: Optional[str] = None) -> dict:
    """Statistics of one tensor in each run that dumped it.

    Parameters
    ----------
    runs : list of Run
    tensor : str
        ``node``, ``node:slot`` (any name :func:`resolve_tensor` takes exactly).
    execution : int
        Which execution in each run (negative counts from the end).

    Returns
    -------
    dict
        ``tensor`` and ``rows``: per run ``run``, ``global_step``,
        ``executions``, ``dtype``, ``shape``, ``stats``.
    """
    rows = []
    cache: Dict[tuple, Optional[dict]] = {}
    for run in runs:
        found = _exact_or_fed(run, tensor, device)
        if found is None:
            continue
        recs = found[0]
        recs = [r for r in recs if r.debug_op == _VALUE_OP] or recs
        if not -len(recs) <= execution < len(recs):
            continue
        rec = recs[execution]
        key = _content_key(rec)
        if key not in cache:
            cache[key] = tensor_stats(rec.value)
        rows.append({"run": run.name, "global_step": run.global_step, "executions": len(recs),
                     "dtype": rec.dtype_name, "shape": list(rec.shape), "stats": cache[key]})
    if not rows:
        raise TfdumpNotFoundError("no run dumped %s" % tensor)
    return {"tensor": tensor, "rows": rows}


def _content_key(rec) -> tuple:
    """Equal for two records with the same stored payload (content hash)."""
    return (rec.dtype, rec.shape, rec.flags, rec.nbytes, rec.content_hash)


def diff(run_a, run_b, *, atol: float = 0.0) -> dict:
    """Which tensors differ between two runs.

    Executions of each watch key are compared pairwise (payload hashes
    first, so equal tensors are not decoded). A tensor changed when a
    payload, dtype, shape or the number of executions differs and the
    largest absolute difference exceeds ``atol``.

    Returns
    -------
    dict
        ``run_a``, ``run_b``, ``changed`` (sorted by ``max_abs_diff``, largest
        first: ``watch_key``, ``device``, ``executions_a/b``, ``changed_executions``,
        ``max_abs_diff`` (None when not comparable: dtype or shape differ,
        strings), ``note``), ``unchanged`` (count), ``only_a``, ``only_b``.
    """
    def by_key(run):
        out: Dict[tuple, list] = {}
        for rec in run.records:
            k = rec.key
            out.setdefault((k.node, k.output_slot, k.debug_op, k.device), []).append(rec)
        return out

    a, b = by_key(run_a), by_key(run_b)
    changed, unchanged = [], 0
    for key in [k for k in a if k in b]:
        ra, rb = a[key], b[key]
        worst: Optional[float] = 0.0
        n_changed = 0
        note = None
        for x, y in zip(ra, rb):
            if _content_key(x) == _content_key(y):
                continue
            n_changed += 1
            d = max_abs_diff(x.value, y.value)
            if d is None:
                worst = None
                note = "%s%s -> %s%s" % (x.dtype_name, list(x.shape), y.dtype_name, list(y.shape)) \
                    if (x.dtype, x.shape) != (y.dtype, y.shape) else "not numeric"
            elif worst is not None:
                worst = max(worst, d)
        if len(ra) != len(rb):
            note = "executions %d -> %d" % (len(ra), len(rb))
        if (n_changed and (worst is None or worst > atol)) or len(ra) != len(rb):
            changed.append({"watch_key": "%s:%d:%s" % key[:3], "device": key[3], "executions_a": len(ra),
                            "executions_b": len(rb), "changed_executions": n_changed,
                            "max_abs_diff": worst, "note": note})
        else:
            unchanged += 1
    changed.sort(key=lambda c: -(np.inf if c["max_abs_diff"] is None else c["max_abs_diff"]))
    def only(x, y):
        return sorted("%s:%d:%s" % k[:3] for k in x if k not in y)

    return {"run_a": run_a.name, "run_b": run_b.name, "changed": changed, "unchanged": unchanged,
            "only_a": only(a, b), "only_b": only(b, a)}
