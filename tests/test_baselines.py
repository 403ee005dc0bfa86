"""The baselines' mechanics on small tensors, against independently written expectations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from networks.losses import soft_dice
from networks.segmentation_net import SegmentationNet
from networks.weights import ema_decay, ema_update
from utils.onehot import one_hot
from utils.stages import augmentations as aug
from utils.stages.abd import (abd_strong_view, cross_pseudo_dice, displace, labelled_moves, patch_means,
                              unlabelled_moves)
from utils.stages.ad_mt import Alternation, ad_mt_decay, fuse_teachers, resolve_conflicts
from utils.stages.bcp import mix, mixed_loss
from utils.stages.cps import cross_pseudo_losses, xavier_initialised
from utils.stages.mean_teacher import MeanTeacherStage, UAMTStage, masked_consistency, uncertainty, uncertainty_threshold
from utils.stages.unimatch import confidence_and_label, cutmix_targets, unimatch_total


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- EMA

def test_ema_decay_warm_up_and_cap():
    assert ema_decay(0, 0.99) == 0.0  # the first update copies the student
    assert ema_decay(1, 0.99) == pytest.approx(0.5)
    assert ema_decay(9, 0.99) == pytest.approx(0.9)
    assert ema_decay(99, 0.99) == pytest.approx(0.99)
    assert ema_decay(10_000, 0.99) == 0.99


def test_ema_update_is_the_weighted_average():
    torch.manual_seed(0)
    teacher, student = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.9)
    for t, b, s in zip(teacher.parameters(), before, student.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s)
    ema_update(teacher, student, ema_decay(0, 0.99))
    for t, s in zip(teacher.parameters(), student.parameters()):
        torch.testing.assert_close(t, s)


# ----------------------------------------------------------------------------- Mean Teacher, UA-MT

class RecordingTeacher(torch.nn.Module):
    """A teacher whose softmax is known: fixed logits for every input; records what it sees."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits, self.seen = logits, []

    def forward(self, x: torch.Tensor) -> dict:
        self.seen.append(x.clone())
        return {"out": self.logits.expand(x.shape[0], -1, -1, -1)}


def stage_with_teacher(stage_class, teacher: torch.nn.Module, noise_std: float, seed: int):
    """A Mean Teacher / UA-MT stage holding only what its ``consistency`` reads."""
    stage = stage_class.__new__(stage_class)
    stage.teacher, stage.noise_std, stage.method_rng = teacher, noise_std, gen(seed)
    stage.device, stage.amp = torch.device("cpu"), False
    return stage


def test_mean_teacher_consistency_is_the_mse_to_the_teachers_softmax_of_the_noisy_image():
    u = torch.rand(1, 1, 4, 6, generator=gen(7))
    logits = torch.zeros(1, 2, 4, 6)
    logits[:, 1] = math.log(3.0)  # teacher softmax (1/4, 3/4) everywhere
    teacher = RecordingTeacher(logits)
    stage = stage_with_teacher(MeanTeacherStage, teacher, noise_std=0.1, seed=5)
    student = torch.zeros(1, 2, 4, 6)
    student[:, 0] = 1.0  # student softmax (1, 0)
    value, seen = stage.consistency(student, u)
    assert float(value) == pytest.approx(((1 - 0.25) ** 2 + 0.75 ** 2) / 2)  # mean over classes and pixels
    torch.testing.assert_close(seen["teacher"], torch.softmax(logits, 1))
    (seen_input,) = teacher.seen
    noise = seen_input - u  # the teacher sees u plus the clamped noise of the stage's generator
    torch.testing.assert_close(noise, aug.clamped_noise(u, gen(5), std=0.1, clip=0.2))
    assert float(noise.abs().max()) > 0.0


