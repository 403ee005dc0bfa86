"""``--save-images`` of the test script: a picture per scored test image or pair.

Each function returns a ``keep_outputs`` callback for :mod:`utils.evaluation.loops`, writing
PNGs into ``folder`` (created): segmentation overlays (true positives green, false
positives red, false negatives blue) named ``<image>.png``, registration panels (moving,
fixed, pre-aligned moving, warped, warped mask on fixed, deformation grid) named
``<moving>__to__<fixed>.png``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from utils.evaluation.metrics import masks_from_scores
from utils.evaluation.visualise import deformation_grid, image_grid_panel, overlay_mask, save_png, tp_fp_fn_overlay


def segmentation_overlay_saver(folder: Path) -> Callable[[dict, np.ndarray], None]:
    """Callback ``(batch, predicted mask [H, W]) -> None`` of :func:`evaluate_segmentation`."""
    folder.mkdir(parents=True, exist_ok=True)

    def save(batch: dict, pred: np.ndarray) -> None:
        image = batch["image"][0, 0].numpy()
        truth = masks_from_scores(batch["label"])[0].numpy()
        save_png(folder / f"{batch['name'][0]}.png", tp_fp_fn_overlay(image, pred, truth))
    return save


def registration_panel_saver(folder: Path) -> Callable[[dict, dict], None]:
    """Callback ``(batch, outputs) -> None`` of :func:`evaluate_registration`."""
    folder.mkdir(parents=True, exist_ok=True)

    def save(batch: dict, outputs: dict) -> None:
        fixed = batch["fixed"][0, 0]
        panel = image_grid_panel([batch["moving"][0, 0], fixed, batch["moving_aligned"][0, 0],
                                  outputs["warped"][0, 0],
                                  overlay_mask(fixed, outputs["warped_label"][0, 1] > 0.5),
                                  deformation_grid(outputs["flow"][0])])
        name = f"{batch['moving_name'][0]}__to__{batch['fixed_name'][0]}.png"
        save_png(folder / name, panel.permute(1, 2, 0))
    return save
