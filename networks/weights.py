"""Operations on a network's weights as a whole."""
from __future__ import annotations

import torch


def freeze(net: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and no gradients (e.g. the frozen registration net of the segmentation stage)."""
    net.eval()
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net
