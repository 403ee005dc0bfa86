"""networks.blocks, networks.registration_net, networks.segmentation_net."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import networks.blocks as blocks
from networks.blocks import (ConvBlock, Down, PositionAttention, SqueezeExcitation, Up, attention,
                             attention_reference)
from networks.registration_net import RegistrationNet, symmetric_padding
from networks.segmentation_net import SegmentationNet, encoder_dropout, quarter_size


def _randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def capture(store: dict, key: str, which: str = "out"):
    """Forward hook storing the module's first input or its output under ``key`` (returns None,
    so the output is left alone)."""
    def hook(module, inputs, output):
        store[key] = inputs[0] if which == "in" else output
    return hook


def naive_pam(pam: PositionAttention, x: torch.Tensor) -> torch.Tensor:
    """DANet PAM written out with einsum from the module's weights (materialises N x N)."""
    def conv1x1(conv, t):
        return torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], t) + conv.bias[None, :, None, None]
    b, c, h, w = x.shape
    q = conv1x1(pam.query, x).flatten(2)    # [B, C/8, N]
    k = conv1x1(pam.key, x).flatten(2)      # [B, C/8, N]
    v = conv1x1(pam.value, x).flatten(2)    # [B, C, N]
    energy = torch.einsum("bdi,bdj->bij", q, k)  # no 1/sqrt(d)
    attn = torch.softmax(energy, dim=-1)         # over key positions j
    out = torch.einsum("bij,bcj->bci", attn, v).reshape(b, c, h, w)
    return pam.gamma * out + x


# ---------------------------------------------------------------------------------------- attention


@pytest.mark.parametrize("impl", ["chunked", "sdpa"])
def test_attention_matches_reference_values_and_gradients(impl, monkeypatch):
    monkeypatch.setattr(blocks, "CHUNK_ELEMENTS", 16 * 70)  # 16 rows per block: 5 blocks, last one partial
    q = _randn(2, 1, 70, 6, seed=1, scale=0.8).requires_grad_()
    k = _randn(2, 1, 70, 6, seed=2, scale=0.8).requires_grad_()
    v = _randn(2, 1, 70, 11, seed=3).requires_grad_()
    grad = _randn(2, 1, 70, 11, seed=4)
    out = attention(q, k, v, impl=impl)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    expected = attention_reference(q, k, v)
    expected_grads = torch.autograd.grad(expected, (q, k, v), grad)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_attention_reference_is_unscaled_softmax():
    q, k, v = _randn(1, 1, 5, 3, seed=5), _randn(1, 1, 5, 3, seed=6), _randn(1, 1, 5, 2, seed=7)
    weights = torch.exp(q[0, 0] @ k[0, 0].T)
    weights = weights / weights.sum(dim=1, keepdim=True)
    torch.testing.assert_close(attention_reference(q, k, v)[0, 0], weights @ v[0, 0])


def test_chunked_attention_is_stable_for_large_scores():
    q = _randn(1, 1, 40, 4, seed=8, scale=30.0)
    k = _randn(1, 1, 40, 4, seed=9, scale=30.0)
    v = _randn(1, 1, 40, 8, seed=10)
    out = attention(q, k, v, impl="chunked")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, attention_reference(q, k, v), atol=1e-5, rtol=1e-5)


def test_chunked_attention_runs_in_float32_under_cpu_autocast():
    pam = PositionAttention(16, impl="chunked")
    with torch.no_grad():
        pam.gamma.fill_(0.5)
    x = _randn(1, 16, 4, 6, seed=22).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pam(x)
        out.float().sum().backward()
    assert torch.isfinite(x.grad).all() and pam.gamma.grad is not None
    torch.testing.assert_close(out.float(), naive_pam(pam, x).detach(), atol=5e-2, rtol=5e-2)


def test_attention_rejects_unknown_impl():
    with pytest.raises(ValueError):
        PositionAttention(16, impl="fancy")


# ---------------------------------------------------------------------------------------- PAM / SE