def test_ua_mt_consistency_counts_only_the_certain_pixels():
    u = torch.rand(1, 1, 2, 3, generator=gen(8))
    logits = torch.zeros(1, 2, 2, 3)
    logits[0, 1, 0, :] = 10.0  # row 0: confident gland (entropy ~ 0); row 1: 50/50 (entropy ln 2)
    stage = stage_with_teacher(UAMTStage, RecordingTeacher(logits), noise_std=0.1, seed=5)
    stage.passes, stage.step, stage.total_steps = 4, 0, 10
    student = torch.zeros(1, 2, 2, 3)
    student[:, 0] = 1.0
    value, seen = stage.consistency(student, u)
    teacher_probs = torch.softmax(logits, 1)
    certain = torch.tensor([[[[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]]])
    torch.testing.assert_close(seen["certain"], certain)
    expected = float((certain * (student - teacher_probs) ** 2).sum() / (2 * certain.sum()))
    assert float(value) == pytest.approx(expected, rel=1e-6)
    assert len(stage.teacher.seen) == 1 + 4  # the teacher's prediction plus the uncertainty passes


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_ua_mt_teacher_passes_are_stochastic_through_the_encoder_dropout(dropout):
    stage = stage_with_teacher(UAMTStage, None, noise_std=0.0, seed=5)  # no input noise at all
    stage.dropout, stage.passes, stage.step, stage.total_steps = dropout, 3, 0, 10
    torch.manual_seed(0)
    student = SegmentationNet(dropout=dropout).eval()  # the student is validated in eval mode
    stage.teacher = stage.teacher_like(student)
    assert stage.teacher.training and not student.training
    predictions = []
    stage.teacher.register_forward_hook(lambda module, args, out: predictions.append(out["out"]))
    u = torch.rand(1, 1, 16, 32, generator=gen(2))
    stage.consistency(torch.full((1, 2, 16, 32), 0.5), u)
    assert len(predictions) == 1 + 3
    varies = any(not torch.equal(predictions[0], p) for p in predictions[1:])
    assert varies == (dropout > 0)


def test_teacher_noise_is_clamped_gaussian():
    x = torch.zeros(1, 1, 200, 200)
    noise = aug.clamped_noise(x, gen(3), std=0.1, clip=0.2)
    assert float(noise.abs().max()) == pytest.approx(0.2)  # clipped at 2 std (float32 0.2)
    assert float((noise.abs() >= noise.abs().max()).float().mean()) > 0.01  # the clip is hit
    assert float(noise.std()) == pytest.approx(0.1, rel=0.05)
    torch.testing.assert_close(noise, aug.clamped_noise(x, gen(3), std=0.1, clip=0.2))


def test_uncertainty_is_the_entropy_of_the_mean_softmax():
    p = torch.stack([torch.tensor([0.5, 0.9, 1.0]), torch.tensor([0.5, 0.1, 0.0])]).view(1, 2, 3, 1)
    expected = [-(0.5 * math.log(0.5 + 1e-6)) * 2,
                -(0.9 * math.log(0.9 + 1e-6) + 0.1 * math.log(0.1 + 1e-6)),
                -(1.0 * math.log(1.0 + 1e-6))]
    assert uncertainty(p).flatten().tolist() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert float(uncertainty(p)[0, 0, 0, 0]) == pytest.approx(math.log(2), abs=1e-5)  # the maximum for 2 classes


def test_uncertainty_threshold_schedule():
    assert uncertainty_threshold(0.0) == pytest.approx(0.75 * math.log(2))
    assert uncertainty_threshold(1.0) == pytest.approx(math.log(2))
    assert uncertainty_threshold(0.5) == pytest.approx(0.875 * math.log(2))


def test_masked_consistency_normalisation():
    s = torch.zeros(1, 2, 2, 2)
    t = torch.zeros(1, 2, 2, 2)
    t[0, :, 0, 0] = torch.tensor([1.0, -1.0])  # squared difference 1 + 1 at pixel (0, 0)
    t[0, :, 1, 1] = torch.tensor([2.0, 0.0])   # squared difference 4 at pixel (1, 1)
    mask = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])  # (1, 1) is uncertain: not counted
    assert float(masked_consistency(s, t, mask)) == pytest.approx(2.0 / (2 * 2 + 1e-16))
    assert float(masked_consistency(s, t, torch.zeros_like(mask))) == 0.0


