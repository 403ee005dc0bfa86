"""Measuring helpers shared by the benchmark scripts (they print numbers, assert nothing).

Protocol: a benchmark runs each variant in a fresh subprocess (``run_child``) so that the
variant's peak memory is its own; the child prints its result as one JSON line
(``emit``), the parent parses it. The parent process must stay light (no torch import):
on Linux ``ru_maxrss`` survives ``exec``, so a child would report at least the parent's
peak. ``peak_rss_mib`` therefore reads ``VmHWM`` (the high-water mark of the process's
own address space, fresh after ``exec``) and falls back to ``ru_maxrss`` elsewhere.
Torch is imported inside the functions that need it, for the same reason.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "RESULT "


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB (``VmHWM``; else ``ru_maxrss``)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def add_iteration_args(ap: argparse.ArgumentParser, height: int = 350, width: int = 740, iters: int = 5) -> None:
    """The options of a training-iteration benchmark (read back by :func:`iteration_argv`)."""
    ap.add_argument("--height", type=int, default=height, help=f"image height in pixels (default: {height})")
    ap.add_argument("--width", type=int, default=width, help=f"image width in pixels (default: {width})")
    ap.add_argument("--iters", type=int, default=iters,
                    help=f"timed iterations per variant, after 1 warm-up (default: {iters})")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                    help="where the iteration runs (default: cpu; on cuda the GPU's peak allocated memory "
                         "is printed too)")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc malloc as it is (default: call utils.training.memory.keep_freed_memory() first)")


def iteration_argv(args: argparse.Namespace) -> list[str]:
    """:func:`add_iteration_args`'s options as command-line arguments, for a child process."""
    argv = ["--height", str(args.height), "--width", str(args.width), "--iters", str(args.iters),
            "--threads", str(args.threads), "--device", args.device]
    return argv + (["--default-malloc"] if args.default_malloc else [])


def setup_child(args: argparse.Namespace) -> dict:
    """Apply ``--threads`` and ``--default-malloc`` in a child, and allocate the matmul-rate
    operands (:func:`matmul_rates`) first, below everything the benchmark allocates later;
    returns what is in use."""
    from utils.training.memory import keep_freed_memory
    result = {"threads": set_threads(args.threads),
              "keep_freed_memory": not args.default_malloc and keep_freed_memory()}
    matmul_rates(repeats=1, device=args.device)
    return result


def set_threads(threads: int) -> int:
    """``torch.set_num_threads(threads)`` unless 0 (torch's default); returns the count in use."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


_MATMUL_OPERANDS: dict[tuple, tuple] = {}


def matmul_rates(size: int = 2048, repeats: int = 7, device: str = "cpu") -> list[float]:
    """fp32 ``torch.mm`` rates in FLOP/s of ``repeats`` products of ``size x size`` matrices
    on ``device`` (after 1 warm-up; on CUDA with TF32 as torch has it, off by default).

    The operands and the output are allocated once per size and device (by
    :func:`setup_child`, before anything else), so that sampling the rate between timed
    iterations neither churns nor fragments the heap the iterations use."""
    import torch
    key = (size, str(device))
    if key not in _MATMUL_OPERANDS:
        _MATMUL_OPERANDS[key] = tuple(torch.randn(size, size, device=device) for _ in range(3))
    a, b, out = _MATMUL_OPERANDS[key]
    return [2 * size ** 3 / t for t in time_calls(lambda: torch.mm(a, b, out=out), repeats, warmup=1, device=device)]


def time_iterations(fn: Callable[[], object], repeats: int, device: str = "cpu",
                    rate_repeats: int = 3, warmup: int = 1) -> tuple[list[float], float, list[float]]:
    """``(seconds of each of repeats calls of fn, median matmul rate, rate around each call)``
    after ``warmup`` untimed calls, rates in FLOP/s. The rate is sampled (``rate_repeats`` products)
    before each timed call and after the last; the rate around call ``i`` is the median of
    the samples just before and just after it. On a shared machine the rate drifts by tens
    of percent between minutes, so a call is best compared with the rate around it."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times, samples = [], [matmul_rates(repeats=rate_repeats, device=device)]
    for _ in range(repeats):
        times += time_calls(fn, 1, warmup=0, device=device)
        samples.append(matmul_rates(repeats=rate_repeats, device=device))
    around = [statistics.median(samples[i] + samples[i + 1]) for i in range(repeats)]
    return times, statistics.median([rate for group in samples for rate in group]), around


def floor_ratios(r: dict, flops: float | None = None) -> list[float]:
    """Each timed iteration's ratio to the FLOP floor at the rate around it:
    ``iter_s[i] * iter_rates[i] / flops`` (``flops`` defaults to ``r["iter_flops"]``)."""
    flops = r["iter_flops"] if flops is None else flops
    return [t * rate / flops for t, rate in zip(r["iter_s"], r["iter_rates"])]


