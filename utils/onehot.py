"""The project's one one-hot encoding of binary gland masks, and its inverse."""
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
    # contiguous: a permuted (channels-last) one-hot would make every reduction over it
    # (soft Dice, CE) sum in another order than for a contiguous label, changing rounding
    out = torch.nn.functional.one_hot(mask.long(), num_classes).permute(0, 3, 1, 2).float().contiguous()
    return out[0] if squeeze else out


def class_index(scores: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    """Argmax over the class channel: ``[B, C, H, W]`` -> long ``[B, H, W]`` (``[B, 1, H, W]``
    with ``keepdim``); the first maximum wins ties (channel 0 for an all-equal pixel).

    ``torch.max(dim=1).indices``, which has the same semantics as ``torch.argmax(dim=1)``
    and is much faster on CPU. The project's one argmax over classes.
    """
    return scores.max(dim=1, keepdim=keepdim).indices