# ----------------------------------------------------------------------------- CPS

def test_cps_targets_are_the_other_networks_argmax_and_carry_no_gradient():
    l1 = torch.randn(2, 2, 5, 6, generator=gen(4), requires_grad=True)
    l2 = torch.randn(2, 2, 5, 6, generator=gen(5), requires_grad=True)
    cps1, cps2 = cross_pseudo_losses(l1, l2)
    with torch.no_grad():
        assert float(cps1) == pytest.approx(float(F.cross_entropy(l1, l2.argmax(1))), rel=1e-6)
        assert float(cps2) == pytest.approx(float(F.cross_entropy(l2, l1.argmax(1))), rel=1e-6)
    cps1.backward()
    assert l1.grad is not None and l1.grad.abs().sum() > 0
    assert l2.grad is None  # the pseudo-label of net 1's loss is detached


def test_cps_second_network_is_initialised_differently():
    torch.manual_seed(0)
    net = xavier_initialised(SegmentationNet())
    weight = net.inc.block[0].weight.detach()
    fan_in, fan_out = weight.shape[1] * 9, weight.shape[0] * 9
    assert float(weight.std()) == pytest.approx(math.sqrt(2.0 / (fan_in + fan_out)), rel=0.25)


# ----------------------------------------------------------------------------- BCP

def test_bcp_box_geometry():
    height, width = 30, 45
    tops, lefts = set(), set()
    for seed in range(400):
        top, left, box_h, box_w = aug.copy_paste_box(height, width, gen(seed))
        assert (box_h, box_w) == (20, 30)  # int(2H/3), int(2W/3)
        tops.add(top)
        lefts.add(left)
    assert tops == set(range(0, height - 20)) and lefts == set(range(0, width - 30))


def test_bcp_mix_and_region_weighted_loss_are_composed_exactly():
    h, w = 6, 9
    keep = 1.0 - aug.box_mask(h, w, (1, 2, 4, 6))  # 1 outside the box
    a, b = torch.rand(1, 1, h, w, generator=gen(6)), torch.rand(1, 1, h, w, generator=gen(7))
    mixed = mix(a, b, keep)
    assert torch.equal(mixed[keep.bool()], a[keep.bool()]) and torch.equal(mixed[~keep.bool()], b[~keep.bool()])
    ya = one_hot((torch.rand(1, h, w, generator=gen(8)) > 0.5).long())
    yb = one_hot((torch.rand(1, h, w, generator=gen(9)) > 0.5).long())
    y = mix(ya, yb, keep)
    assert torch.equal(y.sum(1), torch.ones(1, h, w))  # still one-hot
    logits = torch.randn(1, 2, h, w, generator=gen(10))
    dice, ce = mixed_loss(logits, ya, yb, keep, 0.5, 1.0)
    probs = torch.softmax(logits, 1)
    inside = 1.0 - keep
    want_dice = 0.5 * (1 - soft_dice(probs, ya, keep).mean()) + 1.0 * (1 - soft_dice(probs, yb, inside).mean())
    pixel_ce = F.cross_entropy(logits, ya.argmax(1), reduction="none") * keep[:, 0]
    pixel_ce_b = F.cross_entropy(logits, yb.argmax(1), reduction="none") * inside[:, 0]
    want_ce = 0.5 * pixel_ce.sum() / keep.sum() + 1.0 * pixel_ce_b.sum() / inside.sum()
    assert float(dice) == pytest.approx(float(want_dice), rel=1e-6)
    assert float(ce) == pytest.approx(float(want_ce), rel=1e-6)


def test_region_dice_ignores_pixels_outside_the_region():
    logits = torch.randn(1, 2, 4, 4, generator=gen(11))
    target = one_hot(torch.zeros(1, 4, 4, dtype=torch.long))
    region = torch.zeros(1, 1, 4, 4)
    region[..., :2, :] = 1
    changed = target.clone()
    changed[..., 2:, :] = one_hot(torch.ones(1, 2, 4, dtype=torch.long))  # differs only outside the region
    probs = torch.softmax(logits, 1)
    assert torch.equal(soft_dice(probs, target, region), soft_dice(probs, changed, region))
    assert not torch.equal(soft_dice(probs, target), soft_dice(probs, changed))


