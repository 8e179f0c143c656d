"""The benchmark's smoke run: every implementation of every workload runs and learns (no timings)."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("flax", reason="the bench extra (flax, equinox) is not installed")
pytest.importorskip("equinox", reason="the bench extra (flax, equinox) is not installed")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "XLA_FLAGS": "--xla_backend_optimization_level=0",  # compile faster; nothing here is timed
        "JAX_PLATFORMS": "cpu",
    }
    cmd = [sys.executable, "-m", "bench", "--smoke", "--no-reexec", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.exists(), proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    result["returncode"], result["output"] = proc.returncode, proc.stdout + proc.stderr
    return result


def test_smoke_run_passes_its_own_checks(smoke):
    assert smoke["problems"] == [], smoke["output"]
    assert smoke["returncode"] == 0, smoke["output"]


def test_every_peer_implementation_ran_and_its_loss_decreased(smoke):
    rows = [r for r in smoke["results"] if r.get("kind") not in ("operation", "memory")]
    peers = [r for r in rows if not r["impl"].startswith("luxjax")]
    assert {r["workload"] for r in peers} == {"tiny", "medium", "cnn", "transformer", "frozen", "debug"}
    for row in peers:
        assert "not_measured" not in row, row
        assert row["loss_last"] < row["loss_first"], row
        assert row["same_start"], row
    impls = {r["impl"] for r in peers}
    for name in ("jax (hand-written)", "nnx.jit", "nnx split/merge", "equinox filter_jit"):
        assert name in impls
    assert any("checkify" in i for i in impls) and any("backward_nan" in i for i in impls)
    assert sum("frozen" in i for i in impls) == 3


def test_every_luxjax_cell_ran_and_learned(smoke):
    rows = [r for r in smoke["results"] if r["impl"].startswith("luxjax") or r.get("kind") == "operation"]
    workloads = {"tiny", "medium", "cnn", "transformer", "frozen", "debug", "structure", "deep"}
    assert {r["workload"] for r in rows} == workloads
    for row in rows:
        assert "not_measured" not in row, row
        if row.get("kind") == "operation":
            assert row["median_s"] >= 0, row
        elif row.get("kind") == "memory":
            assert row["temp_bytes"] > 0, row
        else:
            assert row["loss_last"] < row["loss_first"], row
            assert row["same_start"], row
    mlp_step = [r for r in rows if r["workload"] in ("tiny", "medium") and r["impl"] == "luxjax (user jit step)"]
    assert len(mlp_step) == 2 and all("loss_first" in r for r in mlp_step)
    transformer = {r["impl"]: r for r in rows if r["workload"] == "transformer"}
    assert transformer["luxjax (user jit step, bf16 compute)"]["reference"] == "luxjax (user jit step)"
    for impl in ("luxjax (user jit step)", "luxjax (user jit step, bf16 compute)"):
        assert transformer[impl]["tflops"] > 0, transformer[impl]
    deep = {r["impl"]: r for r in rows if r["workload"] == "deep" and r.get("kind") == "memory"}
    assert deep["luxjax Stacked(Remat(block))"]["temp_bytes"] < deep["luxjax Stacked"]["temp_bytes"]


def test_sizes_gpu_runs_the_cells_at_the_gpu_table(tmp_path):
    # The GPU shapes are too large for a CPU test, so the GPU table is swapped for the smoke
    # shapes in the child process: what is checked is that `--sizes gpu` picks that table.
    out = tmp_path / "gpu.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "XLA_FLAGS": "--xla_backend_optimization_level=0",
        "JAX_PLATFORMS": "cpu",
    }
    code = (
        "import sys; from bench import _workloads as w; w.SIZES['gpu'] = w.SMOKE; "
        "from bench._cli import main; sys.exit(main(sys.argv[1:]))"
    )
    cmd = [sys.executable, "-c", code, "--sizes", "gpu", "--quick", "--rounds", "2", "--only", "tiny,medium"]
    proc = subprocess.run([*cmd, "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    smoke_shapes = importlib.import_module("bench._workloads").SMOKE
    assert result["sizes"] == "gpu" and result["shapes"]["medium"]["batch"] == smoke_shapes.medium.batch
    assert "gpu sizes" in proc.stdout and "--sizes gpu on a CPU backend" in proc.stderr
    rows = [r for r in result["results"] if r["workload"] == "medium"]
    assert len(rows) == 6 and all(r["loss_last"] < r["loss_first"] and r["same_start"] for r in rows)


def test_gpu_table_has_the_issues_shapes_and_smoke_refuses_sizes():
    workloads = importlib.import_module("bench._workloads")
    gpu = workloads.SIZES["gpu"]
    assert (gpu.medium.batch, gpu.medium.sizes[1:-1]) == (1024, (2048, 2048, 2048))
    assert gpu.cnn.batch == 1024
    t = gpu.transformer
    assert (t.batch, t.seq, t.d_model, t.heads, t.blocks) == (32, 512, 768, 12, 6)
    assert workloads.SIZES["cpu"] is workloads.FULL
    cli = importlib.import_module("bench._cli")
    with pytest.raises(SystemExit, match="2"):
        cli.main(["--smoke", "--sizes", "gpu"])
