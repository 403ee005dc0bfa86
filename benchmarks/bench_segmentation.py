"""Benchmark: one segmentation training iteration (prints numbers, asserts nothing).

The iteration is the trainer's own, :func:`utils.stages.ss_mgs.segmentation_step` (docs/METHOD.md
sections 3-5, batch 1): RSGM images from the registration outputs, one forward pass of
the segmenter over ``[x_l, g1, g2, u_neg]``, ``L_seg + L_rs + 0.1 L_rnsf`` (K = 250), one
backward, one AdamW step. Variants, each in a fresh subprocess:

- ``cached`` (what the trainer does): the registration outputs come from a stand-in for
  :class:`dataloaders.registration_cache.RegistrationOutputCache` holding fixed smooth random ``w``, ``phi``;
  the registration net does not run in the iteration;
- ``live`` (what the published code did): a real :class:`RegistrationNet` (eval, no grad)
  registers ``u1 -> x_l`` and ``x_l -> u2`` in every iteration
  (:func:`networks.rsgm.registration_outputs`);
- ``supervised``: ``SegmentationConfig(use_rsgm=False, use_rnsf=False)``, batch ``[x_l]``.

Printed: FLOPs of the iteration (``FlopCounterMode``: matmuls and convolutions, forward
and backward), the fp32 matmul rate (``torch.mm`` 2048 x 2048, sampled between the timed
iterations), floor = the segmenter's FLOPs (the ``cached`` iteration's) / rate, median
seconds per iteration after a warm-up, the ratio to that floor (median over the timed
iterations, each at the rate sampled just before and after it), peak resident memory
of each subprocess and of a baseline one that only builds the nets and the batch.
Children call ``utils.training.memory.keep_freed_memory()``
(glibc keeps freed blocks instead of unmapping them: faster, with a higher peak; the
docs/benchmarks.md has the figures) unless ``--default-malloc``.

On ``--device cuda`` the iteration runs in mixed precision, as the trainer's ``--amp auto``
does there; times wait for the GPU, and the GPU's peak allocated memory is printed too.

    python benchmarks/bench_segmentation.py                   # 350 x 740, 5 timed iterations
    python benchmarks/bench_segmentation.py --height 128 --width 256 --iters 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.measure import (add_iteration_args, count_flops, describe_setup, emit,  # noqa: E402
                                floor_ratios, iteration_argv, iteration_report, peak_memory, run_child, setup_child,
                                time_iterations)

VARIANTS = ("cached", "live", "supervised")
TARGETS = "targets: cached iteration <= 1.3 x the segmenter's floor, <= 3 GB peak"


def _parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_iteration_args(ap)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                    help="iterations to measure, each in its own process (default: all three)")
    ap.add_argument("--child", choices=("baseline",) + VARIANTS, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


class FixedOutputs:
    """Stand-in for :class:`dataloaders.registration_cache.RegistrationOutputCache`: ``get`` returns the same
    ``w [B, 1, H, W]`` and ``phi [B, 2, H, W]`` for every name."""

    def __init__(self, w, phi) -> None:
        self.w, self.phi = w, phi

    def get(self, atlas_names, u1_names, u2_names, device):
        return self.w.to(device), self.phi.to(device)


class LiveOutputs:
    """The published code's way: run the frozen registration net on the batch's images in
    every ``get`` (:func:`networks.rsgm.registration_outputs`, both registrations)."""

    def __init__(self, reg_net, batch: dict) -> None:
        self.reg_net, self.batch = reg_net, batch

    def get(self, atlas_names, u1_names, u2_names, device):
        from networks.rsgm import registration_outputs
        b = {k: v.to(device) for k, v in self.batch.items() if hasattr(v, "to")}
        return registration_outputs(self.reg_net, b["x_l"], b["u1_on_l"], b["x_l_on_u2"], b["u2"],
                                    b["field_l_u2"])


def _smooth(generator, *shape, passes: int = 3):
    """Random ``[1, C, H, W]`` values in [0, 1], box-blurred (so losses and warps are not degenerate)."""
    import torch
    x = torch.rand(*shape, generator=generator)
    for _ in range(passes):
        x = torch.nn.functional.avg_pool2d(x, 9, 1, 4, count_include_pad=False)
    return (x - x.min()) / (x.max() - x.min())


def _batch(height: int, width: int) -> tuple[dict, object, object]:
    """A ``SegmentationTrainSet``-like batch of 1 (the pre-alignment is the identity, so
    ``u1_on_l = u1``) and fixed registration outputs ``w``, ``phi`` (up to ~8 px)."""
    import torch
    from utils.onehot import one_hot
    g = torch.Generator().manual_seed(0)
    x_l, u1, u2, u_neg, w = (_smooth(g, 1, 1, height, width) for _ in range(5))
    gland = (_smooth(g, 1, 1, height, width)[:, 0] > 0.6).long()
    phi = 16.0 * (_smooth(g, 1, 2, height, width, passes=6) - 0.5)
    batch = {"x_l": x_l, "y_l": one_hot(gland, 2).float(), "u1": u1, "u2": u2, "u_neg": u_neg,
             "u1_on_l": u1, "x_l_on_u2": x_l, "field_l_u2": torch.zeros(1, 2, height, width),
             "atlas_name": ["P001_1"], "u1_name": ["P001_2"], "u2_name": ["P001_3"], "neg_name": ["P002_1"]}
    return batch, w, phi


def _child(args: argparse.Namespace) -> None:
    import torch

    from networks.registration_net import RegistrationNet
    from networks.segmentation_net import SegmentationNet
    from utils.stages.ss_mgs import SegmentationConfig, segmentation_step
    from utils.training.runtime import use_amp

    result = setup_child(args)
    torch.manual_seed(0)
    device = torch.device(args.device)
    amp = use_amp("auto", device)
    result["amp"] = amp
    batch, w, phi = _batch(args.height, args.width)
    net = SegmentationNet().train().to(device)
    reg_net = RegistrationNet().eval().to(device) if args.child in ("baseline", "live") else None
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-6)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    if args.child == "baseline":
        peak_memory(result, args.device)
        emit(result)
        return
    cache = LiveOutputs(reg_net, batch) if args.child == "live" else FixedOutputs(w.to(device), phi.to(device))
    semi = args.child != "supervised"
    config = SegmentationConfig(use_rsgm=semi, use_rnsf=semi)
    generator = torch.Generator().manual_seed(0)

    def iteration() -> None:
        segmentation_step(net, optimizer, scaler, batch, cache, config, 1.0, generator, device, amp)

    result["iter_s"], result["rate"], result["iter_rates"] = time_iterations(iteration, args.iters, args.device)
    peak_memory(result, args.device)  # before FLOP counting (which runs the same ops again)
    result["iter_flops"], result["iter_flops_by_op"] = count_flops(iteration)
    emit(result)


def main(argv=None) -> None:
    args = _parse(argv)
    if args.child:
        _child(args)
        return
    common = iteration_argv(args)
    print(f"segmentation training iteration (utils.stages.ss_mgs.segmentation_step), {args.height} x {args.width}, "
          f"batch 1, {args.device}{' (mixed precision)' if args.device == 'cuda' else ''}, RSGM + RNSF (K = 250), "
          f"{args.iters} timed iterations after 1 warm-up")
    base = run_child(Path(__file__).resolve(), ["--child", "baseline", *common])
    base_mib = base.get("peak_mib", float("nan"))
    print(f"baseline (segmenter, registration net, batch only): peak RSS {base_mib:.0f} MiB, "
          f"{describe_setup(base)}")
    results = {v: run_child(Path(__file__).resolve(), ["--child", v, *common]) for v in args.variants}
    seg_flops = None
    if "error" not in results.get("cached", {"error": ""}):
        seg_flops = results["cached"]["iter_flops"]
    for variant, r in results.items():
        if "error" in r:
            print(f"\n[{variant}] failed: {r['error']}")
            continue
        print(f"\n[{variant}]")
        print("\n".join(iteration_report(r, base_mib)))
        if seg_flops is not None and variant != "cached":
            print(f"  ratio to the segmenter's floor     {statistics.median(floor_ratios(r, seg_flops)):9.2f}"
                  f"   (median; the cached iteration's FLOPs at the rate around each iteration)")
    print(f"\n{TARGETS} (the published implementation's figures are in docs/benchmarks.md).")


if __name__ == "__main__":
    main()
