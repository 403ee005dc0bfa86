"""Alternate Diverse Teaching, AD-MT (ECCV 2024; ZhenZHAO/AD-MT ``code/train_post_2d_aut.py``,
``code/train_utils.py``, ``code/dataloaders/mixaugs.py``, ``cfgs/config_2d_aut.yml``), ported to the
shared segmenter.

One student and two EMA teachers. Which teacher is active alternates in random periods
(:class:`Alternation`): a period lasts a number of steps drawn uniformly from 1 to 50 of
the original's 30,000 (1/600 of the run), teacher 1 first. Each step only the active
teacher is updated, ``teacher = a teacher + (1 - a) student`` with ``a = 0`` while
``step // 2 < 50`` (1/600 of the run in units of ``step // 2``) and then
``min(1 - 1 / (step // 2 - 50 + 1), 0.99)`` (:func:`ad_mt_decay`); the active teacher runs
in train mode, the other in eval mode. The alternation also chooses the student's
perturbation: while teacher 1 is active a photometric strong view of the unlabelled image
(brightness and contrast jitter 0.5 with p 0.8, Gaussian blur sigma U(0.1, 2) with p 0.2),
while teacher 2 is active a CutMix of the weak image (box side ``sqrt(1 - lam)`` of the
image's, ``lam ~ Beta(4, 4)``, centred uniformly in the image past its first eighth).

Pseudo-label (:func:`fuse_teachers`, :func:`resolve_conflicts`): both teachers predict the
weak unlabelled image; the ensemble is their mean softmax (the original weights both by the
same ``exp(-(H_1 + H_2))`` and renormalises, which is the mean), its argmax the label and its
max the confidence; inside a CutMix box they are the partner's. Conflict resolution: where
the two teachers' argmax disagree and the student's (no-grad, weak image) argmax differs
from the ensemble's and is more confident, the student's label and confidence replace the
ensemble's. Unsupervised loss: the Dice loss of the student on the perturbed image against
that label on the pixels of confidence >= 0.95. Total ``L_seg + 2 sigmoid_rampup(step,
total / 4) L_u`` (the original ramps over 50 x 150 of 30,000 iterations). The student is
validated and tested (the original's test script takes the best student).

Port notes (docs/METHOD.md sections 7, 8): ``L_seg`` is the supervised loss (the original's
``(CE + Dice) / 2``) and the Dice the project's soft Dice; the CutMix partner is the step's
second unlabelled image (the original permutes its batch of 12, one image per step here);
inside a CutMix box the student's own prediction is not used for the conflict resolution
(the original compares it with the label of the pasted image, a prediction of another
image); both teachers start as copies of the student (the original draws them at random,
and the first update, a copy, overwrites that); the ramp and the EMA warm-up run per step;
the student's weak pass is a no-grad pass of its own (the original runs it in the batch
with gradient, to no loss); no geometric weak augmentation (no method here uses one).
"""
from __future__ import annotations

import argparse
from typing import Any

import torch

from dataloaders.fold_data import FoldData
from networks.losses import deep_supervision_loss, region_dice_loss
from networks.weights import ema_update
from utils.onehot import class_index, one_hot
from utils.stages.augmentations import box_mask, centred_cutmix_box, strong_view
from utils.stages.segmentation import scaled_step, split_outputs, tile_panel
from utils.stages.semi_supervised import SemiSupervisedStage
from utils.training.engine import FiniteCheck
from utils.training.schedules import ramp_up

ORIGINAL_ITERATIONS = 30_000
LONGEST_PERIOD = 50 / ORIGINAL_ITERATIONS   # the longest alternation period, as a fraction of the run
COPY_UPDATES = 50 / ORIGINAL_ITERATIONS     # EMA copy phase, in units of step // 2, as a fraction of the run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ad-mt")
    group.add_argument("--ad-mt-weight", type=float, default=2.0,
                       help="ad-mt: weight of the unsupervised Dice loss reached after the ramp (default: 2)")
    group.add_argument("--ad-mt-rampup", type=float, default=0.25,
                       help="ad-mt: fraction of the run over which that weight ramps up (default: 0.25)")
    group.add_argument("--ad-mt-threshold", type=float, default=0.95,
                       help="ad-mt: confidence a pseudo-labelled pixel needs to count (default: 0.95)")


def ad_mt_decay(step: int, total_steps: int, max_decay: float) -> float:
    """The EMA decay of step ``step`` (0-based): with ``n = step // 2 - round(total / 600)``,
    0 (a copy) while ``n < 0``, then ``min(1 - 1 / (n + 1), max_decay)``."""
    n = int(step) // 2 - round(COPY_UPDATES * total_steps)
    return 0.0 if n < 0 else min(1.0 - 1.0 / (n + 1), float(max_decay))


