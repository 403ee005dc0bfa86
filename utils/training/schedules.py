"""Weight schedules of the training losses."""
from __future__ import annotations

import math


def ramp_up(epoch: float, length: float = 50) -> float:
    """Sigmoid-shaped ramp ``exp(-5 (1 - min(epoch, length) / length)^2)``, in (0, 1];
    1.0 from ``epoch >= length`` on, and always 1.0 when ``length == 0``."""
    if length <= 0:
        return 1.0
    t = min(max(float(epoch), 0.0), float(length)) / float(length)
    return math.exp(-5.0 * (1.0 - t) ** 2)
