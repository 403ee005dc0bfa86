"""Random image operations of the training methods, drawn from one ``torch.Generator``.

Images are ``[B, 1, H, W]`` float in [0, 1], labels one-hot ``[B, C, H, W]``. Every
random draw comes from the generator passed in (a CPU generator that the stage
checkpoints), so a seeded run repeats exactly and ``--resume`` continues the same
stream. Box masks are float ``[B, 1, H, W]`` with 1 inside the box unless said otherwise.

:func:`flip_rotate` is ``--augment flip-rotate``, the geometric augmentation every method
may use (docs/METHOD.md section 6); the rest are the baselines' own views.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from networks.spatial_transformer import field_from_affine, warp, warp_label

#: ``--augment flip-rotate``: probability of the left-right flip and of the rotation, and the
#: largest rotation in degrees (see :func:`flip_rotate` for why these transforms).
FLIP_PROBABILITY = 0.5
ROTATION_PROBABILITY = 0.5
MAX_ROTATION_DEGREES = 10.0

#: ``augment(images, labels) -> (images, labels)``: one random transform per batch item, shared
#: by the group (:meth:`utils.stages.segmentation.SegmentationStage.augment`).
Augment = Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor]], tuple[list[torch.Tensor], list[torch.Tensor]]]


def uniform(generator: torch.Generator, low: float, high: float, count: int = 1) -> torch.Tensor:
    """``count`` draws from U(low, high) as a float64 CPU tensor."""
    return low + (high - low) * torch.rand(count, generator=generator, dtype=torch.float64)


def clamped_noise(like: torch.Tensor, generator: torch.Generator, std: float = 0.1, clip: float = 0.2) -> torch.Tensor:
    """Mean Teacher's input noise ``clamp(std * N(0, 1), -clip, clip)``, shaped like ``like``."""
    noise = torch.randn(like.shape, generator=generator) * std
    return noise.clamp(-clip, clip).to(device=like.device, dtype=like.dtype)


