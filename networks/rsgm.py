"""RSGM: registration sampling generation (docs/METHOD.md section 3).

A frozen registration net ``R(moving, fixed) -> flow [B, 2, H, W]`` turns an
Atlas image ``x_l`` (label ``y_l``) and two unlabelled images ``u1``, ``u2`` of
the same patient into two generated images that share a geometry and a label
but differ in appearance::

    w   = warp(u1_on_l, R(u1_on_l, x_l))          # u1 carried onto x_l's anatomy
    phi = compose(R(x_l_on_u2, u2), field_l_u2)   # x_l -> u2: affine first, then deformable
    sty = beta * (w - x_l);  spa = alpha * phi
    g1  = warp(x_l, spa);  g2 = warp(x_l + sty, spa);  y_g = warp(y_l, spa, "nearest")

``u1_on_l = warp(u1, field(u1, x_l))`` and ``x_l_on_u2 = warp(x_l, field(x_l, u2))``
are the affinely pre-aligned images, ``field_l_u2 = field(x_l, u2)`` the affine
field (``dataloaders.prealignment.cache.Prealignment.field``). **Deviation** from the published
code: ``phi`` composes the two fields (``f + warp(d_aff, f)``) instead of adding them.

One implementation of the maths: the live path (:func:`registration_outputs`
per batch) and ``dataloaders.registration_cache.RegistrationOutputCache`` (the
same call once per pair) both feed :func:`rsgm_generate`.
"""
from __future__ import annotations

from typing import Callable

import torch

from networks.spatial_transformer import compose, warp, warp_label

RegNet = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Beta(a, a) concentration of BRBS's coefficient sampling.
BETA_CONCENTRATION = 0.3
DISTRIBUTIONS = ("uniform", "beta")


