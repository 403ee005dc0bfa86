"""The segmentation methods that ``5fold_Train_SS_MGS.py`` trains (``--method``), and its flags.

Every method trains the same ``SegmentationNet`` on the fold's Atlas images (the only
labels), with the same epochs x iterations, AdamW, cosine schedule, validation and
selection on val; only what the method does with the unlabelled images differs.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from dataloaders.fold_data import FoldData
from utils.cli import OneLineErrorParser, add_common_args, add_training_args, check_training_args
from utils.errors import InputError
from utils.stages import abd, ad_mt, bcp, cps, mean_teacher, segmentation, ss_mgs, unimatch
from utils.stages.segmentation import SegmentationStage


@dataclass(frozen=True)
class Method:
    """One entry of the registry: what the method does (for ``--help``), how its stage is built,
    whether it needs a trained registration network (``--reg-exp``), and the destinations of
    the flags that are its own (a flag of another method is an error with it)."""

    summary: str
    build: Callable[[argparse.Namespace, int, FoldData, torch.device], SegmentationStage]
    uses_registration: bool = False
    options: tuple[str, ...] = ()


def _supervised(args: argparse.Namespace, k: int, data: FoldData, device: torch.device) -> SegmentationStage:
    """SS-MGS without its two modules: L_seg on the Atlas images only."""
    args = argparse.Namespace(**{**vars(args), "no_rsgm": True, "no_rnsf": True})
    return ss_mgs.SSMGSStage(args, k, data, device)


SS_MGS_OPTIONS = ("reg_exp", "reg_checkpoint", "rs_weight", "rnsf_weight", "ramp_fraction", "ramp_length",
                  "temperature", "negatives", "negative_mode", "coefficients", "no_rsgm", "no_rnsf")
TEACHER_OPTIONS = ("ema_decay", "consistency", "teacher_noise")

#: The one registry of segmentation methods: the trainer, the test script and ``run_demo.py`` read it.
METHODS: dict[str, Method] = {
    "supervised": Method("the Atlas images alone (the same as ss-mgs with --no-rsgm --no-rnsf)", _supervised),
    "ss-mgs": Method("the paper: RSGM images + RNSF contrastive loss (needs --reg-exp)", ss_mgs.SSMGSStage,
                     uses_registration=True, options=SS_MGS_OPTIONS),
    "mean-teacher": Method("EMA teacher on the noisy unlabelled image, softmax MSE consistency (SSL4MIS)",
                           mean_teacher.MeanTeacherStage, options=TEACHER_OPTIONS + ("consistency_start",)),
    "ua-mt": Method("Mean Teacher with the consistency masked where 8 noisy teacher passes are uncertain "
                    "(SSL4MIS)", mean_teacher.UAMTStage, options=TEACHER_OPTIONS + ("uncertainty_passes",)),
    "cps": Method("two networks, each trained on the other's argmax of the unlabelled image (SSL4MIS)",
                  cps.CPSStage, options=("cps_weight",)),
    "bcp": Method("bidirectional copy-paste of labelled and teacher-labelled unlabelled images, after a "
                  "labelled copy-paste pre-training (BCP)", bcp.BCPStage,
                  options=("ema_decay", "bcp_pretrain", "bcp_box", "bcp_pseudo_weight")),
    "unimatch": Method("weak-to-strong consistency with two strong CutMix views and a feature "
                       "perturbation (UniMatch)", unimatch.UniMatchStage,
                       options=("unimatch_threshold", "unimatch_dropout")),
    "abd": Method("BCP's copy-paste with two networks on weak and strong views and adaptive bidirectional "
                  "displacement of their least and most confident patches (ABD)", abd.ABDStage,
                  options=("ema_decay", "bcp_box", "bcp_pseudo_weight", "abd_pretrain", "abd_grid", "abd_top_k",
                           "abd_labelled_weight")),
    "ad-mt": Method("a student taught by two alternately updated EMA teachers, their conflicts resolved by "
                    "confidence, on alternating strong and CutMix views (AD-MT)", ad_mt.ADMTStage,
                    options=("ema_decay", "ad_mt_weight", "ad_mt_rampup", "ad_mt_threshold")),
}


def method_options() -> set[str]:
    """The destinations of every method-specific flag."""
    return {dest for method in METHODS.values() for dest in method.options}


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``5fold_Train_SS_MGS.py``."""
    methods = "; ".join(f"{name}: {method.summary}" for name, method in METHODS.items())
    parser = OneLineErrorParser(
        description="Train the UNet segmenter with registration sampling generation (RSGM) and "
                    "reliable-negative contrastive feature supervision (RNSF), or one of the "
                    "baselines it is compared with, for one fold or all five. SS-MGS needs the fold's "
                    "registration checkpoint (5fold_Train_Reg.py). Defaults reproduce the paper "
                    "(and, for the baselines, their public code; see README).")
    add_common_args(parser, exp_default="SEG", several_seeds=True)
    add_training_args(parser, epochs=50, iters=200, lr=1e-3)
    parser.add_argument("--method", default=None, choices=list(METHODS), metavar="METHOD",
                        help=f"training method (default: ss-mgs; supervised with --target eyelid). {methods}")
    segmentation.add_arguments(parser)
    group = parser.add_argument_group("ss-mgs (and its ablations)")
    ss_mgs.add_arguments(group)
    mean_teacher.add_arguments(parser)
    cps.add_arguments(parser)
    bcp.add_arguments(parser)
    unimatch.add_arguments(parser)
    abd.add_arguments(parser)
    ad_mt.add_arguments(parser)
    return parser


