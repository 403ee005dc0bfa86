"""The registration network (docs/METHOD.md section 2): a UNet with SE + PAM decoder attention.

``RegistrationNet()(moving, fixed)`` takes images ``[B, 1, H, W]`` (any H, W) and
returns the flow ``[B, 2, H, W]`` in pixels (channel 0 = row, 1 = column) such that
``warp(moving, flow) ~ fixed`` once trained (``networks.spatial_transformer.warp``).

Input ``cat([fixed, moving])`` is zero-padded symmetrically to a multiple of 16
(:func:`symmetric_padding`) and the flow cropped from the SAME region (**deviation**:
the published code crops the top-left corner, shifting the flow).

``integration_steps = 0`` (the paper): the network's output is the displacement.
``integration_steps = N > 0`` (``--diffeomorphic``, 7 as in VoxelMorph): the output is a
stationary velocity field, integrated by scaling and squaring
(:func:`networks.spatial_transformer.integrate_velocity`), so the returned
displacement is (nearly) invertible and does not fold. :meth:`config` is what a
checkpoint records to rebuild the same network.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from networks.blocks import Up
from networks.spatial_transformer import integrate_velocity
from networks.unet_encoder import ENCODER_CHANNELS, UNetEncoder, run_plain

MULTIPLE = 16


def symmetric_padding(height: int, width: int, multiple: int = MULTIPLE) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` zero padding that makes ``H, W`` multiples of
    ``multiple``; the odd pixel goes to the bottom / right."""
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    return pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2


class RegistrationNet(UNetEncoder):
    """UNet 16-32-64-128-256 down, 128-64-32-16 up; up-blocks 1-2: SE then PAM, 3: SE, 4: plain.

    ``attention_impl`` chooses how PAM computes its attention (see
    ``networks.blocks.attention``; ``"reference"`` materialises the ``(HW)^2`` matrix,
    for benchmarks only). The final 1x1 conv starts near zero (normal, std 1e-5;
    bias 0), so the initial flow is ~0.

    ``checkpointing`` (default False): when True and gradients are on, the blocks with
    the largest activations (``inc``, ``down1``, ``up3``, ``up4``: full and half
    resolution) keep only their inputs and recompute the rest in the backward pass
    (``torch.utils.checkpoint``); the same gradients up to float rounding. It trades
    a few percent more time for a somewhat lower peak memory (docs/benchmarks.md), so
    it is off unless memory is that tight.
    """

    def __init__(self, attention_impl: str = "auto", checkpointing: bool = False,
                 integration_steps: int = 0) -> None:
        super().__init__(in_channels=2)
        if integration_steps < 0:
            raise ValueError(f"integration_steps must be >= 0, got {integration_steps}")
        self.checkpointing = checkpointing
        self.integration_steps = int(integration_steps)
        c1, c2, c3, c4, c5 = ENCODER_CHANNELS
        self.up1 = Up(c5, c4, c4, attention="se+pam", attention_impl=attention_impl)
        self.up2 = Up(c4, c3, c3, attention="se+pam", attention_impl=attention_impl)
        self.up3 = Up(c3, c2, c2, attention="se")
        self.up4 = Up(c2, c1, c1, attention=None)
        self.flow = nn.Conv2d(c1, 2, 1)
        nn.init.normal_(self.flow.weight, std=1e-5)
        nn.init.zeros_(self.flow.bias)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """``moving, fixed [B, 1, H, W]`` -> flow ``[B, 2, H, W]`` (pixels, row first)."""
        if moving.shape != fixed.shape or moving.dim() != 4:
            raise ValueError(f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} "
                             f"must both be [B, 1, H, W]")
        height, width = moving.shape[-2:]
        top, bottom, left, right = symmetric_padding(height, width)
        x = F.pad(torch.cat([fixed, moving], dim=1), (left, right, top, bottom))
        recompute = self.checkpointing and torch.is_grad_enabled()

        def recomputed(block: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
            return checkpoint(block, *inputs, use_reentrant=False)

        run = recomputed if recompute else run_plain
        x1, x2, x3, x4, x = self.encode(x, run)
        x = self.up1(x, x4)
        x = self.up2(x, x3)
        x = run(self.up3, x, x2)
        x = run(self.up4, x, x1)
        flow = self.flow(x)[..., top:top + height, left:left + width].contiguous()
        return integrate_velocity(flow, self.integration_steps) if self.integration_steps else flow

    def config(self) -> dict[str, int]:
        """The constructor settings a checkpoint must record (``RegistrationNet(**config)``)."""
        return {"integration_steps": self.integration_steps}
