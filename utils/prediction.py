"""Segmenting new images with one fold's model or an ensemble of folds (``--mode predict``).

The ensemble's gland probability is the mean of the folds' softmax probabilities,
each computed at the size its model was trained at (``--resize`` of its training
run, else the image's own) and resized back bilinearly; the mask is that mean > 0.5.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from networks.segmentation_net import SegmentationNet
from utils.evaluation import segment_probabilities
from utils.training.checkpoints import find_best_checkpoint, load_network, run_dir_for


@dataclass
class FoldModel:
    """A trained segmenter and the ``(W, H)`` size it was trained at (None: native size)."""

    net: torch.nn.Module
    resize: tuple[int, int] | None
    path: Path


def load_fold_models(runs_dir: str | Path, exp: str, folds: Sequence[int], device: torch.device,
                     checkpoint: str | Path | None = None, hint: str = "") -> list[FoldModel]:
    """Each fold's best-on-val segmenter of ``RUNS/EXP/fold<k>`` (or the one ``checkpoint`` file)."""
    models = []
    for k in folds:
        path = Path(checkpoint) if checkpoint else find_best_checkpoint(run_dir_for(runs_dir, exp, k), hint=hint)
        net, state = load_network(path, SegmentationNet(), device)
        resize = (state.get("args") or {}).get("resize")
        models.append(FoldModel(net, tuple(resize) if resize else None, path))
    return models


def gland_probability(models: Sequence[FoldModel], image: np.ndarray, device: torch.device,
                      amp: bool = False) -> np.ndarray:
    """Mean gland probability ``float64 [H, W]`` of ``models`` on ``image`` (``float32 [H, W]``)."""
    height, width = image.shape
    total = np.zeros((height, width), np.float64)
    for model in models:
        work = cv2.resize(image, model.resize, interpolation=cv2.INTER_LINEAR) if model.resize else image
        gland = segment_probabilities(model.net, torch.from_numpy(work)[None, None].to(device), amp)[0, 1]
        gland = gland.cpu().numpy()
        if model.resize:
            gland = cv2.resize(gland, (width, height), interpolation=cv2.INTER_LINEAR)
        total += gland / len(models)
    return total
