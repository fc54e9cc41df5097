"""The interleaved scheduler shared by the timing children, and what it
reports per configuration: figures and ratios to the baseline."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Union

from benchmarks.compare.config import CONFIGS
from benchmarks.compare.measure import RssSampler, quantiles, scaled


def participates(round_index: int, rounds: int, blocks: int) -> bool:
    """Spreads `blocks` participations evenly over `rounds` rounds."""
    if blocks >= rounds:
        return True
    return (round_index * blocks) // rounds != ((round_index + 1) * blocks) // rounds


def interleave(units: List[Any], quotas: Dict[str, int], block: Union[int, Dict[str, int]], sustained: bool,
               on_error: Callable[[Any, BaseException], None], sampler: Optional[RssSampler] = None,
               name_of: Callable[[Any], str] = lambda u: u.config.name) -> Dict[str, Dict[str, Any]]:
    """Runs `quotas[name]` measured steps of every unit in round-robin blocks.

    Each unit has step(), after_step(sustained), end_block(sustained). Returns
    per-unit raw figures: step times, per-block effective step times,
    bytes/files written, drain times.
    """
    rec = {name_of(u): {"step_s": [], "block_eff_s": [], "drain_s": [], "bytes": 0, "files": 0,
                        "steps": 0, "blocks": 0} for u in units}
    alive = list(units)
    blocks = block if isinstance(block, dict) else {name_of(u): block for u in units}
    nblocks = {name_of(u): max(1, math.ceil(quotas[name_of(u)] / blocks[name_of(u)])) for u in units}
    rounds = max(nblocks.values()) if nblocks else 0
    for r in range(rounds):
        k = r % max(1, len(alive))
        order = alive[k:] + alive[:k]  # rotate the starting configuration
        for u in order:
            name = name_of(u)
            if u not in alive or not participates(r, rounds, nblocks[name]):
                continue
            n = min(blocks[name], quotas[name] - rec[name]["steps"])
            if n <= 0:
                continue
            try:
                if sampler is not None:
                    sampler.active = name
                timed = 0.0
                times = []
                for _ in range(n):
                    dt = u.step()
                    times.append(dt)
                    extra, written = u.after_step(sustained)
                    timed += extra
                    rec[name]["bytes"] += written.get("bytes", 0)
                    rec[name]["files"] += written.get("files", 0)
                extra, drain, written = u.end_block(sustained)
                timed += extra
                rec[name]["bytes"] += written.get("bytes", 0)
                rec[name]["files"] += written.get("files", 0)
                rec[name]["step_s"].extend(times)
                rec[name]["block_eff_s"].append((sum(times) + timed) / n)
                rec[name]["drain_s"].append(drain)
                rec[name]["steps"] += n
                rec[name]["blocks"] += 1
                if sampler is not None:  # steps shorter than the sampling interval
                    sampler.sample(name)
            except Exception as exc:  # noqa: BLE001 - record, drop the unit, go on
                alive.remove(u)
                on_error(u, exc)
            finally:
                if sampler is not None:
                    sampler.active = None
    return rec


def summarize(raw: Dict[str, Any], sustained: bool) -> Dict[str, Any]:
    steps = raw["steps"]
    out = {
        "status": "ok",
        "steps": steps,
        "blocks": raw["blocks"],
        "step_ms": scaled(quantiles(raw["step_s"]), 1e3),
        "effective_step_ms": scaled(quantiles(raw["block_eff_s"]), 1e3),
        "bytes_total": raw["bytes"],
        "files_total": raw["files"],
        "bytes_per_step": raw["bytes"] / steps if steps else None,
        "files_per_step": raw["files"] / steps if steps else None,
    }
    drains = [d for d in raw["drain_s"] if d]
    if drains:
        out["drain_ms"] = scaled(quantiles(drains), 1e3)
    # The headline time: latency in burst, throughput incl. sync in sustained.
    out["time_ms"] = (out["effective_step_ms"] if sustained else out["step_ms"])
    return out


def add_ratios(figs: Dict[str, Dict[str, Any]]) -> None:
    for name, f in figs.items():
        base = figs.get(CONFIGS[name].baseline) if name in CONFIGS else None
        if f.get("status") != "ok" or not base or base.get("status") != "ok":
            continue
        if f.get("time_ms") and base.get("time_ms") and base["time_ms"]["median"] > 0:
            f["ratio"] = f["time_ms"]["median"] / base["time_ms"]["median"]
            f["ratio_q1"] = f["time_ms"]["q1"] / base["time_ms"]["median"]
            f["ratio_q3"] = f["time_ms"]["q3"] / base["time_ms"]["median"]

