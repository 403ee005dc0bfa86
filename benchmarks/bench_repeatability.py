"""Benchmark: what a seeded training run repeats under, and what moves it.

Trains the same short segmentation run (``5fold_Train_SS_MGS.py``, fold 1) several times,
each a child process that changes one thing against the reference (1 CPU thread, no
data-loader workers, ``--seed 3407``): the same settings again, another thread count,
another number of workers, another seed. Prints per run the last epoch's val IoU, the
largest absolute difference of any network weight from the reference and whether the
weights are identical, with the wall time of each run (disturbed on a shared machine).

    python benchmarks/bench_repeatability.py                                     # 256 x 128, 2 x 25
    python benchmarks/bench_repeatability.py --size 64 32 --epochs 1 --iters 2   # a quick look
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: name -> (threads, workers, seed); the first is the reference.
VARIANTS = {"reference (1 thread, 0 workers)": (1, 0, 3407), "the same again": (1, 0, 3407),
            "2 threads": (2, 0, 3407), "2 workers": (1, 2, 3407), "another seed": (1, 0, 3417)}


def _parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Train one short seeded run under changed thread counts, "
                                             "worker counts and seeds; print how far each lands from the first.")
    ap.add_argument("--size", type=int, nargs=2, default=(256, 128), metavar=("W", "H"),
                    help="image size of the generated demo set (default: 256 128)")
    ap.add_argument("--patients", type=int, default=12, help="patients of the generated set (default: 12)")
    ap.add_argument("--method", default="supervised", help="segmentation method (default: supervised)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs (default: 2)")
    ap.add_argument("--iters", type=int, default=25, help="iterations per epoch (default: 25)")
    ap.add_argument("--variants", nargs="+", type=int, default=None, metavar="I",
                    help=f"which variants to run, by index (default: all): "
                         f"{'; '.join(f'{i}: {n}' for i, n in enumerate(VARIANTS))}")
    return ap.parse_args(argv)


def _train(data: Path, runs: Path, exp: str, threads: int, workers: int, seed: int, args) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "5fold_Train_SS_MGS.py"), "--data-dir", str(data), "--runs-dir",
                    str(runs), "--exp", exp, "--method", args.method, "--fold", "1", "--device", "cpu",
                    "--epochs", str(args.epochs), "--iters", str(args.iters), "--workers", str(workers),
                    "--threads", str(threads), "--seed", str(seed), "--no-progress", "--panel-every", "0"],
                   check=True, cwd=ROOT, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return time.perf_counter() - started


def main(argv=None) -> None:
    args = _parse(argv)
    import torch

    from dataloaders.splits import make_folds
    from utils.synthetic.generate import generate_dataset
    from utils.training.checkpoints import load_checkpoint

    chosen = [name for i, name in enumerate(VARIANTS) if args.variants is None or i in args.variants or i == 0]
    with tempfile.TemporaryDirectory() as tmp:
        data, runs = Path(tmp) / "data", Path(tmp) / "runs"
        generate_dataset(data, patients=args.patients, images_per_patient=4, size=tuple(args.size), seed=0,
                         progress=False)
        make_folds(data)
        print(f"{args.method}, fold 1, {args.epochs} x {args.iters} iterations at {args.size[0]} x {args.size[1]}, "
              f"torch {torch.__version__}; wall times are disturbed on a shared machine")
        reference = None
        for i, name in enumerate(chosen):
            threads, workers, seed = VARIANTS[name]
            seconds = _train(data, runs, f"v{i}", threads, workers, seed, args)
            state = load_checkpoint(runs / f"v{i}" / "fold1" / "last.pth")
            weights = state["model"]
            reference = reference or weights
            gap = max((weights[k].double() - reference[k].double()).abs().max().item() for k in weights)
            print(f"{name:<32} val IoU {state['score']:.4f}  max |weight - reference| {gap:.3g}  "
                  f"{'identical' if gap == 0 else 'differs'}  [{seconds:.0f} s]")


if __name__ == "__main__":
    main()
