"""Benchmark: one registration training iteration on CPU (prints numbers, asserts nothing).

The iteration is the trainer's own, :func:`utils.steps.registration_step` (METHOD.md
section 2, batch 1): for both directions ``flow = net(moving, fixed)``,
``warped = warp(moving, flow)``, loss ``(1 - SSIM) + NCC + 0.1 * smooth``, one backward
per direction, one Adam step. Printed per variant of the position attention:

- FLOPs of a forward pass and of a training iteration (``FlopCounterMode``: it counts
  matmuls and convolutions, not softmax, norms or warps; the ops missing from its table
  get formulas from ``benchmarks.measure.register_missing_flops``; the backward's
  recomputations (attention blocks, checkpointed conv blocks) are counted as they run);
- the measured fp32 matmul rate (``torch.mm`` 2048 x 2048, median of repeats) and the
  floor = FLOPs / rate;
- median seconds per iteration after a warm-up, its ratio to the floor, seconds of a
  no-grad forward pass (both directions as one batch of 2, as RSGM uses the net);
- peak resident memory of a fresh subprocess per variant, and of a baseline subprocess
  that only builds the net and inputs.

Variants: ``chunked`` (the default ``attention_impl="auto"`` on CPU) and ``reference``
(plain materialised ``softmax(q k^T) v``: ~(HW/16)^2 floats per PAM, several GB at 350 x 740).

    python benchmarks/bench_registration.py                    # 350 x 740, 3 timed iterations
    python benchmarks/bench_registration.py --height 128 --width 256 --iters 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.measure import (count_flops, emit, format_flops_by_op, matmul_rate,  # noqa: E402
                                peak_rss_mib, run_child, set_threads, time_calls)

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


def _child(args: argparse.Namespace) -> None:
    import torch

    from networks.registration_net import RegistrationNet
    from utils.steps import RegistrationWeights, registration_step

    result = {"threads": set_threads(args.threads)}
    torch.manual_seed(0)
    size = (1, 1, args.height, args.width)
    # smooth random "images" so that the losses are not degenerate
    a = torch.nn.functional.avg_pool2d(torch.rand(size), 5, 1, 2)
    b = torch.nn.functional.avg_pool2d(torch.rand(size), 5, 1, 2)
    net = RegistrationNet(attention_impl="auto" if args.child == "chunked" else "reference")
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
        a, b = (t.contiguous(memory_format=torch.channels_last) for t in (a, b))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=1e-6)
    if args.child == "baseline":
        result["peak_mib"] = peak_rss_mib()
        emit(result)
        return

    def iteration() -> None:
        # the pair is its own pre-alignment here (a_on_b = a, b_on_a = b): the same ops
        registration_step(net, optimizer, a, b, a, b, RegistrationWeights())

    result["rate"] = matmul_rate()
    result["iter_s"] = time_calls(iteration, args.iters, warmup=1)
    both_m, both_f = torch.cat([a, b]), torch.cat([b, a])
    with torch.no_grad():
        result["infer_s"] = time_calls(lambda: net(both_m, both_f), 1, warmup=1)[0]
    result["peak_mib"] = peak_rss_mib()  # before FLOP counting (which runs the same ops again)
    result["fwd_flops"], _ = count_flops(lambda: net(a, b))
    result["iter_flops"], result["iter_flops_by_op"] = count_flops(iteration)
    emit(result)


def _run_child(args: argparse.Namespace, variant: str) -> dict:
    argv = ["--child", variant, "--height", str(args.height), "--width", str(args.width),
            "--iters", str(args.iters), "--threads", str(args.threads)]
    return run_child(Path(__file__).resolve(), argv + (["--channels-last"] if args.channels_last else []))


def main(argv=None) -> None:
    args = _parse(argv)
    if args.child:
        _child(args)
        return
    print(f"registration training iteration (utils.steps.registration_step), {args.height} x {args.width}, "
          f"batch 1, CPU, {args.iters} timed iterations after 1 warm-up"
          + (", channels_last" if args.channels_last else ""))
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
        print(format_flops_by_op(r["iter_flops_by_op"]))
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
