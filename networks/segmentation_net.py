"""The segmentation network (docs/METHOD.md section 4): UNet with deep-supervision heads and a projector.

``SegmentationNet()(x)`` takes images ``[B, 1, H, W]`` (any H, W) and returns a dict:

- ``"out"``: logits ``[B, 2, H, W]`` of the last decoder level (full resolution);
- ``"level2"``: logits of the head on the 1/4-scale decoder level, resized to
  ``[B, 2, H, W]`` (the deep-supervision output of the loss; docs/METHOD.md returns no
  other level, so no head is computed for the 1/8 and 1/2 levels);
- ``"project"``: ``[B, proj_dim, h4, w4]`` raw projector output (1x1 conv, PReLU,
  1x1 conv) on the 1/4-scale decoder features (not normalised);
- ``"project_map"``: ``"out"`` resized to ``[B, 2, h4, w4]``.

Sizes: the input is resized (bilinear, ``align_corners=False``) to ``Hr x Wr``, the
multiples of 16 at or above ``H x W``; every head output is resized back to
``H x W`` the same way. The 1/4 scale is defined on the ORIGINAL size:
``h4, w4 = max(1, H // 4), max(1, W // 4)``; the 1/4-scale decoder features
(``Hr/4 x Wr/4``) are resized to ``h4 x w4`` BEFORE the projector, so every
projected vector is the projection of one (interpolated) feature vector. When
``H, W`` are multiples of 16 no resizing happens at all.

``dropout = P`` (``--dropout``; 0, the paper's network, by default) puts element-wise
dropout into the five encoder blocks with :func:`encoder_dropout`'s probabilities:
SSL4MIS's UNet encoder profile (0.05, 0.1, 0.2, 0.3, 0.5 from the first block to the
deepest) scaled so that the deepest block has ``P``; ``P = 0.5`` is SSL4MIS's encoder.
Dropout acts in training mode only and holds no weights: checkpoints load into a network
with any ``dropout``, and ``P = 0`` builds exactly the network without the option (same
modules, same seeded initialisation, same outputs).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from networks.blocks import Up
from networks.unet_encoder import ENCODER_CHANNELS, UNetEncoder

MULTIPLE = 16

#: SSL4MIS's encoder dropout by depth (``inc`` ... ``down4``), divided by its deepest value 0.5.
DROPOUT_PROFILE = (0.1, 0.2, 0.4, 0.6, 1.0)


def encoder_dropout(p: float) -> tuple[float, ...]:
    """Dropout probability of each encoder block for ``--dropout p``: ``p`` times
    :data:`DROPOUT_PROFILE` (``p = 0.5`` gives SSL4MIS's 0.05, 0.1, 0.2, 0.3, 0.5)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    return tuple(p * share for share in DROPOUT_PROFILE)


def padded_size(height: int, width: int, multiple: int = MULTIPLE) -> tuple[int, int]:
    """The smallest multiples of ``multiple`` at or above ``(H, W)``."""
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


def quarter_size(height: int, width: int) -> tuple[int, int]:
    """Size ``(h4, w4)`` of ``"project"`` / ``"project_map"`` for an ``H x W`` input."""
    return max(1, height // 4), max(1, width // 4)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class SegmentationNet(UNetEncoder):
    """UNet 16-32-64-128-256 / 128-64-32-16 (no attention), 1x1 heads on the last and 1/4 levels."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, proj_dim: int = 64,
                 dropout: float = 0.0) -> None:
        super().__init__(in_channels, encoder_dropout(dropout))
        c1, c2, c3, c4, c5 = ENCODER_CHANNELS
        self.up1 = Up(c5, c4, c4)
        self.up2 = Up(c4, c3, c3)
        self.up3 = Up(c3, c2, c2)
        self.up4 = Up(c2, c1, c1)
        self.head2 = nn.Conv2d(c3, num_classes, 1)
        self.head_out = nn.Conv2d(c1, num_classes, 1)
        self.projector = nn.Sequential(nn.Conv2d(c3, c3, 1), nn.PReLU(), nn.Conv2d(c3, proj_dim, 1))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.GroupNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x [B, in_channels, H, W]`` -> dict (see the module docstring)."""
        return self.decode(self.encode_image(x), tuple(x.shape[-2:]))

    def encode_image(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The encoder's five feature maps of ``x [B, in_channels, H, W]`` (resized to the
        network size first); :meth:`decode` turns them (perturbed or not) into the outputs."""
        if x.dim() != 4:
            raise ValueError(f"input must be [B, C, H, W], got {tuple(x.shape)}")
        return self.encode(_resize(x, padded_size(*x.shape[-2:])))

    def decode(self, features: tuple[torch.Tensor, ...], size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Decoder and heads on :meth:`encode_image`'s features, outputs at ``size = (H, W)``."""
        quarter = quarter_size(*size)
        x1, x2, x3, x4, x5 = features
        d1 = self.up1(x5, x4)
        d2 = self.up2(d1, x3)
        d3 = self.up3(d2, x2)
        d4 = self.up4(d3, x1)
        out = _resize(self.head_out(d4), size)
        return {
            "out": out,
            "level2": _resize(self.head2(d2), size),
            "project": self.projector(_resize(d2, quarter)),
            "project_map": _resize(out, quarter),
        }