class Alternation:
    """Which teacher is active: teacher 1 first; after each step :meth:`advance` counts the step
    and, when the period is over, switches teachers and draws the next period uniformly from
    ``1 .. longest`` (from ``generator``). Checkpointed through ``state_dict``."""

    def __init__(self, longest: int, generator: torch.Generator) -> None:
        self.longest, self.generator = max(1, int(longest)), generator
        self.first_active, self.count = True, 0
        self.period = self._draw()

    def _draw(self) -> int:
        return int(torch.randint(1, self.longest + 1, (1,), generator=self.generator))

    def advance(self) -> None:
        self.count += 1
        if self.count >= self.period:
            self.first_active, self.count, self.period = not self.first_active, 0, self._draw()

    def state_dict(self) -> dict[str, Any]:
        return {"first_active": self.first_active, "count": self.count, "period": self.period,
                "longest": self.longest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.first_active, self.count = bool(state["first_active"]), int(state["count"])
        self.period, self.longest = int(state["period"]), int(state["longest"])


def fuse_teachers(probs1: torch.Tensor, probs2: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two teachers' softmax ``[B, C, H, W]`` -> ``(label, confidence, conflict)``, each
    ``[B, 1, H, W]``: argmax and max of their mean, and where their own argmax differ."""
    mean = (probs1 + probs2) / 2.0
    confidence, label = mean.max(dim=1, keepdim=True)
    conflict = class_index(probs1, keepdim=True) != class_index(probs2, keepdim=True)
    return label, confidence, conflict


def resolve_conflicts(label: torch.Tensor, confidence: torch.Tensor, conflict: torch.Tensor,
                      student_label: torch.Tensor, student_confidence: torch.Tensor,
                      allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """AD-MT's pseudo-label: the teachers' ``label``/``confidence``, replaced by the student's where
    the teachers disagree (``conflict``), the student's label differs and it is more confident
    (and, with ``allowed``, only where it is true). All ``[B, 1, H, W]``."""
    take = conflict & (student_label != label) & (student_confidence > confidence)
    if allowed is not None:
        take = take & allowed
    return torch.where(take, student_label, label), torch.where(take, student_confidence, confidence)


class ADMTStage(SemiSupervisedStage):
    """AD-MT: a student taught by the ensemble of two alternately updated EMA teachers."""

    def __init__(self, args: argparse.Namespace, k: int, data: FoldData, device: torch.device) -> None:
        super().__init__(args, k, data, device)
        self.teacher, self.teacher2 = self.teacher_like(self.net), self.teacher_like(self.net)
        self.alternation = Alternation(round(LONGEST_PERIOD * self.total_steps), self.method_rng)
        self.max_decay, self.weight = args.ema_decay, args.ad_mt_weight
        self.ramp_steps, self.threshold = args.ad_mt_rampup * self.total_steps, args.ad_mt_threshold

    def state(self) -> dict:
        return {**super().state(), "teacher": self.teacher, "teacher2": self.teacher2, "alternation": self.alternation}

    def perturbed(self, u: torch.Tensor, partner: torch.Tensor, cutmix: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's view of ``u`` and its CutMix box ``[B, 1, H, W]`` (1 = ``partner``; all 0
        for the photometric view)."""
        height, width = u.shape[-2:]
        if not cutmix:
            view = torch.cat([strong_view(u[i:i + 1], self.method_rng, jitter=0.5, p_jitter=0.8, p_blur=0.2)
                              for i in range(u.shape[0])])
            return view, torch.zeros_like(u)
        box = torch.cat([box_mask(height, width, centred_cutmix_box(height, width, self.method_rng), 1, u.device)
                         for _ in range(u.shape[0])])
        return torch.where(box.bool(), partner, u), box

    def train_step(self, batch: dict, check: FiniteCheck) -> tuple[dict[str, float], dict]:
        x_l, y_l, u, partner = self.training_inputs(batch, "x_l", "y_l", "u_a", "u_b")
        first = self.alternation.first_active
        active = self.teacher if first else self.teacher2
        self.teacher.train(first)
        self.teacher2.train(not first)
        cutmix = not first
        images = torch.cat([u, partner]) if cutmix else u
        with torch.no_grad(), self.autocast():
            probs1 = torch.softmax(self.teacher(images)["out"].float(), dim=1)
            probs2 = torch.softmax(self.teacher2(images)["out"].float(), dim=1)
            student = torch.softmax(self.net(u)["out"].float(), dim=1)
        label, confidence, conflict = fuse_teachers(probs1, probs2)
        view, box = self.perturbed(u, partner, cutmix)
        if cutmix:
            inside, n = box.bool(), u.shape[0]
            label = torch.where(inside, label[n:], label[:n])
            confidence = torch.where(inside, confidence[n:], confidence[:n])
            conflict = torch.where(inside, conflict[n:], conflict[:n])
        student_confidence, student_label = student.max(dim=1, keepdim=True)
        label, confidence = resolve_conflicts(label, confidence, conflict, student_label, student_confidence,
                                              allowed=~box.bool())
        confident = (confidence >= self.threshold).float()
        groups = {"x_l": x_l, "view": view}
        with self.autocast():
            out = split_outputs(self.net(torch.cat([x_l, view])), groups)
        weight = self.weight * ramp_up(self.step, self.ramp_steps)
        terms = {"seg": deep_supervision_loss(out["x_l"], y_l),
                 "unsupervised": region_dice_loss(out["view"]["out"], one_hot(label), confident)}
        terms["total"] = terms["seg"] + weight * terms["unsupervised"]
        check(terms)
        scaled_step(terms["total"], self.optimizer, self.scaler)
        ema_update(active, self.net, ad_mt_decay(self.step, self.total_steps, self.max_decay))
        self.alternation.advance()
        self.step += 1
        logged = {name: value.item() for name, value in terms.items()}
        logged.update(w_unsupervised=weight, teacher1_active=float(first),
                      teacher_conflict=float(conflict.float().mean()), confident_fraction=float(confident.mean()))
        return logged, {"view": view, "label": label, "confident": confident, "out": out["view"]["out"]}

    def panel(self, last: dict) -> tuple[str, torch.Tensor]:
        """The student's view of u, the pseudo-label, its confident pixels and the student's prediction."""
        return tile_panel("train/panel", {"view": last["view"][0, 0], "pseudo_label": last["label"][0, 0].float(),
                                          "confident": last["confident"][0, 0],
                                          "prediction": class_index(last["out"][:1])[0].float()})
