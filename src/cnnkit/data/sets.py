"""The in-memory form of every data set: whole uint8 tensors, never per-sample Python objects."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index])

    @staticmethod
    def concat(sets: list[ImageSet]) -> ImageSet:
        return ImageSet(torch.cat([s.images for s in sets]), torch.cat([s.labels for s in sets]))


@dataclass
class RawData:
    """A source as it comes: its parts ('train', 'val', 'test', or 'all' when it has no split)."""

    classes: list[str]
    parts: dict[str, ImageSet]
    skipped: list[str] = field(default_factory=list)  # image files left out by --skip-bad-images
