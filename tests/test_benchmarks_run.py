"""The benchmark scripts still run (tiny sizes; their figures are printed, never asserted)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script, args, expected", [
    ("bench_registration.py", ["--height", "32", "--width", "64", "--iters", "1", "--threads", "1"],
     ["floor = FLOPs / rate", "seconds / iteration", "peak RSS"]),
    ("bench_segmentation.py", ["--height", "32", "--width", "64", "--iters", "1", "--threads", "1"],
     ["floor = FLOPs / rate", "seconds / iteration", "[live]", "[supervised]"]),
    ("bench_rnsf.py", ["--size", "0.1", "--k", "20", "--repeats", "1", "--ref-repeats", "1", "--threads", "1"],
     ["reference"]),
    ("bench_prealign.py", ["--patients", "2", "--images", "2", "--size", "96", "48", "--workers", "1"],
     ["pairs"]),
])
def test_benchmark_runs_and_prints(script, args, expected):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "failed" not in result.stdout, result.stdout[-2000:]
    for text in expected:
        assert text in result.stdout, result.stdout[-2000:]
