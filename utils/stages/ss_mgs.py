"""SS-MGS (docs/METHOD.md sections 3-5): RSGM images and the RNSF loss on top of the shared segmenter.

One iteration: RSGM images ``g1, g2`` and label ``y_g`` from the cached outputs of
the fold's frozen registration net; one forward pass over ``[x_l, g1, g2, u_neg]``;
``L_seg + L_rs + rnsf_weight * ramp(epoch) * L_rnsf``, the ramp spanning ``--ramp-fraction``
of the run (or ``--ramp-length`` epochs), epochs counted from 1. ``--no-rsgm`` / ``--no-rnsf``
drop a term (the ablations); with both, no registration net is loaded and the
stage trains the supervised-only baseline on the Atlas images. ``--augment`` transforms
the step's images after the RSGM generation (:func:`segmentation_step`).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from dataloaders.fold_data import FoldData
from dataloaders.registration_cache import RegistrationOutputCache
from networks.losses import deep_supervision_loss, dice_ce_loss
from networks.registration_net import RegistrationNet
from networks.rnsf import rnsf_loss
from networks.rsgm import rsgm_generate, sample_coefficients
from networks.weights import freeze
from utils.stages.augmentations import Augment, no_augmentation
from utils.stages.registration import load_registration_network
from utils.training.checkpoints import find_best_checkpoint, run_dir_serving_seed
from utils.training.engine import FiniteCheck
from utils.training.fold_runner import run_label
from utils.training.runtime import make_generator
from utils.training.schedules import epoch_ramp, ramp_length
from utils.stages.segmentation import SegmentationStage, panel_tiles, scaled_step, split_outputs, tile_panel


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """SS-MGS's own flags: the registration checkpoint, the loss weights, RNSF and RSGM settings."""
    parser.add_argument("--reg-exp", default="REG",
                        help="registration experiment whose best checkpoint of the same fold is loaded: "
                             "from RUNS/REG_EXP/seed<S>/fold<K>/ when it exists for this run's seed S, else "
                             "from RUNS/REG_EXP/fold<K>/ (one registration model per fold serves every "
                             "seed; default: REG)")
    parser.add_argument("--reg-checkpoint", default=None,
                        help="explicit registration checkpoint file (overrides --reg-exp; with --fold all "
                             "the same file serves every fold)")
    parser.add_argument("--rs-weight", type=float, default=0.5,
                        help="L_rs = RS_WEIGHT * (DiceCE(g1) + DiceCE(g2)) (default: 0.5)")
    parser.add_argument("--rnsf-weight", type=float, default=0.1,
                        help="weight of L_rnsf, times the ramp-up (default: 0.1)")
    parser.add_argument("--ramp-fraction", type=float, default=1.0, metavar="F",
                        help="length L of the exp(-5(1-e/L)^2) ramp-up of the RNSF weight as a fraction of "
                             "--epochs, epochs e counted from 1, so the ramp's last epoch gets the full weight "
                             "(default: 1.0, the whole run: the paper's 50 of 50 epochs)")
    parser.add_argument("--ramp-length", type=int, default=None, metavar="EPOCHS",
                        help="the ramp's length L in epochs instead; when given it wins over --ramp-fraction "
                             "(default: not set)")
    parser.add_argument("--temperature", type=float, default=0.1, help="RNSF temperature (default: 0.1)")
    parser.add_argument("--negatives", type=int, default=250, help="RNSF negatives per anchor K (default: 250)")
    parser.add_argument("--negative-mode", default="reliable", choices=("reliable", "random", "mean"),
                        help="RNSF negative choice: the K most confident of the other class, K random "
                             "ones, or their mean (default: reliable)")
    parser.add_argument("--coefficients", default="uniform", choices=("uniform", "beta"),
                        help="RSGM alpha, beta ~ Uniform(0,1) or Beta(0.3,0.3) as in BRBS (default: uniform)")
    parser.add_argument("--no-rsgm", action="store_true",
                        help="drop the L_rs term (generated images are still made for RNSF when it is on)")
    parser.add_argument("--no-rnsf", action="store_true", help="drop the L_rnsf term")


