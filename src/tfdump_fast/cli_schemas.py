"""JSON Schemas (draft 2020-12) of what ``tfdump-fast <command> --json`` prints.

One schema per command, in :data:`SCHEMAS`; docs/CLI.md describes them in
prose and tests/test_analysis.py validates every command's output against
them (with the ``jsonschema`` package). Non-finite floats are printed as the
strings ``"nan"``, ``"inf"`` and ``"-inf"`` (JSON has no such numbers).
"""

from __future__ import annotations

__all__ = ["SCHEMAS"]

_INT = {"type": "integer"}
_STR = {"type": "string"}
_NUM = {"type": ["number", "string"]}   # a float, or "nan" / "inf" / "-inf"
_OPT_INT = {"type": ["integer", "null"]}
_OPT_STR = {"type": ["string", "null"]}
_SHAPE = {"type": "array", "items": _INT}


def _obj(required: dict, optional: dict = None) -> dict:
    props = dict(required)
    props.update(optional or {})
    return {"type": "object", "properties": props, "required": sorted(required)}


_STATS = {"type": ["object", "null"], "properties": {
    "size": _INT, "nan": _INT, "inf": _INT, "zeros": _INT,
    "min": {"type": ["number", "null"]}, "max": {"type": ["number", "null"]},
    "mean": {"type": ["number", "null"]}, "std": {"type": ["number", "null"]}},
    "required": ["size", "nan", "inf", "zeros", "min", "max", "mean", "std"]}

_RUN = _obj({"index": _OPT_INT, "name": _STR, "writer_id": _STR, "run_id": _INT, "status": {
    "enum": ["complete", "failed", "truncated"]}, "error": _OPT_STR, "tensors": _INT, "dropped": _INT,
    "missing": _INT, "payload_bytes": _INT, "global_step": _OPT_INT, "begin_us": _OPT_INT, "end_us": _OPT_INT})

_NONFINITE = _obj({"count": _INT, "first": {"type": "array", "items": _obj({"index": _SHAPE, "value": _NUM})}})

_SUMMARY = _obj({"index": _INT, "watch_key": _STR, "tensor": _STR, "device": _STR, "dtype": _STR,
                 "shape": _SHAPE, "nbytes": _INT, "t_ms": {"type": ["number", "null"]}, "stats": _STATS,
                 "nonfinite": _NONFINITE})

_INPUT = _obj({"tensor": _STR, "op": _OPT_STR, "feed": _OPT_STR, "dumped": {"type": "boolean"},
               "bad": {"type": ["boolean", "null"]}, "stats": _STATS}, {"via": _STR})

#: where the user's code created an op (None: not recorded)
_SITE = {"oneOf": [{"type": "null"}, _obj({"file": _STR, "line": _INT, "function": _STR})]}
_STEP = _obj({"tensor": _STR, "op": _OPT_STR, "device": _STR, "record": _SUMMARY, "fed_as": _OPT_STR,
              "created_at": _SITE, "inputs": {"type": "array", "items": _INPUT}})

SCHEMAS = {
    "ls": _obj({"root": _STR, "writers": _INT, "bytes_on_disk": _INT, "tasks": {"type": "array", "items": _STR}, "runs": {"type": "array", "items": _RUN}},
               # flight recorder triggers: the flight_recorder_trigger events (docs/FORMAT.md)
               {"triggers": {"type": "array", "items": {"type": "object"}}}),
    "show_run": _obj({"run": _RUN, "fetches": _OPT_STR, "feed_keys": _OPT_STR, "watch_keys": {
        "type": "array", "items": _obj({
            "watch_key": _STR, "tensor": _STR, "node": _STR, "output_slot": _INT, "debug_op": _STR,
            "device": _STR, "op": _OPT_STR, "feed": _OPT_STR, "executions": _INT, "dtype": _STR,
            "shape": _SHAPE, "nbytes": _INT, "t_ms": {"type": "number"}})}}),
    "show_tensor": _obj({"run": _STR, "global_step": _OPT_INT, "tensor": _STR, "slice": _OPT_STR,
                         "executions": _INT, "shown": {"type": "array", "items": {"allOf": [_SUMMARY, _obj(
                             {"execution": _INT, "value": {}}, {"slice_shape": _SHAPE})]}}},
                        {"created_at": _SITE}),
    "find": _obj({"searched_runs": _INT, "found": {"type": "boolean"}, "runs": {"type": "array", "items": _obj({
        "run": _STR, "global_step": _OPT_INT, "hits": {"type": "array", "items": _obj({
            "index": _INT, "t_ms": {"type": "number"}, "watch_key": _STR, "device": _STR, "dtype": _STR,
            "shape": _SHAPE, "nan": _INT, "inf": _INT})}})}}),
    "trace": _obj({"searched_runs": _INT, "trace": {"oneOf": [{"type": "null"}, _obj({
        "run": _STR, "global_step": _OPT_INT, "first_bad": _SUMMARY, "path": {
            "type": "array", "minItems": 1, "items": _STEP}, "origin": _STEP, "graphs": {"type": "boolean"}})]}}),
    "history": _obj({"tensor": _STR, "rows": {"type": "array", "items": _obj({
        "run": _STR, "global_step": _OPT_INT, "executions": _INT, "dtype": _STR, "shape": _SHAPE,
        "stats": _STATS})}}),
    "diff": _obj({"run_a": _STR, "run_b": _STR, "unchanged": _INT,
                  "only_a": {"type": "array", "items": _STR}, "only_b": {"type": "array", "items": _STR},
                  "changed": {"type": "array", "items": _obj({
                      "watch_key": _STR, "device": _STR, "executions_a": _INT, "executions_b": _INT,
                      "changed_executions": _INT, "max_abs_diff": {"type": ["number", "string", "null"]},
                      "note": _OPT_STR})}}),
    "plot": _obj({"output": _STR, "run": _STR, "tensor": _STR, "history_runs": _INT}),
    "convert": _obj({"dest": _STR, "run_dirs": {"type": "array", "items": _STR}},
                    {"files": {"type": "array", "items": _STR}}),
    "import": _obj({"root": _STR, "runs": {"type": "array", "items": _STR}}),
    "stats": _obj({"root": _STR, "storage": {"type": "object"}, "payload_bytes": _INT, "runs": _INT,
                   "tensors": _INT, "dropped": _INT, "dropped_bytes": _INT, "missing": _INT,
                   "by_node": {"type": "array", "items": _obj({"node": _STR, "bytes": _INT})},
                   "by_op_type": {"type": "array", "items": _obj({"op": _STR, "bytes": _INT})},
                   "by_debug_op": {"type": "array", "items": _obj({"debug_op": _STR, "bytes": _INT})},
                   "largest": {"type": "array", "items": _obj({"bytes": _INT, "run": _STR, "watch_key": _STR,
                                                               "dtype": _STR, "shape": _SHAPE})}}),
    "verify": _obj({"ok": {"type": "boolean"}, "problems": {"type": "array", "items": _STR},
                    "torn_tails": {"type": "object"}, "shards": _INT, "frames": _INT, "tensors": _INT,
                    "runs": _INT}),
}
