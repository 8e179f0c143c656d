"""Command line, the printed table, the JSON file and the checks (loss decreased, same start)."""

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

from . import _harness, _suite, _workloads

TARGETS = {  # luxjax's targets from the benchmark issue
    "vs_fastest": 1.05,  # workloads 1-4, luxjax cells against the fastest peer in the same round
    "frozen": 0.35,  # frozen step / the same library's full step
    "debug": 1.4,  # debug_mode step / the plain step
    "structure_s": 0.5,  # each structure operation on the big Chain
    "debug_mode_vs_layer_map": 3.0,  # debug_mode on the big Chain / layer_map (identity) on it
    "deep_step": 1.05,  # Stacked's step / the unrolled Chain's, same blocks and values
    "deep_first_call": 0.2,  # Stacked's first call (trace + compile + one step) / the unrolled Chain's
    "remat_memory": 0.5,  # compiled temp memory of the gradient: Stacked(Remat) / Stacked, long sequences
}
SAME_START_RTOL = 1e-3
BF16_START_RTOL = 2e-2  # bfloat16 keeps 8 bits of mantissa: its first loss is the float32 one to ~1%


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in ("jax", "jaxlib", "flax", "equinox", "optax", "luxjax"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:  # e.g. luxjax run from a source tree
            versions[name] = getattr(sys.modules.get(name), "__version__", None)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "malloc_env": {
            k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
        },
    }


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def _tflops(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


def table(rows: list[dict], n_layers: int) -> str:
    head = (
        "| workload | implementation | median step | TFLOP/s | ratio | to | vs fastest peer | first call "
        "| loss first → last |"
    )
    lines = [head, "|" + "---|" * 9]
    title = None
    for row in rows:
        name = _suite.TITLES[row["workload"]].format(n=n_layers)
        shown = name if name != title else ""
        title = name
        if "not_measured" in row:
            lines.append(f"| {shown} | {row['impl']} | not measured: {row['not_measured']} | | | | | | |")
        elif row.get("kind") == "memory":
            stacked = _memory(rows, _suite.LUX_STACKED)
            ratio = row["temp_bytes"] / stacked if row["temp_bytes"] and stacked else None
            lines.append(
                f"| {shown} | {row['impl']} (gradient, {row['config']}) | temp memory "
                f"{row['temp_bytes'] / 2**20:.1f} MiB | | {_ratio(ratio)} | {_suite.LUX_STACKED} | | | |"
            )
        elif row.get("kind") == "operation":
            ok = "✓" if row["median_s"] < TARGETS["structure_s"] else "✗"
            target = f"target < {TARGETS['structure_s']} s {ok}"
            ratio = _debug_mode_ratio(rows) if row["impl"] == "debug_mode" else None
            if ratio is not None:
                limit = TARGETS["debug_mode_vs_layer_map"]
                target += f"; {ratio:.1f}× layer_map, target ≤ {limit:g}× {'✓' if ratio <= limit else '✗'}"
            lines.append(
                f"| {shown} | {row['impl']} | {_time(row['median_s'])} | | | | | {_time(row['first_call_s'])} "
                f"| {target} |"
            )
        else:
            ref = row["reference"] if row["reference"] != row["impl"] else "itself"
            loss = f"{row['loss_first']:.4f} → {row['loss_last']:.4f}" + ("" if row["loss_decreased"] else " ✗")
            if not row.get("same_start", True):
                loss += " (start differs)"
            lines.append(
                f"| {shown} | {row['impl']} | {_time(row['median_s'])} | {_tflops(row.get('tflops'))} "
                f"| {_ratio(row.get('ratio'))} | {ref} "
                f"| {_ratio(row.get('vs_fastest'))} | {_time(row['first_call_s'])} | {loss} |"
            )
    return "\n".join(lines)


def _memory(rows: list[dict], impl: str) -> float | None:
    return next((r.get("temp_bytes") for r in rows if r.get("kind") == "memory" and r["impl"] == impl), None)


def _first_call_ratio(rows: list[dict], impl: str) -> float | None:
    """`impl`'s first call over the unrolled Chain's, on the deep workload."""
    first = {r["impl"]: r.get("first_call_s") for r in rows if r["workload"] == "deep" and "kind" not in r}
    value, unrolled = first.get(impl), first.get(_suite.LUX_UNROLLED)
    return value / unrolled if value and unrolled else None


def _debug_mode_ratio(rows: list[dict]) -> float | None:
    """`debug_mode`'s time on the big Chain over `layer_map`'s (identity), from the structure rows."""
    times = {row["impl"]: row.get("median_s") for row in rows if row.get("kind") == "operation"}
    debug, layer_map = times.get("debug_mode"), times.get("layer_map (identity)")
    return debug / layer_map if debug and layer_map else None


def _deep_targets(rows: list[dict], row: dict) -> list[dict]:
    checks = []
    if row.get("kind") == "memory" and row["impl"] == _suite.LUX_REMAT:
        stacked, remat = _memory(rows, _suite.LUX_STACKED), row.get("temp_bytes")
        checks.append(("remat_memory", remat / stacked if remat and stacked else None, "× Stacked's temp memory"))
    elif "kind" not in row and row["impl"] == _suite.LUX_STACKED:
        checks.append(("deep_step", row.get("ratio"), "× the unrolled Chain's step"))
        checks.append(("deep_first_call", _first_call_ratio(rows, row["impl"]), "× the unrolled Chain's first call"))
    return [
        {
            "workload": "deep",
            "impl": row["impl"],
            "value": value,
            "limit": TARGETS[name],
            "unit": unit,
            "met": value is not None and value <= TARGETS[name],
        }
        for name, value, unit in checks
    ]


def targets(rows: list[dict]) -> list[dict]:
    """luxjax's targets, each with the measured figure and whether it is met."""
    found = []
    for row in rows:
        if "not_measured" in row or (row["workload"] != "structure" and not row["impl"].startswith("luxjax")):
            continue
        if row["workload"] == "deep":
            found += _deep_targets(rows, row)
            continue
        if row["impl"] == _suite.LUX_BF16:  # its figure is the speed-up over the float32 step (ratio column)
            continue
        if row["workload"] in ("tiny", "medium", "cnn", "transformer"):
            limit, value, what = TARGETS["vs_fastest"], row.get("vs_fastest"), "× fastest peer"
        elif row["workload"] == "frozen" and "frozen" in row["impl"]:
            limit, value, what = TARGETS["frozen"], row.get("ratio"), "× own full step"
        elif row["workload"] == "debug" and "debug_mode" in row["impl"]:
            limit, value, what = TARGETS["debug"], row.get("ratio"), "× plain step"
        elif row["workload"] == "structure" and row["impl"] == "debug_mode":
            limit, value, what = TARGETS["debug_mode_vs_layer_map"], _debug_mode_ratio(rows), "× layer_map"
        elif row["workload"] == "structure":
            limit, value, what = TARGETS["structure_s"], row.get("median_s"), "s"
        else:
            continue
        found.append(
            {
                "workload": row["workload"],
                "impl": row["impl"],
                "value": value,
                "limit": limit,
                "unit": what,
                "met": value is not None and value <= limit,
            }
        )
    return found


def check(rows: list[dict]) -> list[str]:
    """Every measured implementation's loss went down and started where hand-written JAX started."""
    problems = []
    first = {}
    for row in rows:
        if row.get("impl") == _suite.JAX and "loss_first" in row:
            first[row["workload"]] = row["loss_first"]
    for name in ("frozen", "debug"):  # workload 2's model and batch, whose JAX cell may be skipped here
        first.setdefault(name, first.get("medium"))
    for row in rows:
        if "loss_first" not in row:
            continue
        if not row["loss_decreased"]:
            problems.append(
                f"{row['workload']} / {row['impl']}: loss did not decrease ({row['loss_first']} → {row['loss_last']})"
            )
        ref = first.get(row["workload"])
        rtol = BF16_START_RTOL if row["impl"] == _suite.LUX_BF16 else SAME_START_RTOL
        row["same_start"] = ref is None or abs(row["loss_first"] - ref) <= rtol * max(1.0, abs(ref))
        if not row["same_start"]:
            problems.append(
                f"{row['workload']} / {row['impl']}: first loss {row['loss_first']} != hand-written JAX's {ref}"
            )
    return problems


def _device() -> str:
    """The devices JAX runs on, e.g. `cpu` or `gpu: 1 x NVIDIA H200`."""
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        return "cpu"
    return f"{device.platform}: {jax.device_count()} x {device.device_kind}"


def _prime() -> None:
    """Pays JAX's one-time start-up (backend, first trace and compile) before anything is timed,
    so it does not land in the first cell's first-call time."""
    import jax
    import jax.numpy as jnp
    import optax

    tx = optax.adam(1e-3)
    params = {"w": jnp.ones((4, 4))}
    loss = lambda p, x: jnp.mean(jnp.square(jnp.tanh(x @ p["w"])))  # noqa: E731
    grads = jax.jit(jax.grad(loss))(params, jnp.ones((2, 4)))
    jax.block_until_ready(jax.jit(tx.update)(grads, tx.init(params), params))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds: under a minute")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and two rounds: the test suite's check")
    parser.add_argument(
        "--sizes",
        choices=tuple(_workloads.SIZES),
        default=None,
        help="workload shapes: cpu (the default) or gpu (MLP batch 1024 width 2048, CNN batch 1024, "
        "transformer batch 32 x 512 tokens, d_model 768, 12 heads, 6 blocks)",
    )
    parser.add_argument("--only", default=",".join(_suite.WORKLOADS), help="comma-separated workloads to run")
    parser.add_argument("--out", default="bench_out/results.json", help="where to write the JSON results")
    parser.add_argument("--rounds", type=int, default=None, help="override the number of rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-reexec", action="store_true", help="do not re-execute with pinned malloc settings")
    args = parser.parse_args(argv)

    settings = _harness.SMOKE if args.smoke else _harness.QUICK if args.quick else _harness.DEFAULT
    if args.rounds is not None:
        settings = _harness.Settings(**{**settings.__dict__, "rounds": args.rounds})
    if args.smoke and args.sizes is not None:
        parser.error("--smoke has its own tiny shapes; leave out --sizes")
    sizes_name = "smoke" if args.smoke else args.sizes or "cpu"
    sizes = _workloads.SMOKE if args.smoke else _workloads.SIZES[sizes_name]
    chosen = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = [w for w in chosen if w not in _suite.WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(_suite.WORKLOADS)}")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    _prime()
    import jax

    if sizes_name == "gpu" and jax.default_backend() == "cpu":
        log("--sizes gpu on a CPU backend: the GPU shapes take a long time here")
    load_before = os.getloadavg()
    rows: list[dict] = []
    # Equinox's backward_nan prints every primal and cotangent on each backward pass (its
    # documented behaviour, part of its cost): measured with stdout sent to /dev/null.
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        for workload in chosen:
            log(f"{_suite.TITLES[workload].format(n=sizes.structure_layers)}")
            if workload == "structure":
                ops = _suite.structure_ops(sizes.structure_layers)
                rows += _harness.time_operations(workload, ops, settings, log)
            else:
                cells = _suite.build(workload, sizes, args.seed)
                rows += _harness.run_workload(cells, settings, log, fastest=workload in _suite.RACES)
            if workload == "deep":
                rows += _suite.deep_memory(sizes.deep, args.seed)
    problems = check(rows)
    met = targets(rows)
    text = table(rows, sizes.structure_layers)
    info = machine()
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    mode = "smoke" if args.smoke else "quick" if args.quick else "default"
    device = _device()
    print(
        f"{info['cpu']}, {info['cores']} cores; {device}; {versions}; {mode} run, {sizes_name} sizes, "
        f"{datetime.date.today().isoformat()}"
    )
    print()
    print(text)
    print()
    for t in met:
        if t["value"] is None:  # its reference was not measured in this run (e.g. --smoke)
            print(f"target not checked: {t['workload']} / {t['impl']}: no reference in this run")
            continue
        mark = "met" if t["met"] else "MISSED"
        print(f"target {mark}: {t['workload']} / {t['impl']}: {t['value']:.3g} {t['unit']} (limit {t['limit']})")
    for problem in problems:
        print(f"CHECK FAILED: {problem}")

    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": mode,
        "sizes": sizes_name,
        "shapes": dataclasses.asdict(sizes),
        "device": device,
        "settings": settings.__dict__,
        "machine": info,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "wall_s": time.perf_counter() - started,
        "results": rows,
        "targets": met,
        "problems": problems,
        "table": text,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    log(f"wrote {out} ({result['wall_s']:.0f} s)")
    return 1 if problems else 0
