"""Tests for utils/rnsf.py: fast loss == literal N x M reference == naive loops."""
from __future__ import annotations

import math

import pytest
import torch

from networks.rnsf import negative_sets, pixel_classes, rnsf_loss
from tests.rnsf_reference import rnsf_loss_reference

D, H, W, K, T = 8, 6, 6, 5, 0.1


def _inputs(seed: int, b: int = 2, b_neg: int = 1, map_neg: torch.Tensor | None = None,
            map_g1: torch.Tensor | None = None):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    g1, g2, neg = rnd(b, D, H, W), rnd(b, D, H, W), rnd(b_neg, D, H, W)
    m1 = rnd(b, 2, H, W) if map_g1 is None else map_g1
    mn = rnd(b_neg, 2, H, W) if map_neg is None else map_neg
    return [t.requires_grad_() for t in (g1, g2, neg)], m1, mn


def _map_from_classes(classes: torch.Tensor, strength: torch.Tensor | float = 2.0) -> torch.Tensor:
    """Logits [B, 2, h, w] whose argmax is ``classes`` [B, h, w]."""
    sign = classes.double() * 2 - 1
    logit1 = sign * strength
    return torch.stack([torch.zeros_like(logit1), logit1], 1)


def _naive_rnsf(g1, g2, neg, m1, mn, t, k, mode):
    """Python loops over anchors; negatives chosen by sorted() on (-confidence, index)."""
    def pixels(x):
        b, d, h, w = x.shape
        out = []
        for bi in range(b):
            for y in range(h):
                for xx in range(w):
                    v = [x[bi, c, y, xx].item() for c in range(d)]
                    nrm = math.sqrt(sum(e * e for e in v))
                    out.append([e / nrm for e in v])
        return out

    def classes(m):
        cls, conf = [], []
        b, _, h, w = m.shape
        for bi in range(b):
            for y in range(h):
                for xx in range(w):
                    l0, l1 = m[bi, 0, y, xx].item(), m[bi, 1, y, xx].item()
                    c = 1 if l1 > l0 else 0
                    cls.append(c)
                    conf.append(1.0 / (1.0 + math.exp(-abs(l1 - l0))))
        return cls, conf

    def dot(u, v):
        return sum(x * y for x, y in zip(u, v))

    a, p, n = pixels(g1), pixels(g2), pixels(neg)
    ca, _ = classes(m1)
    cn, conf = classes(mn)
    chosen = {}
    for c in (0, 1):
        cand = sorted((j for j in range(len(n)) if cn[j] != c), key=lambda j: (-conf[j], j))[:k]
        vecs = [n[j] for j in cand]
        if mode == "mean" and vecs:
            mean = [sum(v[d] for v in vecs) / len(vecs) for d in range(len(vecs[0]))]
            nrm = math.sqrt(dot(mean, mean))
            vecs = [[e / nrm for e in mean]]
        chosen[c] = vecs
    total = 0.0
    for i in range(len(a)):
        sap = dot(a[i], p[i]) / t
        for view in (a[i], p[i]):
            terms = [sap] + [dot(view, nv) / t for nv in chosen[ca[i]]]
            mx = max(terms)
            total += mx + math.log(sum(math.exp(e - mx) for e in terms)) - sap
    return total / len(a)


def _check_fast_equals_reference(projs, m1, mn, mode="reliable", k=K, seed=None):
    gen = (lambda: torch.Generator().manual_seed(seed)) if seed is not None else (lambda: None)
    fast = rnsf_loss(*projs[:2], m1, projs[2], mn, temperature=T, k=k, mode=mode, generator=gen())
    ref = rnsf_loss_reference(*projs[:2], m1, projs[2], mn, temperature=T, k=k, mode=mode, generator=gen())
    assert fast.dtype == torch.float64
    assert torch.allclose(fast, ref, rtol=1e-10, atol=1e-12), (fast.item(), ref.item())
    g_fast = torch.autograd.grad(fast, projs)
    g_ref = torch.autograd.grad(ref, projs)
    for gf, gr in zip(g_fast, g_ref):
        assert torch.allclose(gf, gr, rtol=1e-8, atol=1e-12)
    return fast, g_fast


