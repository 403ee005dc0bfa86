"""Benchmark: one training iteration of every segmentation method, side by side (prints numbers).

Each method's iteration is its stage's own ``train_step`` (``utils/stages/``), built
exactly as ``5fold_Train_SS_MGS.py --method M`` builds it, on a small synthetic data
set at the benchmark size (6 patients x 3 images; the registration net of SS-MGS is an
untrained one: the same work as a trained one), batch 1 as trained, in the run's last
epoch (past Mean Teacher's gate and BCP's and ABD's pre-training; AD-MT held in its CutMix
phase, the costlier one, so that the timed and the counted iterations do the same work).
The methods are those of the registry (``utils/stages/segmentation_methods.py``). For each method,
in its own fresh subprocess: FLOPs of the iteration (``FlopCounterMode``: matmuls and
convolutions, forward and backward, the no-grad teacher and partner passes included),
the fp32 matmul rate sampled between the timed iterations, seconds per iteration
(median after a few untimed iterations), the ratio to the method's own FLOP floor (median over the
timed iterations, each at the rate around it), that ratio over the supervised method's of
the same run (the target: at most 1.1, i.e. no overhead beyond the method's extra passes;
the absolute ratio follows the machine), and peak resident memory (and on CUDA the GPU's
peak allocated memory).

    python benchmarks/bench_methods.py                         # 350 x 740, every method (--methods all), CPU
    python benchmarks/bench_methods.py --device cuda           # the same on a GPU (mixed precision)
    python benchmarks/bench_methods.py --height 64 --width 128 --iters 1 --methods supervised cps
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.measure import (add_iteration_args, count_flops, describe_setup, emit,  # noqa: E402
                                floor_ratios, iteration_argv, peak_memory, run_child, setup_child,
                                time_iterations)
from utils.stages.segmentation_methods import METHODS as REGISTRY  # noqa: E402

METHODS = tuple(REGISTRY)
REFERENCE = "supervised"
TARGET = 1.1  # each method's floor ratio over the supervised method's, same machine and run


def _parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Seconds, FLOPs, ratio to the FLOP floor and peak memory of one "
                                             "training iteration of every segmentation method.")
    add_iteration_args(ap, iters=5)
    ap.add_argument("--warmup", type=int, default=3,
                    help="untimed iterations first: the allocator's heap settles over the first few (default: 3)")
    ap.add_argument("--methods", nargs="+", default=["all"], choices=("all",) + METHODS,
                    help="methods to measure, each in its own process: 'all' (every registered method, "
                         "the default) or a list")
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--child", choices=("setup",) + METHODS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if "all" in args.methods:
        args.methods = list(METHODS)
    return args


def _setup(args: argparse.Namespace) -> None:
    """The data set, its folds and pre-alignment, and an (untrained) registration checkpoint."""
    import torch

    from dataloaders.dataset import DatasetFolder

    from dataloaders.folds import load_fold
    from dataloaders.prealignment.cache import ensure_prealignment
    from networks.registration_net import RegistrationNet
    from utils.files import atomic_save, atomic_write_json
    from utils.synthetic.generate import generate_dataset
    from dataloaders.splits import make_folds

    data = Path(args.data)
    generate_dataset(data / "data", patients=6, images_per_patient=3, size=(args.width, args.height), seed=0,
                     progress=False)
    folds = make_folds(data / "data", labelled_per_patient=1)
    folder = DatasetFolder(data / "data")
    ensure_prealignment(folder, [s.images for s in load_fold(data / "data", 1, folder).patients], progress=False)
    torch.manual_seed(0)
    run = data / "runs" / "REG" / "fold1"
    atomic_save({"model": RegistrationNet().state_dict()}, run / "best.pth")
    atomic_write_json({"best": "best.pth", "checkpoints": []}, run / "best.json")
    emit({"train_patients": len(folds[0]["train"])})


def _child(args: argparse.Namespace) -> None:
    import torch

    from dataloaders.fold_data import open_fold
    from utils.stages.segmentation_methods import build_parser, build_stage
    from utils.training.engine import make_loader
    from utils.training.runtime import seed_everything

    result = setup_child(args)
    device = torch.device(args.device)
    data = Path(args.data)
    argv = ["--data-dir", str(data / "data"), "--runs-dir", str(data / "runs"), "--method", args.child,
            "--reg-exp", "REG", "--device", args.device, "--workers", "0", "--no-progress"]
    stage_args = build_parser().parse_args(argv)
    seed_everything(0)
    stage = build_stage(stage_args, 1, open_fold(stage_args.data_dir, 1, progress=False), device)
    last = stage_args.epochs - 1  # the run's steady state: past Mean Teacher's gate and BCP's pre-training
    stage.start(last, None)
    stage.start_epoch(last)
    hold_costlier_phase(stage)
    batch = next(iter(make_loader(stage.train_set, 1, 0)))
    result["amp"] = stage.amp

    def iteration() -> None:
        stage.train_step(batch, lambda terms: None)

    result["iter_s"], result["rate"], result["iter_rates"] = time_iterations(iteration, args.iters, args.device,
                                                                             warmup=args.warmup)
    peak_memory(result, args.device)
    result["iter_flops"], _ = count_flops(iteration)
    emit(result)


def hold_costlier_phase(stage) -> None:
    """A stage whose work changes from step to step does the same work in every measured step:
    AD-MT stays in its CutMix phase (its teachers then also see the partner image)."""
    alternation = getattr(stage, "alternation", None)
    if alternation is not None:
        alternation.first_active, alternation.count, alternation.period = False, 0, 10 ** 9


def main(argv=None) -> None:
    args = _parse(argv)
    if args.child == "setup":
        _setup(args)
        return
    if args.child:
        _child(args)
        return
    print(f"segmentation training iteration of every method, {args.height} x {args.width}, batch 1, {args.device}"
          f"{' (mixed precision)' if args.device == 'cuda' else ''}, {args.iters} timed iterations after "
          f"{args.warmup} untimed ones")
    with tempfile.TemporaryDirectory(prefix="bench_methods_") as tmp:
        common = ["--data", tmp, "--warmup", str(args.warmup), *iteration_argv(args)]
        made = run_child(Path(__file__).resolve(), ["--child", "setup", *common])
        if "error" in made:
            print(f"data set-up failed: {made['error']}")
            return
        results = {m: run_child(Path(__file__).resolve(), ["--child", m, *common]) for m in args.methods}
    ok = {m: r for m, r in results.items() if "error" not in r}
    if ok:
        print(describe_setup(next(iter(ok.values()))))
    gpu = any("gpu_peak_mib" in r for r in ok.values())
    ratios = {m: statistics.median(floor_ratios(r)) for m, r in ok.items()}
    print(f"\n{'method':<14}{'s/iter':>9}{'GFLOP/iter':>12}{'rate GFLOP/s':>14}{'floor s':>9}{'ratio':>8}"
          f"{'vs ' + REFERENCE[:3]:>8}{'peak MiB':>10}" + (f"{'GPU MiB':>9}" if gpu else ""))
    for method, r in results.items():
        if "error" in r:
            print(f"{method:<14}failed: {r['error']}")
            continue
        relative = ratios[method] / ratios[REFERENCE] if REFERENCE in ratios else float("nan")
        print(f"{method:<14}{statistics.median(r['iter_s']):>9.2f}{r['iter_flops'] / 1e9:>12.1f}"
              f"{r['rate'] / 1e9:>14.1f}{r['iter_flops'] / r['rate']:>9.2f}{ratios[method]:>8.2f}{relative:>8.2f}"
              f"{r['peak_mib']:>10.0f}" + (f"{r.get('gpu_peak_mib', float('nan')):>9.0f}" if gpu else ""))
    over = [m for m in ratios if REFERENCE in ratios and ratios[m] > TARGET * ratios[REFERENCE]]
    print(f"\nratio: median over the timed iterations of seconds x (matmul rate around the iteration) / the "
          f"method's FLOPs; vs {REFERENCE[:3]}: that ratio over the {REFERENCE} method's of this run; target: "
          f"<= {TARGET} x the {REFERENCE} method's ratio"
          + ("" if REFERENCE in ratios else f" (measure {REFERENCE} too to compare)")
          + (f"; above it: {', '.join(over)}" if over else ""))


if __name__ == "__main__":
    main()