@pytest.mark.parametrize("impl", ["auto", "chunked", "sdpa", "reference"])
def test_position_attention_matches_naive_formula(impl, monkeypatch):
    monkeypatch.setattr(blocks, "CHUNK_ELEMENTS", 16 * 48)
    torch.manual_seed(0)
    pam = PositionAttention(32, impl=impl)
    with torch.no_grad():
        pam.gamma.fill_(0.7)
    x = _randn(2, 32, 6, 8, seed=11).requires_grad_()
    out = pam(x)
    expected = naive_pam(pam, x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    grad = _randn(*out.shape, seed=12)
    params = [x] + list(pam.parameters())
    got = torch.autograd.grad(out, params, grad)
    want = torch.autograd.grad(expected, params, grad)
    for g, w_ in zip(got, want):
        torch.testing.assert_close(g, w_, atol=1e-4, rtol=1e-4)
    assert pam.query.out_channels == 4 and pam.key.out_channels == 4 and pam.value.out_channels == 32


def test_position_attention_starts_as_identity():
    pam = PositionAttention(16)
    x = _randn(1, 16, 5, 7, seed=13)
    assert pam.gamma.item() == 0.0
    torch.testing.assert_close(pam(x), x)


def test_squeeze_excitation_scales_each_channel_by_hand_computed_gate():
    torch.manual_seed(1)
    se = SqueezeExcitation(64)
    assert se.fc1.out_features == 4  # reduction 16
    x = _randn(2, 64, 5, 6, seed=14)
    out = se(x)
    assert out.shape == x.shape
    pooled = x.mean(dim=(2, 3))
    gate = torch.sigmoid(F.linear(torch.relu(F.linear(pooled, se.fc1.weight, se.fc1.bias)),
                                  se.fc2.weight, se.fc2.bias))
    torch.testing.assert_close(out, x * gate[:, :, None, None])
    assert (gate > 0).all() and (gate < 1).all()


def test_conv_block_down_up_shapes_and_groups():
    block = ConvBlock(3, 16)
    norms = [m for m in block.modules() if isinstance(m, nn.GroupNorm)]
    assert [n.num_groups for n in norms] == [4, 4]
    acts = [m for m in block.modules() if isinstance(m, nn.LeakyReLU)]
    assert [a.negative_slope for a in acts] == [0.2, 0.2]
    x = _randn(2, 3, 8, 12, seed=15)
    assert block(x).shape == (2, 16, 8, 12)
    assert Down(3, 8)(x).shape == (2, 8, 4, 6)
    up = Up(8, 4, 6, attention="se+pam")
    assert [type(m) for m in up.attention] == [SqueezeExcitation, PositionAttention]
    assert up.attention[1].value.in_channels == 12  # attention on the concatenated features
    assert up(_randn(2, 8, 4, 6, seed=16), _randn(2, 4, 8, 12, seed=17)).shape == (2, 6, 8, 12)
    assert [type(m) for m in Up(8, 4, 6, attention="se").attention] == [SqueezeExcitation]
    assert len(Up(8, 4, 6).attention) == 0
    with pytest.raises(ValueError):
        Up(8, 4, 6, attention="pam")


@pytest.mark.parametrize("attention", [None, "se"])
def test_up_upsamples_bilinear_align_corners_and_concats_skip_first(attention):
    up = Up(2, 3, 4, attention=attention)
    captured = {}
    # without attention the conv block gets (skip, up) as parts of one virtual concatenation
    up.conv.register_forward_hook(lambda module, inputs, output: captured.update(parts=inputs))
    x, skip = _randn(1, 2, 3, 4, seed=18), _randn(1, 3, 6, 8, seed=19)
    up(x, skip)
    assert len(captured["parts"]) == (2 if attention is None else 1)
    cat = torch.cat(captured["parts"], dim=1)
    if attention == "se":  # undo the SE gate to see the concatenation it was given
        se = up.attention[0]
        cat = cat / torch.sigmoid(se.fc2(F.relu(se.fc1(cat.mean(dim=(2, 3))))))[:, :, None, None]
    torch.testing.assert_close(cat[:, :3], skip)
    torch.testing.assert_close(cat[:, 3:], F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True))
    torch.testing.assert_close(cat[0, 3:, -1, -1], x[0, :, -1, -1])  # corners kept (align_corners=True)


