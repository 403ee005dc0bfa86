"""--augment flip-rotate against independent references, and how the shared segmentation stage
hands it to every method (one transform per image and its label, from a checkpointed generator)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from utils.onehot import class_index, one_hot
from utils.stages.augmentations import MAX_ROTATION_DEGREES, flip_rotate, rotation_field, uniform
from utils.stages.segmentation import SegmentationStage
from networks.spatial_transformer import warp


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rotated_coordinates(degrees: float, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each output pixel samples for a rotation by ``degrees`` about the centre (rows, cols)."""
    theta = math.radians(degrees)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    return (cy + math.sin(theta) * (cols - cx) + math.cos(theta) * (rows - cy),
            cx + math.cos(theta) * (cols - cx) - math.sin(theta) * (rows - cy))


def test_rotation_field_turns_about_the_centre_counter_clockwise():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 0, 2] = 1.0  # top middle
    turned = warp(x, rotation_field(torch.tensor([90.0]), 5, 5))
    expected = torch.zeros(1, 1, 5, 5)
    expected[0, 0, 2, 0] = 1.0  # left middle
    torch.testing.assert_close(turned, expected, atol=1e-5, rtol=0)
    assert torch.equal(rotation_field(torch.tensor([0.0]), 4, 7), torch.zeros(1, 2, 4, 7))
    # 180 degrees on a wide image: both axes reversed (a rotation in pixels, not a shear)
    image = torch.rand(1, 1, 6, 11, generator=gen(0))
    torch.testing.assert_close(warp(image, rotation_field(torch.tensor([180.0]), 6, 11)), image.flip(-1).flip(-2),
                               atol=1e-5, rtol=0)


def test_flip_rotate_matches_scipy_per_item_with_the_documented_draws():
    batch, height, width = 16, 12, 20
    images = torch.rand(batch, 1, height, width, generator=gen(1))
    labels = one_hot((torch.rand(batch, height, width, generator=gen(2)) > 0.7).long())
    (out,), (out_label,) = flip_rotate([images], [labels], gen(5))
    reference = gen(5)  # three draws per item: flip, rotate, angle
    flips = uniform(reference, 0, 1, batch) < 0.5
    rotations = uniform(reference, 0, 1, batch) < 0.5
    angles = uniform(reference, -MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES, batch)
    assert 0 < int(flips.sum()) < batch and 0 < int(rotations.sum()) < batch
    for i in range(batch):
        image, gland = images[i, 0].numpy(), labels[i, 1].numpy()
        if flips[i]:
            image, gland = image[:, ::-1], gland[:, ::-1]
        if rotations[i]:
            rows, cols = rotated_coordinates(float(angles[i]), height, width)
            image = ndimage.map_coordinates(image, [rows, cols], order=1, mode="grid-constant", cval=0.0)
            gland = ndimage.map_coordinates(gland, [rows, cols], order=0, mode="grid-constant", cval=0.0)
        np.testing.assert_allclose(out[i, 0].numpy(), image, atol=1e-4)
        agree = (out_label[i, 1].numpy() == gland).mean()
        assert agree > 0.99, f"item {i}: the label took another transform than its image ({agree:.3f})"
        if not rotations[i]:  # never resampled: exact
            assert torch.equal(out[i, 0], torch.from_numpy(np.ascontiguousarray(image)))
    assert torch.equal(out_label.sum(1), torch.ones(batch, height, width))  # one-hot everywhere


def test_flip_rotate_shares_one_transform_within_a_group_and_repeats_for_a_seed():
    image = torch.rand(8, 1, 10, 14, generator=gen(3))
    (a, b), _ = flip_rotate([image, image.clone()], [], gen(7))
    assert torch.equal(a, b)
    (again, _), _ = flip_rotate([image, image], [], gen(7))
    assert torch.equal(a, again)
    (other,), _ = flip_rotate([image], [], gen(8))
    assert not torch.equal(a, other)


class InputsOnly(SegmentationStage):
    def train_step(self, batch, check):
        raise NotImplementedError


def stage(augmentation: str, seed: int = 0) -> SegmentationStage:
    """A segmentation stage holding only what its input helpers read."""
    s = InputsOnly.__new__(InputsOnly)
    s.device, s.augmentation, s.augment_rng = torch.device("cpu"), augmentation, gen(seed)
    return s


def test_training_inputs_transform_an_image_with_its_label_and_every_other_image_on_its_own():
    height, width, batch = 12, 20, 12
    gland = torch.zeros(batch, height, width, dtype=torch.long)
    gland[:, 2:9, 1:6] = 1  # an asymmetric gland: a flip moves it
    x = gland[:, None].float()
    inputs = {"x_l": x, "y_l": one_hot(gland), "u_a": x.clone()}
    x_l, y_l, u_a = stage("flip-rotate").training_inputs(inputs, "x_l", "y_l", "u_a")
    # the image is its own gland mask, so the label (nearest) is gland wherever the image (bilinear)
    # is clearly gland, and the image is not 0 wherever the label is gland
    assert bool(class_index(y_l)[x_l[:, 0] > 0.99].eq(1).all())
    assert bool((x_l[:, 0][class_index(y_l) == 1] > 0).all())
    assert any(not torch.equal(x_l[i], x[i]) for i in range(batch)), "nothing was transformed"
    assert any(not torch.equal(x_l[i], u_a[i]) for i in range(batch)), "u_a took x_l's transforms"
    with pytest.raises(ValueError, match="must be named with their images"):
        stage("flip-rotate").training_inputs(inputs, "y_l", "u_a")


def test_augment_none_returns_the_tensors_and_draws_nothing():
    s = stage("none", seed=4)
    before = s.augment_rng.get_state()
    inputs = {"x_l": torch.rand(2, 1, 6, 8), "y_l": one_hot(torch.zeros(2, 6, 8, dtype=torch.long)),
              "u_a": torch.rand(2, 1, 6, 8)}
    outputs = s.training_inputs(inputs, "x_l", "y_l", "u_a")
    assert all(torch.equal(o, inputs[n]) for o, n in zip(outputs, ("x_l", "y_l", "u_a")))
    assert torch.equal(s.augment_rng.get_state(), before)
