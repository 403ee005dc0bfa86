"""Segmenting new images with one fold's model or an ensemble of folds (``--mode predict``).

The ensemble's probability is the mean of the folds' softmax probabilities, each
computed at the size its model was trained at (``--resize`` of its training run, else
the image's own) and resized back bilinearly; the mask is that mean > 0.5. With
eyelid models (``--eyelid-exp``) the eyelid is segmented the same way, and the clinical
measures of :mod:`utils.clinical.measures` are computed from the two masks.

Outputs of :func:`predict_folder` in ``OUT_DIR``: ``masks/<name>.png`` (glands, 0/255),
``eyelid_masks/<name>.png`` (with eyelid models), ``overlays/<name>.png`` (glands
tinted, eyelid outline, centre lines and gland numbers), ``gland_area.csv``,
``glands.csv`` (one row per gland) and ``images.csv`` (one row per image; with a
calibration, :mod:`utils.clinical.calibration`, also ``calibrated_meiboscore``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from tqdm import tqdm

from dataloaders.dataset import read_image
from networks.segmentation_net import SegmentationNet
from utils.errors import InputError
from utils.evaluation.loops import segment_probabilities
from utils.files import write_csv, write_png
from utils.clinical.calibration import CALIBRATED_COLUMN, MeiboscoreCalibration, add_calibrated
from utils.clinical.glands import GLAND_COLUMNS
from utils.clinical.measures import IMAGE_COLUMNS, measure_image
from utils.evaluation.gland_overlay import draw_gland_overlay
from utils.training.checkpoints import find_best_checkpoint, find_runs, load_network
from utils.evaluation.visualise import overlay_mask


@dataclass
class FoldModel:
    """A trained segmenter and the ``(W, H)`` size it was trained at (None: native size)."""

    net: torch.nn.Module
    resize: tuple[int, int] | None
    path: Path
    target: str = "gland"


def load_fold_models(runs_dir: str | Path, exp: str, folds: Sequence[int], device: torch.device,
                     checkpoint: str | Path | None = None, hint: str = "") -> list[FoldModel]:
    """The best-on-val segmenter of every run of each fold (``RUNS/EXP/fold<k>``, or each
    ``RUNS/EXP/seed<S>/fold<k>``: :func:`utils.training.checkpoints.find_runs`), or the one
    ``checkpoint`` file."""
    paths = [Path(checkpoint)] if checkpoint else [
        find_best_checkpoint(run.run_dir, hint=hint) for k in folds for run in find_runs(runs_dir, exp, k, hint)]
    models = []
    for path in paths:
        net, state = load_network(path, SegmentationNet(), device)
        trained = state.get("args") or {}
        resize = trained.get("resize")
        models.append(FoldModel(net, tuple(resize) if resize else None, path, trained.get("target", "gland")))
    return models


def gland_probability(models: Sequence[FoldModel], image: np.ndarray, device: torch.device,
                      amp: bool = False) -> np.ndarray:
    """Mean foreground probability ``float64 [H, W]`` of ``models`` on ``image`` (``float32 [H, W]``):
    glands, or the eyelid for eyelid models."""
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


def check_targets(models: Sequence[FoldModel], target: str, flag: str) -> None:
    """Every model must segment ``target`` (a gland model given as ``--eyelid-exp`` is an error)."""
    wrong = [m.path for m in models if m.target != target]
    if wrong:
        raise InputError(f"{flag}: {wrong[0]} segments {target == 'gland' and 'the eyelid' or 'glands'}, not "
                         f"the {target}; pass an experiment trained with --target {target}")


def predict_folder(files: Sequence[Path], out_dir: Path, models: Sequence[FoldModel],
                   eyelid_models: Sequence[FoldModel], device: torch.device, amp: bool = False,
                   pixel_size: float = 1.0, progress: bool = True,
                   calibration: MeiboscoreCalibration | None = None) -> int:
    """Segment ``files`` and write the outputs listed in the module docstring; returns the count."""
    area_rows, gland_rows, image_rows = [], [], []
    for path in tqdm(files, desc="predict", disable=not progress):
        image = read_image(path)
        mask = gland_probability(models, image, device, amp) > 0.5
        eyelid = gland_probability(eyelid_models, image, device, amp) > 0.5 if eyelid_models else None
        measures = measure_image(mask, eyelid, pixel_size=pixel_size)
        write_png(out_dir / "masks" / f"{path.stem}.png", mask.astype(np.uint8) * 255)
        if eyelid is not None:
            write_png(out_dir / "eyelid_masks" / f"{path.stem}.png", eyelid.astype(np.uint8) * 255)
        overlay = draw_gland_overlay(overlay_mask(image, mask, alpha=0.35), measures.glands, eyelid)
        write_png(out_dir / "overlays" / f"{path.stem}.png", overlay[:, :, ::-1])
        area_rows.append({"name": path.stem, "height": image.shape[0], "width": image.shape[1],
                          "gland_pixels": int(mask.sum()), "gland_fraction": float(mask.mean())})
        gland_rows += [gland.row(path.stem) for gland in measures.glands]
        image_rows.append(measures.row(path.stem))
    write_csv(out_dir / "gland_area.csv", area_rows, ["name", "height", "width", "gland_pixels", "gland_fraction"])
    write_csv(out_dir / "glands.csv", gland_rows, GLAND_COLUMNS)
    add_calibrated(image_rows, calibration)
    write_csv(out_dir / "images.csv", image_rows, IMAGE_COLUMNS + ((CALIBRATED_COLUMN,) if calibration else ()))
    return len(area_rows)