def test_conv_block_on_parts_equals_conv_block_on_their_concatenation():
    block = ConvBlock(5, 8)
    parts = [_randn(2, 2, 9, 11, seed=30).requires_grad_(), _randn(2, 3, 9, 11, seed=31).requires_grad_()]
    grad = _randn(2, 8, 9, 11, seed=32)
    leaves = parts + list(block.parameters())
    split = block(*parts)
    split_grads = torch.autograd.grad(split, leaves, grad)
    whole = block(torch.cat(parts, dim=1))
    whole_grads = torch.autograd.grad(whole, leaves, grad)
    torch.testing.assert_close(split, whole, atol=1e-5, rtol=1e-5)
    for got, want in zip(split_grads, whole_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="4 channels"):
        block(parts[0], parts[0])


# ---------------------------------------------------------------------------------------- RegistrationNet


def test_symmetric_padding_by_hand():
    assert symmetric_padding(61, 127) == (1, 2, 0, 1)
    assert symmetric_padding(64, 128) == (0, 0, 0, 0)
    assert symmetric_padding(350, 740) == (1, 1, 6, 6)
    assert symmetric_padding(61, 125) == (1, 2, 1, 2)


@pytest.fixture(scope="module")
def reg_net():
    torch.manual_seed(0)
    return RegistrationNet()


def test_registration_net_shape_and_near_zero_initial_flow(reg_net):
    moving, fixed = torch.rand(2, 1, 61, 127), torch.rand(2, 1, 61, 127)
    flow = reg_net(moving, fixed)
    assert flow.shape == (2, 2, 61, 127)
    assert flow.abs().max() < 1e-3
    assert flow.abs().max() > 0


def test_registration_net_pads_centred_and_crops_the_same_region(reg_net):
    height, width = 61, 125
    top, _, left, _ = symmetric_padding(height, width)
    moving, fixed = torch.rand(1, 1, height, width), torch.rand(1, 1, height, width)
    captured = {}
    hooks = [reg_net.inc.register_forward_hook(capture(captured, "in", "in")),
             reg_net.flow.register_forward_hook(capture(captured, "out"))]
    with torch.no_grad():
        saved = reg_net.flow.weight.clone()
        reg_net.flow.weight.normal_(std=1.0)  # a flow that varies across pixels
        try:
            flow = reg_net(moving, fixed)
        finally:
            reg_net.flow.weight.copy_(saved)
            for hook in hooks:
                hook.remove()
    padded_in, padded_out = captured["in"], captured["out"]
    assert padded_in.shape[-2:] == (64, 128) and padded_out.shape[-2:] == (64, 128)
    inner = (..., slice(top, top + height), slice(left, left + width))
    torch.testing.assert_close(padded_in[inner], torch.cat([fixed, moving], dim=1))  # fixed first
    border = torch.ones_like(padded_in, dtype=torch.bool)
    border[inner] = False
    assert (padded_in[border] == 0).all()  # zeros around
    torch.testing.assert_close(flow, padded_out[inner])
    assert (flow - padded_out[..., :height, :width]).abs().max() > 1e-3  # not the top-left corner


