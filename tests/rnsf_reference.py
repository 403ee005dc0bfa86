"""The literal ``N x M`` form of the RNSF loss, structured like the published code.

Kept beside the tests as the reference that :func:`networks.rnsf.rnsf_loss` (one negative
set per class, no ``N x M`` matrix) is checked against, in the tests and in
``benchmarks/bench_rnsf.py``; it needs O(N M) memory and is never used in training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from networks.rnsf import _COS_EPS, _check_inputs, _pixels, pixel_classes, priority_orders
from utils.precision import no_autocast


def rnsf_loss_reference(proj_g1: torch.Tensor, proj_g2: torch.Tensor, map_g1: torch.Tensor,
                        proj_neg: torch.Tensor, map_neg: torch.Tensor, temperature: float = 0.1,
                        k: int = 250, mode: str = "reliable",
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Literal ``N x M`` RNSF, structured like the published code; for tests and benchmarks only.

    Builds the full float16 class-difference mask ``[M, N]`` (u_neg pixel x anchor), the
    masked score matrix ``mask * score`` ``[M, N]``, takes ``topk`` over it per anchor, gathers
    ``[K, N, D]`` negatives and evaluates cosine similarities on expanded tensors. It
    differs from the published code only where docs/METHOD.md fixes the semantics: the score
    is a tie-free priority (``M - rank`` in :func:`priority_orders`, equivalent to
    confidence with the stable tie rule), same-class pixels picked when fewer than K
    candidates exist are masked out (not used as negatives), logsumexp replaces
    ``exp``/``log`` with its 1e-8, and ``"mean"`` averages the reliable K. Same value as
    :func:`networks.rnsf.rnsf_loss` (and the same generator use in ``"random"`` mode).
    """
    _check_inputs(proj_g1, proj_g2, map_g1, proj_neg, map_neg, temperature, k, mode)
    dtype = torch.promote_types(proj_g1.dtype, torch.float32)
    with no_autocast(proj_g1.device):
        norm_input = _pixels(proj_g1, dtype)  # [N, D]
        norm_positive = _pixels(proj_g2, dtype)
        norm_negative = _pixels(proj_neg, dtype)  # [M, D]
        seg_input, _ = pixel_classes(map_g1)
        seg_negative, negative_prob = pixel_classes(map_neg)
        m = seg_negative.numel()
        num_classes = map_g1.shape[1]

        positive = F.cosine_similarity(norm_input, norm_positive, dim=-1)  # [N]

        with torch.no_grad():
            orders = priority_orders(negative_prob, num_classes, mode, generator)  # [C, M]
            key_dtype = torch.float32 if m < 2 ** 24 else torch.float64
            keys = torch.empty(num_classes, m, dtype=key_dtype, device=orders.device)
            ranks = torch.arange(m, 0, -1, dtype=key_dtype, device=orders.device)  # M .. 1
            keys.scatter_(1, orders, ranks.unsqueeze(0).expand(num_classes, m))
            diff_cls_matrix = (seg_input.unsqueeze(0) != seg_negative.unsqueeze(1)).to(torch.float16)  # [M, N]
            if mode == "random":
                score_matrix = keys[seg_input].T  # [M, N]: the anchor's class row
            else:
                score_matrix = keys[0].unsqueeze(1).expand_as(diff_cls_matrix)
            masked_score_matrix = diff_cls_matrix * score_matrix  # [M, N]
            k_eff = min(k, m)
            sampled_negative_indices = torch.topk(masked_score_matrix, k_eff, dim=0).indices  # [K, N]
            valid = diff_cls_matrix.gather(0, sampled_negative_indices).bool()  # [K, N]

        sampled_negative = norm_negative[sampled_negative_indices]  # [K, N, D]
        if mode == "mean":
            weight = valid.unsqueeze(-1).to(dtype)
            count = valid.sum(dim=0).clamp_min(1).unsqueeze(-1).to(dtype)
            sampled_negative = ((sampled_negative * weight).sum(dim=0) / count).unsqueeze(0)  # [1, N, D]
            valid = valid.any(dim=0, keepdim=True)

        nominator = positive / temperature  # [N]
        loss = 0.0
        for view in (norm_input, norm_positive):
            negative_sim_matrix = F.cosine_similarity(view.unsqueeze(0).expand_as(sampled_negative),
                                                      sampled_negative, dim=-1, eps=_COS_EPS)  # [K, N]
            negative_logits = (negative_sim_matrix / temperature).masked_fill(~valid, float("-inf"))
            logits = torch.cat([nominator.unsqueeze(0), negative_logits], dim=0)  # [K + 1, N]
            loss = loss + (torch.logsumexp(logits, dim=0) - nominator).mean()
        return loss