@pytest.mark.parametrize("mode", ["reliable", "mean"])
def test_fast_equals_reference_and_naive_random_inputs(mode):
    projs, m1, mn = _inputs(0, b=2, b_neg=2)
    fast, grads = _check_fast_equals_reference(projs, m1, mn, mode)
    assert fast.item() == pytest.approx(_naive_rnsf(*projs, m1, mn, T, K, mode), rel=1e-10)
    assert all(g.abs().sum() > 0 for g in grads)  # anchors, positives and negatives all get gradient


def test_fast_equals_reference_class_with_fewer_than_k_candidates():
    classes = torch.zeros(1, H, W, dtype=torch.long)
    classes[0, 0, :3] = 1  # only 3 (< K) gland pixels: class-0 anchors get 3 negatives
    strength = torch.linspace(0.5, 3.0, H * W, dtype=torch.float64).view(1, H, W)
    mn = _map_from_classes(classes, strength)
    projs, m1, _ = _inputs(1, map_neg=mn)
    fast, _ = _check_fast_equals_reference(projs, m1, mn, "reliable")
    assert fast.item() == pytest.approx(_naive_rnsf(*projs, m1, mn, T, K, "reliable"), rel=1e-10)
    assert [len(s) for s in negative_sets(mn, K)] == [3, K]


@pytest.mark.parametrize("mode", ["reliable", "mean", "random"])
def test_class_with_zero_candidates_all_negatives_one_class(mode):
    g = torch.Generator().manual_seed(2)
    mn = _map_from_classes(torch.ones(1, H, W, dtype=torch.long),
                           torch.rand(1, H, W, generator=g, dtype=torch.float64) + 0.1)
    projs, m1, _ = _inputs(2, map_neg=mn)
    fast, _ = _check_fast_equals_reference(projs, m1, mn, mode, seed=7)
    if mode != "random":
        assert fast.item() == pytest.approx(_naive_rnsf(*projs, m1, mn, T, K, mode), rel=1e-10)
    # class-1 anchors contribute exactly 0 but still count in the mean over all anchors
    cls_anchor, _ = pixel_classes(m1)
    class0 = (cls_anchor == 0).reshape(2, 1, H, W).double()
    assert 0 < class0.sum() < class0.numel()
    only0 = rnsf_loss(*projs[:2], _map_from_classes(torch.zeros(2, H, W, dtype=torch.long)), projs[2], mn,
                      temperature=T, k=K, mode=mode, generator=torch.Generator().manual_seed(7))
    assert only0.item() > fast.item() > 0


def test_no_candidates_anywhere_gives_zero_with_graph():
    mn = _map_from_classes(torch.ones(1, H, W, dtype=torch.long))
    m1 = _map_from_classes(torch.ones(2, H, W, dtype=torch.long))
    projs, _, _ = _inputs(3)
    for fn in (rnsf_loss, rnsf_loss_reference):
        loss = fn(*projs[:2], m1, projs[2], mn, temperature=T, k=K)
        assert loss.item() == 0.0
        grads = torch.autograd.grad(loss, projs)
        assert all(torch.count_nonzero(gr) == 0 for gr in grads)


def test_ties_in_confidence_resolved_by_lower_index():
    # quantised logits -> many exactly equal confidences
    g = torch.Generator().manual_seed(4)
    levels = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0], dtype=torch.float64)
    mn = torch.stack([torch.zeros(2, H, W, dtype=torch.float64),
                      levels[torch.randint(0, 5, (2, H, W), generator=g)]], 1)
    projs, m1, _ = _inputs(4, map_neg=mn, b_neg=2)
    for k in (K, 11):
        fast, _ = _check_fast_equals_reference(projs, m1, mn, "reliable", k=k)
        assert fast.item() == pytest.approx(_naive_rnsf(*projs, m1, mn, T, k, "reliable"), rel=1e-10)
    # all logits equal: every pixel is class 0 with confidence 0.5 -> lowest indices first
    flat = torch.zeros(2, 2, H, W, dtype=torch.float64)
    sets = negative_sets(flat, K)
    assert sets[0].numel() == 0
    assert sets[1].tolist() == list(range(K))


def test_reliable_selection_is_top_k_confidence_of_other_class_pooled_over_batch():
    g = torch.Generator().manual_seed(5)
    mn = torch.randn(2, 2, H, W, generator=g, dtype=torch.float64) * 3
    cls, conf = pixel_classes(mn)
    sets = negative_sets(mn, 7)
    for c in (0, 1):
        others = [j for j in range(cls.numel()) if cls[j] != c]
        expected = sorted(others, key=lambda j: (-conf[j].item(), j))[:7]
        assert sets[c].tolist() == expected
    assert max(max(s.tolist()) for s in sets) >= H * W  # the second u_neg image is used too


