"""Decoded images kept in memory for a loader (`--cache`): never written to disk."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from yolo.data.files import DataError

CACHE_MODES = ("auto", "ram", "no")  # decoded, resized images kept in memory (never written to disk)
AUTO_CACHE_BYTES = 1 << 30  # 'auto' caches at most 1 GiB, and at most a quarter of the memory available


def auto_cache_limit() -> int:
    """AUTO_CACHE_BYTES, or a quarter of MemAvailable when that is less (0 where it cannot be read)."""
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return 0
    return min(AUTO_CACHE_BYTES, avail // 4)


class PackedImages:
    """Decoded images in one contiguous uint8 tensor, handed out as read-only numpy views.

    One buffer, not one array per image, so loader workers share it however they start: a forked worker shares
    its pages (no per-image object for reference counts to touch), and a spawned one (macOS, Windows) receives
    the tensor through torch's shared memory instead of a pickled copy per worker. Read-only, so no
    augmentation can edit the cached copy.
    """

    def __init__(self, images: Iterable[tuple[np.ndarray, tuple[int, int], tuple[int, int]]], nbytes: int) -> None:
        """Copy `images` (consumed one at a time, so decoded arrays are freed as they are packed) into a buffer
        of `nbytes`, their total size."""
        self.pixels = torch.empty(nbytes, dtype=torch.uint8)
        flat = self.pixels.numpy()
        self.shapes: list[tuple[int, ...]] = []
        self.sizes: list[tuple[tuple[int, int], tuple[int, int]]] = []
        offsets = [0]
        for img, hw0, hw in images:
            start, end = offsets[-1], offsets[-1] + img.size
            if end > nbytes:
                raise ValueError(f"images take more than the {nbytes} bytes reserved for them")
            flat[start:end] = img.reshape(-1)
            self.shapes.append(img.shape)
            self.sizes.append((hw0, hw))
            offsets.append(end)
        if offsets[-1] != nbytes:
            raise ValueError(f"images take {offsets[-1]} bytes, {nbytes} were reserved for them")
        self.offsets = np.asarray(offsets)

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        img = self.pixels[int(self.offsets[i]) : int(self.offsets[i + 1])].numpy().reshape(self.shapes[i])
        img.setflags(write=False)
        return img, *self.sizes[i]

    def __iter__(self) -> Iterator[tuple[np.ndarray, tuple[int, int], tuple[int, int]]]:
        return (self[i] for i in range(len(self)))

    def share(self) -> None:
        """Move the buffer to shared memory before loader workers start, where a failure can still be explained
        (a spawned worker would move it while unpickling, and die with a bare error when /dev/shm is full)."""
        try:
            self.pixels.share_memory_()
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(
                f"--cache ram: the {self.pixels.numel() / 2**20:.0f} MB image cache does not fit in shared memory "
                f"for the loader workers ({first}); use --workers 0, --cache no, or a larger /dev/shm"
            ) from None