@dataclass
class SegmentationConfig:
    use_rsgm: bool = True
    use_rnsf: bool = True
    rs_weight: float = 0.5
    rnsf_weight: float = 0.1
    temperature: float = 0.1
    negatives: int = 250
    negative_mode: str = "reliable"
    coefficients: str = "uniform"

    @property
    def uses_registration(self) -> bool:
        """Whether the step needs RSGM images (for L_rs, RNSF, or both)."""
        return self.use_rsgm or self.use_rnsf

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "SegmentationConfig":
        return cls(use_rsgm=not args.no_rsgm, use_rnsf=not args.no_rnsf, rs_weight=args.rs_weight,
                   rnsf_weight=args.rnsf_weight, temperature=args.temperature, negatives=args.negatives,
                   negative_mode=args.negative_mode, coefficients=args.coefficients)


def step_inputs(batch: dict, cache, config: SegmentationConfig, generator: torch.Generator,
                device: torch.device, augment: Augment = no_augmentation
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The input groups of one SS-MGS forward pass (``x_l`` and, as the settings use them,
    ``g1``, ``g2``, ``u_neg``; each ``[B, 1, H, W]``, in that order) and their labels (``y_l``,
    ``y_g``; one-hot ``[B, 2, H, W]``).

    RSGM generates ``g1, g2, y_g`` from the cached registration outputs, which are aligned with
    the images as stored; ``augment`` (``--augment``) acts after that: on ``x_l`` with ``y_l``,
    on ``g1``, ``g2`` and ``y_g`` with one transform (they stay pixel-aligned, as RNSF's positive
    pairs need), and on ``u_neg``, in that order.
    """
    x_l, y_l = batch["x_l"].to(device), batch["y_l"].to(device)
    if config.uses_registration:
        w_u1, phi_u2 = cache.get(batch["atlas_name"], batch["u1_name"], batch["u2_name"], device)
        alpha, beta = sample_coefficients(x_l.shape[0], config.coefficients, generator, device)
        g1, g2, y_g = rsgm_generate(x_l, y_l, w_u1, phi_u2, alpha, beta)
    (x_l,), (y_l,) = augment([x_l], [y_l])
    groups, labels = {"x_l": x_l}, {"y_l": y_l}
    if config.uses_registration:
        (g1, g2), (y_g,) = augment([g1, g2], [y_g])
        groups.update(g1=g1, g2=g2)
        labels["y_g"] = y_g
    if config.use_rnsf:
        (groups["u_neg"],), _ = augment([batch["u_neg"].to(device)])
    return groups, labels


def segmentation_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                      batch: dict, cache, config: SegmentationConfig, ramp: float,
                      generator: torch.Generator, device: torch.device, amp: bool = False,
                      check: FiniteCheck = lambda terms: None,
                      augment: Augment = no_augmentation) -> tuple[dict[str, float], dict]:
    """One SS-MGS iteration on a :class:`dataloaders.segmentation_data.SegmentationTrainSet` batch.

    ``cache``: anything with ``get(atlas_names, u1_names, u2_names, device) -> (w_u1,
    phi_u2)`` (:class:`RegistrationOutputCache`; unused when both RSGM and RNSF are off);
    the inputs and ``augment``: :func:`step_inputs`. Returns the loss terms (``seg``,
    ``rs_g1``, ``rs_g2``, ``rs``, ``rnsf``, ``total``, as applicable) and ``{"images",
    "outputs"}`` of the step (outputs split per input group).
    """
    groups, labels = step_inputs(batch, cache, config, generator, device, augment)
    y_l, y_g = labels["y_l"], labels.get("y_g")
    with torch.autocast(device_type=device.type, enabled=amp):
        outputs = net(torch.cat(list(groups.values())))
    out = split_outputs(outputs, groups)
    terms = {"seg": deep_supervision_loss(out["x_l"], y_l)}
    total = terms["seg"]
    if config.use_rsgm:
        terms["rs_g1"] = dice_ce_loss(out["g1"]["out"], y_g)
        terms["rs_g2"] = dice_ce_loss(out["g2"]["out"], y_g)
        terms["rs"] = config.rs_weight * (terms["rs_g1"] + terms["rs_g2"])
        total = total + terms["rs"]
    if config.use_rnsf:
        terms["rnsf"] = rnsf_loss(out["g1"]["project"], out["g2"]["project"], out["g1"]["project_map"],
                                  out["u_neg"]["project"], out["u_neg"]["project_map"],
                                  temperature=config.temperature, k=config.negatives,
                                  mode=config.negative_mode, generator=generator)
        total = total + config.rnsf_weight * ramp * terms["rnsf"]
    terms["total"] = total
    check(terms)
    scaled_step(total, optimizer, scaler)
    images = {name: groups[name] for name in ("x_l", "g1", "g2") if name in groups}
    images.update({"y_g": y_g} if y_g is not None else {}, **{n: groups[n] for n in ("u_neg",) if n in groups})
    return {name: value.item() for name, value in terms.items()}, {"images": images, "outputs": out}


def load_registration_net(args: argparse.Namespace, k: int, device: torch.device) -> RegistrationNet:
    """The fold's best registration network, frozen: ``--reg-checkpoint``, or that of
    ``--reg-exp`` which serves the run's seed (``RUNS/REG/seed<S>/fold<K>`` when it exists,
    else ``RUNS/REG/fold<K>``)."""
    path = args.reg_checkpoint or find_best_checkpoint(
        run_dir_serving_seed(args.runs_dir, args.reg_exp, k, args.seed),
        hint=f"python 5fold_Train_Reg.py --data-dir {args.data_dir} --fold {k} --exp {args.reg_exp} "
             f"(or --seeds {args.seed} for a registration of this seed only)")
    net, _ = load_registration_network(path, device)
    integration = f" (velocity integrated in {net.integration_steps} steps)" if net.integration_steps else ""
    print(f"{run_label(args, k)}: registration network from {path}{integration}")
    return freeze(net)


class SSMGSStage(SegmentationStage):
    """SS-MGS: the shared segmenter trained with RSGM (``L_rs``) and RNSF (``L_rnsf``)."""

    def __init__(self, args: argparse.Namespace, k: int, data: FoldData, device: torch.device) -> None:
        self.config = SegmentationConfig.from_args(args)
        self.cache = None
        super().__init__(args, k, data, device)
        self.rnsf_weight, self.ramp = args.rnsf_weight, 0.0
        self.ramp_length = ramp_length(args.epochs, args.ramp_fraction, args.ramp_length)
        self.coefficient_rng = make_generator(args.seed + k)

    def build_before_network(self, args: argparse.Namespace, k: int, data: FoldData) -> None:
        """The registration outputs of every training pair, from the fold's frozen registration net."""
        if self.config.uses_registration:
            reg_net = load_registration_net(args, k, self.device)
            self.cache = RegistrationOutputCache(reg_net, data.folder, data.fold.train, data.prealign, self.device,
                                                 progress=self.progress)

    def state(self) -> dict:
        return {**super().state(), "coefficient_rng": self.coefficient_rng}

    def start_epoch(self, epoch: int) -> None:
        self.ramp = epoch_ramp(epoch, self.ramp_length)

    def train_step(self, batch: dict, check: FiniteCheck) -> tuple[dict[str, float], dict]:
        return segmentation_step(self.net, self.optimizer, self.scaler, batch, self.cache, self.config, self.ramp,
                                 self.coefficient_rng, self.device, self.amp, check, self.augment)

    def epoch_scalars(self, epoch: int) -> dict[str, float]:
        return {"rnsf_ramp_weight": self.rnsf_weight * self.ramp}

    def panel(self, last: dict) -> tuple[str, torch.Tensor]:
        """x_l, g1, g2, y_g, u_neg of the last training batch and their predictions."""
        return tile_panel("train/panel", panel_tiles(last["images"], last["outputs"]))
