"""The frozen registration network's RSGM outputs for every training pair, computed once per run.

The segmentation stage never trains the registration net, so its outputs for a
(Atlas, other image) pair are the same in every iteration; this cache computes
them once (batched, with a progress bar) and looks them up by image name.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from networks.rsgm import RegNet, registration_outputs
from networks.spatial_transformer import warp


class RegistrationOutputCache:
    """Registration outputs for every (Atlas ``a``, other image ``o``) pair, computed once.

    The registration net is frozen in the segmentation stage, so ``w[(a, o)]`` (``o``
    carried onto ``a``, ``[1, H, W]``) and ``phi[(a, o)]`` (composed field from ``a`` to
    ``o``, ``[2, H, W]``) never change within a run. Pairs: for each subject with Atlas
    images, every Atlas ``a`` and every other image ``o != a`` of that subject (other
    Atlas images included). Both come from :func:`networks.rsgm.registration_outputs` with
    ``x_l = a``, ``u1 = u2 = o``, ``u1_on_l = warp(o, field(o, a))``, ``x_l_on_u2 =
    warp(a, field(a, o))``, ``field_l_u2 = field(a, o)``, as the live path does.

    Memory: 3 values per pixel per pair, kept on ``device`` (no host-to-device copy
    per iteration on CUDA), i.e. ``12 H W`` bytes per pair in float32
    (``dtype=torch.float16`` halves it; fp16 fields are exact to 1/32 px below 64 px
    of displacement, 1/16 px below 128 px).

    ``folder``: needs ``load_image(name) -> float32 [H, W]``; ``prealign``: ``field(m,
    f) -> [2, H, W]``; ``subjects``: objects with ``atlas`` and ``others`` name lists
    (``dataloaders.folds.Subject``). ``reg_net`` runs on ``device`` (the caller
    moves it there and puts it in eval mode).
    """

    def __init__(self, reg_net: RegNet, folder, subjects: Iterable, prealign,
                 device: torch.device | str = "cpu", batch_size: int = 8, progress: bool = True,
                 dtype: torch.dtype = torch.float32):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dtype = dtype
        self.pairs: list[tuple[str, str]] = []
        for subject in subjects:
            images = list(subject.atlas) + list(subject.others)
            for a in subject.atlas:
                self.pairs.extend((a, o) for o in images if o != a)
        self.index = {pair: i for i, pair in enumerate(self.pairs)}
        self.w: torch.Tensor | None = None    # [N, 1, H, W]
        self.phi: torch.Tensor | None = None  # [N, 2, H, W]
        self._compute(reg_net, folder, prealign, torch.device(device), batch_size, progress)

    def _compute(self, reg_net: RegNet, folder, prealign, device: torch.device, batch_size: int,
                 progress: bool) -> None:
        images: dict[str, torch.Tensor] = {}

        def image(name: str) -> torch.Tensor:
            if name not in images:
                images[name] = torch.from_numpy(np.ascontiguousarray(folder.load_image(name), np.float32))
            return images[name]

        def field(moving: str, fixed: str) -> torch.Tensor:
            return torch.as_tensor(prealign.field(moving, fixed), dtype=torch.float32)

        w_parts, phi_parts = [], []
        bar = tqdm(total=len(self.pairs), desc="RSGM registration cache", unit="pair",
                   disable=not progress, leave=False)
        for start in range(0, len(self.pairs), batch_size):
            chunk = self.pairs[start:start + batch_size]
            x_l = torch.stack([image(a) for a, _ in chunk])[:, None].to(device)
            other = torch.stack([image(o) for _, o in chunk])[:, None].to(device)
            field_o_l = torch.stack([field(o, a) for a, o in chunk]).to(device)
            field_l_o = torch.stack([field(a, o) for a, o in chunk]).to(device)
            w, phi = registration_outputs(reg_net, x_l, warp(other, field_o_l),
                                          warp(x_l, field_l_o), other, field_l_o)
            w_parts.append(w.to(dtype=self.dtype))
            phi_parts.append(phi.to(dtype=self.dtype))
            bar.update(len(chunk))
        bar.close()
        if w_parts:
            self.w, self.phi = torch.cat(w_parts), torch.cat(phi_parts)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached tensors."""
        if self.w is None:
            return 0
        return self.w.element_size() * self.w.numel() + self.phi.element_size() * self.phi.numel()

    def _indices(self, atlas_names: Sequence[str], names: Sequence[str]) -> torch.Tensor:
        try:
            return torch.tensor([self.index[(a, o)] for a, o in zip(atlas_names, names, strict=True)],
                                dtype=torch.long)
        except KeyError as exc:
            raise KeyError(f"no cached registration output for pair {exc.args[0]}: the cache holds "
                           f"(Atlas, other image of the same training subject) pairs only") from None

    def get(self, atlas_names: Sequence[str], u1_names: Sequence[str], u2_names: Sequence[str],
            device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Batch lookup: ``w_u1 [B, 1, H, W]`` = ``w[(atlas_i, u1_i)]`` and ``phi_u2 [B, 2, H, W]``
        = ``phi[(atlas_i, u2_i)]``, float32 on ``device``."""
        w_u1 = self.w.index_select(0, self._indices(atlas_names, u1_names).to(self.w.device))
        phi_u2 = self.phi.index_select(0, self._indices(atlas_names, u2_names).to(self.phi.device))
        return (w_u1.to(device=device, dtype=torch.float32),
                phi_u2.to(device=device, dtype=torch.float32))
