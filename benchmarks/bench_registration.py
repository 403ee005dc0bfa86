"""Benchmark: one registration training iteration (prints numbers, asserts nothing).

The iteration is the trainer's own, :func:`utils.stages.registration.registration_step` (docs/METHOD.md
section 2, batch 1): for both directions ``flow = net(moving, fixed)``,
``warped = warp(moving, flow)``, loss ``(1 - SSIM) + NCC + 0.1 * smooth``, one backward
per direction, one Adam step. Printed per variant of the position attention:

- FLOPs of a forward pass and of a training iteration (``FlopCounterMode``: it counts
  matmuls and convolutions, not softmax, norms or warps; the ops missing from its table
  get formulas from ``benchmarks.measure.register_missing_flops``; the backward's
  recomputations (attention blocks; conv blocks if the net checkpoints) are counted as they run);
- the measured fp32 matmul rate (``torch.mm`` 2048 x 2048, median of samples taken between
  the timed iterations) and the floor = FLOPs / rate;
- median seconds per iteration after a warm-up; the ratio to the floor (median over the
  timed iterations, each at the rate sampled just before and after it); seconds of a
  no-grad forward pass (both directions as one batch of 2, as RSGM uses the net);
- peak resident memory after the training iterations (before the no-grad pass), in a
  fresh subprocess per variant, and of a baseline subprocess that only builds the net
  and inputs.

Children call ``utils.training.memory.keep_freed_memory()`` unless ``--default-malloc``.

On ``--device cuda`` the times wait for the GPU, the matmul rate is the GPU's fp32 rate, and
the GPU's peak allocated memory is printed too; ``chunked`` is then ``"auto"``, i.e. SDPA.

Variants: ``chunked`` (the default ``attention_impl="auto"`` on CPU) and ``reference``
(plain materialised ``softmax(q k^T) v``: ~(HW/16)^2 floats per PAM, several GB at 350 x 740).

    python benchmarks/bench_registration.py                    # 350 x 740, 5 timed iterations
    python benchmarks/bench_registration.py --height 128 --width 256 --iters 2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.measure import (add_iteration_args, count_flops, describe_setup, emit,  # noqa: E402
                                iteration_argv, iteration_report, peak_memory, run_child, setup_child,
                                time_calls, time_iterations)

VARIANTS = ("chunked", "reference")


def _parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_iteration_args(ap)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                    help="attention implementations to measure, each in its own process (default: both)")
    ap.add_argument("--channels-last", action="store_true", help="run the net in channels_last memory format")
    ap.add_argument("--child", choices=("baseline",) + VARIANTS, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def _child(args: argparse.Namespace) -> None:
    import torch

    from networks.registration_net import RegistrationNet
    from utils.stages.registration import RegistrationWeights, registration_step

    result = setup_child(args)
    torch.manual_seed(0)
    device = args.device
    size = (1, 1, args.height, args.width)
    # smooth random "images" so that the losses are not degenerate
    a = torch.nn.functional.avg_pool2d(torch.rand(size), 5, 1, 2).to(device)
    b = torch.nn.functional.avg_pool2d(torch.rand(size), 5, 1, 2).to(device)
    net = RegistrationNet(attention_impl="auto" if args.child == "chunked" else "reference").to(device)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
        a, b = (t.contiguous(memory_format=torch.channels_last) for t in (a, b))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=1e-6)
    if args.child == "baseline":
        peak_memory(result, device)
        emit(result)
        return

    def iteration() -> None:
        # the pair is its own pre-alignment here (a_on_b = a, b_on_a = b): the same ops
        registration_step(net, optimizer, a, b, a, b, RegistrationWeights())

    result["iter_s"], result["rate"], result["iter_rates"] = time_iterations(iteration, args.iters, device)
    peak_memory(result, device)  # the training iterations' own (not the inference's, nor FLOP counting's)
    both_m, both_f = torch.cat([a, b]), torch.cat([b, a])
    with torch.no_grad():
        result["infer_s"] = time_calls(lambda: net(both_m, both_f), 1, warmup=1, device=device)[0]
    result["fwd_flops"], _ = count_flops(lambda: net(a, b))
    result["iter_flops"], result["iter_flops_by_op"] = count_flops(iteration)
    emit(result)


def _run_child(args: argparse.Namespace, variant: str) -> dict:
    argv = ["--child", variant, *iteration_argv(args)] + (["--channels-last"] if args.channels_last else [])
    return run_child(Path(__file__).resolve(), argv)


def main(argv=None) -> None:
    args = _parse(argv)
    if args.child:
        _child(args)
        return
    print(f"registration training iteration (utils.stages.registration.registration_step), {args.height} x {args.width}, "
          f"batch 1, {args.device}, {args.iters} timed iterations after 1 warm-up"
          + (", channels_last" if args.channels_last else ""))
    base = _run_child(args, "baseline")
    base_mib = base.get("peak_mib", float("nan"))
    print(f"baseline (net + inputs only): peak RSS {base_mib:.0f} MiB, {describe_setup(base)}")
    for variant in args.variants:
        r = _run_child(args, variant)
        if "error" in r:
            print(f"{variant}: failed: {r['error']}")
            continue
        print(f"\n[{variant}]")
        print(f"  FLOPs forward (one direction)      {r['fwd_flops'] / 1e9:9.1f} GFLOP")
        print("\n".join(iteration_report(r, base_mib)))
        print(f"  no-grad forward, batch 2           {r['infer_s']:9.2f} s")
    print("\ntargets: <= 1.3 x floor, <= 1.5 GB peak (the published implementation's figures are in "
          "docs/benchmarks.md).")


if __name__ == "__main__":
    main()
