"""RNSF: contrastive loss with reliable negative sample filtering (docs/METHOD.md section 5).

Inputs: ``proj_g1``, ``proj_g2`` ``[B, D, h, w]`` and ``proj_neg`` ``[B', D, h', w']`` raw
projector outputs (L2-normalised per pixel here), ``map_g1`` ``[B, C, h, w]`` and
``map_neg`` ``[B', C, h', w']`` logits (C = 2 in this project).

Definitions:

- Pooling: anchors are all ``N = B h w`` pixels of the batch, negatives candidates all
  ``M = B' h' w'`` pixels of ``u_neg``'s batch. Pixel ``j`` of a map is flattened as
  ``j = b h w + y w + x``.
- ``a_i`` / ``p_i``: unit embeddings of g1 / g2 at pixel ``i``; anchor class
  ``c_i = argmax map_g1`` (first maximum on ties). Each ``u_neg`` pixel ``j`` has class
  ``argmax map_neg`` and confidence ``max softmax map_neg``. Classes and confidences are
  selection only: no gradient flows into the maps.
- Negative set of class ``c`` (used by every anchor of class ``c``): candidates are
  the ``u_neg`` pixels whose class differs from ``c``; from them take the first
  ``min(K, #candidates)`` in a priority order over all ``u_neg`` pixels:

  * ``"reliable"``: confidence descending, ties broken by the lower pixel index (a stable
    sort), i.e. the K most confident pixels of the other class;
  * ``"random"``: for each class ``c = 0 .. C-1`` in turn, one
    ``torch.randperm(M, generator=generator)`` (on the generator's device; the default
    generator when ``generator`` is None) gives that class's order; C permutations are
    always drawn, so a seeded generator reproduces the selection;
  * ``"mean"``: the ``"reliable"`` set, replaced by the single negative
    ``m_c = mean_k n_k`` (mean of the selected unit embeddings, not re-normalised; as
    ``s`` is a cosine similarity, ``s(a, m_c) = a . m_c / max(|m_c|, 1e-8)``).

- ``s(u, v)`` = cosine similarity, ``t`` = temperature.
  ``l_i = logsumexp([s(a,p), s(a,n_1), ..]/t) - s(a,p)/t`` and
  ``l'_i = logsumexp([s(a,p), s(p,n_1), ..]/t) - s(a,p)/t``;
  ``loss = mean_i l_i + mean_i l'_i`` with both means over all N anchors. An anchor
  whose class has no candidates has no negatives, so ``l_i = l'_i = 0`` exactly, and it
  still counts in the denominator N.

Gradients flow into anchors, positives and negatives. The computation runs in
float32 (float64 inputs stay float64) with autocast off.

:func:`rnsf_loss` builds one ``[K, D]`` negative set per class and ``[N_c, K + 1]``
logits. The literal ``N x M`` form of the published code, which the tests and
``benchmarks/bench_rnsf.py`` compare it with, is ``tests/rnsf_reference.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.onehot import class_index
from utils.precision import no_autocast

MODES = ("reliable", "random", "mean")
_COS_EPS = 1e-8


def _check_inputs(proj_g1, proj_g2, map_g1, proj_neg, map_neg, temperature, k, mode) -> None:
    if mode not in MODES:
        raise ValueError(f"rnsf_loss: mode must be one of {MODES}, got {mode!r}")
    if proj_g1.dim() != 4 or proj_g1.shape != proj_g2.shape:
        raise ValueError(f"rnsf_loss: proj_g1/proj_g2 must be equal [B, D, h, w], "
                         f"got {tuple(proj_g1.shape)} and {tuple(proj_g2.shape)}")
    b, _, h, w = proj_g1.shape
    if map_g1.dim() != 4 or map_g1.shape[0] != b or map_g1.shape[2:] != (h, w):
        raise ValueError(f"rnsf_loss: map_g1 must be [B, C, h, w] matching proj_g1 "
                         f"{tuple(proj_g1.shape)}, got {tuple(map_g1.shape)}")
    if proj_neg.dim() != 4 or proj_neg.shape[1] != proj_g1.shape[1]:
        raise ValueError(f"rnsf_loss: proj_neg must be [B', D, h', w'] with D = {proj_g1.shape[1]}, "
                         f"got {tuple(proj_neg.shape)}")
    if (map_neg.dim() != 4 or map_neg.shape[0] != proj_neg.shape[0]
            or map_neg.shape[2:] != proj_neg.shape[2:] or map_neg.shape[1] != map_g1.shape[1]):
        raise ValueError(f"rnsf_loss: map_neg must be [B', C, h', w'] matching proj_neg "
                         f"{tuple(proj_neg.shape)} and map_g1's C, got {tuple(map_neg.shape)}")
    if k < 1:
        raise ValueError(f"rnsf_loss: k must be >= 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"rnsf_loss: temperature must be > 0, got {temperature}")


def _pixels(proj: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, D, h, w]`` -> unit embeddings ``[B h w, D]`` (pixel j = b h w + y w + x)."""
    flat = proj.to(dtype).permute(0, 2, 3, 1).reshape(-1, proj.shape[1])
    return F.normalize(flat, dim=1)


