"""The in-memory form of every data set: whole uint8 tensors, never per-sample Python objects."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cnnkit.data.ondisk import DiskImages


@dataclass
class ImageSet:
    images: torch.Tensor | DiskImages  # (N, C, H, W) uint8, in memory or (past the memory budget) on disk
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> ImageSet:
        images = self.images.take(index) if isinstance(self.images, DiskImages) else self.images[index]
        return ImageSet(images, self.labels[index])

    @staticmethod
    def concat(sets: list[ImageSet]) -> ImageSet:
        every = [s.images for s in sets]  # one folder's parts: all in memory, or all on disk
        images = DiskImages.concat(every) if isinstance(every[0], DiskImages) else torch.cat(every)  # type: ignore
        return ImageSet(images, torch.cat([s.labels for s in sets]))


@dataclass
class RawData:
    """A source as it comes: its parts ('train', 'val', 'test', or 'all' when it has no split)."""

    classes: list[str]
    parts: dict[str, ImageSet]
    skipped: list[str] = field(default_factory=list)  # image files left out by --skip-bad-images
    channels_reason: str = ""  # why a folder's images are grey or colour ("" for a named data set)
