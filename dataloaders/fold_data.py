"""One call that opens a dataset fold for a script: folder, fold file, pre-alignment."""
from __future__ import annotations

import os
from dataclasses import dataclass

from dataloaders.dataset import DatasetFolder

from dataloaders.folds import Fold, load_fold
from dataloaders.prealignment.cache import Prealignment, ensure_prealignment


@dataclass
class FoldData:
    folder: DatasetFolder
    fold: Fold
    prealign: Prealignment | None


def open_fold(data_dir: str | os.PathLike, k: int, resize: tuple[int, int] | None = None,
              folder: DatasetFolder | None = None, progress: bool = True,
              need_prealign: bool = True) -> FoldData:
    """Validate ``data_dir`` and ``train_dict{k}.json``; make sure the affine
    pre-alignment of every patient in the fold is cached (computed on first use;
    one line is printed when newly computed pairs fell back to the identity)."""
    folder = folder if folder is not None else DatasetFolder(data_dir, resize=resize)
    fold = load_fold(data_dir, k, folder)
    prealign = None
    if need_prealign:
        prealign = ensure_prealignment(folder, [s.images for s in fold.patients], progress=progress)
        summary = prealign.fallback_summary(prealign.computed)
        if summary:
            print(summary)
    return FoldData(folder=folder, fold=fold, prealign=prealign)
