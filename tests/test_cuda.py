"""CUDA paths against their CPU counterparts (skipped where no GPU is present, as in CI).

What runs only on CUDA: the SDPA attention (``attention_impl="auto"`` picks it there),
mixed precision (autocast + GradScaler) in the segmentation stage, and device-resident
caches. Each test compares with the CPU result or checks training still learns.
"""
from __future__ import annotations

import pytest
import torch

from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.bench_segmentation import FixedOutputs
from networks.blocks import PositionAttention, attention, attention_reference
from networks.registration_net import RegistrationNet
from networks.segmentation_net import SegmentationNet
from networks.spatial_transformer import compose, warp
from networks.losses import dice_ce_loss, ncc_loss, ssim_loss
from utils.onehot import one_hot
from networks.rnsf import rnsf_loss
from tests.rnsf_reference import rnsf_loss_reference
from utils.stages.registration import RegistrationWeights, registration_step
from utils.stages.augmentations import flip_rotate
from utils.stages.ss_mgs import SegmentationConfig, segmentation_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def _smooth(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=g)
    for _ in range(3):
        x = torch.nn.functional.avg_pool2d(x, 5, 1, 2, count_include_pad=False)
    return (x - x.min()) / (x.max() - x.min())


@pytest.fixture(autouse=True)
def _exact_fp32():
    """Plain fp32 matmuls/convs on CUDA (no TF32), so CPU and CUDA agree to float tolerance."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_warp_and_compose_match_cpu():
    image = _smooth(2, 1, 40, 72, seed=0)
    labels = (image > 0.5).float()
    f = 6 * (_smooth(2, 2, 40, 72, seed=1) - 0.5)
    g = 6 * (_smooth(2, 2, 40, 72, seed=2) - 0.5)
    torch.testing.assert_close(warp(image.to(CUDA), f.to(CUDA)).cpu(), warp(image, f), atol=1e-5, rtol=1e-5)
    warped_labels = warp(labels.to(CUDA), f.to(CUDA), mode="nearest").cpu()
    assert set(warped_labels.unique().tolist()) <= {0.0, 1.0}
    # nearest rounding of a coordinate at exactly .5 may differ between devices: compare the bulk
    assert (warped_labels != warp(labels, f, mode="nearest")).float().mean() < 1e-3
    torch.testing.assert_close(compose(f.to(CUDA), g.to(CUDA)).cpu(), compose(f, g), atol=1e-4, rtol=1e-4)


def test_sdpa_attention_matches_reference_values_and_gradients():
    """Unscaled attention with Dk != Dv (as PAM: C/8 query-key channels, C value channels)."""
    g = torch.Generator().manual_seed(0)
    q, k = (0.5 * torch.randn(2, 1, 700, 8, generator=g) for _ in range(2))
    v, grad = (torch.randn(2, 1, 700, 64, generator=g) for _ in range(2))
    leaves = [t.to(CUDA).requires_grad_() for t in (q, k, v)]
    out = attention(*leaves, impl="auto")
    grads = torch.autograd.grad(out, leaves, grad.to(CUDA))
    ref_leaves = [t.clone().double().requires_grad_() for t in (q, k, v)]
    expected = attention_reference(*ref_leaves)
    expected_grads = torch.autograd.grad(expected, ref_leaves, grad.double())
    torch.testing.assert_close(out.cpu().double(), expected, atol=1e-4, rtol=1e-4)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got.cpu().double(), want, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("channels, h, w", [(192, 88, 188), (384, 88, 188)])
def test_position_attention_uses_a_fused_kernel_and_never_the_n_by_n_matrix(channels, h, w):
    """The registration net's two PAM widths (192 and 384 channels) at N = 88 * 188 (the 1/4
    scale of 350 x 740): their [B, 1, N, D] views must be eligible for a fused SDPA kernel
    (with the math backend disabled, an ineligible input raises), and forward + backward
    stays below half of one N x N float32 matrix (the math path needs several)."""
    pam = PositionAttention(channels).to(CUDA)
    pam.gamma.data.fill_(1.0)
    x = torch.randn(1, channels, h, w, device=CUDA, requires_grad=True)
    n = h * w
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
        pam(x).sum().backward()
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < 0.5 * n * n * 4
    assert torch.isfinite(x.grad).all()


def test_sdpa_attention_under_autocast_stays_close_to_float32():
    g = torch.Generator().manual_seed(1)
    q, k = (0.5 * torch.randn(1, 1, 1500, 16, generator=g).to(CUDA) for _ in range(2))
    v = torch.randn(1, 1, 1500, 128, generator=g).to(CUDA)
    with torch.autocast("cuda", dtype=torch.float16):
        half = attention(q.half(), k.half(), v.half())
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    torch.testing.assert_close(half.float(), attention_reference(q, k, v), atol=2e-2, rtol=2e-2)


def test_registration_net_on_cuda_matches_cpu():
    torch.manual_seed(0)
    net = RegistrationNet()
    torch.nn.init.normal_(net.flow.weight, std=0.1)  # a non-trivial flow (the init is ~0) ...
    for name, p in net.named_parameters():         # ... and active attention (gamma starts at 0)
        if name.endswith("gamma"):
            p.data.fill_(0.5)
    moving, fixed = _smooth(1, 1, 61, 127, seed=3), _smooth(1, 1, 61, 127, seed=4)
    with torch.no_grad():
        cpu_flow = net(moving, fixed)
        cuda_flow = net.to(CUDA)(moving.to(CUDA), fixed.to(CUDA)).cpu()
    scale = cpu_flow.abs().max().item()
    assert scale > 1e-2
    torch.testing.assert_close(cuda_flow, cpu_flow, atol=1e-4 * scale, rtol=1e-3)


def test_registration_step_on_cuda_lowers_the_loss():
    torch.manual_seed(0)
    net = RegistrationNet().to(CUDA)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    a = _smooth(1, 1, 64, 128, seed=5).to(CUDA)
    b = torch.roll(a, shifts=(2, 3), dims=(2, 3))
    first = registration_step(net, optimizer, a, b, a, b, RegistrationWeights())["total"]
    for _ in range(15):
        last = registration_step(net, optimizer, a, b, a, b, RegistrationWeights())["total"]
    assert last < first


def test_losses_on_cuda_match_cpu_also_under_autocast():
    x, y = _smooth(2, 1, 48, 80, seed=6), _smooth(2, 1, 48, 80, seed=7)
    logits = 3 * torch.randn(2, 2, 48, 80, generator=torch.Generator().manual_seed(8))
    target = one_hot((y[:, 0] > 0.5).long(), 2).float()
    with torch.autocast("cuda", dtype=torch.float16):
        got = [ssim_loss(x.to(CUDA).half(), y.to(CUDA).half()), ncc_loss(x.to(CUDA), y.to(CUDA)),
               dice_ce_loss(logits.to(CUDA).half(), target.to(CUDA))]
    want = [ssim_loss(x, y), ncc_loss(x, y), dice_ce_loss(logits, target)]
    for g_, w_ in zip(got, want):
        assert g_.dtype == torch.float32
        torch.testing.assert_close(g_.cpu(), w_, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("mode", ["reliable", "mean"])
def test_rnsf_on_cuda_matches_reference(mode):
    g = torch.Generator().manual_seed(9)
    proj_g1, proj_g2 = torch.randn(1, 16, 12, 20, generator=g), torch.randn(1, 16, 12, 20, generator=g)
    proj_neg = torch.randn(1, 16, 12, 20, generator=g)
    map_g1, map_neg = torch.randn(1, 2, 12, 20, generator=g), torch.randn(1, 2, 12, 20, generator=g)
    leaves = [t.to(CUDA).requires_grad_() for t in (proj_g1, proj_g2, proj_neg)]
    fast = rnsf_loss(leaves[0], leaves[1], map_g1.to(CUDA), leaves[2], map_neg.to(CUDA), k=30, mode=mode)
    grads = torch.autograd.grad(fast, leaves)
    ref_leaves = [t.clone().requires_grad_() for t in (proj_g1, proj_g2, proj_neg)]
    ref = rnsf_loss_reference(ref_leaves[0], ref_leaves[1], map_g1, ref_leaves[2], map_neg, k=30, mode=mode)
    ref_grads = torch.autograd.grad(ref, ref_leaves)
    torch.testing.assert_close(fast.cpu(), ref, atol=1e-4, rtol=1e-4)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("amp", [False, True])
def test_segmentation_step_on_cuda_learns_with_and_without_amp(amp):
    torch.manual_seed(0)
    h, w = 64, 128
    x_l = _smooth(1, 1, h, w, seed=10)
    gland = (_smooth(1, 1, h, w, seed=11)[:, 0] > 0.55).long()
    batch = {"x_l": x_l, "y_l": one_hot(gland, 2).float(), "u_neg": _smooth(1, 1, h, w, seed=12),
             "atlas_name": ["A"], "u1_name": ["B"], "u2_name": ["C"]}
    cache = FixedOutputs(_smooth(1, 1, h, w, seed=13), 4 * (_smooth(1, 2, h, w, seed=14) - 0.5))
    net = SegmentationNet().to(CUDA).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-6)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    generator = torch.Generator().manual_seed(0)  # as the trainer: a CPU generator
    config = SegmentationConfig(negatives=50)
    history = []
    for _ in range(25):
        terms, step = segmentation_step(net, optimizer, scaler, batch, cache, config, 1.0, generator, CUDA, amp)
        history.append(terms)
    assert all(torch.isfinite(torch.tensor(list(t.values()))).all() for t in history)
    assert history[-1]["seg"] < 0.7 * history[0]["seg"]
    expected_dtype = torch.float16 if amp else torch.float32
    assert step["outputs"]["x_l"]["out"].dtype == expected_dtype
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_flip_rotate_on_cuda_matches_cpu():
    images = _smooth(4, 1, 32, 48, seed=20)
    labels = one_hot((_smooth(4, 1, 32, 48, seed=21)[:, 0] > 0.5).long(), 2).float()
    (cpu_image,), (cpu_label,) = flip_rotate([images], [labels], torch.Generator().manual_seed(3))
    (gpu_image,), (gpu_label,) = flip_rotate([images.to(CUDA)], [labels.to(CUDA)], torch.Generator().manual_seed(3))
    assert gpu_image.device.type == "cuda" and gpu_label.device.type == "cuda"
    torch.testing.assert_close(gpu_image.cpu(), cpu_image, atol=1e-5, rtol=1e-4)
    assert float((gpu_label.cpu() != cpu_label).float().mean()) < 0.005  # nearest-sampling ties may differ


@pytest.mark.parametrize("amp", [False, True])
def test_augmented_segmentation_step_with_encoder_dropout_on_cuda(amp):
    torch.manual_seed(0)
    h, w = 64, 128
    gland = (_smooth(2, 1, h, w, seed=11)[:, 0] > 0.55).long()
    batch = {"x_l": _smooth(2, 1, h, w, seed=10), "y_l": one_hot(gland, 2).float(),
             "u_neg": _smooth(2, 1, h, w, seed=12), "atlas_name": ["A", "A"], "u1_name": ["B", "B"],
             "u2_name": ["C", "C"]}
    cache = FixedOutputs(_smooth(2, 1, h, w, seed=13), 4 * (_smooth(2, 2, h, w, seed=14) - 0.5))
    net = SegmentationNet(dropout=0.5).to(CUDA).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-6)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    augment_rng = torch.Generator().manual_seed(1)
    for _ in range(3):
        terms, step = segmentation_step(net, optimizer, scaler, batch, cache, SegmentationConfig(negatives=50), 1.0,
                                        torch.Generator().manual_seed(0), CUDA, amp,
                                        augment=lambda images, labels=(): flip_rotate(images, labels, augment_rng))
        assert torch.isfinite(torch.tensor(list(terms.values()))).all()
    assert step["images"]["g1"].device.type == "cuda"
    assert torch.equal(step["images"]["y_g"].sum(1), torch.ones(2, h, w, device=CUDA))  # still one-hot
