"""The benchmark's smoke run: every implementation of every workload runs and learns (no timings)."""

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
    deep = {r["impl"]: r for r in rows if r["workload"] == "deep" and r.get("kind") == "memory"}
    assert deep["luxjax Stacked(Remat(block))"]["temp_bytes"] < deep["luxjax Stacked"]["temp_bytes"]
