"""Building blocks of the two UNets (docs/METHOD.md sections 2 and 4).

All blocks take and return feature maps ``[B, C, H, W]``.

- :class:`ConvBlock`: (conv3x3 -> GroupNorm(C/4 groups) -> LeakyReLU(0.2)) x 2, optionally
  with element-wise dropout between the two (as SSL4MIS's UNet encoder blocks).
- :class:`Down`: 2x2 max-pool, then a :class:`ConvBlock`.
- :class:`Up`: bilinear x2 (``align_corners=True``), concat ``[skip, up]``,
  optional attention on the concatenated features, then a :class:`ConvBlock`
  (without attention the concatenation is never materialised: ``ConvBlock(skip, up)``).
- :class:`SqueezeExcitation`: channel gating, reduction 16.
- :class:`PositionAttention`: DANet's position attention module (PAM),
  ``gamma * softmax(q k^T) v + x`` over the ``H*W`` positions, no 1/sqrt(d)
  scaling, computed without materialising the ``(HW)^2`` matrix (:func:`attention`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.precision import no_autocast

#: Elements of one ``[rows, N]`` query block of :class:`_ChunkedAttention` (about 500 rows
#: at the 1/4 scale of a 350 x 740 image). At most three such temporaries live at once:
#: larger blocks mean fewer, larger BLAS calls but more memory (docs/benchmarks.md has
#: the measured trade-off).
CHUNK_ELEMENTS = 2 ** 23

ATTENTION_IMPLS = ("auto", "chunked", "sdpa", "reference")
UP_ATTENTION = (None, "se", "se+pam")


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with ``channels / 4`` groups (at least 1)."""
    return nn.GroupNorm(max(1, channels // 4), channels)


class ConvBlock(nn.Module):
    """(conv3x3 -> GroupNorm(C/4) -> LeakyReLU(0.2)) twice: ``[B, in, H, W] -> [B, out, H, W]``.

    ``dropout > 0``: ``nn.Dropout(dropout)`` (element-wise, active in training mode only)
    after the first LeakyReLU, where SSL4MIS's UNet puts it. It holds no weights, so the
    state dict is the same with or without it; with ``dropout = 0`` nothing is inserted
    (the block computes exactly what it did before the option existed).
    """

    def __init__(self, in_ch: int, out_ch: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, padding=1), group_norm(out_ch), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1), group_norm(out_ch), nn.LeakyReLU(0.2, inplace=True),
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    def forward(self, *parts: torch.Tensor) -> torch.Tensor:
        """``ConvBlock(cat(parts, dim=1))`` without materialising the concatenation: the
        first conv is the sum of one conv per part over its slice of the weight."""
        if self.dropout is None:
            return self.block(parts[0]) if len(parts) == 1 else self.block[1:](self._first_conv(parts))
        out = self.block[:3](parts[0]) if len(parts) == 1 else self.block[1:3](self._first_conv(parts))
        return self.block[3:](self.dropout(out))

    def _first_conv(self, parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
        first = self.block[0]
        channels = sum(part.shape[1] for part in parts)
        if channels != first.in_channels:
            raise ValueError(f"ConvBlock: parts have {channels} channels in all, expected {first.in_channels}")
        out, start = None, 0
        for part in parts:
            stop = start + part.shape[1]
            term = F.conv2d(part, first.weight[:, start:stop], first.bias if out is None else None,
                            padding=first.padding)
            out = term if out is None else out.add_(term)
            start = stop
        return out


class Down(nn.Module):
    """2x2 max-pool then :class:`ConvBlock` (with its ``dropout``): ``[B, in, H, W] -> [B, out, H/2, W/2]``."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = ConvBlock(in_ch, out_ch, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class SqueezeExcitation(nn.Module):
    """``x * sigmoid(W2 relu(W1 mean_hw(x)))`` with ``C -> C/reduction -> C`` (at least 1 hidden unit)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * weights[:, :, None, None]


# ----------------------------------------------------------------------------------------------
# softmax(q k^T) v without the (N x N) matrix


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain ``softmax(q k^T, dim=-1) v`` (materialises ``[..., N, N]``; tests/benchmarks only).

    ``q, k [..., N, Dk]``, ``v [..., N, Dv]`` -> ``[..., N, Dv]``; no scaling.
    """
    return torch.softmax(torch.matmul(q, k.transpose(-1, -2)), dim=-1) @ v


def _rows_per_block(n: int) -> int:
    return max(16, CHUNK_ELEMENTS // max(1, n))


class _ChunkedAttention(torch.autograd.Function):
    """Exact ``softmax(q k^T) v`` over blocks of query rows, with a hand-written backward
    that recomputes each block's probabilities (FlashAttention's algorithm, in PyTorch ops).

    Works on ``q, k [G, N, Dk]``, ``v [G, N, Dv]`` with 2-D BLAS calls per item and
    block (faster than batched 4-D matmuls on CPU; accumulations use ``addmm_``).
    Peak extra memory: a few ``[rows, N]`` blocks, never ``[N, N]``.
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        groups, n, _ = q.shape
        rows = _rows_per_block(n)
        out = q.new_empty(groups, n, v.shape[-1])
        for g in range(groups):
            k_t = k[g].t()
            for start in range(0, n, rows):
                block = slice(start, start + rows)
                probs = torch.softmax(torch.mm(q[g, block], k_t), dim=-1)
                torch.mm(probs, v[g], out=out[g, block])
                del probs
        ctx.save_for_backward(q, k, v, out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        with no_autocast(grad_out.device):
            return _ChunkedAttention._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out: torch.Tensor):
        q, k, v, out = ctx.saved_tensors
        grad_out = grad_out.to(q.dtype).contiguous()
        groups, n, _ = q.shape
        rows = _rows_per_block(n)
        grad_q = torch.empty_like(q)
        grad_k = torch.zeros_like(k)
        grad_v = torch.zeros_like(v)
        # d softmax: dS = P * (dP - rowsum(dP * P)), and rowsum(dP * P) = rowsum(dO * O).
        delta = (grad_out * out).sum(dim=-1, keepdim=True)
        for g in range(groups):
            k_t, v_t = k[g].t(), v[g].t()
            for start in range(0, n, rows):
                block = slice(start, start + rows)
                probs = torch.softmax(torch.mm(q[g, block], k_t), dim=-1)
                grad_v[g].addmm_(probs.t(), grad_out[g, block])
                grad_scores = torch.mm(grad_out[g, block], v_t)
                grad_scores.sub_(delta[g, block]).mul_(probs)
                del probs
                torch.mm(grad_scores, k[g], out=grad_q[g, block])
                grad_k[g].addmm_(grad_scores.t(), q[g, block])
                del grad_scores
        return grad_q, grad_k, grad_v


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """``softmax(q k^T, dim=-1) v`` with NO ``1/sqrt(d)`` scaling, never forming ``[N, N]``
    (except ``impl="reference"``).

    ``q, k [B, heads, N, Dk]``, ``v [B, heads, N, Dv]`` -> ``[B, heads, N, Dv]``.
    ``impl``: ``"sdpa"`` = ``scaled_dot_product_attention(scale=1.0)`` (on CUDA its
    memory-efficient kernel takes ``Dk != Dv``); ``"chunked"`` = exact blockwise
    computation (:class:`_ChunkedAttention`); ``"auto"`` = ``"chunked"`` on CPU (the
    CPU flash kernel needs ``Dk == Dv`` and the math fallback materialises ``[N, N]``;
    chunking is also faster than zero-padding ``q, k`` to ``Dv`` for flash),
    ``"sdpa"`` elsewhere; ``"reference"`` = :func:`attention_reference`.
    """
    if impl == "auto":
        impl = "chunked" if q.device.type == "cpu" else "sdpa"
    if impl == "chunked":
        # float32 (or wider) maths with autocast off: the blocks are written with out=
        dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype),
                                    torch.promote_types(v.dtype, torch.float32))
        lead = q.shape[:-2]
        with no_autocast(q.device):
            out = _ChunkedAttention.apply(*(t.reshape(-1, *t.shape[-2:]).to(dtype) for t in (q, k, v)))
        return out.reshape(*lead, *out.shape[-2:])
    if impl == "sdpa":
        # contiguous: the fused CUDA kernels need unit stride on the last dim; with a
        # strided view SDPA silently takes its math path, which materialises [N, N]
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        return F.scaled_dot_product_attention(q, k, v, scale=1.0)
    if impl == "reference":
        return attention_reference(q, k, v)
    raise ValueError(f"unknown attention impl {impl!r}; expected one of {ATTENTION_IMPLS}")


