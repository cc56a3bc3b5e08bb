"""Train / validation / test splits, stratified by class and fixed by the seed."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field

import torch

from cnnkit.core.errors import CnnkitError
from cnnkit.data.ondisk import DiskImages
from cnnkit.data.sets import ImageSet, RawData

DEFAULT_TEST_FRACTION = 0.2  # held out as test when a source has no test split of its own
DIGEST_BYTES = 4096  # of each picture's pixels, evenly spaced, hashed to find repeated pictures


def make_splits(
    raw: RawData, val_fraction: float, split: tuple[float, float, float] | None, seed: int
) -> dict[str, ImageSet]:
    """The official test split where there is one; validation carved from train unless the source has one.

    `split` merges every part and re-splits it (e.g. CIFAR-10's train and test as one pool, 80/10/10).
    """
    generator = torch.Generator().manual_seed(seed)
    parts = raw.parts
    if split is None and "val" in parts and "test" not in parts:  # train/ and val/: the test images come from train
        train, test = stratified_split(parts["train"], [1 - DEFAULT_TEST_FRACTION, DEFAULT_TEST_FRACTION], generator)
        return {"train": train, "val": parts["val"], "test": test}
    if split is None and "test" in parts:
        if "val" in parts:
            return {"train": parts["train"], "val": parts["val"], "test": parts["test"]}
        train, val = stratified_split(parts["train"], [1 - val_fraction, val_fraction], generator)
        return {"train": train, "val": val, "test": parts["test"]}
    if split is None:
        held_out = DEFAULT_TEST_FRACTION
        split = ((1 - held_out) * (1 - val_fraction), (1 - held_out) * val_fraction, held_out)
    pool = ImageSet.concat([parts[name] for name in sorted(parts)])
    train, val, test = stratified_split(pool, list(split), generator)
    return {"train": train, "val": val, "test": test}


def stratified_split(data: ImageSet, fractions: list[float], generator: torch.Generator) -> list[ImageSet]:
    """Cut each class by `fractions` (same order every time for a given generator state)."""
    chunks: list[list[torch.Tensor]] = [[] for _ in fractions]
    for label in torch.unique(data.labels):
        members = torch.nonzero(data.labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        bounds = torch.tensor([0.0] + fractions).cumsum(0).mul(len(members)).round().long().tolist()
        for i in range(len(fractions)):
            chunks[i].append(members[bounds[i] : bounds[i + 1]])
    return [data.subset(torch.cat(c).sort().values) for c in chunks]


def channel_stats(images: torch.Tensor | DiskImages) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, on the 0..1 scale, from each channel's count of every value:
    exact, and with no float copy of the images (a third of a cached CIFAR-10 load took the copy before)."""
    counts = torch.zeros(images.shape[1], 256, dtype=torch.float64)
    for chunk in images.split(chunk_rows(images)):  # in chunks: memory stays bounded
        for channel, values in enumerate(chunk.unbind(1)):
            counts[channel] += torch.bincount(values.flatten(), minlength=256)
    levels = torch.arange(256, dtype=torch.float64) / 255
    mean = counts @ levels / counts.sum(1)
    std = (counts @ levels.square() / counts.sum(1) - mean.square()).clamp_min(1e-6).sqrt()  # a flat channel: not 0
    return mean.tolist(), std.tolist()


@dataclass
class Repeats:
    """Pictures found twice, by their pixels at the run's size: with two labels, or held out and trained on."""

    two_classes: Counter[tuple[int, int]] = field(default_factory=Counter)  # (label, label): pictures in both
    also_trained: Counter[str] = field(default_factory=Counter)  # 'val' or 'test': its pictures also in train


def repeated_pictures(splits: dict[str, ImageSet]) -> Repeats:
    """Each picture's first place (split and label) by a digest of a sample of its pixels, confirmed pixel by
    pixel: a linked or copied class folder, or the same photo in train and test, shows up here."""
    first: dict[bytes, tuple[str, int]] = {}  # a digest's first picture: its split and place there
    repeats = Repeats()
    for name in ("train", "val", "test"):
        images, labels = splits[name].images, splits[name].labels
        step = max(1, math.prod(images.shape[1:]) // DIGEST_BYTES)  # hashing every pixel of large images is slow
        index = 0
        for chunk in images.split(chunk_rows(images)):
            for picture in chunk:
                digest = hashlib.blake2b(picture.flatten()[::step].numpy().tobytes()).digest()
                where = first.setdefault(digest, (name, index))
                if where != (name, index) and torch.equal(splits[where[0]].images[where[1] : where[1] + 1][0], picture):
                    label, other = int(labels[index]), int(splits[where[0]].labels[where[1]])
                    if label != other:
                        repeats.two_classes[min(label, other), max(label, other)] += 1
                    if where[0] == "train" and name != "train":
                        repeats.also_trained[name] += 1
                index += 1
    return repeats


def chunk_rows(images: torch.Tensor | DiskImages, chunk_bytes: int = 16 << 20) -> int:
    """Images in a chunk of a pass over a whole split: 4,096, or fewer so as to hold about `chunk_bytes` (the
    4,096 keep small images' statistics, summed chunk by chunk, what they were before large ones were bounded)."""
    return max(1, min(4096, chunk_bytes // math.prod(images.shape[1:])))


def parse_split(text: str) -> tuple[float, float, float]:
    """'80/10/10' -> (0.8, 0.1, 0.1); the three parts must add up to 100 and train and test be non-empty."""
    try:
        parts = [float(p) for p in str(text).split("/")]
    except ValueError:
        parts = []
    if (
        len(parts) != 3
        or not all(math.isfinite(p) and p >= 0 for p in parts)
        or abs(sum(parts) - 100) > 1e-6
        or parts[0] == 0
        or parts[2] == 0
    ):
        raise CnnkitError(
            f"--split {text!r} must be three percentages TRAIN/VAL/TEST that add up to 100, e.g. 80/10/10"
        )
    return parts[0] / 100, parts[1] / 100, parts[2] / 100
