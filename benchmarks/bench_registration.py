"""Benchmark: one registration training iteration on CPU (prints numbers, asserts nothing).

The iteration is the trainer's (METHOD.md section 2, batch 1): for both directions
``flow = net(moving, fixed)``, ``warped = warp(moving, flow)``, loss
``(1 - SSIM) + NCC + 0.1 * smooth`` (``utils.losses``); the two losses are summed,
one backward, one Adam step. Printed per variant of the position attention:

- FLOPs of a forward pass and of a training iteration (``FlopCounterMode``: it counts
  matmuls and convolutions, not softmax, norms or warps; two ops are missing from its
  table and get formulas registered here: the CPU flash-SDPA ops and the in-place
  ``addmm_`` that the default ``chunked`` attention accumulates with; its ``mm`` calls,
  the backward's recomputation of ``q k^T`` included, are counted as they are);
- the measured fp32 matmul rate (``torch.mm`` 2048 x 2048, median of repeats) and the
  floor = FLOPs / rate;
- median seconds per iteration after a warm-up, its ratio to the floor, seconds of a
  no-grad forward pass (both directions as one batch of 2, as RSGM uses the net);
- peak resident memory (``ru_maxrss``) of a fresh subprocess per variant, and of a
  baseline subprocess that only builds the net and inputs.

Variants: ``chunked`` (the default ``attention_impl="auto"`` on CPU) and ``reference``
(plain materialised ``softmax(q k^T) v``: ~(HW/16)^2 floats per PAM, several GB at 350 x 740).

    python benchmarks/bench_registration.py                    # 350 x 740, 3 timed iterations
    python benchmarks/bench_registration.py --height 128 --width 256 --iters 2
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

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("chunked", "reference")


def _parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=350)
    ap.add_argument("--width", type=int, default=740)
    ap.add_argument("--iters", type=int, default=3, help="timed iterations per variant (after 1 warm-up)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--channels-last", action="store_true", help="run the net in channels_last memory format")
    ap.add_argument("--child", choices=("baseline",) + VARIANTS, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def matmul_rate(size: int = 2048, repeats: int = 7) -> float:
    """Median fp32 ``torch.mm`` rate, FLOP/s, of ``size x size`` matrices."""
    import torch
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times)


def _register_missing_flops() -> None:
    """Teach FlopCounterMode the ops missing from its table: the CPU flash-attention ops
    (SDPA on CPU) and the in-place ``addmm_`` (the chunked attention's accumulations)."""
    import torch
    from torch.utils import flop_counter as fc
    aten = torch.ops.aten
    if aten.addmm_ not in fc.flop_registry:
        fc.register_flop_formula(aten.addmm_, get_raw=True)(fc.addmm_flop)  # already shape-wrapped
    targets = [getattr(aten, name) for name in ("_scaled_dot_product_flash_attention_for_cpu",)
               if hasattr(aten, name)]
    backward = [getattr(aten, name) for name in ("_scaled_dot_product_flash_attention_for_cpu_backward",)
                if hasattr(aten, name)]
    if targets and targets[0] not in fc.flop_registry:
        fc.register_flop_formula(targets)(
            lambda q, k, v, *args, out_shape=None, **kw: fc.sdpa_flop_count(q, k, v))
    if backward and backward[0] not in fc.flop_registry:
        fc.register_flop_formula(backward)(
            lambda grad_out, q, k, v, *args, out_shape=None, **kw: fc.sdpa_backward_flop_count(grad_out, q, k, v))


def _child(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from networks.registration_net import RegistrationNet
    from networks.spatial_transformer import warp
    from utils.losses import ncc_loss, smoothness_loss, ssim_loss

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = (1, 1, args.height, args.width)
    # smooth random "images" so that the losses are not degenerate
    moving = torch.nn.functional.avg_pool2d(torch.rand(size), 5, 1, 2)
    fixed = torch.nn.functional.avg_pool2d(torch.rand(size), 5, 1, 2)
    impl = "auto" if args.child == "chunked" else "reference"
    net = RegistrationNet(attention_impl=impl)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
        moving = moving.contiguous(memory_format=torch.channels_last)
        fixed = fixed.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=1e-6)
    result = {"threads": torch.get_num_threads()}
    if args.child == "baseline":
        result["peak_mib"] = _peak_mib()
        print(json.dumps(result))
        return

    def iteration() -> None:
        total = 0.0
        for m, f in ((moving, fixed), (fixed, moving)):
            flow = net(m, f)
            warped = warp(m, flow)
            total = total + ssim_loss(warped, f) + ncc_loss(warped, f) + 0.1 * smoothness_loss(flow)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    result["rate"] = matmul_rate()
    iteration()  # warm-up
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        iteration()
        times.append(time.perf_counter() - start)
    result["iter_s"] = times
    both_m, both_f = torch.cat([moving, fixed]), torch.cat([fixed, moving])
    with torch.no_grad():
        net(both_m, both_f)
        start = time.perf_counter()
        net(both_m, both_f)
        result["infer_s"] = time.perf_counter() - start
    result["peak_mib"] = _peak_mib()  # before FLOP counting (which runs the same ops again)

    _register_missing_flops()
    counter = FlopCounterMode(display=False)
    with counter:
        net(moving, fixed)
    result["fwd_flops"] = counter.get_total_flops()
    counter = FlopCounterMode(display=False)
    with counter:
        iteration()
    result["iter_flops"] = counter.get_total_flops()
    result["iter_flops_by_op"] = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    print(json.dumps(result))


def _run_child(args: argparse.Namespace, variant: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--height", str(args.height),
           "--width", str(args.width), "--iters", str(args.iters), "--threads", str(args.threads)]
    if args.channels_last:
        cmd.append("--channels-last")
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    args = _parse(argv)
    if args.child:
        _child(args)
        return
    print(f"registration training iteration, {args.height} x {args.width}, batch 1, CPU, "
          f"{args.iters} timed iterations after 1 warm-up" + (", channels_last" if args.channels_last else ""))
    base = _run_child(args, "baseline")
    print(f"baseline (net + inputs only): peak RSS {base.get('peak_mib', float('nan')):.0f} MiB, "
          f"threads {base.get('threads')}")
    for variant in args.variants:
        r = _run_child(args, variant)
        if "error" in r:
            print(f"{variant}: failed: {r['error']}")
            continue
        median = statistics.median(r["iter_s"])
        floor = r["iter_flops"] / r["rate"]
        print(f"\n[{variant}]")
        print(f"  FLOPs forward (one direction)      {r['fwd_flops'] / 1e9:9.1f} GFLOP")
        print(f"  FLOPs training iteration (2 dirs)  {r['iter_flops'] / 1e9:9.1f} GFLOP")
        for op, n in sorted(r["iter_flops_by_op"].items(), key=lambda kv: -kv[1]):
            print(f"      {op:<45s} {n / 1e9:9.1f} GFLOP")
        print(f"  matmul rate (mm 2048^2, fp32)      {r['rate'] / 1e9:9.1f} GFLOP/s")
        print(f"  floor = FLOPs / rate               {floor:9.2f} s")
        print(f"  seconds / iteration (median)       {median:9.2f} s   "
              f"(all: {', '.join(f'{t:.2f}' for t in r['iter_s'])})")
        print(f"  ratio to floor                     {median / floor:9.2f}")
        print(f"  no-grad forward, batch 2           {r['infer_s']:9.2f} s")
        print(f"  peak RSS                           {r['peak_mib']:9.0f} MiB "
              f"(+{r['peak_mib'] - base.get('peak_mib', 0):.0f} over baseline)")
    print("\nreference point: the published implementation took 26.6 s and 6.15 GB per iteration; "
          "targets here: <= 1.3 x floor, <= 1.5 GB peak.")


if __name__ == "__main__":
    main()
