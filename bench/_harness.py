"""Timing: cells of one workload measured in interleaved rounds, ratios taken within a round.

A cell is one implementation of one workload: `make()` builds its model, optimizer and jitted
step and returns `step()`, which runs one full train step and returns the loss (not synced).

Per workload: every cell is built and called once (the first-call time: trace, compile, one
step), then warmed up while its steps-per-measurement `n` is calibrated so one measurement
lasts about `target_s`. Then `rounds` rounds: each round measures every cell once (n steps,
then a block on the last loss; the step's outputs come from one XLA execution, so the last
loss is ready only when the whole step is), starting at a different cell each round so no cell
always follows the same neighbour. A cell's ratio to its reference (hand-written JAX, or its
own library's plain step) is the median over rounds of the two times from the same round, so
slow phases of a shared machine cancel out.
"""

import dataclasses
import gc
import statistics
import time
from collections.abc import Callable

import jax


class NotMeasured(Exception):
    """Raised by `make()` when a cell cannot run here; the reason goes into the table."""


@dataclasses.dataclass(frozen=True)
class Settings:
    rounds: int
    target_s: float  # one measurement (n steps) lasts about this long
    warmup_s: float
    min_steps: int  # at least this many steps per measurement
    repeats: int  # repeats of each structure operation
    skip_repeats: bool = False  # skip cells that only repeat another workload's cell as a reference
    skip_slow: bool = False  # skip cells marked `slow` (the peers' variants on workloads 5-6)


DEFAULT = Settings(rounds=60, target_s=0.04, warmup_s=0.3, min_steps=1, repeats=5)
QUICK = Settings(rounds=3, target_s=0.03, warmup_s=0.03, min_steps=1, repeats=2, skip_slow=True)
SMOKE = Settings(rounds=2, target_s=0.0, warmup_s=0.0, min_steps=2, repeats=1, skip_repeats=True)


@dataclasses.dataclass(frozen=True)
class Cell:
    workload: str
    impl: str
    make: Callable[[], Callable[[], jax.Array]]
    reference: str | None = None  # impl in the same workload whose same-round time divides this one's
    peer: bool = True  # counts for "fastest implementation" (hand-written JAX and other libraries)
    repeat: bool = False  # the same step as a cell of an earlier workload, here only as a reference
    slow: bool = False  # left out of --quick (a peer library's variant on workloads 5-6)


_SHARED: dict = {}


def shared(key, build: Callable):
    """`build()` once per `key`: runners keep one jitted function per model kind and loss, so a
    workload that repeats another's step as its reference reuses that compilation."""
    if key not in _SHARED:
        _SHARED[key] = build()
    return _SHARED[key]


def _block(value):
    return jax.block_until_ready(value)


def _calibrate(step, settings: Settings) -> tuple[int, object]:
    """Runs 1, 2, 4, ... steps until a batch lasts `warmup_s`; returns steps per measurement."""
    k, loss, per_step = 1, None, 0.0
    while True:
        start = time.perf_counter()
        for _ in range(k):
            loss = step()
        _block(loss)
        elapsed = time.perf_counter() - start
        per_step = elapsed / k
        if elapsed >= settings.warmup_s:
            break
        k *= 2
    n = max(settings.min_steps, round(settings.target_s / per_step) if per_step > 0 else settings.min_steps)
    return n, loss


def run_workload(cells: list[Cell], settings: Settings, log: Callable[[str], None], fastest: bool) -> list[dict]:
    """Measures the cells of one workload; returns one result dict per cell (also the unmeasured).

    With `fastest`, each cell also gets `vs_fastest`: the median over rounds of its time over the
    fastest peer cell's time in the same round.
    """
    results: dict[str, dict] = {}
    steps: dict[str, Callable] = {}
    inner: dict[str, int] = {}
    last_loss: dict[str, object] = {}
    for cell in cells:
        if (cell.repeat and settings.skip_repeats) or (cell.slow and settings.skip_slow):
            continue
        row = {"workload": cell.workload, "impl": cell.impl, "reference": cell.reference, "peer": cell.peer}
        results[cell.impl] = row
        try:
            step = cell.make()
        except NotMeasured as reason:
            row["not_measured"] = str(reason)
            log(f"  {cell.impl}: not measured: {reason}")
            continue
        row["flops"] = getattr(step, "flops", None)
        gc.collect()
        start = time.perf_counter()
        loss = step()
        row["loss_first"] = float(loss)
        row["first_call_s"] = time.perf_counter() - start
        inner[cell.impl], last_loss[cell.impl] = _calibrate(step, settings)
        steps[cell.impl] = step
        log(f"  {cell.impl}: first call {row['first_call_s']:.2f} s, {inner[cell.impl]} steps per measurement")

    order = list(steps)
    times: dict[str, list[float]] = {name: [] for name in order}
    for r in range(settings.rounds):
        for name in order[r % len(order) :] + order[: r % len(order)] if order else []:
            step, n = steps[name], inner[name]
            start = time.perf_counter()
            for _ in range(n):
                loss = step()
            _block(loss)
            times[name].append((time.perf_counter() - start) / n)
            last_loss[name] = loss

    peers = [name for name in order if results[name]["peer"]] if fastest else []
    for name in order:
        row = results[name]
        row["steps_per_measurement"] = inner[name]
        row["round_s"] = times[name]
        row["median_s"] = statistics.median(times[name]) if times[name] else None
        if row["flops"] and row["median_s"]:
            row["tflops"] = row["flops"] / row["median_s"] / 1e12
        row["loss_last"] = float(last_loss[name])
        row["loss_decreased"] = row["loss_last"] < row["loss_first"]
        ref = row["reference"]
        if ref in times and times[name]:
            row["ratio"] = statistics.median(t / u for t, u in zip(times[name], times[ref]))
        if peers and times[name]:
            best = [min(times[p][r] for p in peers) for r in range(len(times[name]))]
            row["vs_fastest"] = statistics.median(t / b for t, b in zip(times[name], best))
    return list(results.values())


def time_operations(workload: str, ops: list[tuple[str, Callable]], settings: Settings, log) -> list[dict]:
    """Structure operations: the first call and the median of `repeats` more, each run to completion."""
    rows = []
    for name, op in ops:
        row = {"workload": workload, "impl": name, "kind": "operation"}
        try:
            start = time.perf_counter()
            _block(op())
            row["first_call_s"] = time.perf_counter() - start
        except NotMeasured as reason:
            row["not_measured"] = str(reason)
            rows.append(row)
            log(f"  {name}: not measured: {reason}")
            continue
        repeat = []
        for _ in range(settings.repeats):
            start = time.perf_counter()
            _block(op())
            repeat.append(time.perf_counter() - start)
        row["round_s"] = repeat
        row["median_s"] = statistics.median(repeat) if repeat else row["first_call_s"]
        log(f"  {name}: first {row['first_call_s']:.3f} s, median {row['median_s']:.3f} s")
        rows.append(row)
    return rows
