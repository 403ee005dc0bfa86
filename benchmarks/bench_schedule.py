"""Benchmark: a shortened training schedule, timed by phase, extrapolated to the paper's full one.

Runs each stage the way the trainers do (``utils.training.fold_runner.train_fold``) for a
few epochs x iterations on one fold, timing its phases: set-up (data, pre-alignment,
SS-MGS's registration cache, networks), training iterations, validation, checkpoint
writing. Then extrapolates every stage to the paper's schedule (registration 200 x
200, SS-MGS and the supervised baseline 50 x 200) and to five folds:

    set-up + epochs x (iterations x s/iteration + validation + checkpoints)

The data set is generated (73 patients x 4 images at the paper's 740 x 350 unless
told otherwise) or given with ``--data-dir`` (folds and pre-alignment made if missing).

    python benchmarks/bench_schedule.py --device cuda             # the GPU figures of docs/benchmarks.md
    python benchmarks/bench_schedule.py --patients 12 --size 256 128 --epochs 2 --iters 5   # a quick look
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FULL = {"registration": (200, 200), "ss-mgs": (50, 200), "supervised": (50, 200)}


def _parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Time a shortened schedule per phase and extrapolate the full "
                                             "five-fold schedule of the paper.")
    ap.add_argument("--data-dir", default=None, help="an existing data set (default: generate one)")
    ap.add_argument("--patients", type=int, default=73, help="patients of the generated set (default: 73)")
    ap.add_argument("--size", type=int, nargs=2, default=(740, 350), metavar=("W", "H"),
                    help="image size of the generated set (default: 740 350)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of each shortened stage (default: 2)")
    ap.add_argument("--iters", type=int, default=20, help="iterations per epoch of each stage (default: 20)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="device (default: auto)")
    ap.add_argument("--workers", type=int, default=2, help="data-loader workers (default: 2)")
    return ap.parse_args(argv)


def _dataset(args: argparse.Namespace, tmp: Path) -> Path:
    from utils.synthetic.generate import generate_dataset
    from dataloaders.splits import make_folds
    data = Path(args.data_dir) if args.data_dir else tmp / "data"
    if not args.data_dir:
        generate_dataset(data, patients=args.patients, images_per_patient=4, size=tuple(args.size), seed=0,
                         progress=False)
    if not (data / "train_dict1.json").is_file():
        make_folds(data)
    return data


class PhaseTimer:
    """Accumulated seconds and counts per phase, filled by wrapping a stage's methods."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def wrap(self, phase: str, fn, synchronize):
        def timed(*a, **kw):
            started = time.perf_counter()
            result = fn(*a, **kw)
            synchronize()
            self.seconds[phase] += time.perf_counter() - started
            self.counts[phase] += 1
            return result
        return timed


def _run_stage(name: str, argv: list[str], device, timer: PhaseTimer) -> float:
    """Train one stage on fold 1 with its phases timed; returns the wall time of the whole call."""
    import torch

    from utils.stages.registration import RegistrationStage
    from utils.stages.registration import build_parser as registration_parser
    from utils.stages.segmentation_methods import build_parser, build_stage, check_args
    from utils.training.checkpoints import CheckpointManager
    from utils.training.fold_runner import train_fold

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    if name == "registration":
        args, builder = registration_parser().parse_args(argv), RegistrationStage
    else:
        args = build_parser().parse_args(argv + ["--method", name] + (["--reg-exp", "REG"] if name == "ss-mgs" else []))
        check_args(args)
        builder = build_stage

    def timed_build(stage_args, k, data, dev):
        started = time.perf_counter()
        stage = builder(stage_args, k, data, dev)
        timer.seconds["set-up"] += time.perf_counter() - started
        stage.train_step = timer.wrap("iterations", stage.train_step, synchronize)
        stage.validate = timer.wrap("validation", stage.validate, synchronize)
        return stage

    original_save = CheckpointManager.save_epoch
    CheckpointManager.save_epoch = timer.wrap("checkpoints", original_save, synchronize)
    try:
        started = time.perf_counter()
        train_fold(args, 1, device, timed_build)
        return time.perf_counter() - started
    finally:
        CheckpointManager.save_epoch = original_save


def main(argv=None) -> None:
    args = _parse(argv)
    from utils.training.memory import keep_freed_memory
    from utils.training.runtime import select_device
    device = select_device(args.device)
    if device.type == "cpu":
        keep_freed_memory()
    with tempfile.TemporaryDirectory(prefix="bench_schedule_") as tmp:
        data = _dataset(args, Path(tmp))
        common = ["--data-dir", str(data), "--runs-dir", str(Path(tmp) / "runs"), "--device", args.device,
                  "--epochs", str(args.epochs), "--iters", str(args.iters), "--workers", str(args.workers),
                  "--no-progress", "--panel-every", "0"]
        print(f"shortened schedule: {args.epochs} epochs x {args.iters} iterations per stage, fold 1, {data}, "
              f"{device}")
        total_full = 0.0
        print(f"\n{'stage':<14}{'wall s':>9}{'set-up s':>10}{'s/iter':>9}{'val s/ep':>10}{'ckpt s/ep':>10}"
              f"{'full schedule, 1 fold':>24}{'5 folds':>10}")
        for name in ("registration", "ss-mgs", "supervised"):
            timer = PhaseTimer()
            wall = _run_stage(name, common + ["--exp", "REG" if name == "registration" else name], device, timer)
            per_iter = timer.seconds["iterations"] / max(timer.counts["iterations"], 1)
            per_val = timer.seconds["validation"] / max(timer.counts["validation"], 1)
            per_ckpt = timer.seconds["checkpoints"] / max(timer.counts["checkpoints"], 1)
            epochs, iters = FULL[name]
            full = timer.seconds["set-up"] + epochs * (iters * per_iter + per_val + per_ckpt)
            total_full += 5 * full
            print(f"{name:<14}{wall:>9.1f}{timer.seconds['set-up']:>10.1f}{per_iter:>9.3f}{per_val:>10.2f}"
                  f"{per_ckpt:>10.2f}{full / 60:>20.1f} min{5 * full / 60:>7.0f} min")
        print(f"\nthe paper's whole five-fold schedule (registration, SS-MGS, supervised), one after another: "
              f"{total_full / 3600:.2f} h")


if __name__ == "__main__":
    main()
