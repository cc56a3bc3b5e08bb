"""Data: from a name or a folder to normalisation-ready uint8 splits (see `load_data`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnkit.core.errors import CnnkitError
from cnnkit.core.progress import say
from cnnkit.data.folder import DEFAULT_SIZE_CAP, PLAIN_READING, AtMost, Reading, load_folder
from cnnkit.data.images import resize_images
from cnnkit.data.ondisk import DiskImages, loaded
from cnnkit.data.sets import ImageSet, RawData
from cnnkit.data.sources import NAMED_SOURCES
from cnnkit.data.splits import Repeats, channel_stats, make_splits, parse_split, repeated_pictures

DIGIT_DATA = ("digits", "mnist")  # flipping a digit makes another symbol, so these train without flips


@dataclass
class Dataset:
    name: str
    classes: list[str]
    splits: dict[str, ImageSet]  # 'train', 'val', 'test'
    mean: list[float]  # per channel, 0..1 scale, from the training split
    std: list[float]
    skipped: list[str]
    channels_reason: str = ""  # why a folder's images are grey or colour ("" for a named data set)

    @property
    def channels(self) -> int:
        return self.splits["train"].images.shape[1]

    @property
    def image_size(self) -> int:
        return self.splits["train"].images.shape[-1]


def cache_root() -> Path:
    """Where downloads and decoded-image caches live: $CNNKIT_CACHE, else the user's cache folder."""
    if os.environ.get("CNNKIT_CACHE"):
        return Path(os.environ["CNNKIT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cnnkit"


def data_name(data: str) -> str:
    return data if data in NAMED_SOURCES else Path(data).resolve().name


def is_folder(data: str) -> bool:
    return data not in NAMED_SOURCES


def load_raw(
    data: str, data_dir: str | None, image_size: int | None, reading: Reading, max_size: int = DEFAULT_SIZE_CAP
) -> RawData:
    """The source's parts as uint8 tensors, resized to `image_size` when one is given (else a folder's
    images come at their most common size, but no larger than `max_size`)."""
    if data in NAMED_SOURCES:
        raw = NAMED_SOURCES[data](Path(data_dir).expanduser() if data_dir else cache_root() / "data")
        return _resized(raw, image_size) if image_size else raw
    if "/" not in data and "\\" not in data and not data.startswith(".") and not Path(data).exists():
        raise CnnkitError(
            f"unknown data set {data!r}; use one of {', '.join(NAMED_SOURCES)}, or a path to a folder "
            "of images with one sub-folder per class"
        )
    return load_folder(Path(data).expanduser(), image_size, reading, cache_root(), max_size)


def load_data(
    data: str,
    *,
    data_dir: str | None = None,
    image_size: int | AtMost | None = None,
    val_fraction: float = 0.1,
    split: str | None = None,
    seed: int = 0,
    reading: Reading = PLAIN_READING,
) -> Dataset:
    """A named data set or an image folder, split into train/val/test, with the training split's statistics.
    `image_size`: every image resized to it; `AtMost(n)`: a folder's most common size, but no larger than n;
    None: the same, with DEFAULT_SIZE_CAP. `reading`: a folder's bad files and resize rule.
    Every setting is a keyword, so two of them can never be swapped by position."""
    exact, cap = (None, int(image_size)) if isinstance(image_size, AtMost) else (image_size, DEFAULT_SIZE_CAP)
    raw = load_raw(data, data_dir, exact, reading, cap)
    splits = make_splits(raw, val_fraction, parse_split(split) if split else None, seed)
    if len(splits["train"]) == 0 or len(splits["test"]) == 0:
        raise CnnkitError(f"{data} has too few images for a train and a test split; add images or change --split")
    for name, part in splits.items():
        if nearly_constant(part.images):
            say(
                f"warning: the {name} images of {data} are (nearly) all one shade, so nothing can be learned from "
                "them; check that the files hold the pictures you expect (their bit depth, their exposure)"
            )
    if is_folder(data) and reading.listed:  # the named sets hold no picture twice
        for line in _repeats_said(repeated_pictures(splits), raw.classes):
            say(line)
    mean, std = channel_stats(splits["train"].images)
    return Dataset(data_name(data), raw.classes, splits, mean, std, raw.skipped, raw.channels_reason)


def _repeats_said(repeats: Repeats, classes: list[str]) -> list[str]:
    """Warnings for pictures found twice: in two classes (a linked or copied class folder), or held out and
    trained on (the same photo saved twice), which makes the held-out accuracy a score of memory."""
    lines = []
    if repeats.two_classes:
        (a, b), most = repeats.two_classes.most_common(1)[0]
        lines.append(
            f"warning: {repeats.two_classes.total()} picture(s) are in two classes, pixel for pixel ({most} in both "
            f"{classes[a]} and {classes[b]}: a linked or copied class folder?); a picture with two labels cannot be "
            "learned: keep each picture in one class folder"
        )
    if repeats.also_trained:
        held = " and ".join(f"{n} of the {name} images" for name, n in sorted(repeats.also_trained.items()))
        lines.append(
            f"warning: {held} are also training images, pixel for pixel, so their accuracy overstates how the "
            "model does on new pictures; remove the copies (the same photo saved twice), or give a test/ folder "
            "of other pictures"
        )
    return lines


def nearly_constant(images: torch.Tensor | DiskImages, sample: int = 1000) -> bool:
    """Whether up to `sample` images spread over a split vary by less than one grey level (std < 1 of 255)."""
    if len(images) == 0:
        return False
    picked = images[:: max(1, len(images) // sample)][:sample]
    return bool(picked.float().std() < 1.0)


def _resized(raw: RawData, size: int) -> RawData:
    parts = {k: ImageSet(resize_images(loaded(v.images), size), v.labels) for k, v in raw.parts.items()}
    return RawData(raw.classes, parts, raw.skipped)
