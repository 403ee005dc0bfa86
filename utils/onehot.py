"""The project's one one-hot encoding of binary gland masks."""
from __future__ import annotations

import torch


def one_hot(mask: torch.Tensor, num_classes: int = 2) -> torch.Tensor:
    """Class-index mask ``[B, 1, H, W]`` or ``[B, H, W]`` (or ``[H, W]``) -> float one-hot.

    Returns ``[B, C, H, W]`` (``[C, H, W]`` for a 2-D input); channel 1 = gland.
    """
    squeeze = mask.dim() == 2
    if squeeze:
        mask = mask[None]
    if mask.dim() == 4:
        if mask.shape[1] != 1:
            raise ValueError(f"expected a [B, 1, H, W] index mask, got {tuple(mask.shape)}")
        mask = mask[:, 0]
    out = torch.nn.functional.one_hot(mask.long(), num_classes).permute(0, 3, 1, 2).float()
    return out[0] if squeeze else out
