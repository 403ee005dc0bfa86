"""One training iteration of each stage, shared by the trainers and the benchmarks.

Registration (METHOD.md section 2): both directions of an affinely pre-aligned
pair, ``(1 - SSIM) + NCC + 0.1 smooth`` each. Segmentation (sections 3-5):
RSGM images from the cached registration outputs, one forward pass over
``[x_l, g1, g2, u_neg]``, ``L_seg + L_rs + w ramp L_rnsf``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from networks.rsgm import rsgm_generate, sample_coefficients
from networks.spatial_transformer import warp
from utils.losses import dice_ce_loss, ncc_loss, smoothness_loss, ssim_loss
from utils.rnsf import rnsf_loss

FiniteCheck = Callable[[dict], None]


@dataclass
class RegistrationWeights:
    ssim: float = 1.0
    ncc: float = 1.0
    smooth: float = 0.1


def registration_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, a: torch.Tensor,
                      b: torch.Tensor, a_on_b: torch.Tensor, b_on_a: torch.Tensor,
                      weights: RegistrationWeights, check: FiniteCheck = lambda terms: None,
                      ) -> dict[str, float]:
    """Train on the pair both ways (``a_on_b -> b`` and ``b_on_a -> a``); returns the
    loss terms summed over the two directions (``ssim``, ``ncc``, ``smooth``, ``total``).

    One backward per direction: the same gradients as one backward of the sum,
    with a lower peak memory. ``check(terms)`` runs before each backward.
    """
    optimizer.zero_grad(set_to_none=True)
    terms: dict[str, float] = {}
    for moving, fixed in ((a_on_b, b), (b_on_a, a)):
        flow = net(moving, fixed)
        warped = warp(moving, flow)
        part = {"ssim": ssim_loss(warped, fixed), "ncc": ncc_loss(warped, fixed),
                "smooth": smoothness_loss(flow)}
        part["total"] = weights.ssim * part["ssim"] + weights.ncc * part["ncc"] + weights.smooth * part["smooth"]
        check(part)
        part["total"].backward()
        for name, value in part.items():
            terms[name] = terms.get(name, 0.0) + value.item()
    optimizer.step()
    return terms


@dataclass
class SegmentationConfig:
    use_rsgm: bool = True
    use_rnsf: bool = True
    rs_weight: float = 0.5
    rnsf_weight: float = 0.1
    temperature: float = 0.1
    negatives: int = 250
    negative_mode: str = "reliable"
    coefficients: str = "uniform"


def _split(outputs: dict[str, torch.Tensor], groups: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Batched network outputs -> one output dict per input group."""
    sizes = [t.shape[0] for t in groups.values()]
    parts = {name: torch.split(value, sizes) for name, value in outputs.items()}
    return {group: {name: parts[name][i] for name in outputs} for i, group in enumerate(groups)}


def segmentation_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                      batch: dict, cache, config: SegmentationConfig, ramp: float,
                      generator: torch.Generator, device: torch.device, amp: bool = False,
                      check: FiniteCheck = lambda terms: None) -> tuple[dict[str, float], dict]:
    """One iteration on a :class:`SegmentationTrainSet` batch.

    ``cache``: :class:`networks.rsgm.RegistrationOutputCache` (unused when both
    RSGM and RNSF are off: the supervised-only baseline). Returns the loss terms
    (``seg``, ``rs_g1``, ``rs_g2``, ``rs``, ``rnsf``, ``total``, as applicable) and
    the images and outputs of the step (for panels).
    """
    x_l, y_l = batch["x_l"].to(device), batch["y_l"].to(device)
    groups = {"x_l": x_l}
    images = {"x_l": x_l}
    if config.use_rsgm or config.use_rnsf:
        w_u1, phi_u2 = cache.get(batch["atlas_name"], batch["u1_name"], batch["u2_name"], device)
        alpha, beta = sample_coefficients(x_l.shape[0], config.coefficients, generator, device)
        g1, g2, y_g = rsgm_generate(x_l, y_l, w_u1, phi_u2, alpha, beta)
        groups.update(g1=g1, g2=g2)
        images.update(g1=g1, g2=g2, y_g=y_g)
    if config.use_rnsf:
        groups["u_neg"] = images["u_neg"] = batch["u_neg"].to(device)
    with torch.autocast(device_type=device.type, enabled=amp):
        outputs = net(torch.cat(list(groups.values())))
    out = _split(outputs, groups)
    terms = {"seg": dice_ce_loss(out["x_l"]["out"], y_l) + dice_ce_loss(out["x_l"]["level2"], y_l)}
    total = terms["seg"]
    if config.use_rsgm:
        terms["rs_g1"] = dice_ce_loss(out["g1"]["out"], y_g)
        terms["rs_g2"] = dice_ce_loss(out["g2"]["out"], y_g)
        terms["rs"] = config.rs_weight * (terms["rs_g1"] + terms["rs_g2"])
        total = total + terms["rs"]
    if config.use_rnsf:
        terms["rnsf"] = rnsf_loss(out["g1"]["project"], out["g2"]["project"], out["g1"]["project_map"],
                                  out["u_neg"]["project"], out["u_neg"]["project_map"],
                                  temperature=config.temperature, k=config.negatives,
                                  mode=config.negative_mode, generator=generator)
        total = total + config.rnsf_weight * ramp * terms["rnsf"]
    terms["total"] = total
    check(terms)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    scaler.step(optimizer)
    scaler.update()
    return {name: value.item() for name, value in terms.items()}, {"images": images, "outputs": out}