def check_args(args: argparse.Namespace) -> None:
    """One-line InputError for unusable values or a flag of another method than ``--method``;
    resolves the default ``--method``."""
    if args.method is None:
        args.method = "supervised" if args.target == "eyelid" else "ss-mgs"
    if args.target == "eyelid" and args.method != "supervised":
        raise InputError(f"--target eyelid trains the supervised segmenter only; drop --method {args.method} "
                         f"or use --method supervised")
    check_training_args(args, "temperature", "negatives", "t_max", "uncertainty_passes", "abd_grid", "abd_top_k")
    for name in ("ema_decay", "bcp_box", "unimatch_threshold", "bcp_pretrain", "consistency_start", "abd_pretrain",
                 "ad_mt_rampup", "ad_mt_threshold"):
        value = getattr(args, name)
        if not 0.0 <= value <= 1.0:
            raise InputError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
    if args.method == "bcp":
        bcp.check_schedule(args.epochs, args.bcp_pretrain)
    if args.method == "abd":
        bcp.check_schedule(args.epochs, args.abd_pretrain, "--abd-pretrain")
    for name in ("ramp_fraction", "ramp_length"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise InputError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    for name in ("unimatch_dropout", "dropout"):
        value = getattr(args, name)
        if not 0.0 <= value < 1.0:
            raise InputError(f"--{name.replace('_', '-')} must be in [0, 1), got {value}")
    for name in ("abd_labelled_weight", "ad_mt_weight"):
        if getattr(args, name) < 0:
            raise InputError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    check_method_options(args, build_parser())


def check_method_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """InputError when a flag that belongs to other methods only is set to anything but its default."""
    own = set(METHODS[args.method].options)
    for dest in sorted(method_options() - own):
        if getattr(args, dest) != parser.get_default(dest):
            owners = " / ".join(name for name, method in METHODS.items() if dest in method.options)
            flag = "--" + dest.replace("_", "-")
            raise InputError(f"{flag} belongs to --method {owners}, not to --method {args.method}; drop it "
                             f"or choose --method {owners.split(' / ')[0]}")


def build_stage(args: argparse.Namespace, k: int, data: FoldData, device: torch.device) -> SegmentationStage:
    """The stage that trains fold ``k`` with ``--method``."""
    return METHODS[args.method].build(args, k, data, device)


def training_setting(saved_args: Mapping[str, Any]) -> str:
    """The settings every method of a comparison must share, from a checkpoint's saved ``args``:
    ``"augment A, dropout P"`` (checkpoints from before these flags: ``none``, ``0``)."""
    return f"augment {saved_args.get('augment') or 'none'}, dropout {float(saved_args.get('dropout') or 0.0):g}"


def method_of(saved_args: Mapping[str, Any]) -> str:
    """How a segmentation checkpoint was trained, from its saved ``args``, for the test report:
    the method, what changes it and :func:`training_setting` (e.g. ``"ss-mgs (augment none,
    dropout 0)"``, ``"ss-mgs --no-rnsf (...)"``, ``"supervised, target eyelid (...)"``). A method
    this version does not know is named as saved."""
    method = saved_args.get("method") or "ss-mgs"
    words = [method if method in METHODS else f"{method} (unknown to this version)"]
    if method == "ss-mgs":
        words += [f"--{dest.replace('_', '-')}" for dest in ("no_rsgm", "no_rnsf") if saved_args.get(dest)]
    text = " ".join(words)
    if saved_args.get("target", "gland") != "gland":
        text += f", target {saved_args['target']}"
    return f"{text} ({training_setting(saved_args)})"


def select_methods(names: Sequence[str] | None, default: Sequence[str], flag: str = "--methods") -> list[str]:
    """A ``--methods`` value -> method names in order, without repeats: ``default`` when empty,
    every registered method for ``all``; an unknown name is an InputError."""
    if not names:
        return list(default)
    if list(names) == ["all"]:
        return list(METHODS)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise InputError(f"{flag}: unknown method(s) {', '.join(unknown)}; choose from all, {', '.join(METHODS)}")
    return list(dict.fromkeys(names))
