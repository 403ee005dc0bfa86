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
    ("bench_methods.py", ["--height", "32", "--width", "64", "--iters", "1", "--threads", "1",
                          "--methods", "supervised", "abd"],
     ["s/iter", "supervised", "abd", "vs sup", "target: <= 1.1 x the supervised method's ratio"]),
    ("bench_schedule.py", ["--patients", "7", "--size", "64", "32", "--epochs", "1", "--iters", "1", "--workers", "0",
                           "--device", "cpu"],
     ["full schedule, 1 fold", "registration", "ss-mgs", "supervised", "five-fold schedule"]),
    ("bench_gland_measures.py", ["--repeats", "1", "--height", "128", "--width", "256", "--glands", "8"],
     ["8 glands drawn, 8 glands found", "seconds per mask pair", "measure_image (all measures)",
      "instance_metrics (shifted copy)"]),
    ("bench_synthetic_regime.py", ["--patients", "5", "--size", "96", "48", "--seeds", "0", "--folds", "2"],
     ["10 lids at 96 x 48", "ratio", "span error max",
      "default meiboscore (span) acc, kappa", "calibrated CV acc, kappa", "real:", "seconds per generated image"]),
    ("bench_repeatability.py", ["--patients", "6", "--size", "64", "32", "--epochs", "1", "--iters", "1",
                                "--variants", "0"],
     ["reference (1 thread, 0 workers)", "val IoU", "max |weight - reference| 0  identical"]),
    ("bench_prealign.py", ["--patients", "2", "--images", "2", "--size", "96", "48", "--workers", "1"],
     ["pairs 4  workers 1", "warm cache (nothing recomputed)", "error vs the true map"]),
])
def test_benchmark_runs_and_prints(script, args, expected):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "failed" not in result.stdout, result.stdout[-2000:]
    for text in expected:
        assert text in result.stdout, result.stdout[-2000:]


def test_time_iterations_times_each_call_and_samples_the_rate_around_each(monkeypatch):
    """One warm-up plus ``repeats`` timed calls; rate samples before the first timed call and
    after each; the rate around call i is the median of the samples on either side of it."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import measure

    calls, samples = [], iter([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [100.0, 200.0]])
    monkeypatch.setattr(measure, "matmul_rates", lambda repeats, device: (calls.append("rate"), next(samples))[1])
    times, rate, around = measure.time_iterations(lambda: calls.append("fn"), 3, rate_repeats=2)
    assert calls == ["fn", "rate", "fn", "rate", "fn", "rate", "fn", "rate"]
    assert len(times) == 3 and all(t >= 0 for t in times)
    assert rate == 4.5  # median of 1, 2, 3, 4, 5, 6, 100, 200
    assert around == [2.5, 4.5, 53.0]  # medians of {1,2,3,4}, {3,4,5,6}, {5,6,100,200}


def test_floor_ratios_pair_each_time_with_its_rate():
    sys.path.insert(0, str(ROOT))
    from benchmarks.measure import floor_ratios, iteration_report

    r = {"iter_s": [2.0, 3.0, 4.0], "iter_rates": [10.0, 5.0, 2.0], "iter_flops": 10.0, "rate": 5.0,
         "iter_flops_by_op": {"aten.mm": 10.0}, "peak_mib": 100.0}
    assert floor_ratios(r) == [2.0, 1.5, 0.8]
    assert floor_ratios(r, 20.0) == [1.0, 0.75, 0.4]
    report = "\n".join(iteration_report(r, 50.0))
    assert "ratio to floor (median)                 1.50" in report
    assert "floor = FLOPs / rate                    2.00 s" in report