# ----------------------------------------------------------------------------- UniMatch

def test_unimatch_confidence_mask_and_pseudo_label():
    logits = torch.tensor([[[[5.0, 0.0]], [[0.0, 0.1]]]])  # pixel 0: confident class 0; pixel 1: unsure class 1
    conf, label = confidence_and_label(logits)
    assert label.flatten().tolist() == [0, 1]
    assert conf.flatten().tolist() == pytest.approx([1 / (1 + math.exp(-5)), 1 / (1 + math.exp(-0.1))])
    assert ((conf >= 0.95).flatten().tolist()) == [True, False]


def test_unimatch_cutmix_takes_the_partners_label_and_confidence_inside_the_box():
    label, partner = torch.zeros(1, 1, 4, 5, dtype=torch.long), torch.ones(1, 1, 4, 5, dtype=torch.long)
    conf, partner_conf = torch.full((1, 1, 4, 5), 0.5), torch.full((1, 1, 4, 5), 0.99)
    box = aug.box_mask(4, 5, (1, 1, 2, 3))
    mixed_label, mixed_conf = cutmix_targets(label, conf, partner, partner_conf, box)
    assert torch.equal(mixed_label, box.long())
    assert torch.equal(mixed_conf, torch.where(box.bool(), partner_conf, conf))


def test_unimatch_cutmix_box_area_and_aspect():
    height, width, boxes = 60, 90, []
    for seed in range(300):
        box = aug.cutmix_box(height, width, gen(seed), p=0.5)
        if box is not None:
            boxes.append(box)
    assert 100 < len(boxes) < 200  # about half the draws
    for top, left, box_h, box_w in boxes:
        assert 0 <= top and top + box_h <= height and 0 <= left and left + box_w <= width
        area = box_h * box_w / (height * width)
        assert 0.02 * 0.8 <= area <= 0.4 + 1e-9
        assert 0.3 * 0.7 <= box_h / max(box_w, 1) <= (1 / 0.3) * 1.3


def test_unimatch_loss_weights():
    terms = {"x": torch.tensor(1.0), "s1": torch.tensor(2.0), "s2": torch.tensor(4.0), "fp": torch.tensor(8.0)}
    assert float(unimatch_total(terms)) == pytest.approx((1 + 0.25 * 2 + 0.25 * 4 + 0.5 * 8) / 2)


def test_feature_dropout_drops_whole_channels_and_rescales():
    features = torch.ones(2, 64, 3, 3)
    out = aug.channel_dropout(features, gen(12), p=0.5)
    per_channel = out.flatten(2)
    assert torch.all((per_channel == 0).all(2) | (per_channel == 2).all(2))
    assert 0.3 < float((per_channel[..., 0] == 0).float().mean()) < 0.7


def test_strong_view_is_reproducible_and_in_range():
    image = torch.rand(1, 1, 20, 30, generator=gen(13))
    a = aug.strong_view(image, gen(14))
    b = aug.strong_view(image, gen(14))
    assert torch.equal(a, b) and float(a.min()) >= 0 and float(a.max()) <= 1
    changed = [not torch.equal(aug.strong_view(image, gen(s)), image) for s in range(20)]
    assert 10 <= sum(changed) < 20  # jitter p 0.8 or blur p 0.5: about nine in ten views change


def test_gaussian_blur_keeps_constants_and_smooths():
    flat = torch.full((1, 1, 9, 9), 0.3)
    torch.testing.assert_close(aug.gaussian_blur(flat, 1.5), flat)
    spike = torch.zeros(1, 1, 9, 9)
    spike[0, 0, 4, 4] = 1
    blurred = aug.gaussian_blur(spike, 1.0)
    assert float(blurred.sum()) == pytest.approx(1.0, abs=1e-5) and float(blurred.max()) < 0.2
    assert np.allclose(blurred[0, 0].numpy(), blurred[0, 0].numpy().T, atol=1e-7)


