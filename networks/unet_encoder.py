"""The UNet encoder shared by the registration and the segmentation network (docs/METHOD.md 2, 4)."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn

from networks.blocks import ConvBlock, Down

ENCODER_CHANNELS = (16, 32, 64, 128, 256)

#: ``run(block, *inputs)``: how a network applies one block (plainly, or with activation checkpointing).
BlockRunner = Callable[..., torch.Tensor]


def run_plain(block: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    return block(*inputs)


class UNetEncoder(nn.Module):
    """``inc`` (:class:`ConvBlock`) then four :class:`Down` blocks, 16-32-64-128-256 channels.

    Both networks derive from this class, so their encoder modules keep the names
    ``inc``, ``down1`` ... ``down4`` in their state dicts. The modules are created in
    that order, before anything a subclass adds (the order in which the seeded
    initialisation draws). ``dropout``: the dropout probability of each of the five blocks,
    from ``inc`` to ``down4`` (none by default; dropout holds no weights).
    """

    def __init__(self, in_channels: int, dropout: Sequence[float] = (0.0,) * 5) -> None:
        super().__init__()
        if len(dropout) != len(ENCODER_CHANNELS):
            raise ValueError(f"dropout needs one probability per encoder block, got {tuple(dropout)}")
        c1, c2, c3, c4, c5 = ENCODER_CHANNELS
        p1, p2, p3, p4, p5 = (float(p) for p in dropout)
        self.inc = ConvBlock(in_channels, c1, p1)
        self.down1 = Down(c1, c2, p2)
        self.down2 = Down(c2, c3, p3)
        self.down3 = Down(c3, c4, p4)
        self.down4 = Down(c4, c5, p5)

    def encode(self, x: torch.Tensor, run: BlockRunner = run_plain) -> tuple[torch.Tensor, ...]:
        """``x [B, in, H, W]`` (H, W multiples of 16) -> the five feature maps, full to 1/16
        scale. ``run`` applies ``inc`` and ``down1`` (the largest activations; a network
        may recompute them in the backward pass)."""
        x1 = run(self.inc, x)
        x2 = run(self.down1, x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        return x1, x2, x3, x4, self.down4(x4)