@torch.no_grad()
def registration_outputs(reg_net: RegNet, x_l: torch.Tensor, u1_on_l: torch.Tensor,
                         x_l_on_u2: torch.Tensor, u2: torch.Tensor,
                         field_l_u2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen registration net's two RSGM outputs, without gradients.

    Images ``[B, 1, H, W]``, ``field_l_u2 [B, 2, H, W]`` (affine field, ``warp(x_l,
    field_l_u2) ~ u2``). Returns ``w_u1 [B, 1, H, W]`` (``u1`` on ``x_l``'s anatomy)
    and ``phi_u2 [B, 2, H, W]`` float32 (``warp(x_l, phi_u2) ~ u2``). Both
    registrations run as ONE forward pass of batch ``2B``: ``moving = [u1_on_l;
    x_l_on_u2]``, ``fixed = [x_l; u2]`` (exact as long as the net treats batch items
    independently, which GroupNorm nets do). The caller puts the net in eval mode.
    """
    batch = x_l.shape[0]
    for name, t in (("u1_on_l", u1_on_l), ("x_l_on_u2", x_l_on_u2), ("u2", u2)):
        if t.shape != x_l.shape:
            raise ValueError(f"{name} {tuple(t.shape)} must match x_l {tuple(x_l.shape)}")
    if field_l_u2.shape != (batch, 2, *x_l.shape[-2:]):
        raise ValueError(f"field_l_u2 {tuple(field_l_u2.shape)} must be [B, 2, H, W] "
                         f"for x_l {tuple(x_l.shape)}")
    flows = reg_net(torch.cat([u1_on_l, x_l_on_u2]), torch.cat([x_l, u2])).float()
    if flows.shape != (2 * batch, 2, *x_l.shape[-2:]):
        raise ValueError(f"reg_net returned {tuple(flows.shape)}, expected [{2 * batch}, 2, H, W]")
    flow_u1_l, flow_l_u2 = flows[:batch], flows[batch:]
    w_u1 = warp(u1_on_l, flow_u1_l)
    phi_u2 = compose(flow_l_u2, field_l_u2.float())
    return w_u1, phi_u2


def _beta_johnk(count: int, a: float, b: float, generator: torch.Generator | None,
                device: torch.device) -> torch.Tensor:
    """``count`` Beta(a, b) samples (float64) by Johnk's rejection method, drawn only
    from ``torch.rand`` so a seeded ``generator`` reproduces them exactly.

    With ``U, V ~ U(0, 1]``, ``X = U^(1/a)``, ``Y = V^(1/b)``: given ``X + Y <= 1``,
    ``X / (X + Y) ~ Beta(a, b)``. Acceptance is ``G(a+1) G(b+1) / G(a+b+1)``, about
    0.90 for a = b = 0.3 (it drops for large a, b; BRBS only needs 0.3). Computed in
    log space so small U, V do not underflow.
    """
    out = torch.empty(0, dtype=torch.float64, device=device)
    while out.numel() < count:
        need = count - out.numel()
        draws = max(16, 2 * need)
        uv = 1.0 - torch.rand(2, draws, generator=generator, device=device, dtype=torch.float64)
        log_x, log_y = uv[0].log() / a, uv[1].log() / b
        log_sum = torch.logaddexp(log_x, log_y)
        accepted = (log_x - log_sum).exp()[log_sum <= 0]
        out = torch.cat([out, accepted[:need]])
    return out


def sample_coefficients(batch_size: int, distribution: str = "uniform",
                        generator: torch.Generator | None = None,
                        device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """RSGM's mixing coefficients ``(alpha, beta)``, each ``[B, 1, 1, 1]`` float32 in [0, 1].

    ``"uniform"``: Uniform(0, 1) (docs/METHOD.md default); ``"beta"``: Beta(0.3, 0.3) as in
    BRBS (U-shaped). Samples are drawn with ``torch.rand`` on the generator's device
    (CPU without a generator, from torch's global RNG) and then moved to ``device``;
    the same seed gives the same coefficients. Beta uses :func:`_beta_johnk`
    (``torch.distributions.Beta`` cannot take a generator).
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    source = generator.device if generator is not None else torch.device("cpu")
    if distribution == "uniform":
        values = torch.rand(2 * batch_size, generator=generator, device=source)
    else:
        values = _beta_johnk(2 * batch_size, BETA_CONCENTRATION, BETA_CONCENTRATION, generator, source)
    values = values.to(device=device, dtype=torch.float32).view(2, batch_size, 1, 1, 1)
    return values[0], values[1]


def rsgm_generate(x_l: torch.Tensor, y_l: torch.Tensor, w_u1: torch.Tensor, phi_u2: torch.Tensor,
                  alpha: torch.Tensor | float, beta: torch.Tensor | float
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generate ``(g1, g2, y_g)`` from an Atlas batch and the registration outputs.

    ``x_l, w_u1 [B, 1, H, W]`` in [0, 1], ``y_l [B, 2, H, W]`` one-hot, ``phi_u2
    [B, 2, H, W]``, ``alpha, beta`` scalars or ``[B, 1, 1, 1]`` in [0, 1].
    ``g1 = warp(x_l, alpha phi)``, ``g2 = warp(x_l + beta (w_u1 - x_l), alpha phi)``,
    ``y_g = warp_label(y_l, alpha phi)`` (nearest).

    Range: ``x_l + beta (w_u1 - x_l) = (1 - beta) x_l + beta w_u1`` is a convex
    combination of images in [0, 1] for beta in [0, 1], and a bilinear warp with
    zero padding keeps [0, 1], so g1 and g2 stay in [0, 1] (up to float rounding);
    no clamp. Labels: the nearest warp keeps one-hot values exact and pixels sampled
    outside the image become background, so ``y_g`` is one-hot everywhere.
    """
    if x_l.shape != w_u1.shape or x_l.dim() != 4 or x_l.shape[1] != 1:
        raise ValueError(f"x_l {tuple(x_l.shape)} and w_u1 {tuple(w_u1.shape)} must both be [B, 1, H, W]")
    if y_l.shape != (x_l.shape[0], 2, *x_l.shape[-2:]):
        raise ValueError(f"y_l {tuple(y_l.shape)} must be one-hot [B, 2, H, W] for x_l {tuple(x_l.shape)}")
    spa = alpha * phi_u2
    sty = beta * (w_u1 - x_l)
    g1 = warp(x_l, spa)
    g2 = warp(x_l + sty, spa)
    return g1, g2, warp_label(y_l, spa)
