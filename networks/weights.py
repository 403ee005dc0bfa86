"""Operations on a network's weights as a whole: freezing, and the exponential moving average
of a student that a teacher network follows (Mean Teacher, UA-MT, BCP)."""
from __future__ import annotations

import torch


def freeze(net: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and no gradients (e.g. the frozen registration net of the segmentation stage)."""
    net.eval()
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net


def ema_decay(step: int, max_decay: float) -> float:
    """Mean Teacher's decay for update ``step`` (counted from 0): ``min(1 - 1/(step + 1),
    max_decay)``, so the teacher is the plain average of the students so far until that
    average would forget faster than ``max_decay``."""
    return min(1.0 - 1.0 / (int(step) + 1), float(max_decay))


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, decay: float) -> None:
    """``teacher = decay * teacher + (1 - decay) * student``, parameter by parameter (buffers,
    which hold no learned weights here, are copied)."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)
