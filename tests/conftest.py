"""Shared pytest fixtures: the location of ../shared and skips when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("YOLO_SLIM_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ../shared folder; tests using it skip on a user's clone where it is absent."""
    if not (SHARED / "weights" / "yolov5n.pt").is_file():
        pytest.skip(f"{SHARED} not present (real-data test)")
    return SHARED


def pytest_configure(config: pytest.Config) -> None:
    """One intra-op thread: tiny test models gain nothing from two, and lose a lot when a core is busy."""
    import torch

    torch.set_num_threads(1)