def synchronize(device: str = "cpu") -> None:
    """Wait for queued GPU work (a no-op on CPU), so that wall-clock times are complete."""
    if str(device).startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1, device: str = "cpu") -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones
    (each timed call ends with :func:`synchronize`)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def peak_memory(result: dict, device: str = "cpu") -> None:
    """Store the peaks so far in ``result``: ``peak_mib`` (resident, :func:`peak_rss_mib`)
    and, on CUDA, ``gpu_peak_mib`` (``torch.cuda.max_memory_allocated``)."""
    result["peak_mib"] = peak_rss_mib()
    if str(device).startswith("cuda"):
        import torch
        result["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20


def register_missing_flops() -> None:
    """Teach ``FlopCounterMode`` the ops missing from its table: the CPU flash-attention ops
    (``scaled_dot_product_attention`` on CPU) and the in-place ``addmm_`` (the chunked
    attention's accumulations). Idempotent."""
    import torch
    from torch.utils import flop_counter as fc
    aten = torch.ops.aten
    if aten.addmm_ not in fc.flop_registry:
        fc.register_flop_formula(aten.addmm_, get_raw=True)(fc.addmm_flop)  # already shape-wrapped
    forward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    backward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if forward is not None and forward not in fc.flop_registry:
        fc.register_flop_formula(forward)(
            lambda q, k, v, *args, out_shape=None, **kw: fc.sdpa_flop_count(q, k, v))
    if backward is not None and backward not in fc.flop_registry:
        fc.register_flop_formula(backward)(
            lambda grad_out, q, k, v, *args, out_shape=None, **kw: fc.sdpa_backward_flop_count(grad_out, q, k, v))


def count_flops(fn: Callable[[], object]) -> tuple[int, dict[str, int]]:
    """FLOPs of one call of ``fn`` (``FlopCounterMode``: matmuls and convolutions only, with
    :func:`register_missing_flops`): ``(total, {op name: flops})``."""
    from torch.utils.flop_counter import FlopCounterMode
    register_missing_flops()
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops(), {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}


def emit(result: dict) -> None:
    """Print a child's result for :func:`run_child` (one JSON line)."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_child(script: str | Path, argv: Sequence[str]) -> dict:
    """Run ``python script *argv`` in a fresh process from the repository root and return the
    dict it :func:`emit`-ted, or ``{"error": last stderr line}`` when it failed."""
    done = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, cwd=ROOT)
    results = [line[len(RESULT_PREFIX):] for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not results:
        return {"error": f"exit {done.returncode}: " + ((done.stderr.strip().splitlines() or ["?"])[-1])}
    return json.loads(results[-1])


def describe_setup(base: dict) -> str:
    """The baseline child's threads and allocator setting, in words."""
    malloc = "keep_freed_memory" if base.get("keep_freed_memory") else "default glibc malloc"
    gpu = f", GPU memory {base['gpu_peak_mib']:.0f} MiB" if "gpu_peak_mib" in base else ""
    return f"threads {base.get('threads')}, {malloc}{gpu}"


def iteration_report(r: dict, base_mib: float) -> list[str]:
    """Lines for a training-iteration child's result ``r`` (``iter_flops``,
    ``iter_flops_by_op``, ``rate``, ``iter_s``, ``iter_rates``, ``peak_mib``, optional
    ``gpu_peak_mib``): FLOPs per op, matmul rate, floor, median time, the ratio to the
    floor (median of :func:`floor_ratios`), peak memory over ``base_mib``."""
    median = statistics.median(r["iter_s"])
    floor = r["iter_flops"] / r["rate"]
    ratios = floor_ratios(r)
    lines = [f"  FLOPs training iteration           {r['iter_flops'] / 1e9:9.1f} GFLOP"]
    lines += [f"      {op:<45s} {n / 1e9:9.1f} GFLOP"
              for op, n in sorted(r["iter_flops_by_op"].items(), key=lambda kv: -kv[1])]
    lines += [f"  matmul rate (mm 2048^2, fp32)      {r['rate'] / 1e9:9.1f} GFLOP/s   "
              f"(median, sampled between the timed iterations)",
              f"  floor = FLOPs / rate               {floor:9.2f} s   (at the median rate)",
              f"  seconds / iteration (median)       {median:9.2f} s   "
              f"(all: {', '.join(f'{t:.2f}' for t in r['iter_s'])})",
              f"  ratio to floor (median)            {statistics.median(ratios):9.2f}   "
              f"(each iteration at the rate around it: {', '.join(f'{x:.2f}' for x in ratios)})",
              f"  peak RSS                           {r['peak_mib']:9.0f} MiB "
              f"(+{r['peak_mib'] - base_mib:.0f} over baseline)"]
    if "gpu_peak_mib" in r:
        lines.append(f"  peak GPU memory (max allocated)    {r['gpu_peak_mib']:9.0f} MiB")
    return lines
