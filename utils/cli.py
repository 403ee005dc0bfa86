"""Command-line flags shared by the three top-level scripts, and the one-line-error parser of every command."""
from __future__ import annotations

import argparse

from utils.errors import InputError


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse whose usage errors are one-line InputErrors (printed by ``run_cli``, exit 2),
    naming the command's ``--help``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"{message} (see {self.prog} --help)")


DEFAULT_SEED = 3407


def add_common_args(parser: argparse.ArgumentParser, exp_default: str | None = None,
                    data_required: bool = True, several_exps: bool = False, several_seeds: bool = False) -> None:
    """--data-dir, --fold, --exp, --runs-dir, --device, --seed, --resize.

    ``several_exps``: ``--exp`` takes one or more names (required); else one name
    defaulting to ``exp_default``. ``several_seeds`` (the trainers): ``--seeds`` as an
    alternative to ``--seed`` (``args.seeds`` is None without it)."""
    parser.add_argument("--data-dir", required=data_required, default=None,
                        help="dataset root holding Image/, Label/ and train_dict{1..5}.json")
    parser.add_argument("--fold", default="1",
                        help="fold to run: 1..5, a list such as 1,3, or 'all' for the five folds in turn "
                             "(default: 1)")
    if several_exps:
        parser.add_argument("--exp", required=True, nargs="+",
                            help="experiment name(s) under RUNS; every run of each (RUNS/NAME/seed<S>/fold<K>/, "
                                 "else RUNS/NAME/fold<K>/) is scored; several are shown side by side, and (seg "
                                 "mode) each is compared with the first one named, per image and over runs")
    else:
        parser.add_argument("--exp", default=exp_default,
                            help=f"experiment name; outputs go to RUNS/NAME/fold<K>/, with --seeds to "
                                 f"RUNS/NAME/seed<S>/fold<K>/ (default: {exp_default})")
    parser.add_argument("--runs-dir", default="runs", help="root folder of all outputs (default: runs)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="compute device; auto = cuda when present (default: auto)")
    if several_seeds:
        seeds = parser.add_mutually_exclusive_group()
        seeds.add_argument("--seed", type=int, default=DEFAULT_SEED,
                           help=f"the seed of one run in RUNS/NAME/fold<K>/; fold K is seeded with SEED + K "
                                f"(default: {DEFAULT_SEED})")
        seeds.add_argument("--seeds", type=int, nargs="+", default=None, metavar="S",
                           help="one run per seed, each in RUNS/NAME/seed<S>/fold<K>/ (a single --seeds S "
                                "too), seeded with S + K (seeds 5 or more apart never share a stream); the "
                                "seeds are replicates for the run-level comparison of the test script. "
                                "--resume continues each seed and fold")
    else:
        parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                            help=f"random seed (default: {DEFAULT_SEED})")
    parser.add_argument("--resize", type=int, nargs=2, metavar=("W", "H"), default=None,
                        help="process every image at W x H (needed when image sizes differ; default: "
                             "native size)")


def add_training_args(parser: argparse.ArgumentParser, epochs: int, iters: int, lr: float,
                      keep: int = 10) -> None:
    """--epochs, --iters, --lr, --batch-size, --resume, --overwrite, --keep-best, --workers,
    --threads, --panel-every, --no-progress."""
    parser.add_argument("--epochs", type=int, default=epochs, help=f"training epochs (default: {epochs})")
    parser.add_argument("--iters", type=int, default=iters,
                        help=f"iterations per epoch; each draws random training patients (default: {iters})")
    parser.add_argument("--lr", type=float, default=lr, help=f"learning rate (default: {lr:g})")
    parser.add_argument("--batch-size", type=int, default=1, help="samples per iteration (default: 1)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from RUNS/NAME/fold<K>/last.pth (with --seeds: each seed's "
                             "RUNS/NAME/seed<S>/fold<K>/last.pth; model, optimizer, epoch, RNG states)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the checkpoints and logs of an earlier run of the same --exp and fold "
                             "(without it, such a folder is an error unless --resume)")
    parser.add_argument("--keep-best", type=int, default=keep,
                        help=f"how many best checkpoints to keep (default: {keep})")
    parser.add_argument("--workers", type=int, default=2,
                        help="data-loader worker processes; 0 loads in the main process; results do not depend "
                             "on it (default: 2)")
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help="CPU threads of torch (default 0: torch's choice, one per core or OMP_NUM_THREADS). "
                             "A seeded CPU run repeats exactly only with the same thread count (and CPU kind and "
                             "torch build; docs/COMPARISON.md); each checkpoint records it")
    parser.add_argument("--panel-every", type=int, default=5,
                        help="write a TensorBoard image panel every N epochs (default: 5)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def check_positive(args: argparse.Namespace, *names: str) -> None:
    """Raise InputError if any named integer/float flag is not > 0."""
    for name in names:
        value = getattr(args, name)
        if value is None or value <= 0:
            raise InputError(f"--{name.replace('_', '-')} must be > 0, got {value}")


def check_training_args(args: argparse.Namespace, *positive: str) -> None:
    """Validate the flags of :func:`add_training_args` (and the extra ``positive`` ones)."""
    check_positive(args, "epochs", "iters", "lr", "batch_size", "keep_best", *positive)
    if args.workers < 0:
        raise InputError(f"--workers must be >= 0, got {args.workers}")
    if args.threads < 0:
        raise InputError(f"--threads must be >= 0 (0: torch's choice), got {args.threads}")
    seeds = getattr(args, "seeds", None)
    if seeds is not None and len(set(seeds)) < len(seeds):
        raise InputError(f"--seeds {' '.join(map(str, seeds))}: a seed is repeated; each seed is one run")
