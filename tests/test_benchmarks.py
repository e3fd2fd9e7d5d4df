"""The benchmarks cannot rot: each script runs at its smallest size (`-m bench`), and the shared
timing and FLOP-counting pieces are checked in the default suite."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import common, run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_compile_fn_counts_matmul_flops_and_times_compile_apart():
    import jax.numpy as jnp

    m, k, n = 64, 128, 32
    a, b = jnp.ones((m, k)), jnp.ones((k, n))
    compiled = common.compile_fn(jnp.dot, a, b)
    assert compiled.flops == 2 * m * k * n  # XLA counts a multiply-add as two FLOPs
    assert compiled.bytes_accessed >= 4 * (m * k + k * n + m * n)
    assert compiled.compile_s > 0
    times = common.alternate({"dot": lambda: compiled.call(a, b)}, repeats=3, rounds=2)
    assert len(times["dot"]) == 6 and all(t > 0 for t in times["dot"])


def test_report_writes_the_result_the_runner_reads(tmp_path, capsys):
    path = tmp_path / "r.json"
    common.report("B0", "demo", ["a", "b"], [[1, 2.5]], "x is 2.00x faster", ratio=2.0, claim=">= 1x",
                  holds=True, json_path=str(path))
    result = json.loads(path.read_text())
    assert result["rows"] == [["1", "2.5"]] and result["holds"] is True and result["machine"]["cores"] >= 1
    assert "| 1 | 2.5 |" in capsys.readouterr().out
    result["seconds"] = 3.0
    assert "| B0 | >= 1x | x is 2.00x faster | yes | 3 |" in run.summary_table([result])


def test_runner_names_an_unknown_benchmark():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--only", "B1,B42"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "B42" in proc.stderr


# Every benchmark of the runner, plus the profile behind B3 (not in the runner: it explains, it does not test a claim).
SCRIPTS = {**{bench_id: module for bench_id, (module, _) in run.BENCHMARKS.items()},
           "B3-profile": "profile_cpu_train_step"}


@pytest.mark.bench
@pytest.mark.parametrize("bench_id", sorted(SCRIPTS))
def test_benchmark_script_runs_at_smoke_size(bench_id, tmp_path):
    module = SCRIPTS[bench_id]
    path = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", "--size", "smoke", "--json", str(path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(path.read_text())
    assert result["id"] == bench_id and result["rows"] and result["headline"]
    assert f"{bench_id}: " in proc.stdout  # the headline line was printed
