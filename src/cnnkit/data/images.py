"""One image file -> one uint8 tensor. Training data and `predict` both go through `decode_image`,
so an image is preprocessed the same way whether it was seen in training or handed in later."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


def is_image_file(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and not name.startswith(".")


def open_image(path: str | Path) -> Image.Image:
    """Open an image lazily, refusing one past PIL's decompression-bomb limit from its header alone
    (PIL itself only warns between one and two times the limit)."""
    img = Image.open(path)
    width, height = img.size
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        img.close()
        raise Image.DecompressionBombError(f"{width}x{height} pixels is over the {Image.MAX_IMAGE_PIXELS:,}-pixel "
                                           "limit that guards against decompression bombs; shrink the image")
    return img


def peek_image(path: str | Path) -> tuple[tuple[int, int], bool]:
    """(width, height) and whether the image is grayscale, read from the header only."""
    with open_image(path) as img:
        return img.size, img.mode in GRAY_MODES


def decode_image(path: str | Path, size: int, channels: int) -> torch.Tensor:
    """Decode, flatten any transparency onto white, convert to `channels` and resize to size x size."""
    with open_image(path) as img:
        img.load()  # decode now, so that a truncated file fails here rather than later
        img = ImageOps.exif_transpose(img)  # phone photos store their rotation in EXIF
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            img = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img.alpha_composite(rgba)
        img = img.convert("L" if channels == 1 else "RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        array = np.asarray(img, dtype=np.uint8).reshape(size, size, channels)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)