@torch.no_grad()
def pixel_classes(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[B, C, h, w]`` -> (class ``[B h w]`` long, confidence ``[B h w]``).

    Class = argmax over C (first maximum on ties); confidence = max softmax probability.
    """
    prob = torch.softmax(logits.detach().to(torch.promote_types(logits.dtype, torch.float32)), dim=1)
    cls = class_index(prob, keepdim=True)
    return cls.flatten(), prob.gather(1, cls).flatten()


@torch.no_grad()
def priority_orders(conf_neg: torch.Tensor, num_classes: int, mode: str,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Preference order ``[C, M]`` over the ``M`` u_neg pixels, one row per anchor class.

    ``"reliable"``/``"mean"``: the same row for every class, confidence descending with
    ties to the lower index. ``"random"``: C independent ``torch.randperm(M, generator)``.
    """
    m = conf_neg.numel()
    if mode == "random":
        gen_device = generator.device if generator is not None else conf_neg.device
        rows = [torch.randperm(m, generator=generator, device=gen_device) for _ in range(num_classes)]
        return torch.stack(rows).to(conf_neg.device)
    order = torch.sort(conf_neg, descending=True, stable=True).indices
    return order.unsqueeze(0).expand(num_classes, m)


@torch.no_grad()
def negative_sets(map_neg: torch.Tensor, k: int = 250, mode: str = "reliable",
                  generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Selected u_neg pixel indices per anchor class: a list of C long tensors, entry ``c``
    holding the ``min(k, #pixels of class != c)`` negatives of anchors of class ``c``
    (in priority order; empty when there are none)."""
    if mode not in MODES:
        raise ValueError(f"negative_sets: mode must be one of {MODES}, got {mode!r}")
    cls_neg, conf_neg = pixel_classes(map_neg)
    orders = priority_orders(conf_neg, map_neg.shape[1], mode, generator)
    sets = []
    for c in range(map_neg.shape[1]):
        order = orders[c]
        sets.append(order[cls_neg[order] != c][:k])
    return sets


def rnsf_loss(proj_g1: torch.Tensor, proj_g2: torch.Tensor, map_g1: torch.Tensor,
              proj_neg: torch.Tensor, map_neg: torch.Tensor, temperature: float = 0.1,
              k: int = 250, mode: str = "reliable",
              generator: torch.Generator | None = None) -> torch.Tensor:
    """RNSF contrastive loss (scalar); see the module docstring for the exact definition.

    Memory O((N + M) D + N K): per class ``c`` one ``[K_c, D]`` negative set and
    ``[N_c, K_c + 1]`` logits; never an ``N x M`` matrix.
    """
    _check_inputs(proj_g1, proj_g2, map_g1, proj_neg, map_neg, temperature, k, mode)
    dtype = torch.promote_types(proj_g1.dtype, torch.float32)
    with no_autocast(proj_g1.device):
        anchors = _pixels(proj_g1, dtype)
        positives = _pixels(proj_g2, dtype)
        negatives = _pixels(proj_neg, dtype)
        cls_anchor, _ = pixel_classes(map_g1)
        sets = negative_sets(map_neg, k, mode, generator)
        pos = (anchors * positives).sum(dim=1) / temperature  # [N]
        total = 0.0 * (pos.sum() + negatives.sum())  # all inputs stay in the graph (zero gradient)
        for c, selected in enumerate(sets):
            if selected.numel() == 0:
                continue  # these anchors have no negatives: l_i = l'_i = 0
            rows = (cls_anchor == c).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            negs = negatives.index_select(0, selected)  # [K_c, D]
            if mode == "mean":
                mean = negs.mean(dim=0, keepdim=True)
                negs = mean / mean.norm(dim=1, keepdim=True).clamp_min(_COS_EPS)
            pos_c = pos.index_select(0, rows).unsqueeze(1)  # [N_c, 1]
            for view in (anchors, positives):
                logits = torch.cat([pos_c, view.index_select(0, rows) @ negs.T / temperature], dim=1)
                total = total + (torch.logsumexp(logits, dim=1, keepdim=True) - pos_c).sum()
        return total / anchors.shape[0]