# ----------------------------------------------------------------------------- ABD

def numbered_patches(grid: int, ph: int, pw: int, offset: float = 0.0) -> torch.Tensor:
    """``[1, 1, grid ph, grid pw]`` whose patch ``r grid + c`` holds the value ``offset + r grid + c``."""
    values = torch.arange(grid * grid, dtype=torch.float32).view(grid, grid) + offset
    return values.repeat_interleave(ph, 0).repeat_interleave(pw, 1)[None, None]


def test_abd_patch_means_number_patches_row_by_row_and_ignore_the_remainder():
    maps = numbered_patches(2, 2, 3)
    maps = F.pad(maps, (0, 1, 0, 1), value=100.0)  # a remainder row and column, never in a patch
    assert patch_means(maps, 2).flatten().tolist() == [0.0, 1.0, 2.0, 3.0]
    two = torch.cat([maps, -maps], 1)
    assert patch_means(two, 2)[0].tolist() == [[0.0, -0.0], [1.0, -1.0], [2.0, -2.0], [3.0, -3.0]]


def test_abd_displacement_moves_one_patch_each_way_from_the_views_as_given():
    view1, view2 = numbered_patches(3, 2, 2), numbered_patches(3, 2, 2, offset=10.0)
    out1, out2 = displace(view1, view2, [(4, 8, 0, 4)], grid=3)
    want1, want2 = list(range(9)), list(range(10, 19))
    want1[4] = 18   # view 1's patch 4 takes view 2's patch 8
    want2[0] = 4    # view 2's patch 0 takes view 1's patch 4 as it was, not the displaced one
    assert patch_means(out1, 3).flatten().tolist() == want1 and patch_means(out2, 3).flatten().tolist() == want2
    assert torch.equal(view1, numbered_patches(3, 2, 2))  # inputs untouched
    kept1, kept2 = displace(view1, view2, [None], grid=3)
    assert torch.equal(kept1, view1) and torch.equal(kept2, view2)


def test_abd_unlabelled_rule_least_confident_patch_takes_the_other_views_most_confident():
    conf1 = torch.tensor([[0.9, 0.2, 0.5, 0.7]])
    conf2 = torch.tensor([[0.3, 0.8, 0.6, 0.1]])
    logits = torch.zeros(1, 4, 2)
    assert unlabelled_moves(conf1, conf2, logits, logits, 2, [False]) == [(1, 1, 3, 0)]


def test_abd_unlabelled_kl_rule_takes_the_confident_patch_of_the_closest_class_distribution():
    conf1 = torch.tensor([[0.9, 0.2, 0.5, 0.8]])   # view 1: least confident 1; top two 0, 3
    conf2 = torch.tensor([[0.3, 0.95, 0.7, 0.1]])  # view 2: least confident 3; top two 1, 2
    logits1 = torch.tensor([[[math.log(99), 0.0], [0.0, 0.0], [0.0, 0.0], [math.log(7 / 3), 0.0]]])
    logits2 = torch.tensor([[[0.0, 0.0], [0.0, 5.0], [0.3, 0.0], [math.log(9), 0.0]]])
    # view 1's patch 1 is 50/50: of view 2's patches 1 (mostly gland) and 2 (nearly 50/50), 2 is closer.
    # view 2's patch 3 is p = (0.9, 0.1); of view 1's patches 0, q = (0.99, 0.01), and 3, q = (0.7, 0.3):
    # KL(p || q) = 0.144 and 0.116, so 3 (the reverse divergence, 0.071 and 0.154, would choose 0)
    assert unlabelled_moves(conf1, conf2, logits1, logits2, 2, [True]) == [(1, 2, 3, 3)]
    assert unlabelled_moves(conf1, conf2, logits1, logits2, 2, [False]) == [(1, 1, 3, 0)]
    p = torch.tensor([0.9, 0.1])
    kl = [float((p * (p / q).log()).sum()) for q in (torch.tensor([0.99, 0.01]), torch.tensor([0.7, 0.3]))]
    reverse = [float((q * (q / p).log()).sum()) for q in (torch.tensor([0.99, 0.01]), torch.tensor([0.7, 0.3]))]
    assert kl == pytest.approx([0.1445, 0.1163], abs=1e-3) and reverse == pytest.approx([0.0713, 0.1537], abs=1e-3)


