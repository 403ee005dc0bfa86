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


def epoch_ramp(epoch: int, length: float) -> float:
    """:func:`ramp_up` for the 0-based ``epoch``, counted from 1 as the published code counts
    (its ramp of epoch ``e`` is ``ramp_up(e + 1)``): the epoch ``length - 1`` (the last one of a
    ramp as long as the run) gets exactly 1.0."""
    return ramp_up(int(epoch) + 1, length)


def ramp_length(epochs: int, fraction: float = 1.0, length: float | None = None) -> float:
    """A ramp's length in epochs: ``length`` when given (it wins), else ``fraction * epochs``
    (``fraction = 1``: the ramp spans the whole run)."""
    return float(length) if length is not None else float(fraction) * int(epochs)