def test_random_mode_reproducible_and_other_class_only():
    projs, m1, mn = _inputs(6, b_neg=2)
    cls, _ = pixel_classes(mn)
    a = negative_sets(mn, K, "random", torch.Generator().manual_seed(3))
    b = negative_sets(mn, K, "random", torch.Generator().manual_seed(3))
    c = negative_sets(mn, K, "random", torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not torch.equal(x, y) for x, y in zip(a, c))
    for cl, sel in enumerate(a):
        assert sel.numel() == K and len(set(sel.tolist())) == K
        assert (cls[sel] != cl).all()
    l1 = rnsf_loss(*projs[:2], m1, projs[2], mn, k=K, mode="random", generator=torch.Generator().manual_seed(3))
    l2 = rnsf_loss(*projs[:2], m1, projs[2], mn, k=K, mode="random", generator=torch.Generator().manual_seed(3))
    assert l1.item() == l2.item()
    _check_fast_equals_reference(projs, m1, mn, "random", seed=3)
    # a random draw differs from the reliable choice here
    reliable = negative_sets(mn, K)
    assert any(set(x.tolist()) != set(y.tolist()) for x, y in zip(a, reliable))


def test_mean_mode_uses_one_negative_per_class():
    projs, m1, mn = _inputs(8)
    loss = rnsf_loss(*projs[:2], m1, projs[2], mn, temperature=T, k=K, mode="mean")
    assert loss.item() == pytest.approx(_naive_rnsf(*projs, m1, mn, T, K, "mean"), rel=1e-10)
    assert loss.item() != pytest.approx(rnsf_loss(*projs[:2], m1, projs[2], mn, temperature=T, k=K).item(),
                                        rel=1e-3)


def _separated(swapped: bool):
    """Class-0 pixels embed at +e0, class-1 at -e0 (D=2); ``swapped`` flips u_neg's embeddings."""
    cls_g = torch.zeros(1, H, W, dtype=torch.long)
    cls_g[..., : W // 2] = 1
    cls_n = 1 - cls_g
    emb_g = (1.0 - 2.0 * cls_g.double()).unsqueeze(1) * torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 2, 1, 1)
    sign_n = (1.0 - 2.0 * cls_n.double()) * (-1.0 if swapped else 1.0)
    emb_n = sign_n.unsqueeze(1) * torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 2, 1, 1)
    return emb_g, emb_g.clone(), _map_from_classes(cls_g), emb_n, _map_from_classes(cls_n)


def test_separated_small_swapped_large():
    good = rnsf_loss(*_separated(False), temperature=T, k=K)
    bad = rnsf_loss(*_separated(True), temperature=T, k=K)
    # separated: s(a,p) = 1, s(a,n) = -1 -> 2 log(1 + K e^{-2/t}); swapped: s(a,n) = 1 -> 2 log(1 + K)
    assert good.item() == pytest.approx(2 * math.log1p(K * math.exp(-2 / T)), rel=1e-9)
    assert good.item() < 1e-6
    assert bad.item() == pytest.approx(2 * math.log1p(K), rel=1e-9)
    assert rnsf_loss_reference(*_separated(True), temperature=T, k=K).item() == pytest.approx(bad.item())


def test_float32_autocast_and_input_checks():
    projs, m1, mn = _inputs(9)
    p32 = [t.detach().float() for t in projs]
    v64 = rnsf_loss(*projs[:2], m1, projs[2], mn, temperature=T, k=K)
    v32 = rnsf_loss(*p32[:2], m1.float(), p32[2], mn.float(), temperature=T, k=K)
    assert v32.dtype == torch.float32
    assert v32.item() == pytest.approx(v64.item(), rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        vb = rnsf_loss(*[t.bfloat16() for t in p32[:2]], m1.float(), p32[2].bfloat16(), mn.float(),
                       temperature=T, k=K)
    assert vb.dtype == torch.float32 and vb.item() == pytest.approx(v64.item(), rel=5e-2)
    with pytest.raises(ValueError):
        rnsf_loss(*projs[:2], m1, projs[2], mn, mode="hardest")
    with pytest.raises(ValueError):
        rnsf_loss(projs[0], projs[1][:, :4], m1, projs[2], mn)