def test_abd_labelled_rule_most_confident_patch_takes_the_other_views_least_confident():
    conf1 = torch.tensor([[0.9, 0.2, 0.5, 0.7], [0.1, 0.2, 0.3, 0.4]])
    conf2 = torch.tensor([[0.3, 0.8, 0.6, 0.1], [0.4, 0.3, 0.2, 0.1]])
    assert labelled_moves(conf1, conf2, [True, False]) == [(0, 3, 1, 1), None]


def test_abd_strong_view_clears_the_label_inside_the_cutout_box():
    image = torch.full((1, 1, 24, 30), 0.5)
    label = one_hot(torch.ones(1, 24, 30, dtype=torch.long))
    boxed = 0
    for seed in range(12):
        _, box = aug.cutout(image, gen(seed))
        strong, strong_label = abd_strong_view(image, label, gen(seed))
        assert torch.equal(strong_label[:, 1:], 1.0 - box) and torch.equal(strong_label.sum(1), torch.ones(1, 24, 30))
        assert float(strong.min()) >= 0 and float(strong.max()) <= 1 and not torch.equal(strong, image)
        boxed += int(box.any())
    assert 2 <= boxed <= 10  # p = 0.5


def test_cutout_fills_its_box_with_random_zeros_and_ones():
    image = torch.full((1, 1, 40, 50), 0.5)
    seed = next(s for s in range(20) if aug.cutout(image, gen(s))[1].any())
    out, box = aug.cutout(image, gen(seed))
    inside = out[box.bool()]
    assert set(inside.unique().tolist()) == {0.0, 1.0} and torch.all(out[~box.bool()] == 0.5)


def test_abd_cross_pseudo_dice_is_each_networks_dice_against_the_others_argmax():
    l1 = torch.randn(2, 2, 5, 6, generator=gen(20), requires_grad=True)
    l2 = torch.randn(2, 2, 5, 6, generator=gen(21), requires_grad=True)
    d1, d2 = cross_pseudo_dice(l1, l2)
    d1_value, d2_value = float(d1.detach()), float(d2.detach())
    with torch.no_grad():
        want1 = 1 - soft_dice(torch.softmax(l1, 1), one_hot(l2.argmax(1))).mean()
        want2 = 1 - soft_dice(torch.softmax(l2, 1), one_hot(l1.argmax(1))).mean()
    assert d1_value == pytest.approx(float(want1), rel=1e-6) and d2_value == pytest.approx(float(want2), rel=1e-6)
    d1.backward()
    assert l1.grad is not None and l2.grad is None


# ----------------------------------------------------------------------------- AD-MT

def test_ad_mt_ensemble_is_the_mean_of_the_teachers_and_the_entropy_weights_cancel():
    p1 = torch.tensor([[0.9, 0.2], [0.1, 0.8]]).view(1, 2, 1, 2)   # pixel 0: background, pixel 1: gland
    p2 = torch.tensor([[0.4, 0.3], [0.6, 0.7]]).view(1, 2, 1, 2)   # pixel 0: gland (a conflict), pixel 1: gland
    label, confidence, conflict = fuse_teachers(p1, p2)
    assert label.flatten().tolist() == [0, 1] and conflict.flatten().tolist() == [True, False]
    assert confidence.flatten().tolist() == pytest.approx([0.65, 0.75])
    entropy = -(p1 * torch.log2(p1 + 1e-10)).sum(1, keepdim=True) - (p2 * torch.log2(p2 + 1e-10)).sum(1, keepdim=True)
    weighted = torch.exp(-entropy) * p1 + torch.exp(-entropy) * p2  # the original's formula, temperature 1
    torch.testing.assert_close(confidence, (weighted / weighted.sum(1, keepdim=True)).amax(1, keepdim=True))