def test_registration_net_treats_batch_items_independently(reg_net):
    with torch.no_grad():
        for up in (reg_net.up1, reg_net.up2):
            up.attention[1].gamma.fill_(0.5)
        a, b = torch.rand(2, 1, 1, 61, 127)
        c, d = torch.rand(2, 1, 1, 61, 127)
        both = reg_net(torch.cat([a, c]), torch.cat([b, d]))
        torch.testing.assert_close(both[:1], reg_net(a, b), atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(both[1:], reg_net(c, d), atol=1e-6, rtol=1e-4)
        for up in (reg_net.up1, reg_net.up2):
            up.attention[1].gamma.zero_()


def test_registration_net_decoder_attention_layout(reg_net):
    kinds = [[type(m).__name__ for m in up.attention] for up in
             (reg_net.up1, reg_net.up2, reg_net.up3, reg_net.up4)]
    assert kinds == [["SqueezeExcitation", "PositionAttention"]] * 2 + [["SqueezeExcitation"], []]
    assert [up.conv.block[0].out_channels for up in (reg_net.up1, reg_net.up2, reg_net.up3, reg_net.up4)] \
        == [128, 64, 32, 16]
    assert reg_net.down4.conv.block[0].out_channels == 256
    assert reg_net.flow.bias.abs().max() == 0 and reg_net.flow.weight.std() < 1e-4


def test_registration_net_gradients_reach_every_parameter():
    torch.manual_seed(2)
    net = RegistrationNet()
    moving, fixed = torch.rand(1, 1, 61, 127), torch.rand(1, 1, 61, 127)
    flow = net(moving, fixed)
    (flow * _randn(*flow.shape, seed=20)).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        # with gamma = 0 (its initial value) PAM's q/k/v convs get exactly zero gradient
        pam_inner = ".attention.1." in name and not name.endswith("gamma")
        assert (p.grad.abs().max() == 0) if pam_inner else (p.grad.abs().max() > 0), name
    net.zero_grad()
    with torch.no_grad():
        for up in (net.up1, net.up2):
            up.attention[1].gamma.fill_(0.5)
    flow = net(moving, fixed)
    (flow * _randn(*flow.shape, seed=20)).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


def test_registration_net_checkpointing_gives_identical_gradients():
    torch.manual_seed(6)
    plain = RegistrationNet(checkpointing=False)
    recomputed = RegistrationNet(checkpointing=True)
    recomputed.load_state_dict(plain.state_dict())
    moving, fixed = torch.rand(1, 1, 61, 127), torch.rand(1, 1, 61, 127)
    weights = _randn(1, 2, 61, 127, seed=21)
    calls = []
    for net in (plain, recomputed):
        hook = net.up4.register_forward_pre_hook(lambda m, i: calls.append(net is recomputed))
        with torch.no_grad():
            net.flow.weight.normal_(std=0.1, generator=torch.Generator().manual_seed(7))
        (net(moving, fixed) * weights).sum().backward()
        hook.remove()
    assert calls == [False, True, True]  # up4 ran again in the backward pass of the checkpointed net
    for (name, a), b in zip(plain.named_parameters(), recomputed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_registration_net_full_size_shape_only(reg_net):
    with torch.no_grad():
        flow = reg_net(torch.rand(1, 1, 350, 740), torch.rand(1, 1, 350, 740))
    assert flow.shape == (1, 2, 350, 740)


def test_registration_net_reference_attention_gives_same_flow():
    torch.manual_seed(3)
    net = RegistrationNet()
    ref = RegistrationNet(attention_impl="reference")
    ref.load_state_dict(net.state_dict())
    with torch.no_grad():
        for model in (net, ref):
            model.flow.weight.normal_(std=0.1, generator=torch.Generator().manual_seed(4))
            for up in (model.up1, model.up2):
                up.attention[1].gamma.fill_(0.8)
        moving, fixed = torch.rand(1, 1, 61, 127), torch.rand(1, 1, 61, 127)
        torch.testing.assert_close(net(moving, fixed), ref(moving, fixed), atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------- SegmentationNet


@pytest.fixture(scope="module")
def seg_net():
    torch.manual_seed(0)
    return SegmentationNet()


@pytest.mark.parametrize("size", [(61, 127), (64, 128)])
def test_segmentation_net_output_names_and_shapes(seg_net, size):
    h, w = size
    out = seg_net(torch.rand(2, 1, h, w))
    h4, w4 = quarter_size(h, w)
    assert (h4, w4) == (h // 4, w // 4)
    assert set(out) == {"out", "level2", "project", "project_map"}
    for key in ("out", "level2"):
        assert out[key].shape == (2, 2, h, w), key
    assert out["project"].shape == (2, 64, h4, w4)
    assert out["project_map"].shape == (2, 2, h4, w4)
    expected_map = F.interpolate(out["out"], size=(h4, w4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out["project_map"], expected_map)


def test_segmentation_net_resizes_input_only_when_needed(seg_net):
    captured = {}
    hook = seg_net.inc.register_forward_hook(capture(captured, "in", "in"))
    x64 = torch.rand(1, 1, 64, 128)
    x61 = torch.rand(1, 1, 61, 127)
    try:
        with torch.no_grad():
            seg_net(x64)
            in64 = captured["in"]
            seg_net(x61)
            in61 = captured["in"]
    finally:
        hook.remove()
    torch.testing.assert_close(in64, x64)  # already a multiple of 16: untouched
    assert in61.shape[-2:] == (64, 128)
    torch.testing.assert_close(in61, F.interpolate(x61, size=(64, 128), mode="bilinear",
                                                          align_corners=False))


def test_segmentation_net_projector_and_level2_head(seg_net):
    captured = {}
    hook = seg_net.up2.register_forward_hook(capture(captured, "d2"))
    try:
        with torch.no_grad():
            out = seg_net(torch.rand(1, 1, 64, 128))
    finally:
        hook.remove()
    d2 = captured["d2"]
    assert d2.shape == (1, 64, 16, 32)
    torch.testing.assert_close(out["project"], seg_net.projector(d2))
    level2 = F.interpolate(seg_net.head2(d2), size=(64, 128), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out["level2"], level2)
    assert isinstance(seg_net.projector[1], nn.PReLU)


def test_segmentation_net_init(seg_net):
    conv = seg_net.down4.conv.block[3]  # 256 -> 256, fan_in 2304
    assert abs(conv.weight.std().item() / math.sqrt(2.0 / (256 * 9)) - 1) < 0.05
    for m in seg_net.modules():
        if isinstance(m, nn.GroupNorm):
            assert (m.weight == 1).all() and (m.bias == 0).all()
    assert not any(isinstance(m, (SqueezeExcitation, PositionAttention)) for m in seg_net.modules())


def test_segmentation_net_gradients_reach_every_parameter():
    torch.manual_seed(5)
    net = SegmentationNet()
    out = net(torch.rand(2, 1, 61, 127))
    loss = sum((v * _randn(*v.shape, seed=i)).sum() for i, v in enumerate(out.values()))
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, name


def test_encoder_dropout_is_ssl4mis_profile_scaled_to_the_deepest_block():
    assert encoder_dropout(0.5) == pytest.approx((0.05, 0.1, 0.2, 0.3, 0.5))  # SSL4MIS's UNet encoder
    assert encoder_dropout(0.3) == pytest.approx((0.03, 0.06, 0.12, 0.18, 0.3))
    assert encoder_dropout(0.0) == (0.0,) * 5
    with pytest.raises(ValueError):
        encoder_dropout(1.0)


def test_segmentation_net_dropout_in_the_encoder_only_and_none_at_zero():
    torch.manual_seed(3)
    plain = SegmentationNet()
    torch.manual_seed(3)
    dropping = SegmentationNet(dropout=0.5)
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())
    probabilities = [(name, m.p) for name, m in dropping.named_modules() if isinstance(m, nn.Dropout)]
    assert probabilities == [("inc.dropout", 0.05), ("down1.conv.dropout", 0.1), ("down2.conv.dropout", 0.2),
                             ("down3.conv.dropout", pytest.approx(0.3)), ("down4.conv.dropout", 0.5)]
    # the same parameters and seeded initialisation, so checkpoints load either way
    assert plain.state_dict().keys() == dropping.state_dict().keys()
    assert all(torch.equal(v, dropping.state_dict()[k]) for k, v in plain.state_dict().items())
    x = torch.rand(2, 1, 32, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain.eval(), dropping.eval()
        torch.testing.assert_close(dropping(x)["out"], plain(x)["out"], rtol=0, atol=0)  # eval: no dropout
        plain.train(), dropping.train()
        assert torch.equal(plain(x)["out"], plain(x)["out"])
        assert not torch.equal(dropping(x)["out"], dropping(x)["out"])  # training: stochastic


def test_conv_block_dropout_sits_between_the_two_convolutions():
    torch.manual_seed(0)
    block = ConvBlock(3, 8, dropout=0.5).train()
    x = torch.rand(1, 3, 6, 6)
    torch.manual_seed(11)
    out = block(x)
    torch.manual_seed(11)
    middle = torch.nn.functional.dropout(block.block[:3](x), 0.5, training=True)
    torch.testing.assert_close(out, block.block[3:](middle))
    # two parts (the decoder's skip and up-sampled input) take the same path as their concatenation
    parts = (torch.rand(1, 1, 6, 6), torch.rand(1, 2, 6, 6))
    torch.manual_seed(11)
    split = block(*parts)
    torch.manual_seed(11)
    torch.testing.assert_close(split, block(torch.cat(parts, dim=1)), atol=1e-6, rtol=1e-5)
