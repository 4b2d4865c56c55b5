"""Calibration images for the steps that read some (mean compensation, BatchNorm re-estimation, reconstruction,
the taylor importance): training images evenly spaced over the split, letterboxed, no augmentation."""

from __future__ import annotations

from typing import Any

from prune.config import PruneError
from yolo.data import create_dataloader, load_data_yaml


def calib_loader(data: Any, imgsz: int, n_images: int, batch_size: int = 16, stride: int = 32, workers: int = 0):
    """A loader over `n_images` training images of `data` (a data.yaml path or a loaded DataConfig)."""
    cfg = data if hasattr(data, "train") else load_data_yaml(data)
    files = list(cfg.train)
    if not files:
        raise PruneError(f"{getattr(cfg, 'yaml_path', data)}: no training images for calibration")
    step = max(1, len(files) // max(n_images, 1))
    files = files[::step][:n_images]
    loader, _ = create_dataloader(files, imgsz, min(batch_size, len(files)), stride=stride, names=cfg.names,
                                  augment=False, rect=False, workers=workers, shuffle=False)  # fmt: skip
    return loader