class PositionAttention(nn.Module):
    """DANet position attention: ``gamma * (V softmax(Q^T K)^T) + x`` over ``N = H*W`` positions.

    Query/key 1x1 convs to ``C/8`` channels, value 1x1 conv to ``C``; softmax over
    key positions, no scaling; ``gamma`` (scalar) starts at 0, so the module starts
    as the identity. ``[B, C, H, W] -> [B, C, H, W]``; batch items are independent.
    """

    def __init__(self, channels: int, impl: str = "auto") -> None:
        super().__init__()
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"unknown attention impl {impl!r}; expected one of {ATTENTION_IMPLS}")
        inner = max(1, channels // 8)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape

        def positions(t: torch.Tensor) -> torch.Tensor:  # [B, D, H, W] -> [B, 1, N, D]
            return t.flatten(2).transpose(1, 2).unsqueeze(1)

        out = attention(positions(self.query(x)), positions(self.key(x)), positions(self.value(x)),
                        impl=self.impl)
        # scale before the layout change: the product's backward then keeps the attention
        # output that the attention itself saved, not a second (reshaped) copy
        out = (self.gamma * out).squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return out + x


class Up(nn.Module):
    """Bilinear x2 (``align_corners=True``) of ``x [B, in, h, w]``, concat ``[skip, up]``
    (``[B, skip + in, 2h, 2w]``), optional attention, then :class:`ConvBlock` to ``out``.

    ``attention``: ``None``; ``"se"`` (squeeze-excitation); ``"se+pam"`` (SE then
    position attention). ``attention_impl`` is passed to :class:`PositionAttention`.
    """

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, attention: str | None = None,
                 attention_impl: str = "auto") -> None:
        super().__init__()
        if attention not in UP_ATTENTION:
            raise ValueError(f"unknown attention {attention!r}; expected one of {UP_ATTENTION}")
        cat_ch = in_ch + skip_ch
        layers: list[nn.Module] = []
        if attention in ("se", "se+pam"):
            layers.append(SqueezeExcitation(cat_ch))
        if attention == "se+pam":
            layers.append(PositionAttention(cat_ch, impl=attention_impl))
        self.attention = nn.Sequential(*layers)
        self.conv = ConvBlock(cat_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        if len(self.attention) == 0:
            # no [skip, up] copy: the first conv saves skip (kept anyway) and up, not a
            # concatenated copy of both: less peak memory, the same values
            return self.conv(skip, x)
        return self.conv(self.attention(torch.cat([skip, x], dim=1)))
