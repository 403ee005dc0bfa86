"""Adaptive Bidirectional Displacement, ABD (CVPR 2024; chy-upc/ABD ``code/train_ACDC_BCP.py`` with
``code/utils/displacement.py``), ported on top of the BCP stage (:mod:`utils.stages.bcp`).

The public code has two 2D ACDC trainers: ABD on BCP (the reported ACDC figures) and ABD on
cross-teaching (a UNet beside a Swin-UNet, ``code/train_ACDC_Cross_Teaching.py``). This port
is ABD on BCP; the cross-teaching trainer's labelled-image displacement is an option.

Pre-training: BCP's labelled copy-paste of network 1 for the first quarter of the epochs
(the original's 10k pre-training iterations before its 30k self-training ones). Its
best-on-val weights start network 1, network 2 (which also takes network 1's optimizer
state: the original loads one checkpoint into both) and the EMA teacher (decay 0.99, of
network 1). Only self-training epochs are selectable, as the original saves its model
during self-training only.

Self-training step: a strong view of each of the four images (cutout with p 0.5: a box of
area U(0.02, 0.4) of the image and aspect U(0.3, 1/0.3) filled with random 0/1 pixels, the
label cleared inside it; then brightness and contrast factors U(0.2, 1.8) in random order,
ColorJitter(0.8) of a gray image). The teacher's argmax labels the unlabelled images in
both views. BCP's two mixes (one zero box of 2/3 the sides) of the weak views go to network
1, those of the strong views to network 2, each with BCP's region losses ``(Dice + CE) / 2``
(pseudo-labelled regions weigh 0.5). Cross pseudo supervision on the mixes: the Dice loss
of each network against the other's argmax. Displacement (ABD-I, :func:`unlabelled_moves`):
each image is cut into a 4 x 4 grid of patches, a patch's confidence being the mean of its
pixels' max softmax; per mixed image, with probability 1/2 the least confident patch of each
view is replaced by the most confident patch of the other view, otherwise by the one among
the other view's 4 most confident patches whose class distribution (softmax of the
patch-mean logits) is closest to the replaced patch's: ``argmin_j KL(q_replaced || q_j)``.
Both networks see the four displaced images, with cross pseudo supervision (Dice) again.
Loss per network ``(Dice + CE) / 2 + cross_mix + cross_displaced``, unweighted; the two summed.

Labelled displacement (ABD-R of the cross-teaching trainer, ``--abd-labelled-weight W``; 0,
the default, is the BCP trainer, which has none): with probability 1/2 per labelled image
the most confident patch of each view (weak: network 1's confidence, strong: network 2's)
is replaced by the least confident patch of the other view, the labels alike; both
networks take ``W L_seg`` on the two displaced labelled images during the first 2/3 of
self-training (the original: weight 2 on ``(CE + Dice) / 2``, off after 20k of 30k iterations).

Port notes (docs/METHOD.md sections 7, 8): the patch grid covers the first
``grid * (H // grid)`` rows and ``grid * (W // grid)`` columns (the original's 256 x 256
divides by 4), the rest is never displaced; both displacements of a pair read the views as
they were before either (the original reads the second after the first, which differs only
when one patch is both the most and the least confident); BCP's port notes hold (every
pseudo-label component kept, two Atlas images of different patients per step, the
project's soft Dice, here also in the cross pseudo supervision); ``L_seg`` replaces
``(CE + Dice) / 2`` in the labelled displacement; no geometric weak augmentation (no method
here uses one); a cutout box is drawn as UniMatch's CutMix box (size drawn once, position
redrawn until it fits; the original redraws both); network 2 is the same ``SegmentationNet``
(as in the BCP trainer), with its own AdamW and cosine schedule, both checkpointed. Network
1 is validated and tested, as the original reports it.
"""
from __future__ import annotations

import argparse
import copy
import re
import warnings

import torch

from dataloaders.fold_data import FoldData
from networks.losses import deep_supervision_loss, soft_dice
from networks.weights import ema_update
from utils.onehot import class_index, one_hot
from utils.precision import no_autocast
from utils.stages.augmentations import cutout, strong_view, uniform
from utils.stages.bcp import BCPStage, mix, mixed_loss
from utils.stages.segmentation import tile_panel
from utils.training.engine import FiniteCheck