def channel_dropout(features: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """``Dropout2d(p)`` in training mode with the given generator: whole channels of
    ``[B, C, H, W]`` are zeroed with probability ``p``, the others scaled by ``1 / (1 - p)``."""
    keep = (torch.rand(features.shape[0], features.shape[1], 1, 1, generator=generator) >= p).to(features.dtype)
    return features * (keep / (1.0 - p)).to(features.device)


def copy_paste_box(height: int, width: int, generator: torch.Generator, fraction: float = 2 / 3) -> tuple[int, int, int, int]:
    """BCP's zero box: ``(top, left, box_h, box_w)`` with ``box_h = int(fraction H)``,
    ``box_w = int(fraction W)``, ``top`` uniform in ``[0, H - box_h)`` and ``left`` uniform in
    ``[0, W - box_w)`` (the box never touches the bottom or right edge, as in the
    original's ``randint(0, H - box_h)``; 0 when the box fills the side)."""
    box_h, box_w = int(height * fraction), int(width * fraction)
    top = int(torch.randint(max(1, height - box_h), (1,), generator=generator))
    left = int(torch.randint(max(1, width - box_w), (1,), generator=generator))
    return top, left, box_h, box_w


def box_mask(height: int, width: int, box: tuple[int, int, int, int] | None, batch: int = 1,
             device: torch.device | str = "cpu") -> torch.Tensor:
    """Float ``[batch, 1, H, W]``: 1 inside ``box = (top, left, box_h, box_w)``, 0 elsewhere
    (all 0 for ``box=None``)."""
    mask = torch.zeros(batch, 1, height, width, device=device)
    if box is not None:
        top, left, box_h, box_w = box
        mask[:, :, top:top + box_h, left:left + box_w] = 1.0
    return mask


def cutmix_box(height: int, width: int, generator: torch.Generator, p: float = 0.5, area: tuple[float, float] = (0.02, 0.4),
               ratio: tuple[float, float] = (0.3, 1 / 0.3)) -> tuple[int, int, int, int] | None:
    """UniMatch's CutMix box, or None (with probability ``1 - p``): area ``U(area) H W``, aspect
    ratio ``r ~ U(ratio)``, ``box_w = int(sqrt(area / r))``, ``box_h = int(sqrt(area r))``, the
    top-left corner uniform over the image, redrawn (ratio and corner) until the box fits."""
    if float(uniform(generator, 0.0, 1.0)) > p:
        return None
    size = float(uniform(generator, *area)) * height * width
    while True:
        r = float(uniform(generator, *ratio))
        box_w, box_h = int(math.sqrt(size / r)), int(math.sqrt(size * r))
        left = int(torch.randint(width, (1,), generator=generator))
        top = int(torch.randint(height, (1,), generator=generator))
        if left + box_w <= width and top + box_h <= height:
            return top, left, box_h, box_w


def cutout(image: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """ABD's cutout of a ``[1, C, H, W]`` image: with probability ``p`` a box drawn as
    :func:`cutmix_box` is filled with random 0/1 pixels. Returns ``(image, box mask [1, 1, H, W])``
    (the mask all 0 when no box was drawn; a label is cleared inside it by the caller)."""
    height, width = image.shape[-2:]
    box = cutmix_box(height, width, generator, p=p)
    mask = box_mask(height, width, box, 1, image.device)
    if box is None:
        return image, mask
    top, left, box_h, box_w = box
    noise = torch.randint(0, 2, (box_h, box_w), generator=generator).to(device=image.device, dtype=image.dtype)
    out = image.clone()
    out[..., top:top + box_h, left:left + box_w] = noise
    return out, mask


def beta_draw(a: int, b: int, generator: torch.Generator) -> float:
    """One draw from Beta(a, b) for integers ``a, b >= 1``: the ``a``-th smallest of ``a + b - 1``
    uniforms (an order statistic; ``torch.distributions`` takes no generator)."""
    return float(torch.rand(a + b - 1, generator=generator, dtype=torch.float64).sort().values[a - 1])


def centred_cutmix_box(height: int, width: int, generator: torch.Generator, a: int = 4, b: int = 4
                       ) -> tuple[int, int, int, int]:
    """AD-MT's CutMix box ``(top, left, box_h, box_w)``: ``lam ~ Beta(a, b)``, sides
    ``int(H sqrt(1 - lam))`` x ``int(W sqrt(1 - lam))`` centred on a row uniform in
    ``[H // 8, H)`` and a column uniform in ``[W // 8, W)``, half a side (rounded down) each
    way, clipped to the image (so a box at the border is smaller)."""
    ratio = math.sqrt(1.0 - beta_draw(a, b, generator))
    half_h, half_w = int(height * ratio) // 2, int(width * ratio) // 2
    row = int(torch.randint(height // 8, height, (1,), generator=generator))
    col = int(torch.randint(width // 8, width, (1,), generator=generator))
    top, bottom = max(0, row - half_h), min(height, row + half_h)
    left, right = max(0, col - half_w), min(width, col + half_w)
    return top, left, bottom - top, right - left


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, C, H, W]`` (kernel radius ``ceil(3 sigma)``, reflected border)."""
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-offsets ** 2 / (2.0 * sigma ** 2))
    kernel = (kernel / kernel.sum()).to(device=image.device, dtype=image.dtype)
    channels = image.shape[1]
    padded = F.pad(image, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(padded, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(out, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)


def strong_view(image: torch.Tensor, generator: torch.Generator, jitter: float = 0.5, p_jitter: float = 0.8,
                blur_sigma: tuple[float, float] = (0.1, 2.0), p_blur: float = 0.5) -> torch.Tensor:
    """UniMatch's photometric strong view of a gray ``[1, 1, H, W]`` image in [0, 1]: with
    probability ``p_jitter`` brightness and contrast factors ``U(1 - jitter, 1 + jitter)``
    applied in random order (contrast about the image mean; saturation and hue do nothing
    to a gray image), then with probability ``p_blur`` a Gaussian blur of sigma
    ``U(blur_sigma)``. The result is clipped to [0, 1]."""
    out = image
    if float(uniform(generator, 0.0, 1.0)) < p_jitter:
        brightness, contrast = (float(f) for f in uniform(generator, 1.0 - jitter, 1.0 + jitter, 2))
        steps = [lambda x: (x * brightness).clamp(0, 1),
                 lambda x: ((x - x.mean()) * contrast + x.mean()).clamp(0, 1)]
        if float(uniform(generator, 0.0, 1.0)) < 0.5:
            steps.reverse()
        for step in steps:
            out = step(out)
    if float(uniform(generator, 0.0, 1.0)) < p_blur:
        out = gaussian_blur(out, float(uniform(generator, *blur_sigma)))
    return out.clamp(0, 1)


def no_augmentation(images: Sequence[torch.Tensor], labels: Sequence[torch.Tensor] = ()
                    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``--augment none``: the tensors as they are (an :data:`Augment` that draws nothing)."""
    return list(images), list(labels)


def rotation_field(degrees: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Displacement ``[B, 2, H, W]`` (pixels, row first; for :func:`warp`) that rotates an image
    about its centre by ``degrees [B]``, positive counter-clockwise as displayed (in pixel
    units, so a non-square image is rotated, not sheared; 0 gives the zero field)."""
    theta = torch.deg2rad(degrees.to(torch.float64))
    cos, sin = torch.cos(theta), torch.sin(theta)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    # output pixel p samples c + R (p - c): OpenCV's inverse-map matrix of that map
    matrix = torch.stack([torch.stack([cos, -sin, cx - cos * cx + sin * cy], dim=-1),
                          torch.stack([sin, cos, cy - sin * cx - cos * cy], dim=-1)], dim=-2)
    return field_from_affine(matrix, (height, width))


def flip_rotate(images: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], generator: torch.Generator,
                max_degrees: float = MAX_ROTATION_DEGREES, p_flip: float = FLIP_PROBABILITY,
                p_rotate: float = ROTATION_PROBABILITY) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``--augment flip-rotate``: one random transform per batch item, applied alike to every
    image ``[B, 1, H, W]`` and one-hot label ``[B, C, H, W]`` given (all of one size and batch).

    Per item, ``3`` draws in all: with probability ``p_flip`` a left-right flip, then with
    probability ``p_rotate`` a rotation about the centre by ``U(-max_degrees, max_degrees)``
    degrees. Images are sampled bilinearly (0 outside the image), labels by nearest class
    (background outside), so labels stay one-hot; an item that is not rotated is not
    resampled. Why these: SSL4MIS's ``RandomGenerator`` (used by its Mean Teacher, UA-MT and
    CPS scripts and by BCP) draws, with p 0.5, one of four 90-degree turns plus a flip along a
    random axis, else with p 0.5 a rotation by an integer angle in [-20, 20). An everted
    upper lid is always photographed with its margin along the image's long side, and a
    left and a right eye are mirror images: a left-right flip gives a plausible image, a
    turn by 90 degrees (a lid standing upright, in a frame of the other aspect) or an
    upside-down flip never occurs, and the tilt between two captures is a few degrees,
    hence 10 at most.
    """
    tensors = [*images, *labels]
    batch, (height, width) = tensors[0].shape[0], tensors[0].shape[-2:]
    flips = uniform(generator, 0.0, 1.0, batch) < p_flip
    rotations = uniform(generator, 0.0, 1.0, batch) < p_rotate
    degrees = uniform(generator, -max_degrees, max_degrees, batch) * rotations
    device = tensors[0].device
    flip = flips.to(device).view(-1, 1, 1, 1)
    rotate = rotations.to(device).view(-1, 1, 1, 1)
    field = rotation_field(degrees, height, width).to(device) if bool(rotations.any()) else None

    def transform(tensor: torch.Tensor, resample) -> torch.Tensor:
        if tensor.shape[0] != batch or tuple(tensor.shape[-2:]) != (height, width):
            raise ValueError(f"flip_rotate: every tensor must be [{batch}, C, {height}, {width}], "
                             f"got {tuple(tensor.shape)}")
        out = torch.where(flip, tensor.flip(-1), tensor)
        return out if field is None else torch.where(rotate, resample(out, field.to(out.dtype)), out)

    return ([transform(image, warp) for image in images],
            [transform(label, warp_label).to(label.dtype) for label in labels])