def test_ad_mt_conflicts_are_resolved_by_the_more_confident_of_ensemble_and_student():
    def row(*values, dtype=torch.float32):
        return torch.tensor(values, dtype=dtype).view(1, 1, 1, -1)
    # pixels: teachers agree | conflict, student differs and surer | conflict, student differs, less sure |
    #         conflict, student agrees | as the second, but outside the allowed region (a CutMix box)
    label = row(1, 1, 1, 0, 1, dtype=torch.long)
    confidence = row(0.6, 0.6, 0.9, 0.7, 0.6)
    conflict = row(False, True, True, True, True, dtype=torch.bool)
    student_label = row(0, 0, 0, 0, 0, dtype=torch.long)
    student_confidence = row(0.99, 0.8, 0.7, 0.99, 0.8)
    allowed = row(True, True, True, True, False, dtype=torch.bool)
    out_label, out_confidence = resolve_conflicts(label, confidence, conflict, student_label, student_confidence, allowed)
    assert out_label.flatten().tolist() == [1, 0, 1, 0, 1]
    assert out_confidence.flatten().tolist() == pytest.approx([0.6, 0.8, 0.9, 0.7, 0.6])


def test_ad_mt_alternation_runs_last_the_periods_drawn_uniformly():
    alternation = Alternation(50, gen(30))
    states = []
    for _ in range(400):
        states.append(alternation.first_active)
        alternation.advance()
    runs, current = [], 1
    for before, after in zip(states, states[1:]):
        if before == after:
            current += 1
        else:
            runs.append(current)
            current = 1
    reference = gen(30)
    assert runs == [int(torch.randint(1, 51, (1,), generator=reference)) for _ in runs]
    assert states[0] and all(1 <= r <= 50 for r in runs) and max(runs) > 25
    every_step = Alternation(1, gen(31))
    flags = []
    for _ in range(4):
        flags.append(every_step.first_active)
        every_step.advance()
    assert flags == [True, False, True, False]
    restored = Alternation(50, gen(0))
    restored.load_state_dict(alternation.state_dict())
    assert restored.state_dict() == alternation.state_dict()


def test_ad_mt_decay_copies_then_warms_up_to_its_cap():
    total = 30_000  # the original's run: copies while step // 2 < 50
    assert [ad_mt_decay(s, total, 0.99) for s in (0, 99, 100, 101)] == [0.0, 0.0, 0.0, 0.0]
    assert ad_mt_decay(102, total, 0.99) == pytest.approx(0.5)
    assert ad_mt_decay(298, total, 0.99) == pytest.approx(0.99)
    assert ad_mt_decay(10_000, total, 0.99) == 0.99
    assert ad_mt_decay(2, 300, 0.99) == pytest.approx(0.5)  # 1/600 of 300 steps rounds to 0 copies


def test_ad_mt_cutmix_box_size_follows_beta_4_4_and_stays_inside():
    draws = np.array([aug.beta_draw(4, 4, gen(s)) for s in range(2000)])
    assert abs(draws.mean() - 0.5) < 0.02 and abs(draws.std() - math.sqrt(16 / (64 * 9))) < 0.02
    height, width = 64, 96
    for seed in range(300):
        top, left, box_h, box_w = aug.centred_cutmix_box(height, width, gen(seed))
        assert 0 <= top and top + box_h <= height and 0 <= left and left + box_w <= width
        ratio = math.sqrt(1 - aug.beta_draw(4, 4, gen(seed)))  # the same first draws as the box's
        half_h, half_w = int(height * ratio) // 2, int(width * ratio) // 2
        assert half_h <= box_h <= 2 * half_h and half_w <= box_w <= 2 * half_w  # clipped at most on one side