#: one displacement of a pair of views: ``(dst1, src1, dst2, src2)`` patch indices, view 1's patch
#: ``dst1`` taking view 2's patch ``src1`` and view 2's ``dst2`` taking view 1's ``src2``
Move = tuple[int, int, int, int]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("abd")
    group.add_argument("--abd-pretrain", type=float, default=0.25,
                       help="abd: fraction of the epochs spent on BCP's labelled copy-paste pre-training "
                            "(default: 0.25, the original's 10k before 30k self-training iterations)")
    group.add_argument("--abd-grid", type=int, default=4,
                       help="abd: patches per image side for the displacement (default: 4, the original's "
                            "64-pixel patches of 256 x 256 images)")
    group.add_argument("--abd-top-k", type=int, default=4,
                       help="abd: most confident patches among which the KL rule chooses (default: 4)")
    group.add_argument("--abd-labelled-weight", type=float, default=0.0,
                       help="abd: weight of L_seg on the displaced labelled images, the cross-teaching "
                            "trainer's ABD-R (it uses 2); 0 = off, as the BCP trainer (default: 0)")


def patch_means(maps: torch.Tensor, grid: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, grid * grid, C]``: the mean of each patch of a ``grid x grid``
    grid of ``(H // grid) x (W // grid)`` patches, numbered row by row (patch ``r * grid + c``)."""
    batch, channels, height, width = maps.shape
    ph, pw = height // grid, width // grid
    cropped = maps[..., :grid * ph, :grid * pw].reshape(batch, channels, grid, ph, grid, pw)
    return cropped.mean(dim=(3, 5)).flatten(2).transpose(1, 2)


def _patch(image: torch.Tensor, index: int, grid: int) -> tuple[slice, slice]:
    ph, pw = image.shape[-2] // grid, image.shape[-1] // grid
    row, col = divmod(int(index), grid)
    return slice(row * ph, (row + 1) * ph), slice(col * pw, (col + 1) * pw)


def displace(view1: torch.Tensor, view2: torch.Tensor, moves: list[Move | None], grid: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Both views ``[B, C, H, W]`` after the patch swaps ``moves`` (one per batch item, None = keep):
    view 1's patch ``dst1`` becomes view 2's patch ``src1`` and view 2's ``dst2`` becomes view 1's
    ``src2``, both read from the views as given."""
    out1, out2 = view1.clone(), view2.clone()
    for b, move in enumerate(moves):
        if move is None:
            continue
        dst1, src1, dst2, src2 = move
        out1[(b, slice(None), *_patch(view1, dst1, grid))] = view2[(b, slice(None), *_patch(view2, src1, grid))]
        out2[(b, slice(None), *_patch(view2, dst2, grid))] = view1[(b, slice(None), *_patch(view1, src2, grid))]
    return out1, out2


def closest_by_kl(target_logits: torch.Tensor, candidate_logits: torch.Tensor) -> int:
    """Index of the candidate ``[K, C]`` whose softmax ``q_j`` is closest to the target's ``p``
    (``[C]`` patch-mean logits): ``argmin_j KL(p || q_j) = sum p (log p - log q_j)``."""
    log_p = torch.log_softmax(target_logits.float(), dim=-1)
    log_q = torch.log_softmax(candidate_logits.float(), dim=-1)
    return int(torch.argmin((log_p.exp() * (log_p - log_q)).sum(dim=-1)))


def unlabelled_moves(conf1: torch.Tensor, conf2: torch.Tensor, logits1: torch.Tensor, logits2: torch.Tensor,
                     top_k: int, use_kl: list[bool]) -> list[Move]:
    """ABD-I: per batch item, each view's least confident patch takes a confident patch of the
    other view. ``conf1``, ``conf2``: patch confidences ``[B, P]``; ``logits1``, ``logits2``: patch-mean
    logits ``[B, P, C]``; ``use_kl[b]``: the KL rule (the closest of the other view's ``top_k``
    most confident patches), else the other view's most confident patch."""
    moves = []
    for b, kl in enumerate(use_kl):
        dst1, dst2 = int(torch.argmin(conf1[b])), int(torch.argmin(conf2[b]))
        if kl:
            k = min(top_k, conf1.shape[1])
            top1, top2 = conf1[b].topk(k).indices, conf2[b].topk(k).indices
            src1 = int(top2[closest_by_kl(logits1[b, dst1], logits2[b, top2])])
            src2 = int(top1[closest_by_kl(logits2[b, dst2], logits1[b, top1])])
        else:
            src1, src2 = int(torch.argmax(conf2[b])), int(torch.argmax(conf1[b]))
        moves.append((dst1, src1, dst2, src2))
    return moves


def labelled_moves(conf1: torch.Tensor, conf2: torch.Tensor, apply: list[bool]) -> list[Move | None]:
    """ABD-R: where ``apply[b]``, each view's most confident patch takes the other view's least
    confident one (``conf1``, ``conf2``: patch confidences ``[B, P]``)."""
    return [(int(torch.argmax(conf1[b])), int(torch.argmin(conf2[b])),
             int(torch.argmax(conf2[b])), int(torch.argmin(conf1[b]))) if on else None
            for b, on in enumerate(apply)]


def max_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel confidence ``[B, 1, H, W]``: the largest softmax probability of detached logits."""
    return torch.softmax(logits.detach().float(), dim=1).amax(dim=1, keepdim=True)


def cross_pseudo_dice(logits1: torch.Tensor, logits2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Dice loss of 1 against argmax 2, Dice loss of 2 against argmax 1)``, the project's soft
    Dice averaged over batch items and classes; the targets are detached."""
    with no_autocast(logits1.device):
        logits1, logits2 = logits1.float(), logits2.float()
        target1, target2 = one_hot(class_index(logits1.detach())), one_hot(class_index(logits2.detach()))
        return (1.0 - soft_dice(torch.softmax(logits1, dim=1), target2).mean(),
                1.0 - soft_dice(torch.softmax(logits2, dim=1), target1).mean())


def abd_strong_view(image: torch.Tensor, label: torch.Tensor | None, generator: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ABD's strong view of ``[1, 1, H, W]`` (and its one-hot label ``[1, 2, H, W]``, cleared to
    background inside the cutout box): cutout with p 0.5, then brightness and contrast jitter 0.8."""
    image, box = cutout(image, generator, p=0.5)
    image = strong_view(image, generator, jitter=0.8, p_jitter=1.0, p_blur=0.0)
    if label is not None:
        label = torch.where(box.bool(), one_hot(torch.zeros_like(box[:, 0], dtype=torch.long)), label)
    return image, label


def bcp_loss(logits: torch.Tensor, pairs: list[tuple], keep: torch.Tensor) -> torch.Tensor:
    """BCP's ``(Dice + CE) / 2`` over the mixes ``pairs`` (``(outside image, its label, its weight,
    inside image, its label, its weight)``) whose logits are stacked in ``logits``."""
    dice = ce = 0.0
    for (_, out_label, out_weight, _, in_label, in_weight), part in zip(pairs, logits.split(keep.shape[0])):
        d, c = mixed_loss(part, out_label, in_label, keep, out_weight, in_weight)
        dice, ce = dice + d, ce + c
    return (dice + ce) / 2.0


class ABDStage(BCPStage):
    """ABD on BCP: two networks on weak and strong copy-paste mixes, bidirectional patch displacement."""

    def __init__(self, args: argparse.Namespace, k: int, data: FoldData, device: torch.device) -> None:
        super().__init__(args, k, data, device)
        self.pretrain_epochs = int(round(args.epochs * args.abd_pretrain))
        self.pretraining = self.pretrain_epochs > 0
        self.grid, self.top_k, self.labelled_weight = args.abd_grid, args.abd_top_k, args.abd_labelled_weight
        self.net2 = copy.deepcopy(self.net)  # both networks start from the same weights, as in the original
        self.optimizer2, self.scheduler2 = self.make_optimizer(self.net2.parameters(), args)
        pretrain_steps = self.pretrain_epochs * args.iters
        self.labelled_until = pretrain_steps + 2.0 / 3.0 * (self.total_steps - pretrain_steps)

    def state(self) -> dict:
        return {**super().state(), "net2": self.net2, "optimizer2": self.optimizer2, "scheduler2": self.scheduler2}

    def start_epoch(self, epoch: int) -> None:
        super().start_epoch(epoch)
        if epoch == self.pretrain_epochs and self.pretrained.weights:
            self.net2.load_state_dict(self.pretrained.weights)
            self.optimizer2.load_state_dict(copy.deepcopy(self.optimizer.state_dict()))

    def end_epoch(self, epoch: int) -> None:
        super().end_epoch(epoch)
        with warnings.catch_warnings():  # network 2 waits out pre-training; its schedule keeps pace
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
            self.scheduler2.step()

    def epoch_scalars(self, epoch: int) -> dict[str, float]:
        return {"abd_pretraining": float(self.pretraining)}

    def coin(self) -> bool:
        """True with probability 1/2 (from the checkpointed generator)."""
        return float(uniform(self.method_rng, 0.0, 1.0)) < 0.5

    def strong(self, images: torch.Tensor, labels: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:func:`abd_strong_view` of every batch item."""
        views = [abd_strong_view(images[i:i + 1], None if labels is None else labels[i:i + 1], self.method_rng)
                 for i in range(images.shape[0])]
        return (torch.cat([v for v, _ in views]),
                None if labels is None else torch.cat([lab for _, lab in views]))

    def labelled_term(self, x_l: torch.Tensor, y_l: torch.Tensor, sx_l: torch.Tensor, sy_l: torch.Tensor
                      ) -> torch.Tensor:
        """ABD-R: ``L_seg`` of both networks on the displaced weak and strong labelled views."""
        with torch.no_grad(), self.autocast():
            conf1 = patch_means(max_softmax(self.net(x_l)["out"]), self.grid)[..., 0]
            conf2 = patch_means(max_softmax(self.net2(sx_l)["out"]), self.grid)[..., 0]
        moves = labelled_moves(conf1, conf2, [self.coin() for _ in range(x_l.shape[0])])
        images, labels = displace(x_l, sx_l, moves, self.grid), displace(y_l, sy_l, moves, self.grid)
        images, labels = torch.cat(images), torch.cat(labels)
        with self.autocast():
            out1, out2 = self.net(images), self.net2(images)
        return deep_supervision_loss(out1, labels) + deep_supervision_loss(out2, labels)

    def train_step(self, batch: dict, check: FiniteCheck) -> tuple[dict[str, float], dict]:
        if self.pretraining:
            return super().train_step(batch, check)
        x_l, y_l, x_l2, y_l2, u_a, u_b = self.training_inputs(batch, "x_l", "y_l", "x_l2", "y_l2", "u_a", "u_b")
        sx_l, sy_l = self.strong(x_l, y_l)
        sx_l2, sy_l2 = self.strong(x_l2, y_l2)
        su_a, su_b = self.strong(u_a)[0], self.strong(u_b)[0]
        with torch.no_grad(), self.autocast():
            pseudo = one_hot(class_index(self.teacher(torch.cat([u_a, u_b, su_a, su_b]))["out"].float()))
        pa, pb, spa, spb = pseudo.split(u_a.shape[0])
        keep, w = self.outside_mask(x_l), self.pseudo_weight
        weak_pairs = [(u_a, pa, w, x_l, y_l, 1.0), (x_l2, y_l2, 1.0, u_b, pb, w)]
        strong_pairs = [(su_a, spa, w, sx_l, sy_l, 1.0), (sx_l2, sy_l2, 1.0, su_b, spb, w)]
        weak = torch.cat([mix(outside, inside, keep) for outside, _, _, inside, _, _ in weak_pairs])
        strong = torch.cat([mix(outside, inside, keep) for outside, _, _, inside, _, _ in strong_pairs])
        with self.autocast():
            logits1, logits2 = self.net(weak)["out"], self.net2(strong)["out"]
        cross1, cross2 = cross_pseudo_dice(logits1, logits2)
        moves = unlabelled_moves(patch_means(max_softmax(logits1), self.grid)[..., 0],
                                 patch_means(max_softmax(logits2), self.grid)[..., 0],
                                 patch_means(logits1.detach().float(), self.grid),
                                 patch_means(logits2.detach().float(), self.grid),
                                 self.top_k, [self.coin() for _ in range(weak.shape[0])])
        displaced = torch.cat(displace(weak, strong, moves, self.grid))
        with self.autocast():
            shown1, shown2 = self.net(displaced)["out"], self.net2(displaced)["out"]
        cross3, cross4 = cross_pseudo_dice(shown1, shown2)
        terms = {"mix1": bcp_loss(logits1, weak_pairs, keep), "mix2": bcp_loss(logits2, strong_pairs, keep),
                 "cross_mix": cross1 + cross2, "cross_displaced": cross3 + cross4}
        total = terms["mix1"] + terms["mix2"] + terms["cross_mix"] + terms["cross_displaced"]
        if self.labelled_weight > 0 and self.step < self.labelled_until:
            terms["labelled_displaced"] = self.labelled_term(x_l, y_l, sx_l, sy_l)
            total = total + self.labelled_weight * terms["labelled_displaced"]
        terms["total"] = total
        check(terms)
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer2.zero_grad(set_to_none=True)
        self.scaler.scale(terms["total"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.step(self.optimizer2)
        self.scaler.update()
        ema_update(self.teacher, self.net, self.decay)
        self.step += 1
        return ({name: float(value.detach()) for name, value in terms.items()},
                {"weak": weak, "displaced": displaced, "shown": shown1})

    def panel(self, last: dict) -> tuple[str, torch.Tensor]:
        """Self-training: a weak mix, its displaced weak and strong views, network 1's prediction on
        the displaced weak view; pre-training: BCP's panel."""
        if "displaced" not in last:
            return super().panel(last)
        half = last["displaced"].shape[0] // 2
        return tile_panel("train/panel", {"weak_mix": last["weak"][0, 0], "displaced_weak": last["displaced"][0, 0],
                                          "displaced_strong": last["displaced"][half, 0],
                                          "prediction": class_index(last["shown"][:1])[0].float()})
